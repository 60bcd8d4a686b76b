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


# FrontBoard's refusals as a real phone nests them (FBSOpenApplicationErrorDomain code, reason, service-level
# code and description, what SpringBoard says).
REFUSALS = {
    "NotFound": (4, 4, "InvalidRequest", "Application info provider (FBSApplicationLibrary) returned nil for \"{b}\""),
    "Locked": (7, 1, "RequestDenied", "Unable to launch {b} because the device was not, or could not be, unlocked."),
    "Security": (3, 1, "RequestDenied", "Unable to launch {b} because it has an invalid code signature, inadequate "
                                        "entitlements or its profile has not been explicitly trusted by the user."),
}


def launch_refused(bundle_id: str, reason: str) -> NSError:
    """What DVT process control answers when FrontBoard refuses: code 2 of deviceprocesscontrolservice, with
    FrontBoard's service error and its reason nested under NSUnderlyingError (str() of it shows neither)."""
    code, service_code, service_reason, text = REFUSALS[reason]
    text = text.format(b=bundle_id)
    frontboard = NSError(code, "FBSOpenApplicationErrorDomain",
                         {"NSLocalizedDescription": text, "BSErrorCodeDescription": reason,
                          "NSLocalizedFailureReason": text})
    service = NSError(service_code, "FBSOpenApplicationServiceErrorDomain",
                      {"NSLocalizedDescription": f"The request to open \"{bundle_id}\" failed.",
                       "NSLocalizedFailureReason": "The request was denied by service delegate (SBMainWorkspace) for "
                                                   f"reason: {reason} (\"{text}\").",
                       "BSErrorCodeDescription": service_reason, "NSUnderlyingError": frontboard})
    return NSError(2, "com.apple.dt.deviceprocesscontrolservice",
                   {"NSLocalizedDescription": f"Request to launch {bundle_id} failed.",
                    "NSLocalizedFailureReason": service.user_info["NSLocalizedFailureReason"],
                    "NSUnderlyingError": service})


async def serve_dvt(device, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = DTXConnection(reader, writer)
    connection.ctx["fake_device"] = device
    connection.register_service(FakeProcessControl)
    await connection.connect()
    try:
        await connection.wait_disconnected()
    finally:
        await connection.aclose()
