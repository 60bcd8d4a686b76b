"""`bench devices prepare`: per phone, do what a person need not do by hand and say exactly what remains.

Checks in the order a phone needs them, each one line (`Check`); a check that needs a person stops the ones that
depend on it:

1. trust      — the host holds a pair record (pairing is a person tapping Trust, never done here)
2. dev mode   — Developer Mode on (iOS 16+); off: reveal the toggle, or with `enable_developer_mode` ask AMFI to turn
                it on (the phone restarts and a person confirms; refused while a passcode is set)
3. disk image — the image this iOS needs (Developer < 17, Personalized 17+), mounted here when missing
                (bench/deploy/diskimage.py: a clear line when Apple's signing server cannot be reached)
4. tunnel     — iOS 17+: tunneld lists the phone (or userspace mode, opened per job)
5. runner     — installed (building and signing it needs a Mac: runner/README.md)
6. launch     — a "status" job actually launched and answered: catches a locked phone and an untrusted developer
                profile, which nothing on the host can see beforehand
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bench.deploy.errors import DeviceError, NotPaired

OK, DONE, PERSON, FAILED, SKIPPED = "ok", "done", "person", "failed", "skipped"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | done (fixed here) | person (needs a person) | failed | skipped (an earlier check blocks it)
    line: str


@dataclass
class PrepareReport:
    udid: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return all(check.status in (OK, DONE) for check in self.checks)

    @property
    def remaining(self) -> list[str]:
        """What a person still has to do, one line each."""
        return [f"{check.name}: {check.line}" for check in self.checks if check.status in (PERSON, FAILED)]


def _needs(err: DeviceError) -> str:
    from bench.deploy.session import problem_line

    return problem_line(err)


def prepare(udid: str, *, bundle_id: str, enable_developer_mode: bool = False, launch_check: bool = True,
            timeout_s: float = 60.0, poll_s: float = 1.0) -> PrepareReport:
    """Run the checks on one phone (synchronous: each part owns its event loop, like bench.deploy.api)."""
    from bench.deploy.api import _run

    report = PrepareReport(udid)
    try:
        _run(_host_side_checks(report, udid, bundle_id, enable_developer_mode), udid)
    except DeviceError as err:  # lost mid-way (unplugged, usbmuxd gone): keep the checks done, say why, go on
        report.checks.append(Check("connection", FAILED, _needs(err)))
    if not launch_check:
        return report
    if not report.ready:
        report.checks.append(Check("launch", SKIPPED, "fix the lines above first"))
        return report
    report.checks.append(_launch(udid, bundle_id, timeout_s, poll_s))
    return report


async def _host_side_checks(report: PrepareReport, udid: str, bundle_id: str, enable_developer_mode: bool) -> None:
    """Appends to `report` as it goes, so checks done before the phone is lost are still shown."""
    from bench.deploy.session import DeviceSession

    try:
        async with DeviceSession(udid, bundle_id=bundle_id) as device:
            report.checks.append(Check("trust", OK, "this host is trusted (pair record present)"))
            await _developer_mode(device, report, enable_developer_mode)
            if report.checks[-1].status in (OK, DONE):
                await _disk_image(device, report)
            else:
                report.checks.append(Check("disk image", SKIPPED, "needs Developer Mode first"))
            await _tunnel(device, report)
            await _runner(device, report)
    except NotPaired as err:
        report.checks.append(Check("trust", PERSON, _needs(err)))
    except DeviceError as err:
        report.checks.append(Check("connection", FAILED, _needs(err)))


async def _developer_mode(device, report: PrepareReport, enable: bool) -> None:
    from pymobiledevice3.exceptions import DeviceHasPasscodeSetError, PyMobileDevice3Exception
    from pymobiledevice3.services.amfi import AmfiService

    from bench.deploy import launch

    state = await launch.developer_mode(device.lockdown)
    if state is None:
        report.checks.append(Check("dev mode", OK, "not needed before iOS 16"))
        return
    if state:
        report.checks.append(Check("dev mode", OK, "Developer Mode is on"))
        return
    amfi = AmfiService(device.lockdown)
    by_hand = "on the phone: Settings > Privacy & Security > Developer Mode > On, restart, confirm"
    try:
        if not enable:
            await amfi.reveal_developer_mode_option_in_ui()
            report.checks.append(Check("dev mode", PERSON, "Developer Mode is off: run prepare again with "
                                                           f"--enable-developer-mode, or {by_hand}"))
            return
        await amfi.enable_developer_mode(enable_post_restart=False)
    except DeviceHasPasscodeSetError:
        report.checks.append(Check("dev mode", PERSON, "Developer Mode is off and cannot be turned on from the host "
                                                       f"while a passcode is set: remove the passcode, or {by_hand}"))
        return
    except PyMobileDevice3Exception as err:
        report.checks.append(Check("dev mode", FAILED, f"AMFI refused ({err}): {by_hand}"))
        return
    report.checks.append(Check("dev mode", PERSON, "asked the phone to turn Developer Mode on: it restarts now; "
                                                   "unlock it, tap Turn On in the prompt, then run prepare again"))


async def _disk_image(device, report: PrepareReport) -> None:
    from bench.deploy import diskimage

    try:
        mounted = await diskimage.mount(device.lockdown, device.udid)
    except DeviceError as err:
        report.checks.append(Check("disk image", FAILED, _needs(err)))
        return
    report.checks.append(Check("disk image", OK if mounted.already else DONE, mounted.how))


async def _tunnel(device, report: PrepareReport) -> None:
    from bench.deploy import launch

    if device.os_major < 17:
        report.checks.append(Check("tunnel", OK, "not needed before iOS 17 (DVT runs over USB lockdown)"))
        return
    try:
        userspace = launch.tunnel_mode() == "userspace"
    except DeviceError as err:
        report.checks.append(Check("tunnel", PERSON, _needs(err)))
        return
    if userspace:
        if not launch.userspace_tunnel_possible(device.lockdown):
            report.checks.append(Check("tunnel", PERSON, f"BENCH_TUNNEL=userspace needs iOS 17.4+, this phone runs "
                                                         f"{device.lockdown.product_version}: {launch.TUNNELD_ACTION}"))
            return
        report.checks.append(Check("tunnel", OK, "userspace tunnel (BENCH_TUNNEL=userspace) is opened per job; "
                                                 "needs iOS 17.4+"))
        return
    try:
        listed = await launch.tunnel_listed(device.udid)
    except DeviceError as err:
        report.checks.append(Check("tunnel", PERSON, _needs(err)))
        return
    if listed:
        report.checks.append(Check("tunnel", OK, "tunneld lists a tunnel for this phone"))
    else:
        report.checks.append(Check("tunnel", PERSON, "tunneld runs but lists no tunnel for this phone: unlock it, "
                                                     "replug it, and check `curl 127.0.0.1:49151`"))


async def _runner(device, report: PrepareReport) -> None:
    from bench.deploy import install

    app = await install.lookup(device.lockdown, device.bundle_id)
    if app is None:
        report.checks.append(Check("runner", PERSON, f"{device.bundle_id} is not installed: build it on a Mac "
                                                     "(runner/README.md), then `bench devices install "
                                                     "BenchRunner.ipa -d <name>`"))
    else:
        report.checks.append(Check("runner", OK, f"{app.bundle_id} {app.version} ({app.build}) installed"))


def _launch(udid: str, bundle_id: str, timeout_s: float, poll_s: float) -> Check:
    """Launch the runner on a status job: the only way to see a locked phone or an untrusted developer profile."""
    from bench.deploy.api import device_status

    try:
        status = device_status(udid, timeout_s, poll_s=poll_s, bundle_id=bundle_id)
    except DeviceError as err:
        return Check("launch", PERSON, _needs(err))
    return Check("launch", OK, f"the runner launched and answered (thermal {status.thermal_state}, "
                               f"iOS {status.os_version} {status.os_build})")
