"""Model packages on their way to lab hosts: named by content, packed once on the driver, fetched once per host.

The driver packs a variant (manifest.json + encoder/decoder .mlpackage, a deterministic tar) and puts it into Ray's
object store once per run; a task passes only a reference. On the host, `HostCache` unpacks it under
`<cache>/packages/<key>/variant/` — and only when that key is not there yet, so a variant crosses the network
to a host once, however many phones and rounds use it. Concurrent tasks on one host take a file lock per key: one
fetches, the others wait and find it. An unpacked tree whose key does not match is refused and never deployed.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from bench.errors import DeviceError

SHIPPED = ("manifest.json", "encoder.mlpackage", "decoder.mlpackage")  # what deploying a variant reads
CACHE_ENV = "BENCH_LAB_CACHE"
COMPLETE = ".complete"
UNPACKED = "variant"


def package_key(variant_dir: Path) -> str:
    """The content hash of what a host needs of a variant (package trees as the builder hashes them + manifest)."""
    from bench.deploy.hashing import tree_sha256

    variant_dir = Path(variant_dir)
    digest = hashlib.sha256()
    for name in SHIPPED:
        path = variant_dir / name
        if path.is_dir():
            digest.update(f"{name}:{tree_sha256(path)}\n".encode())
        elif path.is_file():
            digest.update(f"{name}:{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()[:32]


def pack(variant_dir: Path) -> bytes:
    """A tar of the shipped files in a fixed order with fixed metadata (same bytes for the same content)."""
    variant_dir = Path(variant_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in SHIPPED:
            path = variant_dir / name
            if not path.exists():
                continue
            paths = [path] if path.is_file() else [path, *sorted(p for p in path.rglob("*"))]
            for item in paths:
                info = archive.gettarinfo(str(item), arcname=item.relative_to(variant_dir).as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                info.mode = 0o755 if item.is_dir() else 0o644
                if item.is_file():
                    with item.open("rb") as handle:
                        archive.addfile(info, handle)
                else:
                    archive.addfile(info)
    return buffer.getvalue()


def default_cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "bench" / "lab"


def _cached(folder: Path) -> bool:
    """Complete, and in today's layout (an older cache named the folder inside by variant: fetched again)."""
    return (folder / COMPLETE).exists() and (folder / UNPACKED).is_dir()


class HostCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_cache_root()

    def ensure(self, variant_id: str, key: str, fetch: Callable[[], bytes]) -> tuple[Path, int]:
        """The variant's directory on this host and how many bytes had to be fetched for it (0 when cached).

        The directory is named by content (`<key>/variant`), not by variant: two variants with the same bytes (one
        package imported under two names) share it."""
        folder = self.root / "packages" / key
        if _cached(folder):
            return folder / UNPACKED, 0
        with self.lock(f"package-{key}"):
            if _cached(folder):  # another task on this host fetched it while we waited
                return folder / UNPACKED, 0
            data = fetch()
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
                    archive.extractall(staging / UNPACKED, filter="data")
                found = package_key(staging / UNPACKED)
                if found != key:
                    raise DeviceError(f"package {variant_id} arrived damaged on this host (content {found}, "
                                      f"expected {key}); it was not deployed", action="run again")
                (staging / COMPLETE).write_text(key)
                shutil.rmtree(folder, ignore_errors=True)  # a half-written folder from a killed task
                os.replace(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return folder / UNPACKED, len(data)

    @contextmanager
    def lock(self, name: str, *, blocking: bool = True):
        """An exclusive lock shared by every process on this host (released when the holder dies)."""
        folder = self.root / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        (self.root / "packages").mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.lock", "a+") as handle:
            flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle, flags)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
