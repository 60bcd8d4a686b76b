"""Content hashes that name things on the device: a package directory tree (models/<sha>/), a byte string
(inputs/<sha>.f32)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_files(root: Path) -> list[tuple[str, Path]]:
    """Every regular file under `root` as (posix relative path, path), sorted so the order is stable."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


_TREE_CACHE: dict[tuple, str] = {}  # (root, ((relative, size, mtime_ns), ...)) -> hash; a pure memo


def tree_sha256(root: Path | str) -> str:
    """The package tree hash the builder records in manifest.json (bench.build.analyze.tree_sha256), so the name a
    package gets on the device is the one the variant manifest names.

    Memoised on every file's (path, size, mtime): re-deploying an unchanged 1 GB package does not re-read it.
    """
    from bench.build.analyze import tree_sha256 as builder_tree_sha256

    root = Path(root).resolve()
    signature = (str(root), tuple((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in tree_files(root)))
    if signature not in _TREE_CACHE:
        _TREE_CACHE[signature] = builder_tree_sha256(root)
    return _TREE_CACHE[signature]
