"""Environment metadata recorded when a record is created: machine, packages, harness commit."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from functools import lru_cache
from importlib import metadata

from bench import __version__
from bench.paths import PROJECT_DIR

TRACKED_PACKAGES = ("coremltools", "torch", "transformers", "numpy", "sacrebleu", "pymobiledevice3")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@lru_cache(maxsize=1)
def git_commit() -> dict[str, object]:
    """The harness's git commit and whether the work tree had uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def host_environment() -> dict[str, object]:
    """Everything about the host that makes two measurements comparable or not."""
    return {
        "created_at": now_iso(),
        "bench_version": __version__,
        "git": git_commit(),
        "host": {
            "hostname": platform.node(),
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "packages": package_versions(),
    }
