"""End to end against the protocol-level fake iPhone: the real pymobiledevice3 client over a real UNIX socket.

Faked (cannot exist here): the phone itself, Core ML (the runner stand-in invents seeded latencies), code signing.
Real: usbmuxd/lockdown/AFC/house_arrest/installation_proxy/diagnostics/syslog wire protocols, DVT over DTX, our
deploy code, the JSON schema validation of pulled results.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.deploy import api
from deploy_fixtures import RUNNER, add_phone, job_spec, make_inputs, make_runner_app, make_variant, mux  # noqa: F401


def _deploy_and_run(udid, spec, variants, inputs, logs):
    report = api.deploy(udid, spec, variants, inputs)
    result = api.run_job(udid, report.job_id, timeout_s=30, on_log=logs.append, poll_s=0.05)
    return report, result


def test_two_devices_at_once_discover_install_push_launch_wait_pull(mux, tmp_path):
    phones = [add_phone(mux, 1, installed=False), add_phone(mux, 2, installed=False)]
    found = api.discover()
    assert {d.udid for d in found} == {p.udid for p in phones}
    assert all(d.connected and d.paired and not d.known for d in found)

    app = make_runner_app(tmp_path / "build")
    for phone in phones:
        assert api.health(phone.udid).runner is None
        installed = api.install_runner(phone.udid, app)
        assert (installed.version, installed.build) == ("0.4", "13")

    variants = {v: make_variant(tmp_path / "variants", v, seed) for seed, v in enumerate(["fp16-aaaa", "int8-bbbb"])}
    spec, inputs = job_spec(list(variants)), make_inputs()
    logs = {p.udid: [] for p in phones}
    with ThreadPoolExecutor(max_workers=2) as pool:  # one worker per device, as the run stage does
        futures = {p.udid: pool.submit(_deploy_and_run, p.udid, spec, variants, inputs, logs[p.udid])
                   for p in phones}
        outcomes = {udid: future.result(timeout=60) for udid, future in futures.items()}

    for phone in phones:
        report, result = outcomes[phone.udid]
        assert result["schema"] == "bench.result" and result["status"] == "complete"
        assert result["job_id"] == report.job_id
        assert result["device"]["model_identifier"] == phone.product_type
        assert [(s["variant_id"], s["compute_unit"]) for s in result["steps"]] == list(spec.steps)
        assert all(s["error"] is None and len(s["samples"]) == 4 for s in result["steps"])  # 2 repeats x 2 images
        assert result["runner_version"] == "0.4 (13)"
        # the runner really ran on this phone and its log lines were streamed while waiting
        assert phone.launches[-1]["environment"]["BENCH_JOB_ID"] == report.job_id
        assert any("step fp16-aaaa cpuOnly" in line for line in logs[phone.udid])
        assert any(line.endswith("done") for line in logs[phone.udid])
        # job.json was opened for writing only after every model and input had been renamed into place
        events = phone.file_events
        job_write = min(i for i, (op, path) in enumerate(events) if op == "write" and "/bench/jobs/" in path)
        renames = [i for i, (op, path) in enumerate(events) if op == "rename" and "/bench/jobs/" not in path]
        assert len(renames) == 4 + 2 and max(renames) < job_write  # 4 packages, 2 inputs
        assert events[-1] == ("rename", f"container:{RUNNER}/Documents/bench/jobs/{report.job_id}/job.json")
    # seeded latencies: the Neural Engine beats the CPU for the same variant, as the stand-in models it
    steps = outcomes[phones[0].udid][1]["steps"]
    cpu = min(s["total_ns"] for s in steps[0]["samples"])
    ane = max(s["total_ns"] for s in steps[1]["samples"])
    assert ane < cpu


def test_second_deployment_of_same_variants_sends_zero_model_bytes(mux, tmp_path):
    phone = add_phone(mux, 1)
    variants = {v: make_variant(tmp_path / "variants", v, seed) for seed, v in enumerate(["fp16-aaaa", "int8-bbbb"])}
    spec, inputs = job_spec(list(variants)), make_inputs()

    first = api.deploy(phone.udid, spec, variants, inputs)
    sent_first = phone.model_bytes_written()
    package_bytes = sum(p.stat().st_size for v in variants.values() for p in v.rglob("*") if p.is_file())
    assert first.model_bytes_sent == sent_first == package_bytes

    second = api.deploy(phone.udid, spec, variants, inputs)
    assert phone.model_bytes_written() - sent_first == 0  # measured by the fake's own counters
    assert second.model_bytes_sent == 0 and second.models_skipped == 4 and second.input_bytes_sent == 0
    assert second.job_id != first.job_id

    # one changed variant: only its packages travel
    changed = make_variant(tmp_path / "changed", "int8-bbbb", seed=99)
    third = api.deploy(phone.udid, spec, {**variants, "int8-bbbb": changed}, inputs)
    assert 0 < third.model_bytes_sent < package_bytes and third.models_skipped == 2


def test_list_and_prune_what_the_device_holds(mux, tmp_path):
    phone = add_phone(mux, 1)
    variants = {v: make_variant(tmp_path / "variants", v, seed) for seed, v in enumerate(["fp16-aaaa", "int8-bbbb"])}
    report = api.deploy(phone.udid, job_spec(list(variants)), variants, make_inputs())
    held = api.held(phone.udid)
    assert len(held.models) == 4 and len(held.inputs) == 2 and held.jobs == (report.job_id,)

    keep = {api.package_hashes(variants["fp16-aaaa"])[role] for role in ("encoder", "decoder")}
    removed = api.prune(phone.udid, keep_models=keep)
    assert len(removed) == 2 + 2 + 1  # the other variant's packages, both inputs, the old job
    after = api.held(phone.udid)
    assert set(after.models) == keep and after.inputs == () and after.jobs == ()


def test_status_job_reports_thermal_state_and_battery(mux):
    phone = add_phone(mux, 1, battery_centi_celsius=3550)
    phone.faults.thermal_serious_probes = 2
    states = [api.device_status(phone.udid, timeout_s=60, poll_s=0.05).thermal_state for _ in range(3)]
    assert states == ["serious", "serious", "nominal"]
    status = api.device_status(phone.udid, timeout_s=60, poll_s=0.05)
    assert status.battery_temperature_c == pytest.approx(35.5) and status.battery_level == pytest.approx(0.87)
    assert api.held(phone.udid).jobs == ()  # status jobs clean up after themselves


def test_health_reports_every_check(mux):
    phone = add_phone(mux, 1, developer_mode=False, ddi_mounted=False)
    report = api.health(phone.udid)
    assert report.paired and report.developer_mode is False and report.ddi_mounted is False
    assert report.battery_percent == 87 and report.battery_temperature_c == pytest.approx(31.2)
    assert report.runner.version == "0.3"
    assert any("Developer Mode" in p for p in report.problems)
    assert any("no Developer disk image mounted" in p and "bench devices prepare" in p for p in report.problems)
    assert not report.ready


def test_a_package_changed_after_its_build_is_refused(mux, tmp_path):
    import json

    from bench.deploy.hashing import tree_sha256
    from bench.errors import DamagedError

    phone = add_phone(mux, 1)
    variant = make_variant(tmp_path, "int8-cccc", seed=3)
    shas = {role: tree_sha256(variant / f"{role}.mlpackage") for role in ("encoder", "decoder")}
    # A v1 manifest (package tree hashes only; bench.build.integrity checks v2 per file, tests/test_build_integrity.py)
    (variant / "manifest.json").write_text(json.dumps({"schema": "bench.variant", "schema_version": 1,
                                                       "packages": {r: {"sha256": s} for r, s in shas.items()}}))
    assert api.package_hashes(variant) == shas
    (variant / "decoder.mlpackage" / "Manifest.json").write_text("{}")  # edited after the build
    with pytest.raises(DamagedError, match="decoder.mlpackage: changed since it was built"):
        api.deploy(phone.udid, job_spec(["int8-cccc"]), {"int8-cccc": variant}, make_inputs())
    assert phone.model_bytes_written() == 0
