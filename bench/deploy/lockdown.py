"""Lockdown: open a session with a device that is already paired, or fail fast with what a person must do.

autopair is always off: with it on, pymobiledevice3 shows the Trust prompt and can wait forever, which would hang a
nightly run. Pairing is a one-time human step per host (see docs in bench/deploy/api.py).
"""

from __future__ import annotations

import re

from bench.deploy.errors import DeviceNotFound, NotPaired

PAIR_ACTION = (
    "unlock the phone, connect it by USB, run `pymobiledevice3 lockdown pair --udid {udid}` and tap Trust "
    "(once per host; the pair record is kept)"
)


async def connect(udid: str):
    """A paired `LockdownClient` for `udid` (async context manager). Never waits on a Trust prompt."""
    from pymobiledevice3.exceptions import (
        ConnectionFailedError,
        ConnectionTerminatedError,
        DeviceNotFoundError,
        MuxException,
        NotPairedError,
        PasswordRequiredError,
    )
    from pymobiledevice3.lockdown import create_using_usbmux

    from bench.deploy.usbmux import describe_missing, list_attached, socket_address

    attached = {device.udid for device in await list_attached()}
    if udid not in attached:
        raise DeviceNotFound("not attached", udid=udid, action="plug it in by USB (or check the cable) and unlock it")
    try:
        client = await create_using_usbmux(serial=udid, autopair=False)
    except (NotPairedError, PasswordRequiredError):
        raise NotPaired("this host is not trusted by the device", udid=udid,
                        action=PAIR_ACTION.format(udid=udid)) from None
    except (DeviceNotFoundError, ConnectionFailedError, ConnectionTerminatedError, MuxException, OSError) as err:
        if isinstance(err, ConnectionRefusedError | FileNotFoundError):
            raise describe_missing(socket_address()) from None
        raise DeviceNotFound(f"lost while connecting: {err or type(err).__name__}", udid=udid,
                             action="reconnect the cable and unlock the phone") from None
    if not client.paired:
        await client.close()
        raise NotPaired("this host is not trusted by the device", udid=udid, action=PAIR_ACTION.format(udid=udid))
    return client


def os_major(lockdown) -> int:
    """iOS major version as an int (ProductVersion "16.7.2" -> 16; 0 when the device sends something else)."""
    major = re.match(r"\d+", str(lockdown.all_values.get("ProductVersion", "")))
    return int(major.group()) if major else 0


def identity(lockdown) -> dict:
    """What lockdown says the device is: model identifier, hardware model, iOS version and build, name."""
    values = lockdown.all_values
    return {
        "model_identifier": values.get("ProductType"),
        "hardware_model": values.get("HardwareModel"),
        "os_version": values.get("ProductVersion"),
        "os_build": values.get("BuildVersion"),
        "name": values.get("DeviceName"),
    }
