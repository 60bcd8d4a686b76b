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

    def with_detail(self, detail: str) -> "DeployError":
        """The same error (class, device, action, attributes) with `detail` added to its message."""
        copy = type(self)(f"{self.message}; {detail}", udid=self.udid, action=self.action)
        for key, value in vars(self).items():
            copy.__dict__.setdefault(key, value)
        return copy


class UsbmuxUnavailable(DeployError):
    """No usbmuxd socket (no daemon running, or a bad USBMUXD_SOCKET_ADDRESS)."""


class DeviceNotFound(DeployError):
    """The device is not attached (or was unplugged)."""


class NotPaired(DeployError):
    """The host holds no valid pair record: someone must tap Trust on the phone once."""


class DeveloperModeOff(DeployError):
    """iOS 16+ without Developer Mode: development-signed apps cannot run."""


class DiskImageMissing(DeployError):
    """No developer disk image mounted (Developer on iOS < 17, Personalized on 17+; gone after every reboot):
    DVT process control is unavailable."""

    quarantine_reason = "no disk image mounted: run `bench devices prepare`"


class DiskImageUnavailable(DeployError):
    """The disk image could not be fetched or signed (Apple's signing server or the image download unreachable)."""


class TunnelUnavailable(DeployError):
    """iOS 17+ without a reachable tunnel (tunneld or a userspace tunnel)."""


class RunnerNotInstalled(DeployError):
    """The benchmark runner app is not on the device."""


class RunnerNotDebuggable(DeployError):
    """The runner is installed but its data container cannot be opened: it is signed for distribution (no
    get-task-allow), so house_arrest refuses it and DVT could not launch it either."""


class InstallFailed(DeployError):
    """installd refused the runner (signing, profile, capabilities)."""


class PushFailed(DeployError):
    """A file transfer to the device failed or was cut; nothing partial is left under a final name."""


class LaunchFailed(DeployError):
    """DVT could not start the runner (a reason FrontBoard did not name, or a transport failure)."""


class PhoneLocked(LaunchFailed):
    """FrontBoard refused the launch because the phone is locked (reason "Locked"). Retried after a wait; a phone
    still locked after the retries is quarantined for the run with "unlock it" as the reason."""

    transient = True
    retry_after_s = 60.0  # long enough for a person walking by to unlock it
    quarantine_reason = "phone locked: unlock it (and set Auto-Lock to Never)"


class ProfileUntrusted(LaunchFailed):
    """FrontBoard refused the launch for security (reason "Security"): the developer profile is not trusted on the
    phone, or the signature/profile is invalid or expired."""

    transient = False
    quarantine_reason = "developer profile not trusted: trust it in Settings > General > VPN & Device Management"


class LaunchBusy(LaunchFailed):
    """FrontBoard refused the launch because the phone is busy (reason "Busy": preflight checks failed)."""

    transient = True


class LaunchDenied(LaunchFailed):
    """FrontBoard denied the launch for a reason with no better action (e.g. "RequestDenied", "Disabled")."""

    transient = False


class AppLeftForeground(DeployError):
    """The runner stopped measuring because it left the foreground (phone locked, a call, a notification tapped):
    it wrote a failed result with the app state it saw. Nothing from that job is used."""

    transient = True
    quarantine_reason = "phone locked or app left the foreground: unlock it, Auto-Lock Never, Focus on"


class RunnerTimeout(DeployError):
    """The runner did not write DONE in time; it was killed."""


class RunnerCrashed(DeployError):
    """The runner exited without writing DONE."""


class ResultInvalid(DeployError):
    """A pulled result file is malformed, oversized, path-escaping or of an unknown schema version."""
