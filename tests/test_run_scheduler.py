"""Full runs of the run stage against in-test fake devices (tests/run_fixtures.py).

Faked: only the device itself (Core ML runtime, thermal sensor, transport) — it answers instantly with simulated
latencies. Real: planning, interleaving, thermal gating, adaptive stopping, retries, quarantine, job records,
run.json, parquet tables and the DuckDB history.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from bench.errors import InputError, PlatformUnavailable, RecordError
from bench.paths import Workspace
from bench.run.api import resume_run, start_run
from bench.run.config import RunConfig, with_overrides
from bench.store.runs import load_run
from run_fixtures import DeviceGone, FakeTarget, FlakyTransport, images, variants


def config(**overrides) -> RunConfig:
    base = {"seed": 7, "evaluate": False, "report": False, "rounds": 1, "warmup": 1,
            "adaptive": {"ci_width": 0.02, "min_samples": 8, "max_samples": 64, "max_seconds": 1000},
            "thermal": {"wait_limit_s": 100, "poll_s": 10}, "retry": {"attempts": 3, "backoff_s": 2.0}}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return RunConfig.model_validate(base)


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


def run(tmp_path, cfg, targets, vs=None, n_images=4, **kw):
    return start_run(cfg, Workspace(tmp_path), targets=targets, variants=vs or variants("fp16", "int8", "prune"),
                     images=images(n_images), sleep=kw.pop("sleep", Sleeps()), **kw)


def test_rounds_are_interleaved_and_randomised_with_a_recorded_seed(tmp_path):
    cfg = config(rounds=4, adaptive={"ci_width": None}, compute_units=["cpuOnly", "all"])
    first = FakeTarget()
    outcome = run(tmp_path / "a", cfg, [first])
    orders = [[key for rnd, key in first.measured if rnd == r] for r in range(4)]
    series = sorted(k.rsplit("--r", 1)[0] for k in orders[0])
    assert all(sorted(k.rsplit("--r", 1)[0] for k in order) == series for order in orders)  # every series, every round
    assert len({tuple(k.rsplit("--r", 1)[0] for k in order) for order in orders}) > 1  # the order changes
    assert outcome.data.manifest["seed"] == 7
    again = FakeTarget()
    run(tmp_path / "b", cfg, [again])
    assert [k for _, k in again.measured] == [k for _, k in first.measured]  # same seed, same order
    assert set(outcome.data.jobs["stop_reason"].dropna()) == {"fixed"}
    assert outcome.status == "complete" and len(outcome.data.jobs) == 6 * 4


def test_adaptive_sampling_stops_at_the_ci_width_or_at_a_cap(tmp_path):
    def latency(variant_id, unit, rng):
        spread = 0.002 if variant_id.startswith("fp16") else 0.5  # fp16 tight, int8 wide
        return 1e7 * rng.lognormvariate(0, spread)

    outcome = run(tmp_path, config(compute_units=["cpuOnly"]), [FakeTarget(latency=latency)], vs=variants("fp16", "int8"))
    series = outcome.data.series().set_index("variant_id")
    tight, wide = series.loc["fp16-000000000001"], series.loc["int8-000000000002"]
    assert tight["stop_reason"] == "ci_width" and tight["ci_rel"] <= 0.02 and tight["n"] == 8  # two rounds of 4
    assert wide["stop_reason"] == "max_samples" and wide["n"] == 64
    assert outcome.data.samples["is_warmup"].sum() == outcome.data.jobs.shape[0]  # warm-ups kept, apart


def test_max_seconds_ends_a_series_and_says_so(tmp_path):
    cfg = config(adaptive={"ci_width": 0.0001, "max_seconds": 0.0025}, compute_units=["cpuOnly"])
    outcome = run(tmp_path, cfg, [FakeTarget()], vs=variants("fp16"))
    assert outcome.data.series()["stop_reason"].tolist() == ["max_time"]


def test_thermal_gate_waits_for_nominal_and_records_the_wait(tmp_path):
    sleeps = Sleeps()
    target = FakeTarget(thermal=["serious", "fair", "nominal"])
    outcome = run(tmp_path, config(adaptive={"ci_width": None}, compute_units=["cpuOnly"]), [target],
                  vs=variants("fp16"), sleep=sleeps)
    record = next(iter(outcome.data.job_records.values()))
    gate = record["conditions"]["gate"]
    assert gate["outcome"] == "nominal" and gate["states_seen"] == ["serious", "fair", "nominal"]
    assert sleeps == [10.0, 10.0]
    assert record["conditions"]["thermal_state_start"] == "nominal"
    assert record["conditions"]["device_model"] == "iPhone15,2" and record["conditions"]["charging"] is True


def test_throttled_samples_are_flagged_and_the_job_marked_unstable(tmp_path):
    target = FakeTarget(thermal=["serious"], sample_thermal="serious")
    cfg = config(adaptive={"ci_width": None}, compute_units=["cpuOnly"], thermal={"wait_limit_s": 25, "poll_s": 10})
    outcome = run(tmp_path, cfg, [target], vs=variants("fp16"))
    record = next(iter(outcome.data.job_records.values()))
    assert record["conditions"]["gate"]["outcome"] == "timeout"
    assert record["unstable"] is True and record["throttled_fraction"] == 1.0
    assert outcome.data.samples["throttled"].all()


def test_transient_errors_are_retried_with_exponential_backoff(tmp_path):
    sleeps = Sleeps()
    target = FakeTarget(fail_calls={0: FlakyTransport("usb cut", udid="fake1"), 1: FlakyTransport("again")})
    outcome = run(tmp_path, config(adaptive={"ci_width": None}, compute_units=["cpuOnly"]), [target],
                  vs=variants("fp16"), sleep=sleeps)
    assert outcome.status == "complete"
    assert sleeps == [2.0, 4.0]
    (entry,) = outcome.data.manifest["jobs"].values()
    assert entry["state"] == "done" and entry["attempts"] == 3
    assert [a["retry_in_s"] for a in outcome.data.manifest["attempts"]] == [2.0, 4.0]


def test_a_failing_device_is_quarantined_and_the_others_finish(tmp_path):
    bad = FakeTarget(id="iphone-bad", fail_calls={i: DeviceGone("developer mode off", udid="bad") for i in range(99)})
    good = FakeTarget(id="iphone-good")
    cfg = config(adaptive={"ci_width": None}, rounds=3, compute_units=["cpuOnly"])
    outcome = run(tmp_path, cfg, [bad, good], vs=variants("fp16", "int8"))
    assert outcome.quarantined == {"iphone-bad": "2 failed jobs in a row"}
    assert bad.calls == 2  # not retried (needs a person), then quarantined
    states = {key: entry["state"] for key, entry in outcome.data.manifest["jobs"].items()}
    assert all(state == "done" for key, state in states.items() if "iphone-good" in key)
    assert {state for key, state in states.items() if "iphone-bad" in key} == {"failed", "quarantined"}
    assert outcome.status == "incomplete" and ("DeviceGone" in outcome.failures[0][1])
    assert len(outcome.data.jobs) == 2 * 3


def test_one_broken_variant_does_not_stop_the_others(tmp_path):
    target = FakeTarget(step_errors={"prune": "Core ML could not load the model"})
    outcome = run(tmp_path, config(adaptive={"ci_width": None}, rounds=2, compute_units=["cpuOnly"]), [target])
    assert [why for key, why in outcome.failures] == ["Core ML could not load the model"]
    assert sorted(outcome.data.jobs["variant_name"].unique()) == ["fp16", "int8"]
    assert outcome.data.jobs.shape[0] == 4


def test_resume_redoes_only_failed_jobs(tmp_path):
    target = FakeTarget(step_errors={"prune": "load failed"})
    cfg = config(adaptive={"ci_width": None}, rounds=2, compute_units=["cpuOnly"])
    first = run(tmp_path, cfg, [target])
    before = {p.name for p in (first.run_dir / "jobs").glob("*.json")}
    again = FakeTarget()
    outcome = resume_run(first.run_id, Workspace(tmp_path), targets=[again], variants=variants("fp16", "int8", "prune"),
                         images=images(4), sleep=Sleeps())
    measured = [key for _, key in again.measured]
    assert all(key.startswith("prune") for key in measured) and len(measured) == 2
    assert not {f"{key}.json" for key in measured} & before
    assert outcome.status == "complete" and outcome.data.jobs.shape[0] == 6


def test_corrupt_manifest_is_a_clear_error_and_leaves_the_data_alone(tmp_path):
    outcome = run(tmp_path, config(adaptive={"ci_width": None}, compute_units=["cpuOnly"]), [FakeTarget()])
    (outcome.run_dir / "run.json").write_text('{"schema": "bench.run", "schema_ver')
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in outcome.run_dir.rglob("*") if p.is_file()}
    with pytest.raises(RecordError, match="corrupt record.*run manifest is damaged"):
        resume_run(outcome.run_id, Workspace(tmp_path), targets=[FakeTarget()], variants=variants("fp16"),
                   images=images(4))
    with pytest.raises(RecordError, match="damaged"):
        load_run(outcome.run_dir)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in outcome.run_dir.rglob("*") if p.is_file()}
    assert after == before


def test_unknown_names_suggest_the_closest(tmp_path):
    with pytest.raises(InputError, match="unknown variant 'int9'; did you mean 'int8'"):
        run(tmp_path, config(variants=["int9"]), [FakeTarget()])
    # A target typo is refused with the rest of run.yaml, before any variant is built.
    with pytest.raises(ValidationError, match="unknown target 'host-troch'; did you mean 'host-torch'"):
        config(targets=["host-troch"])
    with pytest.raises(InputError, match="did you mean 'cpuAndGPU'"):
        with_overrides(config(), compute_units=["cpuAndGpu"])
    host_only = FakeTarget(id="host-torch", kind="host-torch", compute_units=("cpuOnly",))
    with pytest.raises(InputError, match="'cpuAndNeuralEngine' is not available on any chosen target"):
        run(tmp_path, config(compute_units=["cpuAndNeuralEngine"]), [host_only])


def test_macos_target_is_clearly_unavailable_on_linux(tmp_path):
    import platform

    if platform.system() == "Darwin":
        pytest.skip("this machine is a Mac")
    with pytest.raises(PlatformUnavailable, match="macos-coreml needs macOS"):
        run(tmp_path, config(targets=["macos-coreml"]), None)


def test_missing_results_folder_is_created(tmp_path):
    workspace = tmp_path / "fresh"
    workspace.mkdir()
    outcome = run(workspace, config(adaptive={"ci_width": None}, compute_units=["cpuOnly"]), [FakeTarget()],
                  vs=variants("fp16"))
    assert outcome.run_dir.parent == workspace / "results" and (workspace / "results" / "history.duckdb").exists()
    manifest = json.loads((outcome.run_dir / "run.json").read_text())
    assert manifest["schema"] == "bench.run" and manifest["status"] == "complete"


def test_resume_with_another_harness_is_refused_unless_forced(tmp_path):
    from bench.errors import IncomparableError

    target = FakeTarget(step_errors={"prune": "load failed"})
    outcome = run(tmp_path, config(adaptive={"ci_width": None}, compute_units=["cpuOnly"]), [target])
    manifest_path = outcome.run_dir / "run.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["environment"]["packages"]["torch"] = "1.0.0"
    manifest_path.write_text(json.dumps(manifest))
    kwargs = dict(targets=[FakeTarget()], variants=variants("fp16", "int8", "prune"), images=images(4), sleep=Sleeps())
    with pytest.raises(IncomparableError, match="torch 1.0.0 →"):
        resume_run(outcome.run_id, Workspace(tmp_path), **kwargs)
    assert resume_run(outcome.run_id, Workspace(tmp_path), force=True, **kwargs).status == "complete"


def test_a_table_whose_bytes_changed_after_writing_is_refused_and_rebuilt_once_deleted(tmp_path):
    """Parquet has no page checksums by default: a flipped bit can read back as other numbers without any error, so
    run.json records each table's sha256 when it is written and every reader checks it."""
    from bench.report.load import load_run as report_load_run

    outcome = run(tmp_path, config(), [FakeTarget()], vs=variants("fp16"))
    samples = outcome.run_dir / "samples.parquet"
    assert set(load_run(outcome.run_dir).manifest["table_sha256"]) == {"samples.parquet", "jobs.parquet",
                                                                       "compute_plans.parquet"}
    expected = load_run(outcome.run_dir).samples["latency_ns"].tolist()
    data = bytearray(samples.read_bytes())
    data[len(data) // 3] ^= 0x01  # one bit, inside the column data
    samples.write_bytes(bytes(data))
    with pytest.raises(RecordError, match="samples.parquet: damaged table.*delete samples.parquet"):
        load_run(outcome.run_dir)
    with pytest.raises(RecordError, match="samples.parquet: damaged table"):
        report_load_run(outcome.run_dir)
    samples.unlink()  # the job records are the truth: the readers rebuild the table from them
    assert load_run(outcome.run_dir).samples["latency_ns"].tolist() == expected
