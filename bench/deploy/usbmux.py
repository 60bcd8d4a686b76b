"""Discovery: which devices usbmuxd sees. The only module that knows where the usbmuxd socket is.

pymobiledevice3 11.45 forgets an explicit `usbmux_address` when it writes pair records back, so the address is
only ever given through the USBMUXD_SOCKET_ADDRESS environment variable (a socket path or host:port); the
libusbmuxd form "UNIX:/path" makes the library raise ValueError, so it is refused here with a clear message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.deploy.errors import UsbmuxUnavailable

ENV_VAR = "USBMUXD_SOCKET_ADDRESS"
DEFAULT_SOCKET = "/var/run/usbmuxd"


@dataclass(frozen=True)
class Attached:
    udid: str
    connection_type: str  # "USB" or "Network"


def socket_address() -> str:
    """The usbmuxd address in use, validated: a plain UNIX socket path or host:port."""
    address = os.environ.get(ENV_VAR) or DEFAULT_SOCKET
    if address.upper().startswith("UNIX:"):
        raise UsbmuxUnavailable(
            f"{ENV_VAR}={address!r} uses the libusbmuxd 'UNIX:' form, which pymobiledevice3 cannot parse",
            action=f"set {ENV_VAR} to the bare socket path, e.g. {address[5:]!r}",
        )
    if ":" in address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsbmuxUnavailable(f"{ENV_VAR}={address!r} is neither a socket path nor host:port")
    return address


def describe_missing(address: str) -> UsbmuxUnavailable:
    return UsbmuxUnavailable(
        f"no usbmuxd at {address}",
        action="on Linux install usbmuxd (`sudo apt-get install usbmuxd`) and plug an iPhone in: udev starts it "
        "(`systemctl status usbmuxd`); `pymobiledevice3 doctor` says what else this host lacks; or point "
        f"{ENV_VAR} at a running usbmuxd",
    )


async def list_attached() -> list[Attached]:
    """Every device usbmuxd lists, USB first. Raises UsbmuxUnavailable when there is no usbmuxd."""
    from pymobiledevice3 import usbmux
    from pymobiledevice3.exceptions import ConnectionFailedToUsbmuxdError, MuxException

    address = socket_address()
    try:
        devices = await usbmux.list_devices()
    except ConnectionFailedToUsbmuxdError:
        raise describe_missing(address) from None
    except (MuxException, OSError) as err:
        raise UsbmuxUnavailable(f"usbmuxd at {address} misbehaved: {err}") from None
    seen: dict[str, Attached] = {}
    for device in sorted(devices, key=lambda d: not d.is_usb):
        seen.setdefault(device.serial, Attached(device.serial, device.connection_type))
    return list(seen.values())
