"""Store benchmarks: the DuckDB history with 1M samples queried for a nightly trend, side by side with the same
question answered by pandas over the runs' samples.parquet files (what you would do without a history database)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bench.store import history
from bench.store.runs import JOB_COLUMNS, SAMPLE_COLUMNS, RunData

RUNS, VARIANTS, SAMPLES_PER_SERIES = 50, 5, 4000  # 50 × 5 × 4000 = 1,000,000 samples


def _run(index: int, rng) -> RunData:
    import pandas as pd

    n = VARIANTS * SAMPLES_PER_SERIES
    variant_ids = np.repeat([f"v{i}-{i:012x}" for i in range(VARIANTS)], SAMPLES_PER_SERIES)
    samples = pd.DataFrame({column: None for column in SAMPLE_COLUMNS}, index=range(n))
    samples = samples.assign(
        run_id=f"run{index:03d}", job_key=[f"{v}--r000" for v in variant_ids], variant_id=variant_ids,
        variant_hash="h", target_kind="iphone", target_id="iphone-a", device_model="iPhone15,2", os_build="22A",
        compute_unit="all", round=0, image_id=[f"img{i % 16}" for i in range(n)], repeat=0, is_warmup=False,
        latency_ns=(2e7 * (1 + 0.002 * index) * rng.lognormal(0, 0.1, n)).astype("int64"),
        encoder_ns=0, decoder_ns=0, decoder_steps=12, thermal_state="nominal", throttled=False, t_ns=0)
    samples = samples.astype({"round": "int64", "repeat": "int64", "is_warmup": bool, "throttled": bool,
                              "encoder_ns": "int64", "decoder_ns": "int64", "decoder_steps": "int64", "t_ns": "int64"})
    jobs = pd.DataFrame([{c: None for c in JOB_COLUMNS} | {"run_id": f"run{index:03d}", "job_key": f"v{i}",
                                                           "variant_id": f"v{i}-{i:012x}", "round": 0,
                                                           "unstable": False}
                         for i in range(VARIANTS)], columns=list(JOB_COLUMNS))
    manifest = {"run_id": f"run{index:03d}", "created_at": f"2026-11-{1 + index // 24:02d}T{index % 24:02d}:00:00",
                "seed": index, "status": "complete", "plan": {}, "environment": {}}
    return RunData(Path("."), manifest, samples, jobs, None)


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    root = tmp_path_factory.mktemp("history")
    db = root / "history.duckdb"
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    parquet_files = []
    for index in range(RUNS):
        run = _run(index, rng)
        history.append_run(db, run)
        path = root / f"run{index:03d}.parquet"
        run.samples.to_parquet(path, index=False)
        parquet_files.append(path)
    return db, parquet_files, time.perf_counter() - started


def test_trend_over_one_million_samples_in_duckdb(benchmark, populated):
    db, _, build_seconds = populated
    frame = benchmark(history.trend, db, variant="v3")
    assert len(frame) == RUNS and int(frame["n"].sum()) == RUNS * SAMPLES_PER_SERIES
    con = history.connect(db, read_only=True)
    total = con.execute("SELECT count(*) FROM samples").fetchone()[0]
    con.close()
    assert total == RUNS * VARIANTS * SAMPLES_PER_SERIES == 1_000_000
    benchmark.extra_info.update({"samples": total, "append_50_runs_s": round(build_seconds, 2)})
    ratio = frame["median_ns"].iloc[-1] / frame["median_ns"].iloc[0]
    assert ratio == pytest.approx(1 + 0.002 * (RUNS - 1), rel=0.02)  # the planted drift is found
    print(f"\nhistory: {total:,} samples in {RUNS} runs (appending all: {build_seconds:.1f} s)")


def test_same_trend_with_pandas_over_parquet_files(benchmark, populated):
    import pandas as pd

    _, files, _ = populated

    def pandas_trend():
        frames = [pd.read_parquet(path, columns=["run_id", "variant_id", "is_warmup", "latency_ns"]) for path in files]
        data = pd.concat(frames)
        data = data[(data["variant_id"].str.startswith("v3-")) & ~data["is_warmup"]]
        return data.groupby("run_id")["latency_ns"].agg(["count", "median"])

    frame = benchmark(pandas_trend)
    assert len(frame) == RUNS
