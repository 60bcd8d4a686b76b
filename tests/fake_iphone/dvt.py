"""DVT process control served with pymobiledevice3's own DTX classes (server side of the same protocol)."""

from __future__ import annotations

import asyncio

from pymobiledevice3.dtx import DTXConnection, DTXService, dtx_on_invoke
from pymobiledevice3.dtx.ns_types import NSError


class FakeProcessControl(DTXService):
    IDENTIFIER = "com.apple.instruments.server.services.processcontrol"

    @property
    def device(self):
        return self._ctx["fake_device"]

    @dtx_on_invoke("launchSuspendedProcessWithDevicePath:bundleIdentifier:environment:arguments:options:")
    async def _launch(self, path, bundle_id, environment, arguments, options):
        from .runner import launch

        return launch(self.device, bundle_id, list(arguments or []), dict(environment or {}), dict(options or {}))

    @dtx_on_invoke("processIdentifierForBundleIdentifier:")
    async def _pid_for(self, bundle_id):
        return next((pid for pid, bundle in self.device.processes.items() if bundle == bundle_id), 0)

    @dtx_on_invoke("sendSignal:toPid:")
    async def _signal(self, signal, pid):
        from .runner import kill

        kill(self.device, int(getattr(pid, "value", pid)))
        return None

    @dtx_on_invoke("killPid:")
    async def _kill(self, pid):
        from .runner import kill

        kill(self.device, int(getattr(pid, "value", pid)))
        return None


def not_installed(bundle_id: str) -> NSError:
    return NSError(4, "FBSOpenApplicationErrorDomain",
                   {"NSLocalizedDescription": f"The request to open \"{bundle_id}\" failed: application not found"})


async def serve_dvt(device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = DTXConnection(reader, writer)
    connection.ctx["fake_device"] = device
    connection.register_service(FakeProcessControl)
    await connection.connect()
    try:
        await connection.wait_disconnected()
    finally:
        await connection.aclose()
