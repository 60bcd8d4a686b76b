"""Immutable, versioned JSON records: every file carries its kind and schema version.

Readers refuse unknown kinds and versions newer than they know, and migrate older ones step by
step (asv's update_to_N): register a migration with `@migration(kind, from_version)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import atomic
from bench.errors import RecordError

CURRENT_VERSIONS: dict[str, int] = {}
_MIGRATIONS: dict[tuple[str, int], Callable[[dict], dict]] = {}
# Shape checks per kind, run by `read` on every record after migration: valid JSON with a string where a number
# belongs is refused here, naming the file and field, instead of failing deep inside whatever reads it first.
_CHECKS: dict[str, Callable[[dict, str], None]] = {}


def register_kind(kind: str, version: int, check: Callable[[dict, str], None] | None = None) -> None:
    """Declare the schema version this code writes for `kind` (e.g. "bench.eval", 1) and, optionally, the check
    `check(record, source)` that raises RecordError when a record of that kind has the wrong shape."""
    CURRENT_VERSIONS[kind] = version
    if check is not None:
        _CHECKS[kind] = check


def migration(kind: str, from_version: int):
    """Decorator: a function turning a `kind` record of `from_version` into `from_version + 1`."""

    def register(function: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _MIGRATIONS[(kind, from_version)] = function
        return function

    return register


def stamp(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload with `schema` and `schema_version` first."""
    if kind not in CURRENT_VERSIONS:
        raise RecordError(f"record kind {kind!r} was never registered")
    body = {k: v for k, v in payload.items() if k not in ("schema", "schema_version")}
    return {"schema": kind, "schema_version": CURRENT_VERSIONS[kind], **body}


def write(path: Path | str, kind: str, payload: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write a record atomically. Records are immutable: an existing file is refused unless told."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RecordError(f"{path}: record exists and records are immutable")
    return atomic.write_json(path, stamp(kind, payload))


def upgrade(record: dict[str, Any], kind: str, *, source: str = "record") -> dict[str, Any]:
    """Check kind and version of a loaded record and migrate it to the current version."""
    if not isinstance(record, dict) or record.get("schema") != kind:
        found = record.get("schema") if isinstance(record, dict) else type(record).__name__
        raise RecordError(f"{source}: expected a {kind} record, found {found!r}")
    version = record.get("schema_version")
    current = CURRENT_VERSIONS.get(kind)
    if not isinstance(version, int) or current is None:
        raise RecordError(f"{source}: missing or invalid schema_version")
    if version > current:
        raise RecordError(f"{source}: schema version {version} is newer than this bench ({current}); upgrade bench")
    while version < current:
        step = _MIGRATIONS.get((kind, version))
        if step is None:
            raise RecordError(f"{source}: no migration from {kind} v{version} to v{version + 1}")
        record = step(dict(record))
        version += 1
        record["schema_version"] = version
    return record


def read(path: Path | str, kind: str) -> dict[str, Any]:
    """Load, check and migrate a record; a corrupt file is one clear RecordError."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path}: not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise RecordError(f"{path}: corrupt record ({err})") from None
    except OSError as err:
        raise RecordError(f"{path}: cannot read ({err.strerror or err})") from None
    record = upgrade(record, kind, source=str(path))
    check = _CHECKS.get(kind)
    if check is not None:
        check(record, str(path))
    return record


def field_problem(err, source: str, what: str) -> RecordError:
    """One line from a pydantic ValidationError: the file, the first wrong field and what is wrong with it."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more problem(s))" if err.error_count() > 1 else ""
    return RecordError(f"{source}: invalid {what} at {where}: {first['msg']}{more}")
