"""Report data turned into plain text cells, once, for every renderer (terminal, Markdown, HTML).

Renderers escape these strings for their own format (bench/report/escape.py); nothing here is format-specific.
"""

from __future__ import annotations

import math
from typing import Any

from bench.report.data import HOST_EMULATION, ReportData, table_records

RESULT_COLUMNS = ["variant", "unit", "n", "tokens", "median ms (95% CI)", "p90", "p99", "IQR", "flags",
                  "load ms: compile/cold/warm/1st", "MB", "sparsity", "bits", "BLEU host ref. (95% CI)", "CIDEr host ref. (95% CI)"]
VERDICT_COLUMNS = ["metric", "what", "baseline", "current", "change", "95% CI", "p", "verdict", "note"]


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value: Any, digits: int = 1) -> str:
    return "–" if missing(value) else f"{float(value):,.{digits}f}"


def with_ci(value: Any, lo: Any, hi: Any, digits: int = 1) -> str:
    if missing(value):
        return "–"
    if missing(lo) or missing(hi):
        return num(value, digits)
    return f"{num(value, digits)} ({num(lo, digits)}–{num(hi, digits)})"


def percent(value: Any, digits: int = 1) -> str:
    return "–" if missing(value) else f"{100 * float(value):.{digits}f}%"


def flags(row: dict) -> str:
    out = []
    if row.get("unstable"):
        out.append("unstable")
    throttled = row.get("throttled_fraction")
    if not missing(throttled) and throttled > 0:
        out.append(f"throttled {percent(throttled, 0)}")
    stop = row.get("stop_reason")
    if stop and any(reason in str(stop) for reason in ("max_time", "max_samples")):
        out.append(f"stopped: {stop}")
    if row.get("emulated"):
        out.append("emulated")
    return ", ".join(out) or "ok"


def load_times(row: dict) -> str:
    return "/".join("–" if missing(row.get(k)) else f"{float(row[k]):.0f}" for k in ("compile_ms", "cold_load_ms", "warm_load_ms", "first_prediction_ms"))


def result_cells(row: dict) -> list[str]:
    return [str(row["variant"]), str(row["compute_unit"]), str(row["n"]), num(row.get("tokens")),
            with_ci(row["median_ms"], row["ci_lo_ms"], row["ci_hi_ms"]), num(row["p90_ms"]), num(row["p99_ms"]),
            num(row["iqr_ms"]), flags(row), load_times(row), num(row["size_mb"]), percent(row["sparsity"]),
            num(row["bits_per_weight"]), with_ci(row["bleu"], row["bleu_lo"], row["bleu_hi"]),
            with_ci(row["cider"], row["cider_lo"], row["cider_hi"], 2)]


def result_groups(report: ReportData) -> list[dict[str, Any]]:
    """One table per target (device or host), titled with what it is; host-torch says host emulation."""
    groups: dict[tuple, dict[str, Any]] = {}
    for row in table_records(report.table):
        key = (row["target_kind"], row["target_id"])
        if key not in groups:
            if row["target_kind"] == "host-torch":
                title = f"host-torch — {HOST_EMULATION}"
            else:
                title = f"{row['target']} — OS build {row['os_build']} — {row['target_kind']}"
            groups[key] = {"title": title, "emulated": row["target_kind"] == "host-torch", "rows": []}
        groups[key]["rows"].append(result_cells(row))
    return list(groups.values())


def verdict_cells(verdict) -> list[str]:
    v = verdict if isinstance(verdict, dict) else verdict.to_dict()
    unit = v.get("unit") or ""
    if v["metric"].startswith("latency"):
        change = f"{percent(v['relative'])}" if not missing(v.get("relative")) else "–"
        ci = f"{percent(v['ci95'][0])} … {percent(v['ci95'][1])}" if v.get("ci95") else "–"
        base, cur = num(v["baseline"]), num(v["current"])
    elif v["metric"] in ("BLEU", "CIDEr", "device BLEU", "device CIDEr"):
        digits = 2
        change = "–" if missing(v.get("delta")) else f"{float(v['delta']):+.{digits}f}"
        ci = f"{float(v['ci95'][0]):+.2f} … {float(v['ci95'][1]):+.2f}" if v.get("ci95") else "–"
        base, cur = num(v["baseline"], digits), num(v["current"], digits)
    elif unit == "tokens":
        change = "–" if missing(v.get("relative")) else percent(v["relative"])
        ci, base, cur = "exact", num(v["baseline"]), num(v["current"])
    else:
        digits = 0 if unit == "bytes" else 4
        change = "–" if missing(v.get("delta")) else f"{float(v['delta']):+,.{digits}f}"
        ci, base, cur = "exact", num(v["baseline"], digits), num(v["current"], digits)
    p = "–" if missing(v.get("p_value")) else f"{float(v['p_value']):.2g}"
    outcome = v["outcome"] + (" (regression)" if v["regression"] else "")
    note = v.get("detail") or ""
    return [f"{v['metric']}{(' ' + unit) if unit else ''}", str(v["key"]), base, cur, change, ci, p, outcome, note]


def signatures(report: ReportData) -> list[str]:
    """Metric signatures, so every quality number can be reproduced and compared."""
    seen = []
    for row in table_records(report.table):
        for text in (f"BLEU: {row['bleu_signature']}" if row.get("bleu_signature") else None,
                     f"CIDEr: {row['cider_scorer']}" if row.get("cider_scorer") else None,
                     f"dataset: {row['dataset']}" if row.get("dataset") else None):
            if text and text not in seen:
                seen.append(text)
    return seen


def explanation_summary(explanation: dict) -> str:
    return (f"{explanation['a']['name']} vs {explanation['b']['name']} on {explanation['target']} / "
            f"{explanation['compute_unit']}")


def shown_verdicts(report: ReportData) -> list:
    """Whole-caption latency verdicts always; latency parts and tokens per caption when DIFFERENT (they say where a
    change is); size, sparsity and quality when not SAME (they are SAME for a rerun)."""
    parts = ("latency: encoder", "latency: time to first token", "latency: decoder per step", "latency at fixed length",
             "tokens per caption")
    return [v for v in report.verdicts if v.metric == "latency median"
            or (v.outcome == "DIFFERENT" if v.metric in parts else v.outcome != "SAME")]
