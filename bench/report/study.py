"""The seed study's view of a run (bench.report.figures draws it, bench.report.seed compares it with the paper).

Size, sparsity and quality belong to a variant, not to a target: one row per variant, whatever targets measured it.
Latency comes from one source — the first Core ML target (its `all` unit when measured), else host-torch, which is
host emulation and is labelled so wherever it is shown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.report.data import HOST_EMULATION, ReportData, table_records


def ok(value) -> bool:
    return value is not None and value == value  # not NaN


def is_dense(variant: dict) -> bool:
    return not variant["prune_layers"] and not variant["target_sparsity"]


def most_common(values: list) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def primary_source(rows: list[dict]) -> tuple[Any, str] | None:
    """The first Core ML target and its preferred unit (`all` if measured), else the first host-torch target: where
    the seed's latency panels are drawn (host-torch ones labelled host emulation)."""
    measured = [r for r in rows if ok(r["median_ms"])]
    ranked = [r for r in measured if not r["emulated"]] or measured
    if not ranked:
        return None
    target = ranked[0]["target_id"]
    units = [r["compute_unit"] for r in ranked if r["target_id"] == target]
    return target, "all" if "all" in units else units[0]


@dataclass(frozen=True)
class Study:
    """The seed's studies drawn from one run: one row per variant (size, sparsity and quality belong to the variant,
    not to a target) with the latency of one source (`latency_label`), and the axes every sweep holds fixed."""

    variants: list[dict]
    latency_label: str  # "" when nothing was measured
    emulated: bool
    model: Any  # the captioner most variants come from (the base of base-vs-large)
    image_size: Any  # its most common input size and resize mode: the size sweeps run at
    resize: Any

    def at_native_axes(self) -> list[dict]:
        return [v for v in self.variants
                if (v["model"], v["image_size"], v["resize"]) == (self.model, self.image_size, self.resize)]

    def titled(self, text: str) -> str:
        return f"{text} — {HOST_EMULATION}" if self.emulated else text


# What a variant row takes from its latency source (None when that target did not measure the variant).
LATENCY_FIELDS = ("median_ms", "ci_lo_ms", "ci_hi_ms", "target_id", "target_kind", "compute_unit", "emulated",
                  "device_model")


def seed_study(report: ReportData) -> Study | None:
    # The seed decoded by recomputing every position; a kv_cache twin has its own section (recompute vs kv_cache)
    # and would otherwise stand as a second bar of the same precision.
    rows = [r for r in table_records(report.table) if r.get("decoding", "recompute") != "kv_cache"]
    if not rows:
        return None
    primary = primary_source(rows)
    latency = {r["variant_id"]: r for r in rows if primary and (r["target_id"], r["compute_unit"]) == primary}
    variants: dict[str, dict] = {}
    for r in rows:
        if r["variant_id"] not in variants:
            source = latency.get(r["variant_id"])
            variants[r["variant_id"]] = {**r, **{k: (source or {}).get(k) for k in LATENCY_FIELDS}}
    source = next(iter(latency.values()), None)
    label = ""
    if source:
        label = (f"host-torch {source['compute_unit']}" if source["emulated"]
                 else f"{source['device_model']} · {source['compute_unit']}")
    items = list(variants.values())
    model = most_common([v["model"] for v in items])
    size, resize = most_common([(v["image_size"], v["resize"]) for v in items if v["model"] == model])
    return Study(items, label, bool(source and source["emulated"]), model, size, resize)
