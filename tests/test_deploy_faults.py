"""Every injected fault ends in a clear DeviceError subclass, and no partial file is ever taken as complete.

Runs the real pymobiledevice3 client against the protocol-level fake iPhone (tests/fake_iphone/). Faked: the phone.
"""

from __future__ import annotations

import pytest

from bench.deploy import api
from bench.deploy.errors import (
    DeveloperModeOff,
    DeviceNotFound,
    DiskImageMissing,
    InstallFailed,
    NotPaired,
    PushFailed,
    ResultInvalid,
    RunnerCrashed,
    RunnerNotInstalled,
    RunnerTimeout,
    TunnelUnavailable,
    UsbmuxUnavailable,
)
from bench.errors import DeviceError
from deploy_fixtures import add_phone, job_spec, make_inputs, make_runner_app, make_variant, mux  # noqa: F401


@pytest.fixture
def variants(tmp_path):
    return {v: make_variant(tmp_path / "variants", v, seed, weight_bytes=200_000)
            for seed, v in enumerate(["fp16-aaaa", "int8-bbbb"])}


def _deployed(phone, variants):
    return api.deploy(phone.udid, job_spec(list(variants)), variants, make_inputs()).job_id


def test_unplug_mid_push_leaves_nothing_under_a_final_name_and_resumes(mux, variants):
    phone = add_phone(mux, 1)
    phone.faults.unplug_after_bytes = 300_000  # inside the second package
    with pytest.raises(PushFailed, match="went away") as caught:
        _deployed(phone, variants)
    assert caught.value.udid == phone.udid and "reconnect" in str(caught.value)
    models = phone.bench_dir() / "models"
    finals = [p for p in models.iterdir() if not p.name.startswith(".tmp-")]
    partial = [p for p in models.iterdir() if p.name.startswith(".tmp-")]
    assert partial, "the fake really cut a transfer half way"
    for final in finals:  # whatever has a final name is complete, byte for byte
        role = next(final.iterdir()).name.removesuffix(".mlpackage")
        source = next(v for v in variants.values() if api.package_hashes(v)[role] == final.name)
        assert sorted(p.stat().st_size for p in (final / f"{role}.mlpackage").rglob("*") if p.is_file()) == \
            sorted(p.stat().st_size for p in (source / f"{role}.mlpackage").rglob("*") if p.is_file())
    assert not (phone.bench_dir() / "jobs").exists()  # no job manifest without every push in place

    with pytest.raises(DeviceNotFound):
        api.held(phone.udid)  # still unplugged
    mux.call(phone.replug)
    sent_before = phone.model_bytes_written()
    job_id = _deployed(phone, variants)
    resent = phone.model_bytes_written() - sent_before
    total = sum(p.stat().st_size for v in variants.values() for p in v.rglob("*") if p.is_file())
    assert 0 < resent < total  # finished packages are not sent again
    assert api.run_job(phone.udid, job_id, 30, poll_s=0.05)["status"] == "complete"
    assert api.held(phone.udid).leftovers  # the interrupted push is visible …
    api.prune(phone.udid, keep_models=set(api.held(phone.udid).models))
    assert api.held(phone.udid).leftovers == ()  # … and pruned


def test_runner_crash_is_recorded_and_the_partial_result_is_not_used(mux, variants):
    phone = add_phone(mux, 1)
    phone.faults.runner_crash = True
    job_id = _deployed(phone, variants)
    with pytest.raises(RunnerCrashed, match="without writing DONE; result.partial.json was left and is not used"):
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    assert (phone.bench_dir() / "results" / job_id / "result.partial.json").exists()


def test_result_json_without_done_is_never_taken_as_complete(mux, variants):
    phone = add_phone(mux, 1)
    phone.faults.crash_before_done = True
    job_id = _deployed(phone, variants)
    with pytest.raises(RunnerCrashed, match="without writing DONE"):
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    results = phone.bench_dir() / "results" / job_id
    assert (results / "result.json").exists() and not (results / "DONE").exists()


def test_hung_runner_is_killed_at_the_timeout(mux, variants):
    phone = add_phone(mux, 1)
    phone.faults.runner_hang = True
    job_id = _deployed(phone, variants)
    with pytest.raises(RunnerTimeout, match="was killed"):
        api.run_job(phone.udid, job_id, timeout_s=0.5, poll_s=0.05)
    assert phone.processes == {}  # killed through DVT sendSignal


@pytest.mark.parametrize("fault, message", [("malformed_result", "not valid JSON"),
                                            ("oversized_result", "over the 67108864-byte limit; not pulled")])
def test_bad_result_files_are_refused(mux, variants, fault, message):
    phone = add_phone(mux, 1)
    setattr(phone.faults, fault, True)
    job_id = _deployed(phone, variants)
    before = phone.bytes_written.copy()
    with pytest.raises(ResultInvalid, match=message) as caught:
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    assert caught.value.udid == phone.udid
    assert phone.bytes_written == before


def test_result_breaking_the_schema_is_refused(mux, variants):
    phone = add_phone(mux, 1)
    job_id = _deployed(phone, variants)
    phone.product_type = "x" * 100  # the stand-in writes it into device.model_identifier (max 64 in the schema)
    with pytest.raises(ResultInvalid, match="model_identifier"):
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)


def test_untrusted_device_fails_fast_with_what_to_do(mux):
    phone = add_phone(mux, 1)
    phone.faults.untrusted = True
    with pytest.raises(NotPaired, match="tap Trust") as caught:  # a valid job: only the pairing can fail
        api.deploy(phone.udid, api.JobSpec(mode="status", warmup=0, repeats=0))
    assert "pymobiledevice3 lockdown pair" in str(caught.value)
    assert phone.requests["Pair"] == 0  # never asked the phone to show the Trust prompt
    health = api.health(phone.udid)
    assert health.paired is False and not health.ready
    assert api.discover()[0].paired is False


def test_app_not_installed(mux, variants):
    phone = add_phone(mux, 1, installed=False)
    with pytest.raises(RunnerNotInstalled, match="bench devices install"):
        _deployed(phone, variants)
    phone.install_app("org.bench.runner")
    job_id = _deployed(phone, variants)
    del phone.apps["org.bench.runner"]  # removed between deploy and run: the launch itself fails
    with pytest.raises(RunnerNotInstalled):
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)


def test_install_refused_by_installd(mux, tmp_path):
    phone = add_phone(mux, 1, installed=False)
    phone.faults.install_verification_fails = True
    with pytest.raises(InstallFailed, match="development profile .not ad-hoc.*lists this UDID"):
        api.install_runner(phone.udid, make_runner_app(tmp_path))
    with pytest.raises(InstallFailed, match="not an .ipa"):
        api.install_runner(phone.udid, tmp_path / "missing.ipa")


def test_developer_mode_off_is_caught_before_launch(mux, variants):
    phone = add_phone(mux, 1, developer_mode=False)
    with pytest.raises(DeveloperModeOff, match="Developer Mode > On"):
        api.run_job(phone.udid, _deployed(phone, variants), 5, poll_s=0.05)
    assert phone.launches == []


def test_disk_image_missing_and_ios17_without_tunnel(mux, variants):
    old = add_phone(mux, 1, ddi_mounted=False)
    with pytest.raises(DiskImageMissing, match="no Developer disk image.*bench devices prepare"):
        api.run_job(old.udid, _deployed(old, variants), 5, poll_s=0.05)
    new = add_phone(mux, 2, ios="17.5", build="21F79")
    with pytest.raises(TunnelUnavailable, match="pymobiledevice3\\\" remote tunneld"):
        api.run_job(new.udid, _deployed(new, variants), 5, poll_s=0.05)
    assert api.health(new.udid).tunnel is False


def test_device_not_attached_and_no_usbmuxd(mux, monkeypatch):
    with pytest.raises(DeviceNotFound, match="not attached"):
        api.deploy("00008110-00000000000000FF", api.JobSpec(mode="status", warmup=0, repeats=0))
    monkeypatch.setenv("USBMUXD_SOCKET_ADDRESS", str(mux.tmp / "absent.sock"))
    with pytest.raises(UsbmuxUnavailable, match="no usbmuxd"):
        api.discover()
    monkeypatch.setenv("USBMUXD_SOCKET_ADDRESS", "UNIX:" + str(mux.tmp / "mux.sock"))
    with pytest.raises(UsbmuxUnavailable, match="bare socket path"):
        api.discover()


def test_every_deploy_error_is_a_device_error():
    for kind in (DeviceNotFound, DiskImageMissing, InstallFailed, NotPaired, PushFailed, ResultInvalid,
                 RunnerCrashed, RunnerNotInstalled, RunnerTimeout, TunnelUnavailable, UsbmuxUnavailable):
        assert issubclass(kind, DeviceError)
        assert kind("x", udid="U", action="do y").kind == kind.__name__
        assert str(kind("x", udid="U", action="do y")) == "U: x — do y"


def test_a_service_the_phone_refuses_is_one_device_error_line_not_a_library_traceback(mux, monkeypatch):
    import fake_iphone.services as services

    phone = add_phone(mux, 1)
    monkeypatch.setattr(services, "KNOWN", services.KNOWN - {services.DIAGNOSTICS, services.INSTALLATION_PROXY})
    report = api.health(phone.udid)  # `bench devices` must still draw its table
    assert not report.ready and any("InvalidServiceError" in problem for problem in report.problems)
    with pytest.raises(DeviceError, match="refused a request") as caught:
        api.install_runner(phone.udid, make_runner_app(mux.tmp / "build"))
    assert caught.value.udid == phone.udid
