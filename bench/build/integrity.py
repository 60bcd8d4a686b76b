"""Integrity of stored variants: nothing damaged is ever measured.

The one place that knows how a stored variant is checked. Every consumer (build cache hit, `bench eval`, `bench run`,
deploy, `bench explain`, `bench models verify`) calls `check_variant` before it uses a variant; nothing else hashes.

What is recorded (manifest `integrity` block, `bench.variant` v2, written once at build time):
    files            {relative path: {bytes, sha256}} for every file of both packages and weights_map.json
    manifest_sha256  sha256 of the manifest's own canonical JSON without this field, so an edited manifest is caught

How it is checked, cheaply by default:
    1. walk both packages: every recorded file present, nothing added, only regular files (no symlinks), readable;
    2. sizes equal to the recorded ones (a truncated weight.bin is caught without reading it);
    3. each file whose (size, mtime, ctime, inode) is in the variant's stat index (`.integrity-index.json`, a cache
       written after a successful hash) is trusted; every other file is hashed and compared.
    `full=True` (`--verify`, `bench models verify --full`) hashes every file regardless of the index.
ctime cannot be set back by a user (`touch -r` restores mtime only), so an edit in place always invalidates the entry.
Entries younger than RACY_SECONDS are never indexed (git's "racy clean" rule): a write within the same timestamp tick
as the index would otherwise look unchanged.

Variants built before v2 (no `integrity` block) carry each package's tree hash (`packages.<p>.sha256`, paths and
contents of every file): they are verified exactly against it, naming the package rather than the file, and never
rewritten (records are immutable); `bench models build --force` rebuilds them with per-file hashes.

The same primitives check any other stored file by its recorded digest (`digest_file`, `check_files`), e.g. dense host
weights materialised beside a variant.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import DamagedError

INDEX_NAME = ".integrity-index.json"
PACKAGE_DIRS = ("encoder.mlpackage", "decoder.mlpackage")
WEIGHTS_MAP = "weights_map.json"
MANIFEST = "manifest.json"
RACY_SECONDS = 2.0
_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------- digests


def digest_file(path: Path | str) -> dict[str, Any]:
    """{bytes, sha256} of one regular file (OSError when it cannot be read).

    Large files are hashed from a memory map in one call (no copies, GIL released: measured fastest here,
    benchmarks/test_integrity.py); small ones through hashlib.file_digest's buffered reads."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size >= _CHUNK:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return {"bytes": len(view), "sha256": hashlib.sha256(view).hexdigest()}
        digest = hashlib.file_digest(handle, "sha256")
        return {"bytes": handle.tell(), "sha256": digest.hexdigest()}


def record_files(directory: Path, roots: tuple[str, ...] = PACKAGE_DIRS + (WEIGHTS_MAP,)) -> dict[str, dict[str, Any]]:
    """{relative path: {bytes, sha256}} of every file under `roots` (folders or files) of `directory`."""
    files = {}
    for rel in _walk(directory, roots):
        path = directory / rel
        if path.is_symlink() or not path.is_file():
            raise DamagedError(f"{path}: not a regular file; a variant holds regular files only", path=str(path))
        files[rel] = digest_file(path)
    return dict(sorted(files.items()))


def canonical_sha256(record: dict[str, Any]) -> str:
    """sha256 of a record's canonical JSON (as loaded from its file), without its own `integrity.manifest_sha256`."""
    body = dict(record)
    if isinstance(body.get("integrity"), dict):
        body["integrity"] = {k: v for k, v in body["integrity"].items() if k != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(record: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The record with its integrity block: the files' digests and the record's own hash (call last)."""
    plain = json.loads(json.dumps(record, default=str))  # exactly what reading the written file gives back
    sealed = {**plain, "integrity": {"algorithm": "sha256", "files": files}}
    sealed["integrity"]["manifest_sha256"] = canonical_sha256(sealed)
    return sealed


# --------------------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Checked:
    """What one check did: files trusted from the stat index, files hashed, bytes hashed."""

    variant_id: str
    trusted: int
    hashed: int
    bytes_hashed: int


def check_variant(variant: Any, *, full: bool = False, packages_optional: bool = False) -> Checked:
    """Refuse a damaged variant (DamagedError: one line naming the file); `variant` is a manifest or a directory.

    Returns what was checked. Cheap on an unchanged variant (stat calls only); `full` rehashes every byte.
    `packages_optional`: for readers of the manifest's facts alone (`bench explain`), a variant whose stored files
    were all removed (pruned from this machine) has only its manifest checked; any file left is checked in full.
    """
    directory = Path(variant) if isinstance(variant, (str, Path)) else Path(variant.directory)
    index = {} if full else _read_index(directory)
    record, manifest_key = _read_record(directory, trusted=index)
    name = str(record.get("name") or directory.name)
    hint = f"rebuild it with `bench models build --force {name}`"
    integrity = record.get("integrity")
    if packages_optional and not any(os.path.lexists(directory / root) for root in PACKAGE_DIRS + (WEIGHTS_MAP,)):
        checked = Checked(directory.name, 0, 0, 0)
    elif integrity is None:
        checked = _check_legacy(directory, record, hint, full=full)
    else:
        checked = check_files(directory, integrity["files"], roots=PACKAGE_DIRS + (WEIGHTS_MAP,), full=full, hint=hint,
                              index=index)
    if manifest_key is not None:  # its own hash was just computed and matched: later checks may trust its stat
        _write_index(directory, {MANIFEST: manifest_key})
    return checked


def check_files(directory: Path | str, expected: dict[str, dict[str, Any]], *, roots: tuple[str, ...] | None = None,
                full: bool = False, hint: str = "rebuild it", index: dict[str, list[int]] | None = None) -> Checked:
    """Check files of `directory` against recorded {relative path: {bytes, sha256}}.

    `roots` (folders or files under `directory`) are walked so that added files are refused too; without it only
    the expected files are checked. Raises DamagedError naming the first damaged file.
    """
    directory = Path(directory)
    present = set(_walk(directory, roots) if roots else (rel for rel in expected if os.path.lexists(directory / rel)))
    missing, added = sorted(set(expected) - present), sorted(present - set(expected))
    if missing:
        path = directory / missing[0]
        raise DamagedError(f"{path}: missing (deleted after the build) — {hint}", path=str(path))
    if added:
        path = directory / added[0]
        raise DamagedError(f"{path}: not part of the build (added afterwards) — {hint}", path=str(path))
    index = {} if full else (_read_index(directory) if index is None else index)
    fresh: dict[str, list[int]] = {}
    trusted = hashed = hashed_bytes = 0
    for rel in sorted(expected):
        path = directory / rel
        info = _stat_regular(path, hint)
        want = expected[rel]
        if info.st_size != want.get("bytes"):
            raise DamagedError(f"{path}: {info.st_size:,} bytes, built as {want.get('bytes'):,} (truncated or "
                               f"overwritten) — {hint}", path=str(path))
        key = _stat_key(info)
        if not full and index.get(rel) == key:
            trusted += 1
            fresh[rel] = key
            continue
        got = _hash_or_refuse(path, hint)
        hashed, hashed_bytes = hashed + 1, hashed_bytes + got["bytes"]
        if got["sha256"] != want.get("sha256"):
            raise DamagedError(f"{path}: content changed since it was built (sha256 {got['sha256'][:12]}…, built "
                               f"{str(want.get('sha256'))[:12]}…) — {hint}", path=str(path))
        fresh[rel] = key
    if hashed:
        _write_index(directory, fresh)
    return Checked(directory.name, trusted, hashed, hashed_bytes)


def check_file(path: Path | str, expected: dict[str, Any], *, full: bool = False, hint: str = "rebuild it") -> Checked:
    """One stored file against its recorded {bytes, sha256} (stat index in its folder)."""
    path = Path(path)
    return check_files(path.parent, {path.name: expected}, full=full, hint=hint)


def recorded_package_hashes(variant: Any) -> dict[str, str]:
    """{"encoder": tree sha256, "decoder": …} as recorded at build time (call after check_variant)."""
    directory = Path(variant) if isinstance(variant, (str, Path)) else Path(variant.directory)
    packages = _read_record(directory, trusted=_read_index(directory))[0].get("packages") or {}
    return {role: info["sha256"] for role, info in packages.items() if isinstance(info, dict) and "sha256" in info}


def verify_workspace(workspace: Any, names: list[str] | None = None, *,
                     full: bool = False) -> list[tuple[str, Checked | DamagedError]]:
    """(variant id, what was checked or the damage) for every variant of the workspace, or those named.

    Names are variant names (every build of that name), ids or unique id prefixes; a damaged variant is listed
    with its error and never stops the others.
    """
    import re

    from bench.build.variants import as_workspace
    from bench.errors import did_you_mean

    root = as_workspace(workspace).variants_dir
    # Every variant folder, with or without a manifest (a deleted manifest is damage too); `.…tmp` are builds.
    directories = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    chosen = directories
    if names:
        chosen = []
        for name in names:
            matches = [d for d in directories if d.name == name or re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", d.name)]
            matches = matches or [d for d in directories if d.name.startswith(name)]
            if not matches:
                raise did_you_mean("variant", name, [re.sub(r"-[0-9a-f]{12}$", "", d.name) for d in directories])
            chosen += [d for d in matches if d not in chosen]
    results: list[tuple[str, Checked | DamagedError]] = []
    for directory in chosen:
        try:
            results.append((directory.name, check_variant(directory, full=full)))
        except DamagedError as err:
            results.append((directory.name, err))
    return results


# --------------------------------------------------------------------------------------------------- internals


def _read_record(directory: Path, trusted: dict[str, list[int]]) -> tuple[dict[str, Any], list[int] | None]:
    """(the manifest as stored, its own hash checked, migrated to the current version; its stat key when its hash was
    computed now, None when `trusted` (the stat index) vouched for it) — or DamagedError naming it."""
    from bench.build import variants  # registers the kind and its migrations
    from bench.errors import RecordError
    from bench.store import records

    path = directory / MANIFEST
    refuse = "rebuild the variant with `bench models build --force`"
    if path.is_symlink() or (os.path.lexists(path) and not path.is_file()):
        raise DamagedError(f"{path}: not a regular file — {refuse}", path=str(path))
    try:
        key = _stat_key(os.stat(path))
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedError(f"{path}: missing — {refuse}", path=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedError(f"{path}: corrupt ({err}) — {refuse}", path=str(path)) from None
    sealed = stored.get("integrity") if isinstance(stored, dict) else None
    if sealed is None and isinstance(stored, dict) and stored.get("schema_version") != 1:
        # Only v1 manifests predate the block: without it, one flipped byte in its key would skip every file hash.
        raise DamagedError(f"{path}: its integrity block is missing — {refuse}", path=str(path))
    vouched = sealed is not None and trusted.get(MANIFEST) == key
    if sealed is not None and not vouched and (
            not isinstance(sealed, dict) or sealed.get("manifest_sha256") != canonical_sha256(stored)):
        raise DamagedError(f"{path}: changed since it was built (its own hash differs) — {refuse}", path=str(path))
    try:
        record = records.upgrade(stored, variants.KIND, source=str(path))  # hashed as stored, then migrated
    except RecordError as err:
        raise DamagedError(f"{err} — {refuse}", path=str(path)) from None
    if not isinstance(record.get("packages"), dict):
        raise DamagedError(f"{path}: no packages recorded — {refuse}", path=str(path))
    if record.get("integrity") is not None and not isinstance(record["integrity"].get("files"), dict):
        raise DamagedError(f"{path}: integrity block is malformed — {refuse}", path=str(path))
    return record, (None if vouched or sealed is None else key)


def _walk(directory: Path, roots: tuple[str, ...]) -> list[str]:
    """Relative paths of every non-directory entry under `roots`, symlinks included (never followed)."""
    base = os.fspath(directory)
    found = []
    for root in roots:
        top = os.path.join(base, root)
        if os.path.islink(top) or os.path.isfile(top):
            found.append(root)
            continue
        for folder, dirs, files in os.walk(top):  # does not follow symlinked folders: they are listed in dirs
            linked = [name for name in dirs if os.path.islink(os.path.join(folder, name))]
            prefix = os.path.relpath(folder, base).replace(os.sep, "/")
            found += [f"{prefix}/{name}" for name in (*files, *linked)]
    return sorted(found)


def _stat_regular(path: Path, hint: str) -> os.stat_result:
    try:
        info = os.lstat(path)
    except OSError as err:
        raise DamagedError(f"{path}: cannot be read ({err.strerror}) — {hint}", path=str(path)) from None
    if stat.S_ISLNK(info.st_mode):
        raise DamagedError(f"{path}: is a symlink; a stored variant holds regular files only — {hint}", path=str(path))
    if not stat.S_ISREG(info.st_mode):
        raise DamagedError(f"{path}: not a regular file — {hint}", path=str(path))
    if not os.access(path, os.R_OK):
        raise DamagedError(f"{path}: cannot be read (permission denied) — restore its permissions or {hint}",
                           path=str(path))
    return info


def _hash_or_refuse(path: Path, hint: str) -> dict[str, Any]:
    try:
        return digest_file(path)
    except OSError as err:
        raise DamagedError(f"{path}: cannot be read ({err.strerror or err}) — {hint}", path=str(path)) from None


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _read_index(directory: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((directory / INDEX_NAME).read_text(encoding="utf-8"))
        return {k: v for k, v in data["files"].items() if isinstance(v, list)} if data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # the index is only a cache: unreadable means every file is hashed


def _write_index(directory: Path, checked: dict[str, list[int]]) -> None:
    """Remember files just verified by hash, except racy ones (changed too recently to trust their timestamps)."""
    from bench import atomic

    horizon = time.time_ns() - int(RACY_SECONDS * 1e9)
    entries = {**_read_index(directory), **{rel: key for rel, key in checked.items() if max(key[1], key[2]) < horizon}}
    for rel, key in checked.items():
        if max(key[1], key[2]) >= horizon:
            entries.pop(rel, None)
    try:
        atomic.write_text(directory / INDEX_NAME, json.dumps({"version": 1, "files": entries}), durable=False)
    except OSError:
        pass  # a read-only variant folder: the index is a cache, every later check simply hashes again


def _check_legacy(directory: Path, record: dict[str, Any], hint: str, *, full: bool) -> Checked:
    """A v1 variant: each package's recorded tree hash (paths + contents) against the files on disk."""
    from bench.build.analyze import tree_sha256

    packages = record["packages"]
    index = {} if full else _read_index(directory)
    fresh: dict[str, list[int]] = {}
    trusted = hashed = hashed_bytes = 0
    for role in ("encoder", "decoder"):
        info = packages.get(role) if isinstance(packages.get(role), dict) else {}
        root = str(info.get("path") or f"{role}.mlpackage")
        package = directory / root
        if not package.is_dir() or package.is_symlink():
            raise DamagedError(f"{package}: missing or not a folder — {hint}", path=str(package))
        keys = {rel: _stat_key(_stat_regular(directory / rel, hint)) for rel in _walk(directory, (root,))}
        indexed = {rel: key for rel, key in index.items() if rel.startswith(f"{root}/")}
        if keys and indexed == keys:  # same file set, every file unchanged since its package hash last matched
            trusted += len(keys)
        else:
            try:
                measured = tree_sha256(package)
            except OSError as err:
                raise DamagedError(f"{package}: cannot be read ({err}) — {hint}", path=str(package)) from None
            if measured != info.get("sha256"):
                raise DamagedError(f"{package}: changed since it was built (tree sha256 {measured[:12]}…, built "
                                   f"{str(info.get('sha256'))[:12]}…) — {hint}", path=str(package))
            hashed += len(keys)
            hashed_bytes += sum(k[0] for k in keys.values())
        fresh |= keys
    if hashed:
        _write_index(directory, fresh)
    return Checked(directory.name, trusted, hashed, hashed_bytes)
