"""Nothing is left half-written: write to a temporary name beside the target, then rename.

Output policy (every writer goes through here, so every writer gets it): bench writes only regular files and
folders of its own. A target that is a device (/dev/null, /dev/full), a FIFO, a socket, a symbolic link or a folder
where a file is expected is refused with one line before anything is written — renaming over it would replace the
device node or the link itself and say "wrote" — and nothing here deletes a file that bench did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # Reading the umask means setting it; two threads interleaving here would leave the process with umask 0.
    with _UMASK_LOCK:
        current = os.umask(0)
        os.umask(current)
    return current


def _publishable(fd_or_path: int | str) -> None:
    """mkstemp creates 0600 files; give the final file the permissions a plain open() would."""
    mode = 0o666 & ~_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def _kind_of(mode: int) -> str:
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a file"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_target(path: Path | str, *, folder: bool = False) -> Path:
    """Refuse (InputError, one line) an output path that is not absent or a regular file (a folder when `folder`).

    lstat, not stat: a symbolic link is refused rather than followed or replaced, whatever it points to.
    """
    from bench.errors import InputError

    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as err:
        raise InputError(f"cannot write {path}: {err.strerror or err}") from None
    wanted = stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)
    if not wanted:
        expected = "a folder" if folder else "a regular file"
        hint = ("remove the link or give the path it points to" if stat.S_ISLNK(mode)
                else "give the path of a new or existing file" if not folder else "give a new or existing folder")
        raise InputError(f"cannot write {path}: it is {_kind_of(mode)}, and bench writes only to {expected} "
                         f"({hint})")
    return path


def write_bytes(path: Path | str, data: bytes, *, durable: bool = True) -> Path:
    """`durable=False` skips the fsync: still never half-written, but a power cut may lose the newest version."""
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _publishable(fd)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: Path | str, text: str, *, durable: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: Path | str, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def directory(final: Path | str) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; on success it replaces `final` in one rename.

    An interrupted build leaves only a `.tmp` folder, never something that looks complete.
    """
    final = check_target(final, folder=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def temporary_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary file path beside `final` for writers that want a path (parquet, duckdb)."""
    final = check_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):
            _publishable(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
