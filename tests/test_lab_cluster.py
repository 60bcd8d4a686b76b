"""A run across a real local Ray lab (head + two hosts, each with two fake iPhones on its own usbmuxd): jobs land on
the host holding their phone, packages reach each host once, a host killed mid-run loses nothing, and the run
completes on resume once the host is back — every planned job stored exactly once with all its samples. Then the
bad inputs a new lab engineer meets, one line each. Loopback only, token auth on, every cluster process started and
stopped here by process id (lab_fixtures). Faked: the phones and image preprocessing (see lab_fixtures).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("ray")

from lab_fixtures import LOOPBACK, FakeHost, cluster_pids, lab_cluster, lab_variants, listeners, zeros  # noqa: E402

IMAGES, ROUNDS, UNITS = 2, 3, ["cpuOnly", "all"]
CONFIG = {"seed": 5, "evaluate": False, "report": False, "rounds": ROUNDS, "images": IMAGES, "warmup": 0,
          "adaptive": {"ci_width": None}, "compute_units": UNITS,
          "retry": {"attempts": 2, "backoff_s": 0.2, "backoff_max_s": 0.5, "quarantine_after": 1}}
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab():
    with lab_cluster({"host-a": [1, 2], "host-b": [3, 4]}, macs=("host-b",)) as running:
        yield running


def _node_of(udid: str) -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and f"iphone:{udid}" in n["Resources"])


def _images():
    from bench.run.targets.base import ImageItem

    return [ImageItem(f"img{i}", lambda: None) for i in range(IMAGES)]


def test_cluster_listens_on_loopback_only(lab):
    cluster, _, _ = lab
    bound = listeners(cluster_pids(cluster) | {os.getpid()})
    assert len(bound) >= 3  # at least the GCS and two raylets
    assert all(ip in LOOPBACK for _, ip, _ in bound), [b for b in bound if b[1] not in LOOPBACK]


def test_lab_status_shows_every_host_phone_and_health(lab):
    from bench.lab.cluster import lab_status

    _, hosts, _ = lab
    status = {host.host: host for host in lab_status(health_timeout_s=120)}
    assert {"host-a", "host-b"} <= set(status) and any(name.endswith("(head)") for name in status)
    for name, host in hosts.items():
        phones = {p["udid"]: p for p in status[name].phones}
        assert set(phones) == {p.udid for p in host.phones}
        assert all(p["health"] == "ready" and p["model"] == "iPhone14,2" and p["runner"] == "0.3"
                   for p in phones.values()), phones


def test_matrix_across_two_hosts_survives_a_killed_host(lab, tmp_path):
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.lab.packages import pack
    from bench.paths import Workspace
    from bench.run.api import resume_run, start_run
    from bench.run.config import RunConfig
    from bench.store.runs import read_job_records

    cluster, hosts, _ = lab
    variants, workspace, run_dir = lab_variants(tmp_path / "variants"), Workspace(tmp_path), tmp_path / "results/lab"
    a_udids = {p.udid for p in hosts["host-a"].phones}
    for phone in hosts["host-a"].phones:
        phone.faults.runner_seconds = 0.4  # slower than host B, so the kill lands mid-run
    chatty = hosts["host-b"].phones[0]
    chatty.faults.log_flood = 30  # more lines than a tail: the run keeps the whole runner log
    targets = lab_targets(["iphone"], preprocess=zeros)
    assert sorted(t.udid for t in targets) == sorted(p.udid for h in hosts.values() for p in h.phones)
    node_of = {t.udid: _node_of(t.udid) for t in targets}
    executor = LabExecutor(poll_s=0.05, status_timeout_s=60)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("first", start_run(
        RunConfig.model_validate(CONFIG), workspace, targets=targets, variants=variants, images=_images(),
        executor=executor, run_id="lab")))
    thread.start()
    deadline = time.monotonic() + 240
    while sum(1 for p in (run_dir / "jobs").glob("*.json") if any(u in p.name for u in a_udids)) < 4:
        assert thread.is_alive() and time.monotonic() < deadline, "host A never stored four jobs"
        time.sleep(0.1)
    cluster.remove_node(hosts["host-a"].node, allow_graceful=False)  # host A dies mid-run (its processes killed)
    thread.join(300)
    first = outcome["first"]
    assert first.status == "incomplete" and set(first.quarantined) == {f"iphone-{u}" for u in a_udids}
    records = read_job_records(run_dir)
    per_phone = 2 * len(UNITS) * ROUNDS  # variants × units × rounds
    on_b = [r for r in records.values() if r["conditions"]["lab"]["udid"] not in a_udids]
    assert len(on_b) == 2 * per_phone  # host B finished everything of its own
    for record in records.values():  # every job ran on its phone, on the host holding that phone
        lab_info = record["conditions"]["lab"]
        assert record["target"]["id"] == f"iphone-{lab_info['udid']}"
        assert lab_info["node_id"] == node_of[lab_info["udid"]]
        assert {"queue_wait_s", "transfer_s", "deploy_s", "runner_s", "measure_s"} <= set(lab_info)
    chatty.faults.log_flood = 0
    for record in on_b:  # each job's full runner log is in the run, as for a local run
        log = (run_dir / "jobs" / f"{record['conditions']['runner_job_id']}.log").read_text()
        assert "runner started" in log.splitlines()[0] and log.rstrip().endswith("done")
        if record["conditions"]["lab"]["udid"] == chatty.udid:
            assert log.count("flood") == 30
    package_bytes = sum(len(pack(v.path)) for v in variants)
    b_node = node_of[hosts["host-b"].phones[0].udid]
    assert executor.fetched_by_host[b_node] == package_bytes  # both variants crossed to host B once, not per phone

    hosts["host-a"].join(cluster)  # host A is back (same phones, same package cache)
    again = LabExecutor(poll_s=0.05, status_timeout_s=60)
    second = resume_run("lab", workspace, targets=lab_targets(["iphone"], preprocess=zeros), variants=variants,
                        images=_images(), executor=again)
    assert second.status == "complete", second.failures
    records = read_job_records(run_dir)
    assert len(records) == 4 * per_phone  # every planned job, each stored once (one file per job key)
    assert all(len(r["samples"]) == IMAGES for r in records.values())  # no sample lost or duplicated
    assert sum(again.fetched_by_host.values()) == 0  # host A's cache survived its restart: nothing re-sent
    series = {}
    for record in records.values():
        series.setdefault(record["series_key"], []).append(record["round"])
    assert all(sorted(rounds) == list(range(ROUNDS)) for rounds in series.values())
    for phone in (p for host in hosts.values() for p in host.phones):  # compiled once per phone for the whole run,
        assert sorted(Counter(phone.compiled_packages).values()) == [1] * 4  # its host's death and the resume
    for phone in hosts["host-b"].phones:  # a phone whose results all arrived: its records count its 4 compiles
        assert sum(r["load"]["compiles"] for r in records.values() if r["conditions"]["lab"]["udid"] == phone.udid) == 4


def test_bad_lab_input_is_one_line_each(lab, tmp_path):
    from bench.errors import BenchError
    from bench.lab.cluster import LabError, check_not_claimed, connect, join_lab
    from bench.lab.executor import LabExecutor, lab_targets

    cluster, hosts, token = lab
    address = cluster.address

    def one_line(call) -> str:
        with pytest.raises(BenchError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and len(message) < 400, message
        return message

    # unreachable head: seconds, not Ray's minutes of retries
    started = time.monotonic()
    assert "cannot reach the lab head at 127.0.0.1:1" in one_line(lambda: connect("127.0.0.1:1", token))
    assert time.monotonic() - started < 10
    # a host with no phones has nothing to offer
    assert "no healthy iPhone" in one_line(lambda: join_lab(address, token, []))
    # a second host claiming a phone another host holds (the phone was moved without stopping the old host)
    intruder = FakeHost(tmp_path / "c", "host-c", [3])
    try:
        message = one_line(lambda: check_not_claimed(intruder.lab_phones()))
        assert "already held by lab host host-b" in message
    finally:
        intruder.stop()
    # a phone that leaves its host mid-run: its job fails with one line naming the host, the others go on
    moved = hosts["host-b"].phones[1]
    moved.unplug()
    try:
        target = next(t for t in lab_targets([f"iphone:{moved.udid}"], preprocess=zeros))
        with pytest.raises(BenchError) as caught:
            LabExecutor(poll_s=0.05, status_timeout_s=20).conditions(target)
        assert "on host-b" in str(caught.value) and "\n" not in str(caught.value)
    finally:
        moved.replug()
    # a wrong token: the head refuses it, the user reads one line and never the token itself
    wrong = tmp_path / "wrong-token"
    wrong.write_text("0" * 64)
    wrong.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, "-m", "bench", "lab", "status", address, "--token-file", str(wrong)],
                          capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "refused the token" in lines[0], done.stderr[-2000:]
    assert token.read_text().strip() not in done.stderr + done.stdout
    assert isinstance(LabError("x"), BenchError)


def test_mac_core_ml_runs_through_the_lab_on_the_mac_that_offers_it(lab, tmp_path):
    """`macos-coreml` in a lab: host-b offers Core ML on its Mac (resource mac-coreml:host-b); rounds run there on
    packages from its cache, with pixels the driver prepared. Faked: only the Core ML runtime in host-b's workers
    (lab_fixtures.FakeCaptionCoreML, via a Ray worker setup hook): coremltools cannot predict on Linux."""
    from bench.lab.cluster import lab_status
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.store.runs import read_job_records

    _, hosts, _ = lab
    (target,) = lab_targets(["macos-coreml"], preprocess=zeros)
    assert (target.id, target.kind, target.selector) == ("macos-coreml-host-b", "macos-coreml", "macos-coreml:host-b")
    assert next(h for h in lab_status(health_timeout_s=60) if h.host == "host-b").mac == "Core ML, macOS 15.1 arm64"
    config = RunConfig.model_validate({**CONFIG, "rounds": 2})
    outcome = start_run(config, Workspace(tmp_path), targets=[target], variants=lab_variants(tmp_path / "variants"),
                        images=_images(), executor=LabExecutor(poll_s=0.05, status_timeout_s=60), run_id="mac")
    assert outcome.status == "complete", outcome.failures
    records = list(read_job_records(tmp_path / "results" / "mac").values())
    assert len(records) == 2 * len(UNITS) * 2  # variants × units × rounds
    b_node = _node_of(hosts["host-b"].phones[0].udid)
    for record in records:
        assert record["target"]["kind"] == "macos-coreml" and record["target"]["label"] == "Core ML on macOS host"
        assert record["conditions"]["lab"]["node_id"] == b_node and record["conditions"]["lab"]["mac"] == "host-b"
        assert len(record["samples"]) == IMAGES and all(s["tokens"] == [10, 11, 102] for s in record["samples"])
        assert record["load"]["cold_load_ns"]["total"] > 0
    with pytest.raises(Exception, match="did you mean|no lab Mac|host-b"):
        lab_targets(["macos-coreml:host-x"], preprocess=zeros)


def test_a_model_target_is_gated_and_measured_on_the_same_phone(lab, tmp_path):
    """`model:iPhone14_2` takes whichever phone of the model is free, and the thermal gate reads the phone the round
    then runs on: every phone answered as many status probes as it ran rounds."""
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.store.runs import read_job_records

    _, hosts, _ = lab
    phones = {p.udid: p for host in hosts.values() for p in host.phones}
    before = {udid: (p.status_probes, p.measure_jobs) for udid, p in phones.items()}
    config = RunConfig.model_validate({**CONFIG, "rounds": 4, "compute_units": ["all"], "images": 1})
    outcome = start_run(config, Workspace(tmp_path), targets=lab_targets(["model:iPhone14_2"], preprocess=zeros),
                        variants=lab_variants(tmp_path / "variants", names=("int8",)), images=_images()[:1],
                        executor=LabExecutor(poll_s=0.05, status_timeout_s=60), run_id="pool")
    assert outcome.status == "complete", outcome.failures
    records = list(read_job_records(tmp_path / "results" / "pool").values())
    assert len(records) == 4 and all(r["conditions"]["lab"]["gate_udid"] == r["conditions"]["lab"]["udid"]
                                     for r in records)
    for udid, phone in phones.items():
        probes, jobs = phone.status_probes - before[udid][0], phone.measure_jobs - before[udid][1]
        assert probes == jobs, f"{phone.name}: {probes} status probes, {jobs} rounds"


def test_the_lab_plan_skips_what_a_phone_pool_or_a_mac_cannot_run(lab, tmp_path):
    """The lab's phones carry the iOS their hosts read over lockdown (16.7.2 here), its Mac the macOS it runs (15.1):
    packages declaring Core ML spec 8 (iOS 17 / macOS 14) are left out of `model:iPhone14_2` and run on the Mac, spec
    10 (iOS / macOS 26) run nowhere — each pair said in one line before any host is asked; the rest is measured."""
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from lab_fixtures import declare_spec

    int8, ios17, os26 = lab_variants(tmp_path / "variants", names=("int8", "ios17", "os26"))
    declare_spec(ios17.path, 8)
    declare_spec(os26.path, 10)
    config = RunConfig.model_validate({**CONFIG, "rounds": 1, "compute_units": ["all"], "images": 1})
    targets = lab_targets(["model:iPhone14_2", "macos-coreml"], preprocess=zeros)
    outcome = start_run(config, Workspace(tmp_path), targets=targets, variants=[int8, ios17, os26],
                        images=_images()[:1], executor=LabExecutor(poll_s=0.05, status_timeout_s=60), run_id="too-new")
    assert outcome.status == "complete", outcome.failures
    assert sorted(outcome.skipped) == [
        "ios17 needs iOS 17 (Core ML spec 8, encoder.mlpackage), any iPhone14,2 runs iOS 16.7.2: not run",
        "os26 needs iOS 26 (Core ML spec 10, encoder.mlpackage), any iPhone14,2 runs iOS 16.7.2: not run",
        "os26 needs macOS 26 (Core ML spec 10, encoder.mlpackage), host-b (Core ML, macOS 15.1) runs macOS 15.1: "
        "not run"]
    measured = {(r["variant_id"], r["target"]["kind"]) for r in outcome.data.job_records.values()}
    assert measured == {(int8.variant_id, "iphone"), (int8.variant_id, "macos-coreml"),
                        (ios17.variant_id, "macos-coreml")}


CTRL_C_DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from bench.lab.cluster import connect
from bench.lab.executor import LabExecutor, lab_targets
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from bench.run.targets.base import ImageItem, VariantRef
from lab_fixtures import zeros

connect({address!r}, Path({token!r}))
variants = [VariantRef(**{{**v, "path": Path(v["path"])}}) for v in json.loads({variants!r})]
try:
    start_run(RunConfig.model_validate(json.loads({config!r})), Workspace(Path({root!r})),
              targets=lab_targets(["iphone"], preprocess=zeros), variants=variants,
              images=[ImageItem(f"img{{i}}", lambda: None) for i in range({images})],
              executor=LabExecutor(poll_s=0.05, status_timeout_s=60), run_id="ctrl-c")
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(130)
print("FINISHED", flush=True)
"""


def test_ctrl_c_on_the_driver_cancels_the_remote_tasks_and_resume_completes(lab, tmp_path):
    """A driver process gets SIGINT mid-run: it ends at once, its lab tasks are cancelled (no phone is launched
    again, no host still says it runs a job of it), and `--resume` completes the run with every sample once."""
    import json
    import signal

    from bench.lab.cluster import _running_jobs
    from bench.lab.executor import LabExecutor, lab_targets
    from bench.lab.host import RUNNING_PREFIX
    from bench.paths import Workspace
    from bench.run.api import resume_run
    from bench.run.manifest import RunManifest
    from bench.store.runs import read_job_records

    cluster, hosts, token = lab
    phones = [p for host in hosts.values() for p in host.phones]
    for phone in phones:
        phone.faults.runner_seconds = 0.3
    variants = lab_variants(tmp_path / "variants")
    shipped = json.dumps([{"variant_id": v.variant_id, "name": v.name, "variant_hash": v.variant_hash,
                           "path": str(v.path), "image_size": v.image_size, "decode": v.decode} for v in variants])
    script = CTRL_C_DRIVER.format(tests=str(Path(__file__).parent), address=cluster.address, token=str(token),
                                  variants=shipped, config=json.dumps(CONFIG), root=str(tmp_path), images=IMAGES)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "results" / "ctrl-c"
    try:
        deadline = time.monotonic() + 180
        while len(list((run_dir / "jobs").glob("*--r*.json"))) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, "the driver stored no job"
            time.sleep(0.05)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130 and "INTERRUPTED" in out, out + err[-3000:]
    manifest = RunManifest.open(run_dir)
    assert manifest.data["status"] == "interrupted"
    stored = len(read_job_records(run_dir))
    per_phone = 2 * len(UNITS) * ROUNDS
    assert 0 < stored < len(phones) * per_phone  # stopped mid-run

    launched = sum(len(p.launches) for p in phones)
    time.sleep(2.0)  # a task still running would launch the runner again or mark its phone busy
    assert sum(len(p.launches) for p in phones) == launched
    assert _running_jobs(RUNNING_PREFIX) == {}, "a host still says it runs a job of the interrupted run"

    again = resume_run("ctrl-c", Workspace(tmp_path), targets=lab_targets(["iphone"], preprocess=zeros),
                       variants=variants, images=_images(), executor=LabExecutor(poll_s=0.05, status_timeout_s=60))
    assert again.status == "complete", again.failures
    records = read_job_records(run_dir)
    assert len(records) == len(phones) * per_phone  # every planned job, each stored once
    assert all(len(r["samples"]) == IMAGES for r in records.values())  # no sample lost or duplicated
    rounds = Counter((r["series_key"], r["round"]) for r in records.values())
    assert set(rounds.values()) == {1} and len({key for key, _ in rounds}) == len(phones) * 2 * len(UNITS)
