"""installation_proxy: is the runner installed (and which version), install or upgrade it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.deploy.errors import InstallFailed

# The runner's bundle id: BENCH_BUNDLE_ID when set — the same variable runner/build.sh builds with (a team may have
# to choose its own id: an explicit App ID another team registered cannot be registered again) — else the default.
RUNNER_BUNDLE_ID = os.environ.get("BENCH_BUNDLE_ID") or "org.bench.runner"


@dataclass(frozen=True)
class AppInfo:
    bundle_id: str
    version: str | None  # CFBundleShortVersionString
    build: str | None  # CFBundleVersion


async def lookup(lockdown, bundle_id: str = RUNNER_BUNDLE_ID) -> AppInfo | None:
    """The installed app, or None when it is not installed."""
    from pymobiledevice3.services.installation_proxy import InstallationProxyService

    async with InstallationProxyService(lockdown) as proxy:
        apps = await proxy.get_apps(application_type="User", bundle_identifiers=[bundle_id])
    app = apps.get(bundle_id)
    if not app:
        return None
    return AppInfo(bundle_id, app.get("CFBundleShortVersionString"), app.get("CFBundleVersion"))


async def install(lockdown, package: Path, udid: str) -> None:
    """Install or upgrade from an .ipa file or an .app directory (installd upgrades in place)."""
    from pymobiledevice3.exceptions import AppInstallError
    from pymobiledevice3.services.installation_proxy import InstallationProxyService

    package = Path(package)
    if not package.exists() or not (package.suffix == ".ipa" or (package.is_dir() and package.suffix == ".app")):
        raise InstallFailed(f"{package} is not an .ipa file or an .app directory", udid=udid,
                            action="build the runner with runner/build.sh on a Mac and pass its .ipa")
    try:
        async with InstallationProxyService(lockdown) as proxy:
            await proxy.install_from_local(package)
    except AppInstallError as err:
        hint = ("sign the runner with a development profile (not ad-hoc: it drops get-task-allow, which container "
                "access needs) that lists this UDID: register the phone in your paid team, then rebuild"
                if "Verification" in str(err) or "0xe8008015" in str(err) else "see the installd error above")
        raise InstallFailed(f"installd refused {package.name}: {err}", udid=udid, action=hint) from None
