"""Count how bad input ends, with the real `python -m bench` in a subprocess per case (tests/bad_input_cases.py).

    PYTHONPATH=. python tests/bad_input_census.py [--keep DIR] [NAME_FILTER ...]

Prints one line per case (outcome, name, the stderr line) and then the totals: cases tried, one-line errors,
tracebacks, other outcomes (exit 0, several lines, the "please report" fallback, stored data changed). Exit status 1
unless every case is a one-line error. The template workspace is built once (a tiny variant: about a minute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TQDM_DISABLE", "1")  # the template build's converter bars (as the test suite's conftest does)

from bad_input_cases import CASES, build_template, snapshot  # noqa: E402


def classify(code: int, err: str, unchanged: bool, expect: str) -> str:
    if "Traceback" in err:
        return "traceback"
    lines = err.strip().splitlines()
    if code == 0:
        return "accepted"
    if len(lines) != 1:
        return f"{len(lines)} lines"
    if "please report" in lines[0]:
        return "fallback"
    if not unchanged:
        return "data changed"
    return "one-line" if expect in lines[0] else "one-line, cause not named"


def main(argv: list[str]) -> int:
    filters = [a for a in argv if not a.startswith("--")]
    work = Path(tempfile.mkdtemp(prefix="bench-census-"))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "COLUMNS": "200"}
    try:
        template = build_template(work / "template")
        counts: dict[str, int] = {}
        for case in CASES:
            if filters and not any(f in case.name for f in filters):
                continue
            root = work / "ws"
            shutil.copytree(template, root)
            args = case.damage(root)
            before = snapshot(root)
            done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=root, env={**env, "BENCH_ROOT": str(root)},
                                  capture_output=True, text=True, timeout=900)
            outcome = classify(done.returncode, done.stderr, snapshot(root) == before, case.expect)
            counts[outcome] = counts.get(outcome, 0) + 1
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            print(f"{outcome:<12} {case.name}: {last[:160]}", flush=True)
            shutil.rmtree(root)
        tried = sum(counts.values())
        print(f"\ncases tried: {tried}; one-line errors: {counts.get('one-line', 0)}; "
              f"tracebacks: {counts.get('traceback', 0)}; other: "
              f"{ {k: v for k, v in counts.items() if k not in ('one-line', 'traceback')} or 0}")
        return 0 if counts.get("one-line", 0) == tried else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
