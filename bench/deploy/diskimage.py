"""Mount the developer disk image a phone's iOS needs (pymobiledevice3 11.45's mobile_image_mounter), offline when
possible, with one clear line when the network is needed and missing.

- iOS < 17: the shared "Developer" image (`DeveloperDiskImageMounter`): an image + signature for the iOS major.minor,
  from Xcode (/Applications/Xcode.app) or pymobiledevice3's cache (~/.pymobiledevice3/Xcode.app/…), downloaded from
  the DeveloperDiskImage repository (raw.githubusercontent.com) when neither has it.
- iOS 17–26: the "Personalized" image (`PersonalizedImageMounter`): one image for every phone, cached in
  ~/.pymobiledevice3/Xcode_iOS_DDI_Personalized (downloaded once), plus a ticket Apple's signing server (TSS,
  http://gs.apple.com) issues for this phone's ECID and nonce at mount time. A phone that mounted it since it last
  booted keeps the ticket and can mount again offline; otherwise the host needs to reach gs.apple.com (port 80).
- iOS 27+: pymobiledevice3 installs the image as a cryptex over an RSD tunnel: `pymobiledevice3 mounter auto-mount
  --tunnel <UDID>` (not done here: prepare says so).

Every network access is decided here first (`network_reachable`, the one seam tests replace: they never reach the
network), so a lab host without internet gets "cannot be signed: no route to gs.apple.com", not a requests traceback.
The image is gone after every reboot (an overnight iOS update reboots the phone): `bench devices` shows it.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

from bench.deploy.errors import DeveloperModeOff, DiskImageUnavailable

CRYPTEX_FROM_MAJOR = 27


def _host_and_port(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def signing_server() -> tuple[str, int]:
    """Where pymobiledevice3 sends TSS requests (its own constant, so this never drifts from what it does)."""
    from pymobiledevice3.restore.tss import TSS_CONTROLLER_ACTION_URL

    return _host_and_port(TSS_CONTROLLER_ACTION_URL)


def image_server() -> tuple[str, int]:
    """Where developer_disk_image downloads images from."""
    from developer_disk_image.repo import DEVELOPER_DISK_IMAGE_REPO_RAW_URL_FORMAT

    return _host_and_port(DEVELOPER_DISK_IMAGE_REPO_RAW_URL_FORMAT.format(ref="x", path="x"))


def network_reachable(host: str, port: int, timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to host:port opens (the seam tests replace; they never reach the network)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Mounted:
    image_type: str  # "Developer" | "Personalized"
    already: bool  # it was mounted before we looked
    how: str  # one line: what was done


async def mount(lockdown, udid: str) -> Mounted:
    """Mount the image this phone's iOS needs (nothing to do when it is mounted already)."""
    from pymobiledevice3.exceptions import AlreadyMountedError, DeveloperModeIsNotEnabledError

    from bench.deploy.launch import DEVELOPER_MODE_ACTION, ddi_mounted, disk_image_type
    from bench.deploy.lockdown import os_major

    image_type = disk_image_type(lockdown)
    if await ddi_mounted(lockdown):
        return Mounted(image_type, True, f"{image_type} disk image already mounted")
    try:
        if image_type == "Developer":
            how = await _mount_developer(lockdown, udid)
        elif os_major(lockdown) >= CRYPTEX_FROM_MAJOR:
            raise DiskImageUnavailable(
                f"iOS {lockdown.product_version} installs the disk image as a cryptex over the tunnel", udid=udid,
                action=f"with the tunnel up, run `pymobiledevice3 mounter auto-mount --tunnel {udid}`")
        else:
            how = await _mount_personalized(lockdown, udid)
    except AlreadyMountedError:
        return Mounted(image_type, True, f"{image_type} disk image already mounted")
    except DeveloperModeIsNotEnabledError:
        raise DeveloperModeOff("Developer Mode is off, no disk image can be mounted", udid=udid,
                               action=DEVELOPER_MODE_ACTION) from None
    return Mounted(image_type, False, how)


def _network_error_types() -> tuple[type[BaseException], ...]:
    import requests
    from developer_disk_image.exceptions import DeveloperDiskImageException

    from pymobiledevice3.exceptions import TSSError

    # IndexError: TSS answered without MESSAGE= (a proxy page); DeveloperDiskImageException: GitHub refused or rate
    # limited the image download (not a requests error, not a library error: it would escape as a traceback).
    return requests.RequestException, TSSError, IndexError, DeveloperDiskImageException


async def _mount_developer(lockdown, udid: str) -> str:
    from pymobiledevice3.common import get_home_folder
    from pymobiledevice3.exceptions import DeveloperDiskImageNotFoundError
    from pymobiledevice3.services.mobile_image_mounter import _developer_disk_image_path, auto_mount_developer

    version = ".".join(str(lockdown.product_version).split(".")[:2])
    candidates = [_developer_disk_image_path(Path("/Applications/Xcode.app"), version),
                  _developer_disk_image_path(get_home_folder() / "Xcode.app", version)]
    cached = any(path.exists() and path.with_name(path.name + ".signature").exists() for path in candidates)
    if not cached and not network_reachable(*image_server()):
        raise DiskImageUnavailable(
            f"the Developer disk image for iOS {version} is not on this host and {image_server()[0]} cannot be reached "
            "to download it", udid=udid,
            action="connect this host to the internet once (or install Xcode with that iOS's device support) and "
                   "run `bench devices prepare` again")
    try:
        await auto_mount_developer(lockdown)
    except DeveloperDiskImageNotFoundError:
        raise DiskImageUnavailable(f"no Developer disk image for iOS {version} is published", udid=udid,
                                   action="mount it once from a Mac whose Xcode supports that iOS (Window > Devices "
                                          "and Simulators), or update the phone") from None
    except _network_error_types() as err:
        raise DiskImageUnavailable(f"downloading the Developer disk image failed ({type(err).__name__}: {err})",
                                   udid=udid, action="check this host's internet access and run prepare again") \
            from None
    return f"mounted the Developer disk image for iOS {version}" + ("" if cached else " (downloaded)")


async def _mount_personalized(lockdown, udid: str) -> str:
    from pymobiledevice3.exceptions import MissingManifestError, NoSuchBuildIdentityError
    from pymobiledevice3.services.mobile_image_mounter import (
        LATEST_DDI_BUILD_ID,
        PersonalizedImageMounter,
        fetch_personalized_ddi,
    )

    if not _personalized_image_cached() and not network_reachable(*image_server()):
        raise DiskImageUnavailable(
            f"the Personalized disk image is not cached on this host and {image_server()[0]} cannot be reached to "
            "download it", udid=udid,
            action="connect this host to the internet and run `bench devices prepare` again")
    try:
        image, build_manifest, trust_cache = fetch_personalized_ddi()
    except _network_error_types() as err:
        raise DiskImageUnavailable(f"downloading the Personalized disk image failed ({type(err).__name__})",
                                   udid=udid, action="check this host's internet access and run prepare again") \
            from None
    digest = hashlib.sha384(image.read_bytes()).digest()
    async with PersonalizedImageMounter(lockdown) as probe:
        try:
            await probe.query_personalization_manifest("DeveloperDiskImage", digest)
            ticket = "the phone's own ticket"
        except MissingManifestError:
            ticket = None
    if ticket is None and not network_reachable(*signing_server()):
        raise DiskImageUnavailable(
            f"the Personalized disk image must be signed for this phone by Apple's signing server "
            f"({signing_server()[0]}), which this host cannot reach", udid=udid,
            action=f"let this host reach {':'.join(map(str, signing_server()))} and run `bench devices prepare` again "
                   "(needed after every reboot of the phone)")
    try:
        async with PersonalizedImageMounter(lockdown) as mounter:
            await mounter.mount(image, build_manifest, trust_cache)
    except NoSuchBuildIdentityError:
        raise DiskImageUnavailable(
            f"the Personalized disk image pymobiledevice3 downloads (build {LATEST_DDI_BUILD_ID}) does not list this "
            f"iPhone model ({lockdown.all_values.get('ProductType')})", udid=udid,
            action="mount it once from a Mac with a current Xcode (Window > Devices and Simulators), or update "
                   "pymobiledevice3 in requirements.lock") from None
    except _network_error_types() as err:
        raise DiskImageUnavailable(
            f"Apple's signing server did not sign the Personalized image ({type(err).__name__}: {err})", udid=udid,
            action=f"check that this host reaches {':'.join(map(str, signing_server()))}, then run `bench devices "
                   "prepare` again") \
            from None
    return "mounted the Personalized disk image (signed with " + (ticket or f"a ticket from {signing_server()[0]}") + ")"


def _personalized_image_cached() -> bool:
    import plistlib

    from pymobiledevice3.common import get_home_folder
    from pymobiledevice3.services.mobile_image_mounter import LATEST_DDI_BUILD_ID

    folder = get_home_folder() / "Xcode_iOS_DDI_Personalized"
    manifest = folder / "BuildManifest.plist"
    try:
        build = plistlib.loads(manifest.read_bytes()).get("ProductBuildVersion")
    except (OSError, plistlib.InvalidFileException, ValueError):
        return False
    return build == LATEST_DDI_BUILD_ID and (folder / "Image.dmg").exists() and (folder / "Image.trustcache").exists()
