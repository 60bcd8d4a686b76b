"""recompute vs kv_cache, side by side (issue 14): the same compressed weights decoded both ways, per target and
compute unit, with the verdict rules of every other latency comparison (bench.report.verdicts).

Twins are variants whose recipes differ only in `decoder` (same source weights, image size and compression); their
samples are paired by image. The recomputing variant is the baseline: a kv_cache "DIFFERENT" with a negative change
is the cached decoder being faster.
"""

from __future__ import annotations

import json
from typing import Any

from bench.report import verdicts as stats

COLUMNS = ["variant", "unit", "decoder", "n", "tokens", "encoder ms", "1st token ms", "per token ms", "tokens/s",
           "caption ms"]
VERDICT_METRICS = (("latency", "caption"), ("first_token", "time to first token"), ("per_token", "per token"))


def twin_key(manifest: dict[str, Any] | None) -> str | None:
    """What must be equal for two variants to be the same weights decoded two ways (None: not a built variant)."""
    if not manifest or not isinstance(manifest.get("recipe"), dict):
        return None
    recipe = {k: v for k, v in manifest["recipe"].items() if k != "decoder"}
    source = (manifest.get("source") or {}).get("weights_sha256")
    return json.dumps([recipe, source, manifest.get("image_size")], sort_keys=True, default=str)


def decoder_pairs(run, table) -> list[dict[str, Any]]:
    """One entry per (recompute variant, its kv_cache twin, target, compute unit) measured in `run`."""
    from bench.report.data import series_samples, table_records

    rows = table_records(table)
    series = series_samples(run)
    pairs = []
    for row in rows:
        if row.get("decoding") != "kv_cache":
            continue
        key = twin_key(run.variants.get(row["variant_id"]))
        twins = [r for r in rows if r.get("decoding") == "recompute" and key is not None
                 and twin_key(run.variants.get(r["variant_id"])) == key and r["target_id"] == row["target_id"]
                 and r["compute_unit"] == row["compute_unit"]]
        if not twins:
            continue
        base = twins[0]
        a = series.get(tuple(str(base[k]) for k in ("variant_id", "target_kind", "target_id", "compute_unit")))
        b = series.get(tuple(str(row[k]) for k in ("variant_id", "target_kind", "target_id", "compute_unit")))
        if a is None or b is None:
            continue
        where = base["target"] if base["target_kind"] == "host-torch" else base["device_model"]
        pairs.append({"recompute": base, "kv_cache": row, "target": base["target"], "target_kind": base["target_kind"],
                      "compute_unit": base["compute_unit"], "emulated": bool(base.get("emulated")),
                      "verdicts": _verdicts(a, b, key=f"{row['variant']} vs {base['variant']} · {where} · "
                                                      f"{base['compute_unit']}")})
    return pairs


def _verdicts(recompute: dict[str, Any], cached: dict[str, Any], *, key: str) -> list[dict[str, Any]]:
    """kv_cache vs recompute for the whole caption, time to first token and time per token, paired by image."""
    found = []
    for field, label in VERDICT_METRICS:
        a, b = recompute.get(field), cached.get(field)
        if a is None or b is None:
            continue
        verdict = stats.compare_latency_paired(a, b, recompute.get("image"), cached.get("image"), key=key,
                                               metric=f"kv_cache vs recompute: {label}")
        verdict.regression = False  # a design comparison, not a night-over-night regression
        found.append(verdict.to_dict())
    return found


def pair_cells(pair: dict[str, Any]) -> list[list[str]]:
    """Two table rows (recompute, then kv_cache) in COLUMNS order."""
    from bench.report.cells import num

    out = []
    for side in ("recompute", "kv_cache"):
        row = pair[side]
        out.append([str(row["variant"]), str(row["compute_unit"]), side, str(row["n"]), num(row.get("tokens")),
                    num(row.get("encoder_ms"), 2), num(row.get("first_token_ms"), 2), num(row.get("token_ms"), 3),
                    num(row.get("tokens_per_s"), 0), num(row.get("median_ms"), 2)])
    return out


def verdict_line(pair: dict[str, Any]) -> str:
    """"kv_cache vs recompute: caption −38.2 % DIFFERENT; time to first token +1.0 % SAME; …" for one pair."""
    parts = []
    for verdict in pair["verdicts"]:
        change = "–" if verdict["relative"] is None else f"{100 * verdict['relative']:+.1f} %"
        parts.append(f"{verdict['metric'].split(': ', 1)[-1]} {change} {verdict['outcome']}")
    return f"{pair['kv_cache']['variant']} vs {pair['recompute']['variant']} ({pair['compute_unit']}): " + \
        ("; ".join(parts) or "not enough samples")
