"""The last launch outcome per phone, kept on this host, so `bench devices` can say the morning after why a phone
failed overnight.

A locked phone, an untrusted developer profile or a runner sent to the background are invisible to the host until
it launches the runner; then the night's log has scrolled away. Each job records here how its launch ended (a
failure's one line, or nothing once a job ran to DONE); `bench devices` shows a recorded failure as a problem until
a later job or `bench devices prepare`'s launch check succeeds. One small JSON file per phone under
~/.local/state/bench/devices/ (the host's phones, not a workspace's), written temp-then-rename.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from bench.errors import DeviceError


def folder() -> Path:
    return Path.home() / ".local" / "state" / "bench" / "devices"


def _path(udid: str) -> Path:
    return folder() / f"{udid}.last-launch.json"


def record(udid: str, error: DeviceError | None) -> None:
    """Remember how the last launch on `udid` ended: None = it ran to DONE (forget any earlier failure)."""
    from bench.atomic import write_json

    path = _path(udid)
    try:
        if error is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        line = str(error).split(": ", 1)[-1] if error.udid else str(error)
        write_json(path, {"kind": type(error).__name__, "line": line,
                          "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    except OSError:
        pass  # a diagnostic aid only: never let it fail a job


def last_failure(udid: str) -> str | None:
    """The recorded failure of the last launch as one line, or None (none recorded, or unreadable: ignored)."""
    try:
        entry = json.loads(_path(udid).read_text())
        return f"the last launch ({entry['at']}) failed: {entry['kind']}: {entry['line']}"
    except (OSError, ValueError, KeyError, TypeError):
        return None
