"""Shared helpers of the report tests: the committed results fixture (tests/fixtures/report_run/) and mutated copies.

The fixture stands in for what a real run on an iPhone would store (no Core ML runtime or phone exists here); it is
written by tests/fixtures/make_report_fixture.py and committed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report_run"
CURRENT = FIXTURE / "results" / "nightly-2026-11-28"
BASELINE = FIXTURE / "results" / "nightly-2026-11-27"
OLDEST = FIXTURE / "results" / "nightly-2026-11-26"
GOLDEN = Path(__file__).resolve().parent / "golden"
EVIL_NAME = "<img src=x onerror=alert(1)> [bold]x[/bold] `|`"
EVIL_OP = "</script><script>alert(2)</script>"


def copy_fixture(tmp_path: Path) -> Path:
    """A writable copy of the fixture workspace; returns its root."""
    root = tmp_path / "workspace"
    shutil.copytree(FIXTURE, root)
    return root


def edit_jobs(run_dir: Path, edit) -> None:
    """Apply `edit(job_dict)` to every job record of a run (for tests that need a different device or plan)."""
    for path in sorted((run_dir / "jobs").glob("*.json")):
        job = json.loads(path.read_text(encoding="utf-8"))
        edit(job)
        path.write_text(json.dumps(job), encoding="utf-8")


def make_evil(root: Path) -> Path:
    """Device name and an op name that try to inject HTML / markup; returns the current run's directory."""
    run_dir = root / "results" / CURRENT.name

    def edit(job):
        if job["target"]["kind"] == "iphone":
            job["target"]["name"] = EVIL_NAME
        for ops in (job.get("compute_plan") or {}).values():
            for op in ops:
                if op["name"] == "lm_head":
                    op["name"] = EVIL_OP

    edit_jobs(run_dir, edit)
    return run_dir


def check_golden(name: str, text: str) -> None:
    """`text` must equal tests/golden/NAME; BENCH_UPDATE_GOLDEN=1 rewrites it (then review the diff)."""
    path = GOLDEN / name
    if os.environ.get("BENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"{path} missing: run with BENCH_UPDATE_GOLDEN=1 once"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from the golden file"
