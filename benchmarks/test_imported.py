"""Bring your own model: what importing costs, and what kept outputs add to a run — side by side with what they beat.

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/test_imported.py --benchmark-only -s -p no:randomly

Targets (issue 11):
- importing and analysing a 500 MB package (`bench models import`: copy, hash every byte of the copy, the static
  analysis of built variants) runs at >= 0.5x coreutils `sha256sum` over the very same bytes (I/O bound);
- the outputs a run keeps of imported models (default settings: 8 seeded inputs, every output) add <= 5 % to the
  run's result bytes — measured on the conv family of the tests, run on the fake iPhone exactly as `bench run` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("TQDM_DISABLE", "1")

from deploy_fixtures import mux  # noqa: E402,F401  (the fake usbmuxd the tests use)


@pytest.fixture(scope="module")
def big_package(tmp_path_factory):
    """A 500 MB ML program made with coremltools: eight 4096 x 4096 fp32 linear layers (same size, as in real
    networks, so the analysis's duplicate-weight check has work to do) — 537 MB of weights."""
    import logging
    import warnings

    import coremltools as ct
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    warnings.filterwarnings("ignore")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((4096, 4096), dtype=np.float32) * 0.01 for _ in range(8)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4096))], opset_version=ct.target.iOS17)
    def stack(x):
        for index, weight in enumerate(weights):
            x = mb.linear(x=x, weight=weight, name=f"layer{index}")
        return x

    model = ct.convert(stack, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT32)
    path = tmp_path_factory.mktemp("big") / "big.mlpackage"
    model.save(str(path))
    del model, weights
    files = [p for p in path.rglob("*") if p.is_file()]
    print(f"\npackage: {sum(p.stat().st_size for p in files) / 1e6:.0f} MB in {len(files)} files")
    return path, files


def test_import_500mb_vs_sha256sum(benchmark, big_package, tmp_path):
    from bench.build.imported import import_models
    from bench.paths import Workspace

    path, files = big_package
    total = sum(p.stat().st_size for p in files)
    for _ in range(2):  # both read from the page cache: the same bytes, warm
        subprocess.run([shutil.which("sha256sum"), *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    tool_times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([shutil.which("sha256sum"), *map(str, files)], check=True, stdout=subprocess.DEVNULL)
        tool_times.append(time.perf_counter() - started)
    counter = iter(range(100))

    def import_once():
        workspace = Workspace(tmp_path / f"ws{next(counter)}")  # a fresh workspace: never a cache hit
        result = import_models([path], workspace)[0]
        assert result.status == "imported"
        shutil.rmtree(workspace.root)  # outside nothing: removal is part of the round but small next to the copy
        return result

    benchmark.pedantic(import_once, rounds=3, iterations=1, warmup_rounds=1)
    ours, tool = total / benchmark.stats.stats.min / 1e6, total / min(tool_times) / 1e6
    print(f"\nimport + analysis of {total / 1e6:.0f} MB: bench {ours:.0f} MB/s, sha256sum {tool:.0f} MB/s over the same "
          f"bytes: {ours / tool:.2f}x (target >= 0.5x)")
    assert ours >= 0.5 * tool


def test_kept_outputs_share_of_a_runs_result_bytes(benchmark, mux, tmp_path, monkeypatch):
    """A default-settings run of the conv family (4 variants x 2 compute units, 8 seeded inputs, default rounds and
    stopping rule) on the fake iPhone: bytes of outputs/ against every result byte the run stored (the rendered
    report.html / report.md left out: they are views, and report.html alone is megabytes of inlined plotly.js)."""
    from byo_fixtures import make_packages
    from deploy_fixtures import add_phone

    from bench.build import imported
    from bench.cli import main
    from bench.paths import Workspace

    packages = make_packages(tmp_path / "packages")
    add_phone(mux, 1)
    shares = []

    def one_run():
        root = tmp_path / f"ws{len(shares)}"
        root.mkdir()
        monkeypatch.setenv("BENCH_ROOT", str(root))
        monkeypatch.chdir(root)
        workspace = Workspace(root)
        imported.import_models([packages[n] for n in ("dense", "pruned", "palettized", "int8")], workspace,
                               family="conv")
        assert main(["run", "--variants", "dense,pruned,palettized,int8", "--targets", "iphone",
                     "--compute-units", "cpuOnly,cpuAndNeuralEngine"]) == 0
        (run_dir,) = workspace.results_dir.glob("2*")
        # The run's results: records, tables, logs, outputs — not the rendered report (report.html inlines plotly.js).
        everything = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file()
                         and not p.name.startswith("report."))
        outputs = sum(p.stat().st_size for p in (run_dir / "outputs").rglob("*") if p.is_file())
        shares.append((outputs, everything))

    benchmark.pedantic(one_run, rounds=1, iterations=1)
    outputs, everything = shares[-1]
    print(f"\nkept outputs: {outputs:,} of the run's {everything:,} result bytes = {outputs / everything:.1%} "
          "(target <= 5 %)")
    assert outputs / everything <= 0.05
