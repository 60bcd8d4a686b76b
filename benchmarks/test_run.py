"""Run-stage benchmarks (pytest-benchmark; `make bench`). Figures go to extra_info and are printed.

1. Scheduler overhead per job vs the job's own time: a fake device whose round sleeps like a real job; everything
   the harness adds (thermal gate, record write with fsync, run.json rewrites, statistics) is the overhead. Target < 1 %.
2. Samples needed by adaptive stopping vs a fixed-N schedule for the same CI width, on simulated latency
   distributions (lognormal, bimodal, slow drift). A fixed N must be chosen before measuring, so it is the N that
   reaches the width in 95 % of simulated runs; adaptive stopping spends only what each run needs.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.paths import Workspace  # noqa: E402
from bench.run.api import start_run  # noqa: E402
from bench.run.config import RunConfig  # noqa: E402
from bench.run.stats import StopRule, median_ci, stop_reason  # noqa: E402
from run_fixtures import FakeTarget, images, variants  # noqa: E402

JOB_SECONDS = 0.25  # e.g. 16 images × ~15 ms on the host, far less than one iPhone runner job (seconds)


class SleepingTarget(FakeTarget):
    """Each job takes JOB_SECONDS of the target's own time; `spent` is what it really took (a loaded machine
    oversleeps), so the overhead is wall time minus the targets' own time: only what the harness adds."""

    spent: float = 0.0

    def run_round(self, request, should_stop):
        started = time.perf_counter()
        for result in super().run_round(request, should_stop):
            time.sleep(JOB_SECONDS)
            result.elapsed_s = JOB_SECONDS
            self.spent += time.perf_counter() - started
            yield result
            started = time.perf_counter()


def test_scheduler_overhead_per_job_is_under_one_percent(benchmark, tmp_path):
    config = RunConfig.model_validate({"seed": 1, "rounds": 8, "evaluate": False, "report": False,
                                       "compute_units": ["cpuOnly"], "adaptive": {"ci_width": None}})
    runs = iter(range(100))

    def one_run():
        target = SleepingTarget()
        started = time.perf_counter()
        outcome = start_run(config, Workspace(tmp_path / str(next(runs))), targets=[target],
                            variants=variants("a", "b", "c"), images=images(16))
        wall = time.perf_counter() - started
        return outcome, wall

    outcome, wall = benchmark.pedantic(one_run, rounds=3, iterations=1)
    jobs = len(outcome.data.jobs)
    # Measuring loop only: finishing (parquet + DuckDB) happens once per run, reported apart.
    per_job = (wall - jobs * JOB_SECONDS) / jobs
    benchmark.extra_info.update({"jobs": jobs, "job_seconds": JOB_SECONDS, "wall_s": round(wall, 3),
                                 "overhead_per_job_ms_incl_finish": round(per_job * 1e3, 2)})
    loop = _loop_overhead(tmp_path / "loop", config)
    benchmark.extra_info.update(loop)
    print(f"\nscheduler: {jobs} jobs of {JOB_SECONDS}s; overhead per job {loop['overhead_per_job_ms']:.2f} ms "
          f"= {loop['overhead_fraction'] * 100:.2f} % of the job (incl. end-of-run tables/history: "
          f"{per_job * 1e3:.1f} ms/job)")
    assert loop["overhead_fraction"] < 0.01


def _loop_overhead(root: Path, config: RunConfig) -> dict:
    """Time the scheduler's measuring loop alone (no parquet/DuckDB finish), median of 3."""
    from bench.run.api import _base_conditions, _settings
    from bench.run.manifest import RunManifest
    from bench.run.plan import plan_series
    from bench.run.scheduler import Scheduler

    median_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # scipy's import is paid once per process, not per job
    fractions, per_jobs = [], []
    for attempt in range(3):
        target = SleepingTarget()
        vs = variants("a", "b", "c")
        series = plan_series(vs, [target], ["cpuOnly"])
        run_dir = root / str(attempt)
        manifest = RunManifest.create(run_dir, {"run_id": str(attempt), "seed": 1, "plan": {}})
        scheduler = Scheduler(run_dir, manifest, series, [target], images(16), _settings(config), 1,
                              base_conditions=_base_conditions())
        started = time.perf_counter()
        scheduler.execute()
        wall = time.perf_counter() - started
        jobs = len(list((run_dir / "jobs").glob("*.json")))
        per_job = (wall - target.spent) / jobs
        per_jobs.append(per_job)
        fractions.append(per_job / JOB_SECONDS)
    return {"overhead_per_job_ms": float(np.median(per_jobs) * 1e3), "overhead_fraction": float(np.median(fractions))}


# --- adaptive vs fixed N ------------------------------------------------------------------------------------------

ROUND = 16  # images per round: samples arrive 16 at a time, as from one runner job
WIDTH = 0.02
SIMULATIONS = 200


def _lognormal(rng, n, start):
    return 20e6 * rng.lognormal(0.0, 0.08, n)


def _bimodal(rng, n, start):
    fast = rng.random(n) < 0.7  # e.g. a cache hit / a second compute path
    return np.where(fast, 18e6, 26e6) * rng.lognormal(0.0, 0.03, n)


def _drift(rng, n, start):
    t = np.arange(start, start + n)
    return 20e6 * (1 + 0.10 * t / 2000) * rng.lognormal(0.0, 0.05, n)  # +10 % per 2000 samples (heat)


DISTRIBUTIONS = {"lognormal": _lognormal, "bimodal": _bimodal, "drift": _drift}


def _adaptive_samples(draw, seed: int, cap: int = 4000, truth: float | None = None) -> tuple[int, bool | None]:
    """Samples used when stopping adaptively, and whether the final CI holds the true median (optional stopping
    must not wreck the 95 % coverage)."""
    rng = np.random.default_rng(seed)
    rule = StopRule(ci_width=WIDTH, min_rounds=1, min_samples=8, max_samples=cap, max_seconds=math.inf)
    values: list[float] = []
    rounds = 0
    while True:
        values.extend(draw(rng, ROUND, len(values)))
        rounds += 1
        if stop_reason(rule, values, rounds, 0.0):
            ci = median_ci(values)
            covered = None if truth is None else bool(ci.low <= truth <= ci.high)
            return len(values), covered


def _fixed_n_for_95_percent(draw, seeds: range) -> int:
    """The smallest N (whole rounds) whose CI is within the width in 95 % of runs: what a fixed schedule must use."""
    for n in range(ROUND, 8000, ROUND):
        ok = 0
        for seed in seeds:
            ci = median_ci(draw(np.random.default_rng(10_000 + seed), n, 0))
            ok += ci.relative_halfwidth is not None and ci.relative_halfwidth <= WIDTH
        if ok >= 0.95 * len(seeds):
            return n
    return 8000


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_adaptive_stopping_needs_fewer_samples_than_fixed_n(benchmark, name):
    draw = DISTRIBUTIONS[name]

    truth = None if name == "drift" else float(np.median(draw(np.random.default_rng(99), 2_000_000, 0)))

    def simulate():
        return [_adaptive_samples(draw, seed, truth=truth) for seed in range(SIMULATIONS)]

    outcomes = benchmark.pedantic(simulate, rounds=1, iterations=1)
    needed = [n for n, _ in outcomes]
    coverage = None if truth is None else float(np.mean([c for _, c in outcomes]))
    fixed = _fixed_n_for_95_percent(draw, range(100))
    worst_case_fixed = max(_fixed_n_for_95_percent(d, range(100)) for d in DISTRIBUTIONS.values()) \
        if name == "lognormal" else None
    info = {"ci_width": WIDTH, "adaptive_mean": float(np.mean(needed)), "adaptive_p95": float(np.percentile(needed, 95)),
            "fixed_n_95pct": fixed, "saving_vs_fixed": 1 - float(np.mean(needed)) / fixed,
            "adaptive_ci_coverage": coverage}
    if worst_case_fixed:
        info["fixed_n_for_unknown_distribution"] = worst_case_fixed
    benchmark.extra_info.update(info)
    print(f"\n{name}: adaptive mean {info['adaptive_mean']:.0f} (p95 {info['adaptive_p95']:.0f}) samples vs fixed N "
          f"{fixed} for ±{WIDTH:.0%} in 95 % of runs — saves {info['saving_vs_fixed']:.0%}"
          + (f"; CI coverage after adaptive stopping {coverage:.1%}" if coverage is not None else "")
          + (f"; a fixed N safe for all three distributions: {worst_case_fixed}" if worst_case_fixed else ""))
    assert np.mean(needed) < fixed
