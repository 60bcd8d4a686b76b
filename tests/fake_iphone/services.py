"""The lockdown services the harness uses, each speaking its real wire protocol."""

from __future__ import annotations

import asyncio
import io
import plistlib
import zipfile

from .afc import AfcServer
from .wire import read_plist, write_plist

AFC = "com.apple.afc"
HOUSE_ARREST = "com.apple.mobile.house_arrest"
INSTALLATION_PROXY = "com.apple.mobile.installation_proxy"
DIAGNOSTICS = "com.apple.mobile.diagnostics_relay"
IMAGE_MOUNTER = "com.apple.mobile.mobile_image_mounter"
SYSLOG = "com.apple.syslog_relay"
AMFI = "com.apple.amfi.lockdown"
DVT = "com.apple.instruments.remoteserver.DVTSecureSocketProxy"
KNOWN = {AFC, HOUSE_ARREST, INSTALLATION_PROXY, DIAGNOSTICS, IMAGE_MOUNTER, SYSLOG, DVT, AMFI}


async def serve(device, service: str, reader, writer) -> None:
    handlers = {AFC: _afc, HOUSE_ARREST: _house_arrest, INSTALLATION_PROXY: _installation_proxy,
                DIAGNOSTICS: _diagnostics, IMAGE_MOUNTER: _image_mounter, SYSLOG: _syslog, DVT: _dvt, AMFI: _amfi}
    await handlers[service](device, reader, writer)


async def _afc(device, reader, writer) -> None:
    await AfcServer(device, device.root / "media", "media").serve(reader, writer)


async def _house_arrest(device, reader, writer) -> None:
    request = await read_plist(reader)
    if request is None:
        return
    bundle_id = request.get("Identifier")
    if request.get("Command") not in ("VendContainer", "VendDocuments"):
        await write_plist(writer, {"Error": "UnknownCommand"})
        return
    if bundle_id not in device.apps:
        await write_plist(writer, {"Error": "ApplicationLookupFailed"})
        return
    if request["Command"] == "VendContainer" and not device.apps[bundle_id].development_signed:
        # What installd's lookup answers for an app without get-task-allow (App Store / ad-hoc distribution).
        await write_plist(writer, {"Error": "InstallationLookupFailed"})
        return
    await write_plist(writer, {"Status": "Complete"})
    root = device.container(bundle_id)
    if request["Command"] == "VendDocuments":
        root = root / "Documents"
    await AfcServer(device, root, f"container:{bundle_id}").serve(reader, writer)


def _app_record(app) -> dict:
    return {"CFBundleIdentifier": app.bundle_id, "CFBundleShortVersionString": app.version,
            "CFBundleVersion": app.build, "ApplicationType": "User", "CFBundleExecutable": "BenchRunner"}


async def _installation_proxy(device, reader, writer) -> None:
    while (request := await read_plist(reader)) is not None:
        command = request.get("Command")
        options = request.get("ClientOptions") or {}
        if command == "Lookup":
            wanted = options.get("BundleIDs")
            apps = {b: _app_record(a) for b, a in device.apps.items() if wanted is None or b in wanted}
            await write_plist(writer, {"LookupResult": apps, "Status": "Complete"})
        elif command == "Browse":
            await write_plist(writer, {"CurrentList": [_app_record(a) for a in device.apps.values()],
                                       "Status": "BrowsingApplications"})
            await write_plist(writer, {"Status": "Complete"})
        elif command in ("Install", "Upgrade"):
            await _install(device, writer, request.get("PackagePath", ""))
        elif command == "Uninstall":
            device.apps.pop(request.get("ApplicationIdentifier"), None)
            await write_plist(writer, {"Status": "Complete"})
        else:
            await write_plist(writer, {"Error": "UnknownCommand", "ErrorDescription": str(command)})


async def _install(device, writer, package_path: str) -> None:
    path = (device.root / "media" / package_path.lstrip("/")).resolve()
    try:
        archive = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
        info_name = next(n for n in archive.namelist()
                         if n.startswith("Payload/") and n.count("/") == 2 and n.endswith(".app/Info.plist"))
        info = plistlib.loads(archive.read(info_name))
    except (OSError, zipfile.BadZipFile, StopIteration, plistlib.InvalidFileException):
        await write_plist(writer, {"Error": "PackageInspectionFailed",
                                   "ErrorDescription": "Failed to find an app in the package"})
        return
    for percent, stage in ((10, "CreatingStagingDirectory"), (40, "ExtractingPackage"), (60, "VerifyingApplication")):
        await write_plist(writer, {"Status": stage, "PercentComplete": percent})
    if device.faults.install_verification_fails:
        await write_plist(writer, {"Error": "ApplicationVerificationFailed",
                                   "ErrorDescription": "Failed to verify code signature (0xe8008015 A valid "
                                                       "provisioning profile for this executable was not found.)"})
        return
    device.install_app(info["CFBundleIdentifier"], info.get("CFBundleShortVersionString", "0"),
                       info.get("CFBundleVersion", "0"))
    await write_plist(writer, {"Status": "Complete"})


async def _diagnostics(device, reader, writer) -> None:
    while (request := await read_plist(reader)) is not None:
        kind = request.get("Request")
        if kind == "IORegistry" and request.get("EntryClass") == "IOPMPowerSource":
            source = {"CurrentCapacity": device.battery_percent, "Temperature": device.battery_centi_celsius,
                      "Voltage": 4123, "InstantAmperage": 350 if device.charging else -420,
                      "IsCharging": device.charging, "ExternalConnected": device.charging,
                      "FullyCharged": device.battery_percent >= 100}
            await write_plist(writer, {"Status": "Success", "Diagnostics": {"IORegistry": source}})
        elif kind == "Goodbye":
            await write_plist(writer, {"Status": "Success"})
            return
        else:
            await write_plist(writer, {"Status": "UnknownRequest"})


async def _image_mounter(device, reader, writer) -> None:
    while (request := await read_plist(reader)) is not None:
        command = request.get("Command")
        if command == "LookupImage":
            mounted = device.ddi_mounted and request.get("ImageType") == device.disk_image_type
            signatures = [b"\x01fake-ddi-signature"] if mounted else []
            await write_plist(writer, {"ImageSignature": signatures, "Status": "Complete"})
        elif command == "CopyDevices":
            entries = [{"DiskImageType": device.disk_image_type, "IsMounted": True}] if device.ddi_mounted else []
            await write_plist(writer, {"EntryList": entries, "Status": "Complete"})
        elif command == "QueryDeveloperModeStatus":
            await write_plist(writer, {"DeveloperModeStatus": device.developer_mode})
        elif command == "QueryPersonalizationManifest":
            # A phone keeps the ticket Apple issued for it until it reboots; without one the host must ask TSS.
            if device.personalization_ticket:
                await write_plist(writer, {"ImageSignature": b"fake-im4m", "Status": "Complete"})
            else:
                await write_plist(writer, {"Error": "MissingManifest", "Status": "Failed"})
                return  # the real service hangs up here; pymobiledevice3 reconnects
        elif command == "QueryNonce":
            await write_plist(writer, {"PersonalizationNonce": b"\x5a" * 32, "Status": "Complete"})
        elif command == "QueryPersonalizationIdentifiers":
            values = device.lockdown_values()
            await write_plist(writer, {"PersonalizationIdentifiers": {
                "BoardId": values["BoardId"], "ChipID": values["ChipID"], "SecurityDomain": 1, "Ap,SecurityMode": True,
                "Ap,ProductionMode": True}, "Status": "Complete"})
        elif command == "ReceiveBytes":
            await write_plist(writer, {"Status": "ReceiveBytesAck"})
            device.uploaded_images.append((request.get("ImageType"), await reader.readexactly(request["ImageSize"])))
            await write_plist(writer, {"Status": "Complete"})
        elif command == "MountImage":
            image_type = request.get("ImageType")
            if not device.developer_mode:
                await write_plist(writer, {"Error": "DeviceLocked", "DetailedError": "Developer mode is not enabled."})
            elif image_type != device.disk_image_type or not device.uploaded_images:
                await write_plist(writer, {"Error": "InternalError", "DetailedError": f"cannot mount {image_type}"})
            else:
                device.ddi_mounted = True
                await write_plist(writer, {"Status": "Complete"})
        elif command == "Hangup":
            await write_plist(writer, {"Status": "Complete"})
            return
        else:
            await write_plist(writer, {"Error": "UnknownCommand"})


async def _syslog(device, reader, writer) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    device.syslog_subscribers.append(queue)
    try:
        writer.write(b"Nov 29 03:00:00 kernel[0] <Notice>: syslog relay attached\n\x00")
        await writer.drain()
        while True:
            line = await queue.get()
            writer.write(line.encode() + b"\n\x00")
            await writer.drain()
    finally:
        device.syslog_subscribers.remove(queue)


async def _dvt(device, reader, writer) -> None:
    from .dvt import serve_dvt

    await serve_dvt(device, reader, writer)


async def _amfi(device, reader, writer) -> None:
    """com.apple.amfi.lockdown: action 0 reveals the Developer Mode toggle, 1 asks to turn it on (the phone then
    restarts and a person confirms on screen; refused while a passcode is set), 2 is that confirmation."""
    request = await read_plist(reader)
    if request is None:
        return
    action = request.get("action")
    device.amfi_actions.append(action)
    if action == 1 and device.passcode:
        await write_plist(writer, {"Error": "Device has a passcode set"})
    elif action in (0, 1, 2):
        await write_plist(writer, {"success": True})
    else:
        await write_plist(writer, {"Error": "unknown action"})
