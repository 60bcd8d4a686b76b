"""Lab benchmarks (pytest-benchmark; `make bench`), side by side in one run, on a real local Ray lab (head + two
hosts, two fake iPhones each; tests/lab_fixtures.py) against today's local executor on one fake iPhone.

The phones are the protocol-level fake (tests/fake_iphone) with a simulated runner of fixed job time: every step
(one job = variant × compute unit × round) sleeps JOB_SECONDS on the phone; deploying, launching and collecting
results go through the real pymobiledevice3 and bench/deploy. Each host's phones are served from a process of their
own (real phones bring their own CPUs), the local baseline's phone too. Matrix: 4 variants × 2 compute units.

Hosts' Ray workers are warmed up first (LabExecutor.warm_up, as `bench run --lab` does), as the local baseline runs
in a process that has already imported pymobiledevice3.

1. One phone, 64 jobs (8 rounds), local executor — the baseline (`bench run` today).
2. The same phone and 64 jobs through the lab (Ray task per round on the host holding it): the scheduling overhead
   per job is (lab wall − local wall) / 64. Target ≤ 50 ms.
3. 2 hosts × 2 phones, 64 jobs (2 rounds on each phone): wall time ≤ 0.3 × the one-phone wall time; and the
   package bytes each host fetched (measured on the host: bytes it pulled from the object store) equal the packed
   size of the unique variants it needed — once per host, not per phone or round.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

pytest.importorskip("ray")

from lab_fixtures import FakeHost, lab_cluster, lab_variants, zeros  # noqa: E402

JOB_SECONDS = 1.0  # per job (step); a real iPhone job is tens of seconds
POLL_S = 0.25  # how often the host looks for the runner's DONE (production default: 1 s)
VARIANTS = ("fp16", "int8", "palett4", "prune")
UNITS = ["cpuOnly", "all"]
JOBS = 64
RESULTS: dict[str, float] = {}


def _config(rounds: int):
    from bench.run.config import RunConfig

    return RunConfig.model_validate({"seed": 2, "evaluate": False, "report": False, "rounds": rounds, "images": 2,
                                     "warmup": 0, "adaptive": {"ci_width": None}, "compute_units": UNITS})


def _images():
    from bench.run.targets.base import ImageItem

    return [ImageItem(f"img{i}", lambda: None) for i in range(2)]


def _timed_run(root: Path, config, targets, variants, executor=None):
    from bench.paths import Workspace
    from bench.run.api import start_run

    started = time.perf_counter()
    outcome = start_run(config, Workspace(root), targets=targets, variants=variants, images=_images(),
                        executor=executor)
    wall = time.perf_counter() - started
    assert outcome.status == "complete" and len(outcome.data.jobs) == JOBS, outcome.failures
    _print_breakdown(outcome.run_dir)
    return wall


def _print_breakdown(run_dir: Path) -> None:
    from bench.run.timing import LAB_PARTS, time_by_target

    for target, row in sorted(time_by_target(run_dir).items()):
        parts = ", ".join(f"{part[:-2]} {row[part]:.2f}" for part in LAB_PARTS if row[part])
        print(f"\n  {target}: {row['jobs']} jobs, wall {row['wall_s']:.0f} s" + (f"; lab seconds: {parts}" if parts
                                                                                   else ""), end="")


@pytest.fixture(scope="module")
def lab():
    with lab_cluster({"host-a": [1, 2], "host-b": [3, 4]}, own_process=True, runner_seconds=JOB_SECONDS) as running:
        yield running


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    return lab_variants(tmp_path_factory.mktemp("variants"), VARIANTS)


def test_one_phone_local_executor(benchmark, tmp_path, variants):
    """Baseline: today's local executor, one fake phone on this host's usbmuxd."""
    import pymobiledevice3.common

    from bench.run.targets.iphone import IPhoneTarget

    import tempfile

    host = FakeHost(Path(tempfile.mkdtemp(prefix="blocal", dir="/tmp")), "local", [9], own_process=True,
                    runner_seconds=JOB_SECONDS)  # a short UNIX socket path; the phone in its own process, like the lab's
    saved_env, saved_home = dict(os.environ), pymobiledevice3.common._HOMEFOLDER
    os.environ.update({k: v for k, v in host.env().items() if not k.startswith("BENCH_LAB")})
    pymobiledevice3.common._HOMEFOLDER = host.root / "home" / ".pymobiledevice3"
    runs = iter(range(10))
    try:
        wall = benchmark.pedantic(lambda: _timed_run(tmp_path / str(next(runs)), _config(8), [IPhoneTarget(
            host.phones[0].udid, poll_s=POLL_S, preprocess=zeros)], variants), rounds=1, iterations=1)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        pymobiledevice3.common._HOMEFOLDER = saved_home
        host.stop()
        shutil.rmtree(host.root, ignore_errors=True)
    RESULTS["local_one_phone_s"] = wall
    benchmark.extra_info.update({"jobs": JOBS, "job_seconds": JOB_SECONDS, "wall_s": round(wall, 2)})
    print(f"\nlocal executor, 1 phone: {JOBS} jobs in {wall:.2f} s")


def test_one_phone_lab_executor(benchmark, tmp_path, lab, variants):
    """The same 64 jobs on one lab phone: what the lab adds per job."""
    from bench.lab.executor import LabExecutor, lab_targets

    _, hosts, _ = lab
    target = lab_targets([f"iphone:{hosts['host-a'].phones[0].udid}"], preprocess=zeros)
    executor = LabExecutor(poll_s=POLL_S)
    executor.warm_up(target)  # as `bench run --lab` does before timing starts (open_lab)
    wall = benchmark.pedantic(lambda: _timed_run(tmp_path, _config(8), target, variants, executor),
                              rounds=1, iterations=1)
    RESULTS["lab_one_phone_s"] = wall
    overhead_ms = (wall - RESULTS["local_one_phone_s"]) / JOBS * 1e3
    benchmark.extra_info.update({"jobs": JOBS, "wall_s": round(wall, 2), "overhead_per_job_ms": round(overhead_ms, 1)})
    print(f"\nlab executor, 1 phone: {JOBS} jobs in {wall:.2f} s; scheduling overhead vs local "
          f"{overhead_ms:+.1f} ms per job")
    assert overhead_ms <= 50


def test_two_hosts_four_phones(benchmark, tmp_path, lab, variants):
    """64 jobs over 2 hosts × 2 phones; bytes each host fetched = its unique packages."""
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.lab.packages import pack

    _, hosts, _ = lab
    for host in hosts.values():  # a cold cache on each host, so the bytes count the first (only) transfer
        shutil.rmtree(host.root / "cache" / "packages", ignore_errors=True)
    executor = LabExecutor(poll_s=POLL_S)
    targets = lab_targets(["iphone"], preprocess=zeros)
    assert len(targets) == 4
    executor.warm_up(targets)  # as `bench run --lab` does (open_lab); the local baseline had pymobiledevice3 loaded
    wall = benchmark.pedantic(lambda: _timed_run(tmp_path, _config(2), targets, variants, executor),
                              rounds=1, iterations=1)
    ratio = wall / RESULTS["local_one_phone_s"]
    unique = sum(len(pack(v.path)) for v in variants)  # every host needs every variant once
    fetched = dict(executor.fetched_by_host)
    benchmark.extra_info.update({"jobs": JOBS, "wall_s": round(wall, 2), "ratio_vs_one_phone": round(ratio, 3),
                                 "package_bytes_unique_per_host": unique,
                                 "package_bytes_fetched_per_host": sorted(fetched.values())})
    print(f"\nlab, 2 hosts × 2 phones: {JOBS} jobs in {wall:.2f} s = {ratio:.2f} × one phone "
          f"({RESULTS['local_one_phone_s']:.2f} s); package bytes fetched per host {sorted(fetched.values())} "
          f"vs unique packages needed {unique}")
    assert len(fetched) == 2 and all(size == unique for size in fetched.values())
    assert ratio <= 0.3
