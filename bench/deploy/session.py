"""DeviceSession: the one narrow interface every device operation goes through (async; one event loop per device).

    async with DeviceSession(udid) as device:
        await device.health()             # HealthReport
        await device.install(path)        # installation_proxy
        await device.push_package(dir, sha) / push_input(bytes) / write_job(job)   # house_arrest + AFC
        await device.run(job_id, timeout_s, on_log)   # DVT launch, syslog tail, wait DONE, kill on timeout, pull

Each operation lives in its own module (usbmux, lockdown, install, container, launch, logs, battery); this class only
holds the connections and sequences them. Sync callers use bench.deploy.api.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.deploy import container
from bench.deploy.errors import (
    DeveloperModeOff,
    DeviceError,
    DeviceNotFound,
    ResultInvalid,
    RunnerCrashed,
    RunnerNotDebuggable,
    RunnerTimeout,
)
from bench.deploy.install import RUNNER_BUNDLE_ID, AppInfo


@dataclass
class HealthReport:
    udid: str
    attached: bool = False
    paired: bool | None = None
    model_identifier: str | None = None
    hardware_model: str | None = None
    os_version: str | None = None
    os_build: str | None = None
    name: str | None = None
    developer_mode: bool | None = None  # None: iOS < 16 (no such switch) or unknown
    disk_image: str | None = None  # the developer disk image this iOS needs: "Developer" (< 17) or "Personalized"
    ddi_mounted: bool | None = None  # whether that image is mounted (every iOS version; gone after a reboot)
    tunnel: bool | None = None  # iOS >= 17 only: tunneld lists the device / userspace mode chosen
    battery_percent: int | None = None
    battery_temperature_c: float | None = None
    charging: bool | None = None
    runner: AppInfo | None = None
    passcode: bool | None = None  # lockdown's PasswordProtected: the phone locks itself, and then refuses launches
    problems: list[str] = field(default_factory=list)  # one actionable line each
    notes: list[str] = field(default_factory=list)  # worth knowing, not blocking (e.g. a passcode is set)

    @property
    def ready(self) -> bool:
        return self.attached and bool(self.paired) and not self.problems


def problem_line(err: DeviceError) -> str:
    """The error's line without the leading "<udid>: " (a health report already belongs to one device)."""
    return str(err).split(": ", 1)[-1] if err.udid else str(err)


class DeviceSession:
    def __init__(self, udid: str, *, bundle_id: str = RUNNER_BUNDLE_ID):
        self.udid, self.bundle_id = udid, bundle_id
        self.lockdown = None

    async def __aenter__(self) -> "DeviceSession":
        from bench.deploy import lockdown

        self.lockdown = await lockdown.connect(self.udid)
        return self

    async def __aexit__(self, *_exc) -> None:
        if self.lockdown is not None:
            try:
                await self.lockdown.close()
            except (OSError, ConnectionError):
                pass  # the device may already be gone; nothing to release then

    @property
    def os_major(self) -> int:
        from bench.deploy.lockdown import os_major

        return os_major(self.lockdown)

    # ---- health -------------------------------------------------------------------------------------------------
    async def health(self) -> HealthReport:
        from bench.deploy import battery, install, launch, outcomes
        from bench.deploy.lockdown import identity

        report = HealthReport(self.udid, attached=True, paired=True, **identity(self.lockdown))
        report.passcode = self.lockdown.all_values.get("PasswordProtected")
        if report.passcode:
            report.notes.append("a passcode is set: the phone locks itself and a locked phone refuses every launch; "
                                "remove it for unattended runs (Settings > Face ID & Passcode)")
        report.developer_mode = await launch.developer_mode(self.lockdown)
        if report.developer_mode is False:
            report.problems.append(problem_line(DeveloperModeOff(
                "Developer Mode is off", udid=self.udid,
                action=launch.DEVELOPER_MODE_ACTION)))
        report.disk_image = launch.disk_image_type(self.lockdown)
        report.ddi_mounted = await launch.ddi_mounted(self.lockdown)
        if not report.ddi_mounted:
            report.problems.append(f"no {report.disk_image} disk image mounted, every launch would fail: "
                                   f"{launch.DDI_ACTION}")
        try:
            if self.os_major < 17:
                pass  # DVT runs over lockdown itself
            elif launch.tunnel_mode() == "userspace":
                report.tunnel = None  # opened per job (iOS 17.4+); nothing to check ahead of time
                if not launch.userspace_tunnel_possible(self.lockdown):
                    report.tunnel = False
                    report.problems.append(f"BENCH_TUNNEL=userspace needs iOS 17.4+, this phone runs "
                                           f"{self.lockdown.product_version}: {launch.TUNNELD_ACTION}")
            else:
                report.tunnel = await launch.tunnel_listed(self.udid)
                if not report.tunnel:
                    report.problems.append("tunneld lists no tunnel for this device: " + launch.TUNNELD_ACTION)
        except DeviceError as err:
            report.tunnel = False
            report.problems.append(problem_line(err))
        level = await battery.read_battery(self.lockdown)
        report.battery_percent, report.battery_temperature_c = level.level_percent, level.temperature_c
        report.charging = level.charging
        if (failure := outcomes.last_failure(self.udid)) is not None:  # what the host cannot see before a launch
            report.problems.append(f"{failure} (`bench devices prepare` launches it again to check)")
        report.runner = await install.lookup(self.lockdown, self.bundle_id)
        if report.runner is None:
            report.problems.append("runner not installed: run `bench devices install runner/build/BenchRunner.ipa -d <name>`")
        else:
            await self._check_container(report)
        return report

    async def _check_container(self, report: HealthReport) -> None:
        """Open the runner's container, as every job will: a distribution-signed runner installs and looks fine in
        installd's list, but house_arrest (and DVT) refuse it, so only this says it is not ready."""
        try:
            async with self.container():
                pass
        except RunnerNotDebuggable as err:
            report.problems.append(problem_line(err))

    async def install(self, package: Path) -> AppInfo | None:
        from bench.deploy import install

        await install.install(self.lockdown, Path(package), self.udid)
        return await install.lookup(self.lockdown, self.bundle_id)

    async def battery(self):
        from bench.deploy.battery import read_battery

        return await read_battery(self.lockdown)

    # ---- files --------------------------------------------------------------------------------------------------
    def container(self):
        """The runner's data container (async context manager yielding an AFC client)."""
        return _Container(self)

    # ---- run ----------------------------------------------------------------------------------------------------
    async def run(self, job_id: str, timeout_s: float, on_log: Callable[[str], None] | None = None, *,
                  poll_s: float = 1.0) -> tuple[bytes, bytes]:
        """Launch the runner on `job_id`, wait for DONE, return the raw bytes of (result.json, job.json), unvalidated.

        Never reads result.json before DONE exists, so a partial or half-written result is never taken as complete.
        """
        from bench.deploy import launch
        from bench.deploy.logs import SyslogTail

        results = f"{container.RESULTS}/{job_id}"
        async with self.container() as afc:
            if await afc.exists(results):
                await afc.rm(results, force=True)  # a rerun of the same job starts clean
            async with SyslogTail(self.lockdown, on_log or (lambda _line: None)) as tail:
                async with launch.dvt_transport(self.lockdown, self.udid, on_log) as provider:
                    async with launch.Runner(provider, self.udid) as runner:
                        pid = await runner.launch(self.bundle_id, ["--job", job_id, "--exit-when-done"],
                                                 {"BENCH_JOB_ID": job_id})
                        tail.set_pid(pid)
                        await self._wait_done(afc, runner, pid, results, timeout_s, poll_s)
                await tail.drain()
            result = await container.pull(afc, f"{results}/result.json", self.udid)
            job = await container.pull(afc, f"{container.JOBS}/{job_id}/job.json", self.udid)
            return result, job

    async def _wait_done(self, afc, runner, pid: int, results: str, timeout_s: float, poll_s: float) -> None:
        from pymobiledevice3.exceptions import PyMobileDevice3Exception

        deadline = time.monotonic() + timeout_s
        gone_once = False
        try:
            while True:
                if await afc.exists(f"{results}/DONE"):
                    return
                if time.monotonic() >= deadline:
                    await runner.kill(pid)
                    raise RunnerTimeout(f"no DONE after {timeout_s:.0f} s; the runner (pid {pid}) was killed",
                                        udid=self.udid, action="if the job is only slow, raise --runner-timeout "
                                                               "(run.yaml runner_timeout_s); else see the runner's log")
                if await runner.pid_of(self.bundle_id) != pid:
                    if gone_once:  # one more look for DONE: the runner may exit right after writing it
                        partial = await afc.exists(f"{results}/result.partial.json")
                        raise RunnerCrashed(
                            f"the runner (pid {pid}) exited without writing DONE"
                            f"{'; result.partial.json was left and is not used' if partial else ''}",
                            udid=self.udid, action="see the runner's log; look for a crash log in "
                                                   "Settings > Privacy > Analytics Data")
                    gone_once = True
                await asyncio.sleep(poll_s)
        except (PyMobileDevice3Exception, OSError, asyncio.IncompleteReadError) as err:
            raise DeviceNotFound(f"lost while waiting for the runner: {err or type(err).__name__}", udid=self.udid,
                                 action="reconnect the cable and run the job again") from None


class _Container:
    def __init__(self, session: DeviceSession):
        self._session, self._afc = session, None

    async def __aenter__(self):
        self._afc = await container.open_container(self._session.lockdown, self._session.bundle_id,
                                                   self._session.udid)
        await self._afc.__aenter__()
        return self._afc

    async def __aexit__(self, *_exc) -> None:
        try:
            await self._afc.aclose()
        except (OSError, ConnectionError):
            pass  # the device may already be gone
        finally:
            container.settle_requests(self._afc)  # aclose fails what was still in flight: read those errors too


def parse_json(raw: bytes, udid: str, what: str) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultInvalid(f"{what} is not valid JSON: {err}", udid=udid,
                            action="check the runner version matches the harness") from None
    if not isinstance(value, dict):
        raise ResultInvalid(f"{what} is not a JSON object", udid=udid)
    return value
