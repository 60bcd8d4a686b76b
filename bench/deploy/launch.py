"""Launch and stop the runner with DVT process control.

Which transport carries DVT depends on iOS:
- iOS < 17: the lockdown connection itself, once the Developer Disk Image is mounted (checked here, never mounted
  here: `pymobiledevice3 mounter auto-mount` downloads images, a lab step).
- iOS >= 17: an RSD connection through a tunnel. tunneld (root, HTTP on 127.0.0.1:49151) is asked first; its
  blocking HTTP lookup runs off the event loop. With BENCH_TUNNEL=userspace a userspace tunnel (iOS 17.4+, no root,
  one per process) is opened instead. Tunnels cannot exist in tests: this seam raises TunnelUnavailable there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
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
TUNNELD_ACTION = ("start the tunnel daemon once on this host: `sudo pymobiledevice3 remote tunneld` "
                  "(or set BENCH_TUNNEL=userspace for iOS 17.4+ without root)")
DEVELOPER_MODE_ACTION = "Settings > Privacy & Security > Developer Mode > On, restart the phone and confirm"
DDI_ACTION = "mount the Developer Disk Image once per boot: `pymobiledevice3 mounter auto-mount --udid {udid}`"


def tunneld_address() -> tuple[str, int]:
    address = os.environ.get(TUNNELD_ENV, "127.0.0.1:49151")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TunnelUnavailable(f"{TUNNELD_ENV}={address!r} is not host:port",
                                action=f"set {TUNNELD_ENV} like 127.0.0.1:49151, or unset it")
    return host, int(port)


def tunnel_mode() -> str:
    return os.environ.get(TUNNEL_MODE_ENV, "tunneld")


async def ddi_mounted(lockdown) -> bool:
    from pymobiledevice3.services.mobile_image_mounter import MobileImageMounterService

    async with MobileImageMounterService(lockdown) as mounter:
        return await mounter.is_image_mounted("Developer")


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
        raise TunnelUnavailable(f"iOS 17+ needs a tunnel and no tunneld answers at {address}", udid=udid,
                                action=TUNNELD_ACTION) from None
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
                                action="restart tunneld (`sudo pymobiledevice3 remote tunneld`) and replug the "
                                       "phone") from None
    if not rsds:
        raise TunnelUnavailable("tunneld lists the device but its tunnel does not answer", udid=udid,
                                action="restart tunneld (`sudo pymobiledevice3 remote tunneld`) and replug the phone")
    rsd = rsds[0]
    try:
        yield rsd
    finally:
        await rsd.close()


@contextlib.asynccontextmanager
async def _rsd_through_userspace(udid: str) -> AsyncIterator:
    from pymobiledevice3.exceptions import PyMobileDevice3Exception
    from pymobiledevice3.remote.userspace_tunnel import UserspaceRsdTunnel

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
async def dvt_transport(lockdown, udid: str) -> AsyncIterator:
    """The provider DVT runs over for this device, checked first so failures say what to do."""
    if await developer_mode(lockdown) is False:
        raise DeveloperModeOff("Developer Mode is off, development-signed apps cannot run", udid=udid,
                               action=DEVELOPER_MODE_ACTION)
    if os_major(lockdown) < 17:
        if not await ddi_mounted(lockdown):
            raise DiskImageMissing("the Developer Disk Image is not mounted", udid=udid,
                                   action=DDI_ACTION.format(udid=udid))
        yield lockdown
        return
    opener = _rsd_through_userspace if tunnel_mode() == "userspace" else _rsd_through_tunneld
    async with opener(udid) as rsd:
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
        from pymobiledevice3.exceptions import PyMobileDevice3Exception

        try:
            pid = await self._control.launch(bundle_id, arguments=arguments, environment=environment,
                                             kill_existing=True)
        except AssertionError:
            raise RunnerNotInstalled(f"DVT returned no process for {bundle_id}", udid=self.udid,
                                     action="install the runner with `bench devices install Runner.ipa`") from None
        except (PyMobileDevice3Exception, DTXNsError, DTXProtocolError, OSError, ConnectionError) as err:
            text = str(err)
            if "not found" in text.lower() or "No such" in text or "FBSOpenApplication" in text:
                raise RunnerNotInstalled(f"cannot launch {bundle_id}: {text}", udid=self.udid,
                                         action="install the runner with `bench devices install Runner.ipa`") from None
            raise LaunchFailed(f"cannot launch {bundle_id}: {text}", udid=self.udid,
                               action="unlock the phone and trust the developer certificate in Settings") from None
        if not pid:  # the library's own check is an `assert`, gone under `python -O`
            raise RunnerNotInstalled(f"DVT returned no process for {bundle_id}", udid=self.udid,
                                     action="install the runner with `bench devices install Runner.ipa`")
        return int(pid)

    async def pid_of(self, bundle_id: str) -> int:
        """PID of the app if it runs, else 0."""
        return int(await self._control.process_identifier_for_bundle_identifier(bundle_id) or 0)

    async def kill(self, pid: int) -> None:
        await self._control.kill(pid)
