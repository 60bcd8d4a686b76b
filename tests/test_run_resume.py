"""Killed and interrupted runs resume without measuring any job twice or losing one.

Faked: the device (tests/run_fixtures.FakeTarget). The kill is real: a child process running a benchmark is sent
SIGKILL mid-run, so nothing in it gets a chance to tidy up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import sys
import time
from pathlib import Path

import pytest

from bench.paths import Workspace
from bench.run.api import resume_run, start_run
from bench.run.config import RunConfig
from run_fixtures import FakeTarget, images, variants

TESTS = Path(__file__).parent
CONFIG = {"seed": 3, "evaluate": False, "report": False, "rounds": 3, "adaptive": {"ci_width": None},
          "compute_units": ["cpuOnly"]}

CHILD = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from run_fixtures import FakeTarget, images, variants

target = FakeTarget()

def slow(variant_id, unit, rng):
    if len(target.measured) > 3:
        # The 4th job holds here until the SIGKILL comes: under load the run could otherwise finish before the
        # parent sees three records and kills it.
        time.sleep(120)
    time.sleep(0.02)
    return 1e7 * rng.lognormvariate(0, 0.05)

target.latency = slow
start_run(RunConfig.model_validate({config!r}), Workspace(Path({root!r})), targets=[target],
          variants=variants("fp16", "int8", "prune"), images=images(4), run_id="killed")
"""


def _job_files(run_dir: Path) -> set[str]:
    return {p.stem for p in (run_dir / "jobs").glob("*.json")}


def test_resume_after_sigkill_measures_nothing_twice_and_loses_nothing(tmp_path):
    script = CHILD.format(tests=str(TESTS), config=CONFIG, root=str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS.parent)
    run_dir = tmp_path / "results" / "killed"
    deadline = time.monotonic() + 120
    try:
        while len(_job_files(run_dir)) < 3 if run_dir.exists() else True:
            assert child.poll() is None, "the child finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)  # also when waiting failed: never leave the held child behind
        child.wait()
    before = _job_files(run_dir)
    states = {k: v["state"] for k, v in json.loads((run_dir / "run.json").read_text())["jobs"].items()}
    assert 3 <= len(before) < 9 and set(states.values()) <= {"running", "done"}  # killed mid-run

    again = FakeTarget()
    outcome = resume_run("killed", Workspace(tmp_path), targets=[again], variants=variants("fp16", "int8", "prune"),
                         images=images(4))
    measured = [key for _, key in again.measured]
    assert not set(measured) & before  # nothing measured twice
    assert len(measured) == len(set(measured))
    assert _job_files(run_dir) == before | set(measured) and len(_job_files(run_dir)) == 9  # nothing lost
    assert outcome.status == "complete"
    assert {entry["state"] for entry in outcome.data.manifest["jobs"].values()} == {"done"}
    assert len(outcome.data.samples[~outcome.data.samples["is_warmup"]]) == 9 * 4
    assert not list(run_dir.rglob("*.tmp"))


def test_ctrl_c_leaves_a_resumable_run(tmp_path):
    target = FakeTarget()
    fired = []
    handled = threading.Event()

    def python_default_sigint(signum, frame):
        handled.set()  # the main thread has the interrupt now (then behave as Python's default handler)
        raise KeyboardInterrupt

    def interrupt_after_some(variant_id, unit, rng):
        if len(target.measured) == 4 and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends
            # Hold this job until the main thread has taken the interrupt: under load a fixed sleep let the run
            # finish first and the interrupt arrive after it.
            handled.wait(60)  # returns at once normally; the bound only matters on a starved machine
        return 1e7 * rng.lognormvariate(0, 0.05)

    target.latency = interrupt_after_some
    previous = signal.signal(signal.SIGINT, python_default_sigint)
    try:
        with pytest.raises(KeyboardInterrupt):
            start_run(RunConfig.model_validate(CONFIG), Workspace(tmp_path), targets=[target],
                      variants=variants("fp16", "int8", "prune"), images=images(4), run_id="ctrl-c")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handled.is_set()
    run_dir = tmp_path / "results" / "ctrl-c"
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "interrupted"
    assert "running" not in {entry["state"] for entry in manifest["jobs"].values()}
    before = _job_files(run_dir)
    assert 0 < len(before) < 9

    again = FakeTarget()
    outcome = resume_run(str(run_dir), Workspace(tmp_path), targets=[again],
                         variants=variants("fp16", "int8", "prune"), images=images(4))
    assert not {key for _, key in again.measured} & before
    assert outcome.status == "complete" and len(_job_files(run_dir)) == 9
