"""A run's plan: which series (variant × target × compute unit) exist, and in which order each round measures them.

Interleaving: every round visits every still-running series of a target once, in an order shuffled by a generator
seeded from (run seed, target, round) — so slow drift or heat never favours one variant, and a resumed run replays the
same order. Job keys are `<series_key>--r<round>`; a series is `<variant_id>--<target_id>--<compute_unit>`.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import InputError, did_you_mean
from bench.run.targets.base import COMPUTE_UNITS, VariantRef

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text)


@dataclass(frozen=True)
class Series:
    variant: VariantRef
    target_id: str
    compute_unit: str

    @property
    def key(self) -> str:
        return safe_name(f"{self.variant.variant_id}--{self.target_id}--{self.compute_unit}")

    def job_key(self, round_index: int) -> str:
        return f"{self.key}--r{round_index:03d}"


def plan_series(variants: list[VariantRef], targets: list, compute_units: list[str]) -> list[Series]:
    """Every (variant, target, compute unit) to measure. A unit no chosen target supports is an input error."""
    wanted = list(compute_units)
    for unit in wanted:
        if unit not in COMPUTE_UNITS:
            raise did_you_mean("compute unit", unit, COMPUTE_UNITS)
    if wanted:
        supported = {unit for target in targets for unit in target.compute_units}
        unusable = [unit for unit in wanted if unit not in supported]
        if unusable:
            names = ", ".join(f"{t.id} ({', '.join(t.compute_units)})" for t in targets)
            raise InputError(f"compute unit {unusable[0]!r} is not available on any chosen target: {names}")
    from bench.run.generic import is_imported, is_imported_captioner

    series = []
    for target in targets:
        units = [u for u in (wanted or target.compute_units) if u in target.compute_units]
        for variant in variants:
            if (is_imported(variant) or is_imported_captioner(variant)) and target.kind not in ("macos-coreml",
                                                                                                "iphone"):
                continue  # imported models run on Core ML only: no torch weights for host-torch
            for unit in units:
                series.append(Series(variant, target.id, unit))
    if not series:
        raise InputError("nothing to measure: no variant × target × compute unit combination")
    return series


def round_order(series: list[Series], seed: int, target_id: str, round_index: int) -> list[Series]:
    """The randomised order of one round on one target; deterministic in (seed, target, round)."""
    digest = hashlib.sha256(f"{seed}|{target_id}|{round_index}".encode()).digest()
    ordered = sorted(series, key=lambda s: s.key)
    random.Random(int.from_bytes(digest[:8], "little")).shuffle(ordered)
    return ordered


# --- variants ---------------------------------------------------------------------------------------------------

def variant_ref(manifest: Any, path: Path | None = None) -> VariantRef:
    """A VariantRef from a bench.variant manifest (pydantic model or dict)."""
    def get(name, default=None):
        return manifest.get(name, default) if isinstance(manifest, dict) else getattr(manifest, name, default)

    variant_id = get("variant_id")
    packages = get("packages") or {}
    shas = []
    for package in ("encoder", "decoder"):
        entry = packages.get(package) if isinstance(packages, dict) else getattr(packages, package, None)
        sha = (entry.get("sha256") if isinstance(entry, dict) else getattr(entry, "sha256", None)) if entry else None
        shas.append(sha or "")
    # The id's suffix is the content hash of the build's cache key (base weights, recipe, target, versions) — the
    # same "variant hash" the eval records carry; ids without one fall back to the packages' tree hashes.
    name_part, _, suffix = variant_id.rpartition("-")
    variant_hash = get("variant_hash") or (
        suffix if name_part and len(suffix) >= 8 else hashlib.sha256("|".join(shas).encode()).hexdigest()[:12])
    decode = get("decode") or {}
    if not isinstance(decode, dict):
        decode = decode.model_dump() if hasattr(decode, "model_dump") else dict(decode.__dict__)
    directory = path or get("path") or get("directory")
    io = get("io") or {}
    return VariantRef(variant_id=variant_id, name=get("name") or variant_id, variant_hash=variant_hash,
                      path=Path(directory) if directory else None, image_size=get("image_size"),
                      decode={k: int(v) for k, v in decode.items() if v is not None}, source=manifest,
                      decoding=str(io.get("decoding") or "recompute") if isinstance(io, dict) else "recompute")


def select_variants(available: list[VariantRef], wanted: list[str]) -> list[VariantRef]:
    """The variants named by id or matrix name (a name with several builds picks the last id); unknown → did-you-mean."""
    if not wanted:
        return sorted(available, key=lambda v: v.variant_id)
    from bench.run.generic import is_imported

    by_id = {v.variant_id: v for v in available}
    by_name: dict[str, VariantRef] = {}
    # built last, so a name shared with an imported model (imported first, built later) means the built variant
    for variant in sorted(available, key=lambda v: (not is_imported(v), v.variant_id)):
        by_name[variant.name] = variant
    chosen: dict[str, VariantRef] = {}
    for name in wanted:
        variant = by_id.get(name) or by_name.get(name)
        if variant is None:
            raise did_you_mean("variant", name, [*by_name, *by_id])
        chosen[variant.variant_id] = variant
    return list(chosen.values())
