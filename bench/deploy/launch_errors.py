"""Why iOS refused to launch the runner, dug out of the nested NSErrors DVT returns, as one actionable error.

What a real phone sends (pymobiledevice3 11.45 raises it as `DTXNsError`, whose `.error` is the NSError and whose
`str()` shows only the outer domain and a repr of the user info):

    com.apple.dt.deviceprocesscontrolservice code 2  "Request to launch org.bench.runner failed."
      NSUnderlyingError: FBSOpenApplicationServiceErrorDomain code 1 (BSErrorCodeDescription "RequestDenied",
        NSLocalizedFailureReason "… denied by service delegate (SBMainWorkspace) for reason: Locked …")
        NSUnderlyingError: FBSOpenApplicationErrorDomain code 7 (BSErrorCodeDescription "Locked")

FrontBoard (FBSOpenApplicationErrorDomain) reasons and codes: Security 3 (profile not trusted, invalid signature or
entitlements), NotFound 4 (not installed; outer service error "InvalidRequest"), Busy 6 (preflight checks failed),
Locked 7. The reason decides the message, never a substring of the outer error.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.deploy.errors import (
    LaunchBusy,
    LaunchDenied,
    LaunchFailed,
    PhoneLocked,
    ProfileUntrusted,
    RunnerNotInstalled,
)

FRONTBOARD = "FBSOpenApplicationErrorDomain"
FRONTBOARD_SERVICE = "FBSOpenApplicationServiceErrorDomain"
REASON_BY_CODE = {3: "Security", 4: "NotFound", 6: "Busy", 7: "Locked"}  # FBSOpenApplicationErrorDomain
INSTALL_ACTION = "install the runner with `bench devices install BenchRunner.ipa -d <name>`"
TRUST_ACTION = ("on the phone: Settings > General > VPN & Device Management > your Apple Development certificate > "
                "Trust (if it is trusted already, the profile expired or the build is not development-signed: "
                "rebuild with runner/build.sh and reinstall)")
LOCKED_ACTION = "unlock it; for unattended runs remove the passcode and set Auto-Lock to Never"


@dataclass(frozen=True)
class NsErrorLink:
    domain: str
    code: int | None
    description: str  # BSErrorCodeDescription, or ""
    text: str  # NSLocalizedDescription / NSLocalizedFailureReason, for the message


def error_chain(error) -> list[NsErrorLink]:
    """The error and every NSUnderlyingError below it, outermost first (NSError objects or plain dicts)."""
    chain: list[NsErrorLink] = []
    seen = 0
    while error is not None and seen < 8:  # a cycle or an absurd depth is not worth following
        seen += 1
        if isinstance(error, dict):
            domain, code, info = error.get("NSDomain", ""), error.get("NSCode"), error.get("NSUserInfo") or {}
        else:
            domain, code, info = getattr(error, "domain", ""), getattr(error, "code", None), \
                getattr(error, "user_info", None) or {}
        if not isinstance(info, dict):
            info = {}
        text = next((str(info[k]) for k in ("NSLocalizedFailureReason", "NSLocalizedDescription") if info.get(k)), "")
        chain.append(NsErrorLink(str(domain or ""), code if isinstance(code, int) else None,
                                 str(info.get("BSErrorCodeDescription") or ""), text))
        error = info.get("NSUnderlyingError")
    return chain


def frontboard_reason(chain: list[NsErrorLink]) -> str | None:
    """FrontBoard's reason (Locked, Security, NotFound, Busy, …), innermost first; None when FrontBoard is silent."""
    for link in reversed(chain):
        if link.domain == FRONTBOARD:
            return link.description or REASON_BY_CODE.get(link.code) or f"code {link.code}"
    for link in reversed(chain):
        if link.domain == FRONTBOARD_SERVICE and link.description:
            return link.description
    return None


def classify(err: BaseException, bundle_id: str, udid: str) -> LaunchFailed:
    """The one-line error for a refused launch: locked, untrusted profile, not installed, busy, denied."""
    nserror = getattr(err, "error", None)
    chain = error_chain(nserror) if nserror is not None else []
    reason = frontboard_reason(chain)
    detail = " ".join((next((link.text for link in reversed(chain) if link.text), "") or str(err)).split())
    where = f" (FrontBoard: {reason})" if reason else ""
    if reason == "Locked":
        return PhoneLocked(f"the phone is locked, iOS refused to launch {bundle_id}{where}", udid=udid,
                           action=LOCKED_ACTION)
    if reason == "Security":
        return ProfileUntrusted(f"iOS refused {bundle_id} for security{where}: {detail}", udid=udid,
                                action=TRUST_ACTION)
    if reason == "NotFound":
        return RunnerNotInstalled(f"{bundle_id} is not installed{where}", udid=udid, action=INSTALL_ACTION)
    if reason == "Busy":
        return LaunchBusy(f"the phone is busy and refused to launch {bundle_id}{where}", udid=udid,
                          action="wait a minute and run again; restart the phone if it persists")
    if reason is not None:
        return LaunchDenied(f"iOS denied the launch of {bundle_id}{where}: {detail}", udid=udid,
                            action="open the runner by hand on the phone once to see iOS's own message")
    return LaunchFailed(f"cannot launch {bundle_id}: {detail}", udid=udid,
                        action="check `bench devices` (Developer Mode, disk image, tunnel) and run again")
