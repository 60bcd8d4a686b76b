"""Launch and stop the runner with DVT process control.

Every iOS version needs a developer disk image mounted before DVT exists (checked here before each launch; mounted
by `bench devices prepare`, bench/deploy/prepare.py): the shared "Developer" image below iOS 17, the "Personalized"
image that Apple signs per device from iOS 17 on. Both are gone after every reboot.

Which transport carries DVT depends on iOS:
- iOS < 17: the lockdown connection itself.
- iOS >= 17: an RSD connection through a tunnel. tunneld (root, HTTP on 127.0.0.1:49151) is asked first; its
  blocking HTTP lookup runs off the event loop. With BENCH_TUNNEL=userspace a userspace tunnel (iOS 17.4+, no root)
  is opened instead. Tunnels cannot exist in tests: this seam raises TunnelUnavailable there.

Userspace tunnels with several phones: serialised, one at a time per process. pymobiledevice3 allows one userspace
tunnel per process (its TCP/IP stack is a process-global singleton) and guards it with an asyncio lock, i.e. per
event loop; the run stage drives each phone from its own thread with its own loop, so two iOS 17 phones would race
on that global (one fails with "already active", or worse, both touch one stack). The alternatives: one process per
phone would make the run stage ship jobs, log lines, results and Ctrl-C across process boundaries for a mode that
exists only for hosts without root; serialising costs parallelism only in that mode, keeps every other step (pushes,
health, pulls) parallel, and is correct by construction. A process-wide lock (`USERSPACE_TUNNEL`) is held from
opening the tunnel until it is closed, i.e. for one launched job; another phone waits (polling, so a waiting
coroutine can still be cancelled) and says so in its log. tunneld stays the recommended path for more than one phone:
it keeps one tunnel per phone outside our process and nothing is serialised.

A refused launch is classified by FrontBoard's reason (bench/deploy/launch_errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator

from bench.deploy.errors import (
    DeveloperModeOff,
    DiskImageMissing,
    LaunchFailed,
    RunnerNotInstalled,
    TunnelUnavailable,
)
from bench.deploy.lockdown import os_major

TUNNELD_ENV = "BENCH_TUNNELD_ADDRESS"  # host:port of tunneld, default 127.0.0.1:49151
TUNNEL_MODE_ENV = "BENCH_TUNNEL"  # "tunneld" (default) or "userspace"
TUNNELD_ACTION = ("start the tunnel daemon on this host and keep it running: "
                  "`sudo \"$PWD/.venv/bin/pymobiledevice3\" remote tunneld` from the repository (bench/deploy/"
                  "README.md §3.3; "
                  "or BENCH_TUNNEL=userspace for iOS 17.4+ without root)")
RESTART_TUNNELD = ("restart tunneld (`sudo systemctl restart bench-tunneld`, or `sudo \"$PWD/.venv/bin/"
                   "pymobiledevice3\" remote tunneld` from the repository; bench/deploy/README.md §3.3) and replug the "
                   "phone")
DEVELOPER_MODE_ACTION = ("run `bench devices prepare -d <name>` (turns it on from the host when the phone has no "
                         "passcode), or on the phone: Settings > Privacy & Security > Developer Mode > On, restart, "
                         "confirm")
DDI_ACTION = "run `bench devices prepare -d <name>` (mounts it; needed again after every reboot)"


def tunneld_address() -> tuple[str, int]:
    address = os.environ.get(TUNNELD_ENV, "127.0.0.1:49151")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TunnelUnavailable(f"{TUNNELD_ENV}={address!r} is not host:port",
                                action=f"set {TUNNELD_ENV} like 127.0.0.1:49151, or unset it")
    return host, int(port)


TUNNEL_MODES = ("tunneld", "userspace")


def tunnel_mode() -> str:
    """BENCH_TUNNEL, checked: a typo must not quietly mean tunneld (whose message then suggests what was meant)."""
    mode = os.environ.get(TUNNEL_MODE_ENV, "tunneld")
    if mode not in TUNNEL_MODES:
        raise TunnelUnavailable(f"{TUNNEL_MODE_ENV}={mode!r} is not a tunnel mode",
                                action=f"set {TUNNEL_MODE_ENV} to {' or '.join(TUNNEL_MODES)}, or unset it")
    return mode


USERSPACE_MIN_IOS = (17, 4)  # CoreDeviceProxy over lockdown; 17.0–17.3 have none (pymobiledevice3 then tries Wi-Fi)


def userspace_tunnel_possible(lockdown) -> bool:
    """Whether this phone's iOS offers the USB userspace tunnel (17.4+)."""
    parts = str(lockdown.product_version).split(".")
    if not all(part.isdigit() for part in parts[:2]):
        return True  # unknown: let the tunnel itself say
    return (int(parts[0]), int(parts[1]) if len(parts) > 1 else 0) >= USERSPACE_MIN_IOS


def disk_image_type(lockdown) -> str:
    """"Developer" (iOS < 17) or "Personalized" (17+), decided by pymobiledevice3's own cut-off."""
    from pymobiledevice3.services.mobile_image_mounter import image_type_for_device

    return image_type_for_device(lockdown)


async def ddi_mounted(lockdown) -> bool:
    """Whether this device's developer disk image (the type its iOS needs) is mounted."""
    from pymobiledevice3.services.mobile_image_mounter import MobileImageMounterService

    async with MobileImageMounterService(lockdown) as mounter:
        return await mounter.is_image_mounted(disk_image_type(lockdown))


async def developer_mode(lockdown) -> bool | None:
    """Developer Mode state (iOS 16+); None on older iOS, which has no such switch."""
    if not lockdown.has_developer_mode:
        return None
    return await lockdown.get_developer_mode_status()


async def _listed_tunnels(udid: str) -> list[dict]:
    """The tunnels tunneld lists for `udid` (raises TunnelUnavailable when tunneld is not running)."""
    from pymobiledevice3.exceptions import TunneldConnectionError
    from pymobiledevice3.tunneld.api import get_tunneld_tunnels

    address = tunneld_address()
    try:
        tunnels = await get_tunneld_tunnels(address)  # runs the blocking request in a thread
    except TunneldConnectionError:
        raise TunnelUnavailable(f"iOS 17+ needs a tunnel and no tunneld answers at {address[0]}:{address[1]}",
                                udid=udid, action=TUNNELD_ACTION) from None
    return tunnels.get(udid, [])


async def tunnel_listed(udid: str) -> bool:
    """Whether tunneld lists a tunnel for `udid` (raises TunnelUnavailable when tunneld is not running)."""
    return bool(await _listed_tunnels(udid))


@contextlib.asynccontextmanager
async def _rsd_through_tunneld(udid: str) -> AsyncIterator:
    from pymobiledevice3.exceptions import PyMobileDevice3Exception
    from pymobiledevice3.tunneld import api as tunneld_api

    listed = await _listed_tunnels(udid)
    if not listed:
        raise TunnelUnavailable("tunneld runs but lists no tunnel for this device", udid=udid,
                                action="unlock the phone, replug it, and check `curl 127.0.0.1:49151`")
    # get_tunneld_device_by_udid would repeat the blocking HTTP request on the loop and raise IndexError when the
    # connection fails; connect to the listed tunnel directly instead (pinned 11.45 internals).
    try:
        rsds = await tunneld_api._create_rsds_from_tunnels({udid: listed}, tunneld_address())
    except (PyMobileDevice3Exception, OSError, asyncio.TimeoutError) as err:
        raise TunnelUnavailable(f"the tunnel tunneld lists does not speak RSD: {err}", udid=udid,
                                action=RESTART_TUNNELD) from None
    if not rsds:
        raise TunnelUnavailable("tunneld lists the device but its tunnel does not answer", udid=udid,
                                action=RESTART_TUNNELD)
    rsd = rsds[0]
    try:
        yield rsd
    finally:
        await rsd.close()


USERSPACE_TUNNEL = threading.Lock()  # one userspace tunnel per process (see the module docstring)


@contextlib.asynccontextmanager
async def userspace_slot(udid: str, on_wait=None, poll_s: float = 0.2) -> AsyncIterator[None]:
    """Hold the process's single userspace-tunnel slot; waits (without blocking the loop) while another phone has it."""
    told = False
    while not USERSPACE_TUNNEL.acquire(blocking=False):
        if not told and on_wait is not None:
            on_wait(f"{udid}: waiting for the userspace tunnel (one per process; another phone holds it)")
            told = True
        await asyncio.sleep(poll_s)
    try:
        yield
    finally:
        USERSPACE_TUNNEL.release()


@contextlib.asynccontextmanager
async def _rsd_through_userspace(udid: str, on_wait=None) -> AsyncIterator:
    from pymobiledevice3.exceptions import PyMobileDevice3Exception
    from pymobiledevice3.remote.userspace_tunnel import UserspaceRsdTunnel

    async with userspace_slot(udid, on_wait):
        tunnel = UserspaceRsdTunnel(serial=udid, autopair=False)
        try:
            rsd = await tunnel.aopen()
        except PyMobileDevice3Exception as err:
            raise TunnelUnavailable(f"userspace tunnel failed: {err}", udid=udid, action=TUNNELD_ACTION) from None
        try:
            yield rsd
        finally:
            await tunnel.aclose()


@contextlib.asynccontextmanager
async def dvt_transport(lockdown, udid: str, on_wait=None) -> AsyncIterator:
    """The provider DVT runs over for this device, checked first so failures say what to do."""
    if await developer_mode(lockdown) is False:
        raise DeveloperModeOff("Developer Mode is off, development-signed apps cannot run", udid=udid,
                               action=DEVELOPER_MODE_ACTION)
    if not await ddi_mounted(lockdown):
        raise DiskImageMissing(f"no {disk_image_type(lockdown)} disk image is mounted (iOS "
                               f"{lockdown.all_values.get('ProductVersion')}), so no app can be launched", udid=udid,
                               action=DDI_ACTION)
    if os_major(lockdown) < 17:
        yield lockdown
        return
    if tunnel_mode() == "userspace":
        async with _rsd_through_userspace(udid, on_wait) as rsd:
            yield rsd
        return
    async with _rsd_through_tunneld(udid) as rsd:
        yield rsd


class Runner:
    """Process control for one app over one DVT connection: launch, is_running, kill."""

    def __init__(self, provider, udid: str):
        self._provider, self.udid = provider, udid
        self._dvt = self._control = None

    async def __aenter__(self) -> "Runner":
        from pymobiledevice3.exceptions import PyMobileDevice3Exception
        from pymobiledevice3.services.dvt.instruments.dvt_provider import DvtProvider
        from pymobiledevice3.services.dvt.instruments.process_control import ProcessControl

        try:
            self._dvt = DvtProvider(self._provider)
            await self._dvt.connect()
            self._control = ProcessControl(self._dvt)
            await self._control.connect()
        except (PyMobileDevice3Exception, OSError, ConnectionError) as err:
            await self.__aexit__(None, None, None)
            raise LaunchFailed(f"DVT process control unavailable: {err}", udid=self.udid,
                               action="check Developer Mode is on and the disk image/tunnel is up "
                                      "(`bench devices`)") from None
        return self

    async def __aexit__(self, *_exc) -> None:
        from pymobiledevice3.exceptions import PyMobileDevice3Exception

        closing_errors = (PyMobileDevice3Exception, OSError, ConnectionError, RuntimeError)
        if self._control is not None:
            with contextlib.suppress(*closing_errors):  # closing a dead channel must not hide the real error
                await self._control.close()
        if self._dvt is not None:
            with contextlib.suppress(*closing_errors):
                await self._dvt.close()

    async def launch(self, bundle_id: str, arguments: list[str], environment: dict[str, str]) -> int:
        from pymobiledevice3.dtx.exceptions import DTXNsError, DTXProtocolError
        from pymobiledevice3.exceptions import ConnectionTerminatedError, PyMobileDevice3Exception

        from bench.deploy.launch_errors import INSTALL_ACTION, classify

        try:
            pid = await self._control.launch(bundle_id, arguments=arguments, environment=environment,
                                             kill_existing=True)
        except (ConnectionTerminatedError, ConnectionError, asyncio.IncompleteReadError):
            raise  # the phone went away (cable, reboot): bench.deploy.api says "lost contact", not a refused launch
        except AssertionError:
            raise RunnerNotInstalled(f"DVT returned no process for {bundle_id}", udid=self.udid,
                                     action=INSTALL_ACTION) from None
        except (PyMobileDevice3Exception, DTXNsError, DTXProtocolError, OSError, ConnectionError) as err:
            raise classify(err, bundle_id, self.udid) from None
        if not pid:  # the library's own check is an `assert`, gone under `python -O`
            raise RunnerNotInstalled(f"DVT returned no process for {bundle_id}", udid=self.udid,
                                     action=INSTALL_ACTION)
        return int(pid)

    async def pid_of(self, bundle_id: str) -> int:
        """PID of the app if it runs, else 0."""
        return int(await self._control.process_identifier_for_bundle_identifier(bundle_id) or 0)

    async def kill(self, pid: int) -> None:
        await self._control.kill(pid)
