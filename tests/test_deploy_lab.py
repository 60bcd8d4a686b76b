"""A lab's first day: the scenarios that stop a real phone, each through `bench devices`, `bench devices prepare`
and `bench run` (its library entry, start_run), against the protocol-level fake iPhone.

Real: pymobiledevice3 11.45's client (lockdown, mobile_image_mounter incl. its upload/mount protocol, AMFI, DVT
process control with FrontBoard's nested NSErrors), our deploy and run code. Faked, because it cannot exist here:
the phone (tests/fake_iphone), the tunnel (fake_iphone/rsd.py), and the network: `diskimage.network_reachable` is the
one seam that decides whether Apple's signing server / the image download can be reached, and the `mux` fixture
makes it say "unreachable" so no test ever reaches the network. The disk image bytes are a few stand-in bytes placed
in pymobiledevice3's own cache folder (as a previous download would have left them).
"""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.deploy import api
from bench.deploy.errors import DiskImageMissing, PhoneLocked, ProfileUntrusted, RunnerNotInstalled
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from bench.run.targets.base import ImageItem, VariantRef
from deploy_fixtures import DECODE, add_phone, job_spec, make_inputs, make_variant, mux, tunneld  # noqa: F401

RUNNER = "org.bench.runner"


@pytest.fixture
def wide(monkeypatch):
    from bench.cli._common import console

    monkeypatch.setattr(console(), "width", 220)


def _cli(*args: str):
    """`bench devices …` with an inventory listing the fake phones as "lab<N>" (in the mux folder)."""
    from bench.cli import app

    return CliRunner().invoke(app, [*args, "--inventory", str(_INVENTORY[0])], terminal_width=220)


_INVENTORY: list[Path] = []


@pytest.fixture(autouse=True)
def _lab_inventory(mux):
    _INVENTORY[:] = [mux.tmp / "devices.yaml"]
    mux.tmp.joinpath("devices.yaml").write_text("devices: []\n")


def _list(mux, *phones) -> None:
    entries = "".join(f"  - name: lab{i}\n    udid: {p.udid}\n    model: {p.product_type}\n    ios: \"{p.ios}\"\n"
                      for i, p in enumerate(phones, 1))
    (mux.tmp / "devices.yaml").write_text("devices:\n" + entries)


def _cache_personalized_image() -> Path:
    """What `fetch_personalized_ddi` leaves in ~/.pymobiledevice3 after a download (stand-in bytes)."""
    from pymobiledevice3.common import get_home_folder
    from pymobiledevice3.services.mobile_image_mounter import LATEST_DDI_BUILD_ID

    folder = get_home_folder() / "Xcode_iOS_DDI_Personalized"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Image.dmg").write_bytes(b"personalized-image" * 64)
    (folder / "Image.trustcache").write_bytes(b"trust-cache")
    (folder / "BuildManifest.plist").write_bytes(plistlib.dumps({"ProductBuildVersion": LATEST_DDI_BUILD_ID,
                                                                 "BuildIdentities": []}))
    return folder


def _cache_developer_image(version: str) -> Path:
    from pymobiledevice3.common import get_home_folder
    from pymobiledevice3.services.mobile_image_mounter import _developer_disk_image_path

    image = _developer_disk_image_path(get_home_folder() / "Xcode.app", version)
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"developer-image" * 64)
    image.with_name(image.name + ".signature").write_bytes(b"signature")
    return image


def _ios17(mux, tunneld, index: int = 1, **kwargs):
    phone = add_phone(mux, index, ios="17.5.1", build="21F90", product_type="iPhone15,2", **kwargs)
    tunneld.add(mux, phone)
    return phone


def _variants(folder: Path) -> list[VariantRef]:
    return [VariantRef(variant_id="int8-bbbbbbbbbbbb", name="int8", variant_hash="bbbbbbbbbbbb",
                       path=make_variant(folder, "int8-bbbbbbbbbbbb", 1), image_size=32, decode=DECODE)]


def _bench_run(phone, tmp_path, sleeps):
    """`bench run` on one fake phone (start_run is what the command calls), two rounds, one compute unit."""
    from bench.run.targets.iphone import IPhoneTarget

    def zeros(images, size, mode, variant):
        import numpy as np

        return np.zeros((len(images), 3, size, size), dtype="float32")

    target = IPhoneTarget(phone.udid, name=phone.name, api=api, timeout_s=30, poll_s=0.05, preprocess=zeros)
    config = RunConfig.model_validate({"seed": 1, "rounds": 2, "evaluate": False, "report": False,
                                       "compute_units": ["cpuOnly"], "adaptive": {"ci_width": None},
                                       "retry": {"attempts": 2, "backoff_s": 1, "quarantine_after": 2}})
    return start_run(config, Workspace(tmp_path), targets=[target], variants=_variants(tmp_path / "v"),
                     images=[ImageItem("img-1", lambda: None)], sleep=sleeps.append)


def _nothing_measured(outcome) -> bool:
    return not list((outcome.run_dir / "jobs").glob("*.json")) and len(outcome.data.samples) == 0


# ---- iOS 17+ without the Personalized image ------------------------------------------------------------------------
def test_ios17_without_the_personalized_image_is_shown_refused_and_prepared(mux, tunneld, wide):
    phone = _ios17(mux, tunneld, ddi_mounted=False)
    health = api.health(phone.udid)
    assert (health.disk_image, health.ddi_mounted, health.tunnel, health.ready) == ("Personalized", False, True, False)
    _list(mux, phone)
    shown = _cli("devices")
    assert "Personalized not mounted" in shown.output and "attention" in shown.output
    assert [line for line in shown.output.splitlines() if "no Personalized disk image mounted" in line] == [
        "  lab1: no Personalized disk image mounted, every launch would fail: run `bench devices prepare "
        "-d <name>` (mounts it; needed again after every reboot)"]

    job_id = api.deploy_job(phone.udid, job_spec(["int8-abcd"]), {"int8-abcd": make_variant(mux.tmp, "int8-abcd", 4)},
                            make_inputs())
    with pytest.raises(DiskImageMissing, match="no Personalized disk image is mounted .iOS 17.5.1"):
        api.run_job(phone.udid, job_id, 5, poll_s=0.05)
    assert phone.launches == []  # refused before asking the phone

    # No image cached and no network: one line, nothing tried.
    first = _cli("devices", "prepare", "--timeout", "20")
    assert first.exit_code == 1 and phone.uploaded_images == []
    assert "raw.githubusercontent.com cannot be reached" in first.output

    # Image cached, but the phone holds no ticket since its reboot: Apple must sign it, and cannot be reached.
    _cache_personalized_image()
    unsigned = _cli("devices", "prepare", "--timeout", "20")
    assert unsigned.exit_code == 1 and not phone.ddi_mounted
    line = next(line for line in unsigned.output.splitlines() if "disk image:" in line and "What" not in line)
    assert "must be signed for this phone by Apple's signing server (gs.apple.com), which this host cannot " \
           "reach" in line
    assert "What remains for a person:" in unsigned.output and "launch: fix the lines above first" in unsigned.output

    # The phone still holds its ticket (mounted before, not rebooted since): mounted offline, then launched.
    phone.personalization_ticket = True
    prepared = _cli("devices", "prepare", "--timeout", "20")
    assert prepared.exit_code == 0, prepared.output
    assert "mounted the Personalized disk image (signed with the phone's own ticket)" in prepared.output
    assert "the runner launched and answered" in prepared.output and "1 phone(s) ready" in prepared.output
    assert phone.ddi_mounted and [kind for kind, _ in phone.uploaded_images] == ["Personalized"]
    assert api.health(phone.udid).ready


def test_ios16_developer_image_is_mounted_from_the_cache(mux):
    phone = add_phone(mux, 1, ddi_mounted=False)  # iOS 16.7.2
    report = api.prepare(phone.udid, poll_s=0.05)
    assert [c.status for c in report.checks if c.name == "disk image"] == ["failed"]  # not cached, no network
    _cache_developer_image("16.7")
    report = api.prepare(phone.udid, poll_s=0.05)
    assert report.ready, report.remaining
    assert [(c.name, c.status) for c in report.checks] == [
        ("trust", "ok"), ("dev mode", "ok"), ("disk image", "done"), ("tunnel", "ok"), ("runner", "ok"),
        ("launch", "ok")]
    assert phone.uploaded_images[0][0] == "Developer" and api.health(phone.udid).disk_image == "Developer"


def test_bench_run_on_an_ios17_phone_without_the_image_records_the_reason_and_measures_nothing(mux, tunneld,
                                                                                               tmp_path):
    phone = _ios17(mux, tunneld, ddi_mounted=False)
    outcome = _bench_run(phone, tmp_path, sleeps := [])
    assert outcome.quarantined == {f"iphone-{phone.udid}": "no disk image mounted: run `bench devices prepare`"}
    assert outcome.failures and all("DiskImageMissing" in why and "bench devices prepare" in why
                                    for _, why in outcome.failures)
    assert sleeps == [] and _nothing_measured(outcome) and phone.launches == []


# ---- Developer Mode from the host --------------------------------------------------------------------------------
def test_developer_mode_off_is_revealed_then_enabled_from_the_host_unless_a_passcode_is_set(mux, wide):
    phone = add_phone(mux, 1, developer_mode=False, passcode=True)
    shown = _cli("devices", "prepare")
    assert shown.exit_code == 1 and phone.amfi_actions == [0]  # only revealed the toggle
    assert "run prepare again with --enable-developer-mode" in shown.output
    assert "disk image: needs Developer Mode first" in shown.output
    refused = _cli("devices", "prepare", "--enable-developer-mode")
    assert "cannot be turned on from the host while a passcode is set" in refused.output
    phone.passcode = False
    asked = _cli("devices", "prepare", "--enable-developer-mode")
    assert phone.amfi_actions[-1] == 1 and "it restarts now; unlock it, tap Turn On" in asked.output


# ---- a locked phone ----------------------------------------------------------------------------------------------
def test_locked_phone_one_line_in_devices_and_prepare(mux, wide):
    phone = add_phone(mux, 1, passcode=True)
    phone.locked = True
    _list(mux, phone)
    shown = _cli("devices")
    assert "a passcode is set: the phone locks itself" in shown.output  # what the host can see beforehand
    prepared = _cli("devices", "prepare", "--timeout", "20")
    assert prepared.exit_code == 1
    launch = [line.strip() for line in prepared.output.splitlines() if line.strip().startswith("! launch:")]
    assert launch == ["! launch: the phone is locked, iOS refused to launch org.bench.runner (FrontBoard: Locked) — "
                      "unlock it; for unattended runs remove the passcode and set Auto-Lock to Never"]


def test_bench_run_retries_a_locked_phone_after_a_wait_then_quarantines_it_with_unlock_it(mux, tmp_path):
    phone = add_phone(mux, 1)
    phone.locked = True
    outcome = _bench_run(phone, tmp_path, sleeps := [])
    assert sleeps == [60.0]  # retried once, after a wait long enough for a person to unlock it
    assert outcome.quarantined == {f"iphone-{phone.udid}": "phone locked: unlock it (and set Auto-Lock to Never)"}
    assert all("PhoneLocked" in why and "FrontBoard: Locked" in why for _, why in outcome.failures)
    assert _nothing_measured(outcome)


# ---- an untrusted developer profile ------------------------------------------------------------------------------
def test_untrusted_profile_is_named_as_such_in_prepare_and_run(mux, tmp_path, wide):
    phone = add_phone(mux, 1)
    phone.developer_profile_trusted = False
    _list(mux, phone)
    assert "ready" in _cli("devices").output  # nothing on the host shows it before a launch …
    prepared = _cli("devices", "prepare", "--timeout", "20")
    launch = [line for line in prepared.output.splitlines() if "! launch:" in line]
    assert len(launch) == 1 and "refused org.bench.runner for security (FrontBoard: Security)" in launch[0]
    assert "VPN & Device Management" in launch[0] and "install" not in launch[0].split("—")[0]
    (line,) = [line for line in _cli("devices").output.splitlines() if "the last launch" in line]
    assert "failed: ProfileUntrusted: iOS refused org.bench.runner for security" in line
    outcome = _bench_run(phone, tmp_path, sleeps := [])
    assert sleeps == []  # a person must act: not retried
    assert outcome.quarantined == {f"iphone-{phone.udid}": "developer profile not trusted: trust it in Settings > "
                                                           "General > VPN & Device Management"}
    assert all("ProfileUntrusted" in why for _, why in outcome.failures) and _nothing_measured(outcome)


def test_not_installed_is_not_confused_with_locked_or_untrusted(mux):
    phone = add_phone(mux, 1)
    job_id = api.deploy_job(phone.udid, job_spec([], mode="status"), {}, {})
    del phone.apps[RUNNER]
    phone.locked = True  # the app is looked up first: "not installed" wins, as on a real phone
    with pytest.raises(RunnerNotInstalled, match="bench devices install"):
        api.run_job(phone.udid, job_id, 5, poll_s=0.05)
    phone.install_app(RUNNER)
    with pytest.raises(PhoneLocked):
        api.run_job(phone.udid, job_id, 5, poll_s=0.05)
    phone.locked, phone.developer_profile_trusted = False, False
    with pytest.raises(ProfileUntrusted):
        api.run_job(phone.udid, job_id, 5, poll_s=0.05)


# ---- the runner leaves the foreground mid-job --------------------------------------------------------------------
def test_runner_sent_to_the_background_mid_job_is_reported_as_such_not_as_a_timeout(mux, tmp_path, wide):
    from bench.deploy.errors import AppLeftForeground

    phone = add_phone(mux, 1)
    phone.faults.background_after_steps = 1
    _list(mux, phone)
    assert "ready" in _cli("devices").output and _cli("devices", "prepare").exit_code == 0  # a status job is fine
    variants = {"int8-abcd": make_variant(tmp_path, "int8-abcd", 4)}
    job_id = api.deploy_job(phone.udid, job_spec(list(variants)), variants, make_inputs())
    with pytest.raises(AppLeftForeground) as caught:
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    assert str(caught.value).splitlines() == [
        f"{phone.udid}: phone locked or app left the foreground during step 2/2 (the runner saw active → inactive → "
        "background and stopped measuring); nothing from this job is used — unlock it; for unattended runs remove "
        "the passcode, set Auto-Lock to Never and silence notifications (a Focus)"]

    phone.faults.background_after_steps = 0  # `bench run` below measures one step per job: leave at the first
    outcome = _bench_run(phone, tmp_path, sleeps := [])
    assert outcome.quarantined == {f"iphone-{phone.udid}": "phone locked or app left the foreground: unlock it, "
                                                           "Auto-Lock Never, Focus on"}
    assert len(sleeps) == 1 and all("AppLeftForeground" in why and "RunnerTimeout" not in why
                                    for _, why in outcome.failures)
    (line,) = [line for line in _cli("devices").output.splitlines() if "the last launch" in line]
    assert "failed: AppLeftForeground: phone locked or app left the foreground" in line
    assert _nothing_measured(outcome)


# ---- an iOS update is shown -------------------------------------------------------------------------------------
def test_an_os_build_other_than_devices_yaml_says_the_phone_updated(mux, wide):
    phone = add_phone(mux, 1, ios="17.5.1", build="21F90")
    (mux.tmp / "devices.yaml").write_text(f"devices:\n  - name: lab1\n    udid: {phone.udid}\n    model: iPhone14,2\n"
                                          "    ios: \"17.5\"\n    build: 21F79\n")
    shown = _cli("devices").output
    assert "17.5.1 (21F90)" in shown and "attention" in shown
    (line,) = [line for line in shown.splitlines() if "reports iOS build" in line]
    assert "iOS build 21F90 (inventory says 21F79): the phone updated" in line


# ---- the pieces without a phone -----------------------------------------------------------------------------------
def test_busy_denied_and_unexplained_refusals_each_get_their_own_line():
    """FrontBoard reasons the fake phone has no scenario for, built as the same nested NSErrors."""
    from pymobiledevice3.dtx import DTXNsError
    from pymobiledevice3.dtx.ns_types import NSError

    from bench.deploy.errors import LaunchBusy, LaunchDenied, LaunchFailed
    from bench.deploy.launch_errors import classify

    def refused(code, reason):
        inner = NSError(code, "FBSOpenApplicationErrorDomain", {"BSErrorCodeDescription": reason,
                                                                "NSLocalizedDescription": f"{reason} text"})
        service = NSError(1, "FBSOpenApplicationServiceErrorDomain", {"BSErrorCodeDescription": "RequestDenied",
                                                                      "NSUnderlyingError": inner})
        return DTXNsError(NSError(2, "com.apple.dt.deviceprocesscontrolservice", {"NSUnderlyingError": service}))

    busy = classify(refused(6, "Busy"), RUNNER, "U")
    assert type(busy) is LaunchBusy and busy.transient and "FrontBoard: Busy" in str(busy)
    denied = classify(refused(1, "Disabled"), RUNNER, "U")
    assert type(denied) is LaunchDenied and not denied.transient and "Disabled text" in str(denied)
    assert type(classify(refused(7, ""), RUNNER, "U")) is PhoneLocked  # the code decides when the name is missing
    bare = classify(DTXNsError(NSError(2, "com.apple.dt.deviceprocesscontrolservice",
                                       {"NSLocalizedDescription": "Request to launch x failed."})), RUNNER, "U")
    assert type(bare) is LaunchFailed and "Request to launch x failed." in str(bare)


def test_the_network_seam_asks_the_hosts_pymobiledevice3_really_uses():
    from bench.deploy.diskimage import image_server, signing_server

    assert signing_server() == ("gs.apple.com", 80) and image_server() == ("raw.githubusercontent.com", 443)


def test_userspace_tunnels_are_used_one_at_a_time_across_threads():
    """Two phones' worker threads, each with its own event loop: the second waits for the first and says so."""
    import asyncio
    import threading
    import time

    from bench.deploy.launch import userspace_slot

    inside, said, entered = [], [], threading.Event()

    def phone(udid, hold_s):
        async def go():
            async with userspace_slot(udid, said.append, poll_s=0.01):
                inside.append((udid, "in"))
                entered.set()
                await asyncio.sleep(hold_s)
                inside.append((udid, "out"))
        asyncio.run(go())

    first = threading.Thread(target=phone, args=("A", 0.3))
    first.start()
    entered.wait(5)
    second = threading.Thread(target=phone, args=("B", 0.0))
    second.start()
    time.sleep(0.05)
    first.join(5)
    second.join(5)
    assert inside == [("A", "in"), ("A", "out"), ("B", "in"), ("B", "out")]
    assert said == ["B: waiting for the userspace tunnel (one per process; another phone holds it)"]


# ---- review: a phone lost mid-prepare, userspace tunnels below 17.4 ----------------------------------------------
def test_a_phone_unplugged_mid_prepare_is_one_line_and_the_other_phones_are_still_prepared(mux, monkeypatch, wide):
    """The cable goes after the disk-image check (the scenario: when the fake phone is unplugged); the checks already
    done stay on screen, the phone gets one `connection` line, and the next phone is still prepared."""
    import bench.deploy.prepare as prepare_module

    first, second = add_phone(mux, 1), add_phone(mux, 2)
    _list(mux, first, second)
    check_tunnel = prepare_module._tunnel

    async def cable_goes_first(device, report):
        if device.udid == first.udid:
            mux.call(first.unplug)
        await check_tunnel(device, report)

    monkeypatch.setattr(prepare_module, "_tunnel", cable_goes_first)
    shown = _cli("devices", "prepare", "--timeout", "20")
    assert shown.exit_code == 1 and isinstance(shown.exception, SystemExit), shown.output  # typer.Exit, no traceback
    lines = [line.strip() for line in shown.output.splitlines()]
    assert "✓ disk image: Developer disk image already mounted" in lines  # lab1's checks before the cable went
    (lost,) = [line for line in lines if line.startswith("✗ connection:")]
    assert "lost contact with the device" in lost and "reconnect the cable" in lost
    assert "✓ launch: the runner launched and answered" in " ".join(lines)  # lab2 was still prepared
    assert len(second.launches) == 1 and "lab1: connection: " in shown.output


@pytest.mark.parametrize("ios,allowed", [("17.0", False), ("17.3.1", False), ("17.4", True), ("18.2", True)])
def test_prepare_says_a_userspace_tunnel_needs_ios_17_4(mux, monkeypatch, ios, allowed):
    monkeypatch.setenv("BENCH_TUNNEL", "userspace")
    phone = add_phone(mux, 1, ios=ios, build="21F90")
    report = api.prepare(phone.udid, launch_check=False)
    (tunnel,) = [check for check in report.checks if check.name == "tunnel"]
    assert (tunnel.status == "ok") is allowed, tunnel
    if not allowed:
        assert tunnel.status == "person" and f"needs iOS 17.4+, this phone runs {ios}" in tunnel.line
        assert "remote tunneld" in tunnel.line
    health = api.health(phone.udid)
    assert (health.tunnel is None) is allowed and any("needs iOS 17.4+" in p for p in health.problems) is not allowed


def test_a_mistyped_bench_tunnel_is_named_not_taken_for_tunneld(mux, monkeypatch):
    monkeypatch.setenv("BENCH_TUNNEL", "userpsace")
    phone = add_phone(mux, 1, ios="17.5.1", build="21F90")
    report = api.prepare(phone.udid, launch_check=False)
    assert [(c.name, c.status) for c in report.checks][-2:] == [("tunnel", "person"), ("runner", "ok")]
    assert "BENCH_TUNNEL='userpsace' is not a tunnel mode — set BENCH_TUNNEL to tunneld or userspace" in \
        report.checks[-2].line
    assert any("BENCH_TUNNEL='userpsace'" in problem for problem in api.health(phone.udid).problems)


def test_no_tunneld_names_the_address_as_host_port(mux):
    phone = add_phone(mux, 1, ios="17.5.1", build="21F90")
    (problem,) = [p for p in api.health(phone.udid).problems if "tunneld" in p]
    assert "no tunneld answers at 127.0.0.1:9 " in problem


def test_a_trip_out_of_the_foreground_between_the_runners_checks_is_refused_too(mux, tmp_path):
    """The runner checks its state around each prediction; a brief inactive spell over before the next check leaves
    a complete-looking result whose app_states still show it. Before: taken as a result."""
    from bench.deploy.api import _left_after_active
    from bench.deploy.errors import AppLeftForeground

    assert not _left_after_active(["inactive", "active"])  # the launch itself
    assert _left_after_active(["active", "inactive", "active"]) and not _left_after_active(["active"])
    phone = add_phone(mux, 1)
    phone.faults.inactive_blip = True
    variants = {"int8-abcd": make_variant(tmp_path, "int8-abcd", 4)}
    job_id = api.deploy_job(phone.udid, job_spec(list(variants)), variants, make_inputs())
    with pytest.raises(AppLeftForeground, match="runner saw active → inactive → active and came back between its checks"):
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    assert api.device_status(phone.udid, 20, poll_s=0.05).thermal_state == "nominal"  # status jobs are not judged


def test_a_personalized_image_that_does_not_list_the_phone_is_one_line_not_a_device_refusal(mux, tunneld,
                                                                                            monkeypatch):
    """The cached image's build manifest has no identity for this phone (a model newer than the image): the mount
    stops before any TSS request. Before: "the device refused a request (NoSuchBuildIdentityError …)"."""
    import bench.deploy.diskimage

    # The seam says gs.apple.com is reachable; nothing is sent: with BuildIdentities [] the library stops first.
    monkeypatch.setattr(bench.deploy.diskimage, "network_reachable", lambda *_args, **_kwargs: True)
    _cache_personalized_image()
    phone = _ios17(mux, tunneld, ddi_mounted=False)
    report = api.prepare(phone.udid, launch_check=False)
    (image,) = [check for check in report.checks if check.name == "disk image"]
    assert image.status == "failed" and "does not list this iPhone model (iPhone15,2)" in image.line
    assert "mount it once from a Mac" in image.line and not phone.ddi_mounted
    assert [check.name for check in report.checks] == ["trust", "dev mode", "disk image", "tunnel", "runner"]
