"""Variant manifests (`models/variants/<variant_id>/manifest.json`, record kind `bench.variant` v2).

A variant directory holds `manifest.json`, `encoder.mlpackage`, `decoder.mlpackage` and `weights_map.json`
(which Core ML constant holds which PyTorch parameter; used to load the deployed weights back into torch), and
after its first host use `host-weights/<sha256>.safetensors` (bench.build.host_weights; not part of the build's
integrity record: it is named by its own hash and checked against it).
It is written in a temporary directory and renamed into place, so a directory with a manifest is complete.
v2 adds `integrity` (every stored file's size and sha256, and the manifest's own hash): bench.build.integrity checks
it before any use. v1 manifests migrate with `integrity: null` and are verified against their package tree hashes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from bench.errors import InputError, RecordError, did_you_mean
from bench.paths import Workspace
from bench.store import records

KIND = "bench.variant"
VERSION = 2
MANIFEST = "manifest.json"
WEIGHTS_MAP = "weights_map.json"
PACKAGES = ("encoder", "decoder")


@records.migration(KIND, 1)
def _v1_has_no_file_digests(record: dict[str, Any]) -> dict[str, Any]:
    """v1 recorded only each package's tree hash; integrity checks fall back to it (bench.build.integrity)."""
    return {**record, "integrity": None}


class PackageInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str
    bytes: int
    weight_bytes: int
    sha256: str


class Measured(BaseModel):
    """What was measured from the stored packages; listings and reports do arithmetic on these."""

    model_config = ConfigDict(extra="allow")

    total_bytes: int = Field(ge=0)
    weight_bytes: int = Field(ge=0)
    sparsity: float = Field(ge=0, le=1)
    bits_per_weight: float = Field(ge=0)
    decompression_ops: dict[str, int] = Field(default_factory=dict)
    selected_sparsity: float | None = Field(default=None, ge=0, le=1)


class VariantManifest(BaseModel):
    """docs/contracts.md §3. Extra keys are kept (forward-compatible additions)."""

    model_config = ConfigDict(extra="allow")

    variant_id: str
    name: str
    variant_hash: str
    cache_key: dict[str, Any]
    recipe: dict[str, Any]
    target: str
    image_size: int
    resize: str
    decoder_length: int
    decode: dict[str, int]
    source: dict[str, Any]
    io: dict[str, Any]
    packages: dict[str, PackageInfo]
    measured: dict[str, Any]
    verification: dict[str, Any]
    build: dict[str, Any]
    environment: dict[str, Any]
    integrity: dict[str, Any] | None = None
    _directory: Path | None = PrivateAttr(default=None)

    @field_validator("measured")
    @classmethod
    def _typed_measurements(cls, measured: dict[str, Any]) -> dict[str, Any]:
        Measured.model_validate(measured)  # checked, but kept as the plain dict every reader indexes
        return measured

    @property
    def directory(self) -> Path | None:
        return self._directory

    def package_path(self, package: str) -> Path:
        if self._directory is None:
            raise RecordError(f"{self.variant_id}: manifest not loaded from a directory")
        return self._directory / self.packages[package].path

    def to_record(self) -> dict[str, Any]:
        return self.model_dump()


def as_workspace(workspace: Workspace | Path | str | None) -> Workspace:
    """A Workspace from a Workspace, a root folder, or None (the current one)."""
    if workspace is None:
        return Workspace.current()
    return workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))


def _parse(record: dict[str, Any], source: str) -> VariantManifest:
    try:
        return VariantManifest.model_validate({k: v for k, v in record.items() if k not in ("schema", "schema_version")})
    except ValidationError as err:
        raise records.field_problem(err, source, "variant manifest") from None


class _RecordShape(BaseModel):
    """What every reader of a manifest (listings, reports, explain) may compute with, typed; the complete manifest is
    checked by read_manifest (older or partial manifests stay readable by the report)."""

    model_config = ConfigDict(extra="allow")

    variant_id: str
    name: str
    variant_hash: str | None = None
    recipe: dict[str, Any] | None = None
    target: str | None = None
    image_size: int | None = None
    resize: str | None = None
    decode: dict[str, int] | None = None
    packages: dict[str, dict[str, Any]] | None = None
    measured: Measured | None = None
    environment: dict[str, Any] | None = None


def _check(record: dict[str, Any], source: str) -> None:
    try:
        _RecordShape.model_validate(record)
    except ValidationError as err:
        raise records.field_problem(err, source, "variant manifest") from None


records.register_kind(KIND, VERSION, _check)


def read_manifest(directory: Path) -> VariantManifest:
    manifest = _parse(records.read(directory / MANIFEST, KIND), str(directory / MANIFEST))
    manifest._directory = directory
    return manifest


def list_variants(workspace: Workspace | Path | str | None = None, *,
                  unreadable: dict[str, str] | None = None) -> list[VariantManifest]:
    """Every complete variant of the workspace (directories with a manifest), sorted by name then id.

    A variant whose manifest cannot be read is left out (one damaged variant never hides the others); its one-line
    error is recorded in `unreadable` ({directory name: error}) when given.
    """
    root = as_workspace(workspace).variants_dir
    if not root.is_dir():
        return []
    found = []
    for directory in variant_dirs(root):
        try:
            found.append(read_manifest(directory))
        except RecordError as err:
            if unreadable is not None:
                unreadable[directory.name] = str(err)
    return sorted(found, key=lambda m: (m.name, m.variant_id))


def variant_dirs(root: Path) -> list[Path]:
    """The variant directories under a variants folder (temporary `.…tmp` folders of running builds excluded)."""
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and os.path.lexists(d / MANIFEST)]


def load_variant(dir_or_id: Path | str, workspace: Workspace | Path | str | None = None) -> VariantManifest:
    """A variant by directory, id, unique id prefix, or name (the most recently built one of that name)."""
    candidate = Path(dir_or_id)
    if candidate.is_dir():
        if not (candidate / MANIFEST).is_file():
            raise InputError(f"{candidate}: not a variant directory (no {MANIFEST}); build it with `bench models build`")
        return read_manifest(candidate)
    ws = as_workspace(workspace)
    text = str(dir_or_id)
    exact = ws.variants_dir / text
    if (exact / MANIFEST).is_file():
        return read_manifest(exact)
    unreadable: dict[str, str] = {}
    variants = list_variants(ws, unreadable=unreadable)
    by_prefix = [v for v in variants if v.variant_id.startswith(text)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    by_name = [v for v in variants if v.name == text]
    if by_name:
        return max(by_name, key=lambda v: v.environment.get("created_at", ""))
    damaged = [error for vid, error in sorted(unreadable.items()) if vid.startswith(f"{text}-") or vid.startswith(text)]
    if damaged:  # the variant exists but its manifest cannot be read: say that, not "unknown"
        raise RecordError(f"{damaged[0]} — rebuild it with `bench models build --force {text}`")
    if not variants:
        raise InputError(f"unknown variant {text!r}: no variants in {ws.variants_dir}; run `bench models build`")
    raise did_you_mean("variant", text, [v.name for v in variants] + [v.variant_id for v in variants])


def variant_dir(manifest: VariantManifest, workspace: Workspace | Path | str | None = None) -> Path:
    if manifest.directory is not None:
        return manifest.directory
    return as_workspace(workspace).variants_dir / manifest.variant_id


def read_weights_map(directory: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    try:
        return json.loads((directory / WEIGHTS_MAP).read_text(encoding="utf-8"))["packages"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise RecordError(f"{directory / WEIGHTS_MAP}: missing or corrupt ({err})") from None
