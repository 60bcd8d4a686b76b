"""Device failures, one class per thing a lab person can act on. All are bench.errors.DeviceError.

Each message names the device (udid) and says what a person must do; the CLI prints it as one line and the run
stage records `kind` (the class name) and the message in run.json.
"""

from __future__ import annotations

from bench.errors import DeviceError


class DeployError(DeviceError):
    """Base of the deploy errors; keeps the bare message so a device name can be attached later."""

    def __init__(self, message: str, *, udid: str | None = None, action: str | None = None):
        self.message = message
        super().__init__(message, udid=udid, action=action)

    @property
    def kind(self) -> str:
        return type(self).__name__


class UsbmuxUnavailable(DeployError):
    """No usbmuxd socket (no daemon running, or a bad USBMUXD_SOCKET_ADDRESS)."""


class DeviceNotFound(DeployError):
    """The device is not attached (or was unplugged)."""


class NotPaired(DeployError):
    """The host holds no valid pair record: someone must tap Trust on the phone once."""


class DeveloperModeOff(DeployError):
    """iOS 16+ without Developer Mode: development-signed apps cannot run."""


class DiskImageMissing(DeployError):
    """iOS < 17 without the Developer Disk Image mounted: DVT process control is unavailable."""


class TunnelUnavailable(DeployError):
    """iOS 17+ without a reachable tunnel (tunneld or a userspace tunnel)."""


class RunnerNotInstalled(DeployError):
    """The benchmark runner app is not on the device."""


class InstallFailed(DeployError):
    """installd refused the runner (signing, profile, capabilities)."""


class PushFailed(DeployError):
    """A file transfer to the device failed or was cut; nothing partial is left under a final name."""


class LaunchFailed(DeployError):
    """DVT could not start the runner."""


class RunnerTimeout(DeployError):
    """The runner did not write DONE in time; it was killed."""


class RunnerCrashed(DeployError):
    """The runner exited without writing DONE."""


class ResultInvalid(DeployError):
    """A pulled result file is malformed, oversized, path-escaping or of an unknown schema version."""
