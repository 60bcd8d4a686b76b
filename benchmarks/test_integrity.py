"""Integrity checks of stored variants (bench.build.integrity): what they cost, side by side with what they beat.

    .venv/bin/python -m pytest benchmarks/test_integrity.py --benchmark-only -s

Targets (issue 10): checking the default matrix's 16 variants on a cache hit adds under 0.2 s (the same cache-hit
build with the check switched off, side by side); a full `--verify` rehash runs at >= 200 MB/s, measured beside
coreutils `sha256sum` over the very same files (both from the page cache: the files were just built and read).
Uses the built-in captioner when its weights exist, else the tiny test captioner (printed).
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
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass bars would bury the figures


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The default matrix (16 variants) built once, its stat index warm (files older than the racy window)."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.integrity import RACY_SECONDS, check_variant
    from bench.build.matrix import load_matrix, matrix_from_dict
    from bench.paths import BUILTIN_CAPTIONER_DIR, DEFAULT_MATRIX

    torch.set_num_threads(1)
    if (BUILTIN_CAPTIONER_DIR / "model.safetensors").is_file():
        print(f"\nsource: built-in captioner {BUILTIN_CAPTIONER_DIR}")
        source = BUILTIN_CAPTIONER_DIR
    else:
        from build_fixtures import save_tiny_captioner

        print("\nsource: tiny test captioner (built-in captioner weights not present)")
        source = save_tiny_captioner(tmp_path_factory.mktemp("tiny"))
    raw = load_matrix(DEFAULT_MATRIX).model_dump(mode="json", exclude_none=True)
    matrix = matrix_from_dict({**raw, "source": str(source)})
    workspace = tmp_path_factory.mktemp("integrity-bench")
    report = build_matrix(matrix, workspace)
    assert not report.failed, [(r.name, r.error) for r in report.failed]
    time.sleep(RACY_SECONDS + 0.5)
    directories = [r.manifest.directory for r in report.results]
    for directory in directories:
        check_variant(directory)  # first check after the build: hashes once, writes the stat index
    return matrix, workspace, directories


def test_checking_16_variants_on_a_cache_hit(benchmark, built):
    from bench.build.integrity import check_variant

    _, _, directories = built

    def check_all():
        return [check_variant(directory) for directory in directories]

    checked = benchmark.pedantic(check_all, rounds=20, iterations=1, warmup_rounds=1)
    assert len(checked) == 16 and all(c.hashed == 0 for c in checked)  # the index answered: nothing re-read
    mean = benchmark.stats.stats.mean
    print(f"\ncheck of {len(directories)} cached variants (stat index warm): {mean * 1000:.1f} ms "
          f"(target < 200 ms)")
    assert mean < 0.2


@pytest.mark.parametrize("checking", ["with integrity check", "check switched off"])
def test_cache_hit_build_with_and_without_the_check(benchmark, built, checking, monkeypatch):
    """The whole `bench models build` cache hit, side by side: what the check adds to it."""
    from bench.build import builder
    from bench.build.integrity import Checked

    matrix, workspace, _ = built
    if checking == "check switched off":
        monkeypatch.setattr("bench.build.integrity.check_variant", lambda *a, **k: Checked("", 0, 0, 0))
    report = benchmark.pedantic(builder.build_matrix, args=(matrix, workspace), rounds=10, iterations=1,
                                warmup_rounds=1)
    assert {r.status for r in report.results} == {"cached"}
    print(f"\ncache-hit build of 16 variants, {checking}: {benchmark.stats.stats.mean * 1000:.1f} ms")


def test_full_rehash_vs_sha256sum(benchmark, built):
    from bench.build.integrity import check_variant

    _, _, directories = built
    files = sorted(str(p) for d in directories for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
    total = sum(os.path.getsize(f) for f in files)
    sha256sum = shutil.which("sha256sum")
    tool_times = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sha256sum, *files], check=True, stdout=subprocess.DEVNULL)
        tool_times.append(time.perf_counter() - started)

    def rehash_all():
        return [check_variant(directory, full=True) for directory in directories]

    checked = benchmark.pedantic(rehash_all, rounds=3, iterations=1, warmup_rounds=1)
    hashed = sum(c.bytes_hashed for c in checked)
    ours, tool = hashed / benchmark.stats.stats.min / 1e6, total / min(tool_times) / 1e6
    print(f"\nfull rehash of {len(directories)} variants ({hashed / 1e6:.1f} MB, manifests aside): "
          f"bench {ours:.0f} MB/s, sha256sum {tool:.0f} MB/s over the same {len(files)} files ({total / 1e6:.1f} MB)"
          f" (target >= 200 MB/s)")
    assert ours >= 200
