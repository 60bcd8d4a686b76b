"""Report DATA, apart from any rendering: one merged row per variant × target × compute unit, verdicts, trends.

`build_report(run, baseline=..., history=...)` returns a ReportData; renderers (terminal, markdown, html, export) only
format it. Host-torch rows are host emulation (not Core ML) and carry that label in `target`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError, IncomparableError, InputError
from bench.report import verdicts as stats
from bench.report.facts import (FACT_COLUMNS, HOST_EMULATION, KIND_ORDER, UNIT_ORDER, load_ns, target_label,
                                variant_facts, variant_name)
from bench.report.load import RunData, list_runs, load_run

__all__ = ["HOST_EMULATION", "KIND_ORDER", "UNIT_ORDER", "ReportData", "build_report", "load_ns", "merge_table",
           "table_records", "target_label", "variant_facts", "variant_name"]

GROUP = ["variant_id", "target_kind", "target_id", "compute_unit"]

COLUMNS = [
    "variant", "variant_id", "variant_hash", "target_kind", "target", "target_id", "device_model", "os_build",
    "compute_unit", "emulated", "n", "tokens", "median_ms", "p90_ms", "p99_ms", "iqr_ms", "ci_lo_ms", "ci_hi_ms", "unstable",
    "throttled_fraction", "stop_reason", "compile_ms", "cold_load_ms", "warm_load_ms", "first_prediction_ms",
    "total_bytes", "size_mb", "sparsity", "bits_per_weight", *FACT_COLUMNS, "bleu", "bleu_lo", "bleu_hi",
    "bleu_signature", "cider", "cider_lo", "cider_hi", "cider_scorer", "dataset",
    "decoding", "encoder_ms", "first_token_ms", "token_ms", "tokens_per_s",
]


NOT_RUN_TITLE = "Not run: the device's OS is older than the variant's packages need"


@dataclass
class ReportData:
    run_id: str
    created_at: str
    table: Any  # pandas.DataFrame with COLUMNS
    verdicts: list[stats.Verdict] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # {"kind": "run"|"history", "run_ids": [...], "forced": bool}
    trends: Any = None  # pandas.DataFrame: run_id, created_at, variant, target, compute_unit, median_ms, ci_lo_ms, ci_hi_ms
    explanations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    utilisation: list[list[str]] = field(default_factory=list)  # bench.run.timing.utilisation_rows
    seed: dict[str, Any] | None = None  # bench.report.seed.seed_comparison: the seed study's figures next to ours
    drift: list[dict[str, Any]] = field(default_factory=list)  # imported models' output drift (bench.report.drift)
    device_quality: list[dict[str, Any]] = field(default_factory=list)  # bench.report.device_quality.rows
    decoders: list[dict[str, Any]] = field(default_factory=list)  # bench.report.decoders.decoder_pairs
    # (variant, device) pairs the run left out before anything ran (device OS too old): one line each, never a failure
    not_run: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[stats.Verdict]:
        return [v for v in self.verdicts if v.regression]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (NaN → None): what the HTML template is filled with."""
        return _jsonable({
            "run_id": self.run_id, "created_at": self.created_at,
            "host_emulation_label": HOST_EMULATION,
            "table": table_records(self.table),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "baseline": self.baseline,
            "trends": [] if self.trends is None else self.trends.to_dict(orient="records"),
            "explanations": self.explanations,
            "notes": self.notes,
            "utilisation": self.utilisation,
            "seed": self.seed,
            "drift": self.drift,
            "device_quality": [{k: v for k, v in row.items() if k != "per_image"} for row in self.device_quality],
            "decoders": self.decoders,
            "not_run": self.not_run,
        })


def table_records(table) -> list[dict[str, Any]]:
    """The merged table as row dicts with missing values as None (pandas turns None into NaN in float columns)."""
    rows = table.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    import pandas as pd

    if value is pd.NA:
        return None
    return str(value)


# ----------------------------------------------------------------------------------------------- merged table
SERIES_FIELDS = {"latency": "latency_ns", "encoder": "encoder_ns", "decoder": "decoder_ns", "steps": "decoder_steps",
                 "first_token": "first_token_ns", "per_token": "token_ns"}


def series_samples(run: RunData) -> dict[tuple, dict[str, Any]]:
    """Measured (non-warm-up) samples per (variant, target kind, target, unit), computed once: arrays `latency`,
    `throttled`, and where the run stored them `encoder`, `decoder` (ns, all steps), `steps` (decoder calls = tokens
    per caption), `first_token`, `per_token` (token_ns) and `image` (ids)."""
    import numpy as np

    cached = run.cache.get("series")
    if cached is None:
        samples = run.samples
        measured = samples[~samples["is_warmup"].astype(bool)]
        cached = {}
        for key, frame in measured.groupby(GROUP, sort=False, observed=True):
            series = {"throttled": frame["throttled"].astype(bool).to_numpy()}
            for name, column in SERIES_FIELDS.items():
                if column in frame.columns and not frame[column].isna().any():
                    series[name] = frame[column].to_numpy(dtype="float64")
            has_images = "image_id" in frame.columns and not frame["image_id"].isna().any()
            series["image"] = np.asarray(frame["image_id"], dtype=object) if has_images else None
            cached[tuple(str(k) for k in key)] = series
        run.cache["series"] = cached
    return cached


def merge_table(run: RunData):
    """One row per variant × target × compute unit, in plan order (variants), then unit order."""
    import numpy as np
    import pandas as pd

    summaries: dict[tuple, dict] = {}
    for key, series in series_samples(run).items():
        summary = stats.summarize_latency(series["latency"])
        throttled = series["throttled"]
        summary["throttled_fraction"] = float(throttled.mean()) if len(throttled) else 0.0
        summary["tokens"] = float(np.median(series["steps"])) if len(series.get("steps", ())) else None
        summary.update(decode_summary(series))
        summaries[key] = summary
    jobs_by_group: dict[tuple, list[dict]] = {}
    for job in run.jobs:
        target = job.get("target") or {}
        key = (job["variant_id"], target.get("kind"), target.get("id"), job["compute_unit"])
        jobs_by_group.setdefault(key, []).append(job)
    plan_order = {vid: i for i, vid in enumerate((run.run.get("plan") or {}).get("variants") or [])}
    rows = []
    for key, jobs in jobs_by_group.items():
        variant_id, kind, target_id, unit = key
        first = jobs[0]
        target = first.get("target") or {}
        manifest = run.variants.get(variant_id)
        measured_facts = (manifest or {}).get("measured") or {}
        evaluation = run.evals.get(variant_id)
        summary = summaries.get(key) or stats.summarize_latency([])
        row = {
            "variant": variant_name(variant_id, manifest), "variant_id": variant_id,
            "variant_hash": first.get("variant_hash"), "target_kind": kind,
            "target": target_label(kind, target.get("model"), target.get("name")), "target_id": target_id,
            "device_model": target.get("model"), "os_build": target.get("os_build"), "compute_unit": unit,
            "emulated": kind == "host-torch",
            **{k: summary[k] for k in ("n", "median_ms", "p90_ms", "p99_ms", "iqr_ms", "ci_lo_ms", "ci_hi_ms")},
            "tokens": summary.get("tokens"),
            "decoding": first.get("decoding") or ((manifest or {}).get("io") or {}).get("decoding") or "recompute",
            **{k: summary.get(k) for k in ("encoder_ms", "first_token_ms", "token_ms", "tokens_per_s")},
            "unstable": any(bool(j.get("unstable")) for j in jobs),
            "throttled_fraction": summary.get("throttled_fraction", 0.0),
            "stop_reason": ",".join(sorted({str(j.get("stop_reason")) for j in jobs if j.get("stop_reason")})) or None,
            **_load_times(jobs),
            "total_bytes": measured_facts.get("total_bytes"),
            "size_mb": measured_facts["total_bytes"] / 1e6 if measured_facts.get("total_bytes") else None,
            "sparsity": measured_facts.get("sparsity"), "bits_per_weight": measured_facts.get("bits_per_weight"),
            **variant_facts(manifest),
            **_quality(evaluation),
        }
        rows.append(row)
    rows.sort(key=lambda r: (KIND_ORDER.get(r["target_kind"], 9), str(r["target_id"]),
                             UNIT_ORDER.get(r["compute_unit"], 9), plan_order.get(r["variant_id"], 10**6), r["variant"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.replace({np.nan: None}) if table.empty else table


def decode_summary(series: dict[str, Any]) -> dict[str, float | None]:
    """Medians of one series' decode figures (issue 14): encoder, time to first token, per-token decode time (the
    stored token_ns: mean of the steps after the first, which time to first token already counts, as the store and
    docs/contracts.md define it) and tokens per second of the whole caption. None where not stored."""
    import numpy as np

    def median(values) -> float | None:
        return float(np.median(values)) if values is not None and len(values) else None

    steps, latency = series.get("steps"), series.get("latency")
    rate = steps / (latency / 1e9) if steps is not None and latency is not None and len(latency) else None
    scale = lambda v: None if v is None else v / 1e6  # noqa: E731
    return {"encoder_ms": scale(median(series.get("encoder"))), "first_token_ms": scale(median(series.get("first_token"))),
            "token_ms": scale(median(series.get("per_token"))), "tokens_per_s": median(rate)}


def _load_times(jobs: list[dict]) -> dict[str, float | None]:
    import numpy as np

    out = {}
    for field_name in ("compile", "cold_load", "warm_load", "first_prediction"):
        values = [v for j in jobs if (v := load_ns(j, field_name)) is not None]
        out[f"{field_name}_ms"] = float(np.median(values)) / 1e6 if values else None
    return out


def _quality(record: dict | None) -> dict[str, Any]:
    if not record:
        return {k: None for k in ("bleu", "bleu_lo", "bleu_hi", "bleu_signature", "cider", "cider_lo", "cider_hi",
                                   "cider_scorer", "dataset")}
    bleu = record["metrics"].get("bleu") or {}
    cider = record["metrics"].get("cider") or {}
    bleu_ci = bleu.get("ci95") or [None, None]
    cider_ci = cider.get("ci95") or [None, None]
    return {"bleu": bleu.get("score"), "bleu_lo": bleu_ci[0], "bleu_hi": bleu_ci[1], "bleu_signature": bleu.get("signature"),
            "cider": cider.get("score"), "cider_lo": cider_ci[0], "cider_hi": cider_ci[1],
            "cider_scorer": cider.get("scorer"), "dataset": (record.get("dataset") or {}).get("signature")}


# ----------------------------------------------------------------------------------------------- verdicts
def _match_key(row) -> tuple:
    return (row["variant"], row["target_kind"], row["compute_unit"])


def check_comparable(current, baseline, *, baseline_label: str) -> list[str]:
    """Differences in device model, OS build or variant hash between rows that would be compared."""
    problems = []
    base_rows = {}
    for _, row in baseline.iterrows():
        base_rows.setdefault(_match_key(row), row)
    for _, row in current.iterrows():
        other = base_rows.get(_match_key(row))
        if other is None:
            continue
        where = f"{row['variant']} · {row['compute_unit']}"
        for column, what in (("device_model", "device model"), ("os_build", "OS build"), ("variant_hash", "variant hash")):
            if row[column] != other[column]:
                problems.append(f"{where}: {what} {other[column]} in {baseline_label} vs {row[column]} now")
    return problems


def compute_verdicts(current: RunData, current_table, baselines: list[RunData], baseline_table) -> list[stats.Verdict]:
    """Per matched row: latency as a whole and by part (bench.report.verdicts; against one run by samples, against
    several past runs night by night), tokens per caption; per variant: BLEU / CIDEr (paired bootstrap), size and
    sparsity (exact)."""
    base_rows = {}
    for _, row in baseline_table.iterrows():
        base_rows.setdefault(_match_key(row), row)
    evals_by_variant = {}
    for run in baselines:
        evals_by_variant.update(run.evals)
    results, seen_variants = [], set()
    for _, row in current_table.iterrows():
        base = base_rows.get(_match_key(row))
        if base is None:
            continue
        where = row["target"] if row["target_kind"] == "host-torch" else row["device_model"]
        key = f"{row['variant']} · {where} · {row['compute_unit']}"
        past = [s for run in baselines if (s := _matching_series(run, base)) is not None]
        now = _matching_series(current, row)
        if past and now is not None:
            results.extend(stats.latency_verdicts(past, now, key=key))
        if row["variant"] in seen_variants:
            continue  # size and quality belong to the variant, not to a target: compare them once
        seen_variants.add(row["variant"])
        vkey = str(row["variant"])
        results.append(stats.compare_exact("size", _num(base["total_bytes"]), _num(row["total_bytes"]), key=vkey,
                                           unit="bytes", worse_when="increase"))
        results.append(stats.compare_exact("sparsity", _num(base["sparsity"]), _num(row["sparsity"]), key=vkey,
                                           worse_when="change"))
        for metric in ("bleu", "cider"):
            results.append(stats.compare_quality(evals_by_variant.get(base["variant_id"]),
                                                 current.evals.get(row["variant_id"]), metric, key=vkey))
    from bench.report.device_quality import nightly_verdicts

    results.extend(nightly_verdicts(current, baselines))
    results.extend(drift_verdicts(current, baselines))
    return results


def drift_verdicts(current: RunData, baselines: list[RunData]) -> list[stats.Verdict]:
    """Imported models: each output's drift against the same variant, device model and unit in the latest baseline
    that measured it (bench.report.verdicts.compare_drift)."""
    from bench.report.drift import drift_rows

    now, _ = drift_rows(current)
    if not now:
        return []

    def key(run: RunData, row: dict) -> tuple:
        models = {job["target"]["id"]: job["target"].get("model") for job in run.jobs if job.get("target")}
        return (row["variant"], models.get(row["target_id"]), row["compute_unit"], row["output"])

    past: dict[tuple, dict] = {}
    for run in baselines:  # oldest first: a later run's row replaces an earlier one
        past.update({key(run, row): row for row in drift_rows(run)[0]})
    verdicts = []
    for row in now:
        found = past.get(key(current, row))
        if found is not None:
            label = f"{row['variant']} · {row['target']} · {row['compute_unit']} · {row['output']}"
            verdicts.append(stats.compare_drift(found["rel_l2"], row["rel_l2"], key=label))
    return verdicts


def _matching_series(run: RunData, row) -> dict[str, Any] | None:
    """The run's samples of the row's variant × target kind × unit (one target of that kind per run is compared)."""
    for (variant_id, kind, _target, unit), series in series_samples(run).items():
        if (variant_id, kind, unit) == (row["variant_id"], row["target_kind"], row["compute_unit"]):
            return series
    return None


def _num(value) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


# ----------------------------------------------------------------------------------------------- trends
def trend_table(runs: list[RunData], tables: dict[str, Any] | None = None):
    """Median latency per run for each variant × target × unit: the nightly trend lines (`tables`: already merged)."""
    import pandas as pd

    rows = []
    for run in runs:
        table = (tables or {}).get(run.run_id)
        if table is None:
            table = merge_table(run)
        for _, row in table.iterrows():
            rows.append({"run_id": run.run_id, "created_at": run.created_at, "variant": row["variant"],
                         "target": row["target"], "compute_unit": row["compute_unit"], "median_ms": row["median_ms"],
                         "ci_lo_ms": row["ci_lo_ms"], "ci_hi_ms": row["ci_hi_ms"]})
    return pd.DataFrame(rows, columns=["run_id", "created_at", "variant", "target", "compute_unit", "median_ms",
                                       "ci_lo_ms", "ci_hi_ms"])


def _comparable_history(table, runs: list[RunData], report: ReportData) -> list[RunData]:
    """History mode keeps the comparable runs (an OS update must not break every later nightly) and says which it left
    out; with none left the comparison is refused like an incomparable --baseline."""
    kept, skipped = [], []
    for run in runs:
        problems = check_comparable(table, merge_table(run), baseline_label=run.run_id)
        (skipped if problems else kept).append((run, problems))
    for run, problems in skipped:
        report.notes.append(f"history: left out {run.run_id} ({problems[0]})")
    if not kept:
        first = skipped[0][1][0]
        raise IncomparableError(f"none of the last {len(runs)} runs is comparable (e.g. {first}); "
                                "use --force to compare anyway")
    return [run for run, _ in kept]


def history_trends(current: RunData, table, last: int):
    """Trend lines from results/history.duckdb (bench.store.history) when it holds the current run; else None.

    The database keeps runs whose directories were pruned; without it the run directories are read instead.
    """
    import pandas as pd

    db = current.workspace.history_db
    if last < 2 or not db.is_file():
        return None
    try:
        from bench.store.history import trend
    except ImportError:  # the store stage is optional here: fall back to run directories
        return None
    frame = trend(db)
    frame = frame[frame["created_at"].astype(str) <= current.created_at]
    if current.run_id not in set(frame["run_id"]):
        return None  # not published yet: the directories are the complete picture
    keep = list(dict.fromkeys(frame["run_id"]))[-last:]
    frame = frame[frame["run_id"].isin(keep)]
    labels = {(r["target_id"]): r["target"] for r in table_records(table)}
    return pd.DataFrame({
        "run_id": frame["run_id"], "created_at": frame["created_at"].astype(str),
        "variant": [variant_name(v, current.variants.get(v)) for v in frame["variant_id"]],
        "target": [labels.get(t, m) for t, m in zip(frame["target_id"], frame["device_model"])],
        "compute_unit": frame["compute_unit"], "median_ms": frame["median_ns"] / 1e6,
        "ci_lo_ms": None, "ci_hi_ms": None}).reset_index(drop=True)


def _utilisation(run: RunData) -> list[list[str]]:
    """Share of the run's wall time each device spent measuring (and, in a lab, where the rest went)."""
    from bench.run.timing import utilisation_rows

    try:
        return utilisation_rows(run.run_dir)
    except BenchError:  # a damaged record is reported by the tables already; utilisation is a view, not a check
        return []


# ----------------------------------------------------------------------------------------------- entry point
def build_report(run: str | RunData, *, baseline: str | RunData | None = None, history: int | None = None,
                 force: bool = False, trend_runs: int = 14, explain: bool = True) -> ReportData:
    """Merge a run into report data; with a baseline run or the last `history` runs, add regression verdicts."""
    current = run if isinstance(run, RunData) else load_run(run)
    table = merge_table(current)
    report = ReportData(current.run_id, current.created_at, table)
    report.device_quality = _device_quality(current, table)
    report.not_run = [str(pair.get("reason")) for pair in current.run.get("skipped") or [] if isinstance(pair, dict)]
    report.notes.extend(current.notes)
    report.utilisation = _utilisation(current)
    from bench.report.drift import drift_rows

    report.drift, drift_notes = drift_rows(current)
    report.notes.extend(drift_notes)
    from bench.report.decoders import decoder_pairs

    report.decoders = decoder_pairs(current, table)
    earlier = [p for p in list_runs(current.workspace.results_dir) if p != current.run_dir.resolve()]
    earlier = [p for p in earlier if _created(p) <= current.created_at]
    if baseline is not None and history is not None:
        raise InputError("give either --baseline RUN or --history N, not both")
    baselines: list[RunData] = []
    if baseline is not None:
        baselines = [baseline if isinstance(baseline, RunData) else load_run(baseline, current.workspace)]
        if baselines[0].run_dir.resolve() == current.run_dir.resolve():
            raise InputError(f"--baseline names the run being reported ({current.run_id}): give an earlier run")
    elif history is not None:
        if history < 1:
            raise InputError(f"--history must be at least 1, got {history}")
        baselines = [load_run(p, current.workspace) for p in earlier[-history:]]
        if not baselines:
            report.notes.append("no earlier runs in the history: no verdicts")
    if baselines and history and not force:
        baselines = _comparable_history(table, baselines, report)
    if baselines:
        baseline_table = _concat([merge_table(b) for b in baselines])
        label = ", ".join(b.run_id for b in baselines)
        problems = check_comparable(table, baseline_table, baseline_label=label)
        if problems and not force:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise IncomparableError(f"baseline {label} is not comparable: {'; '.join(problems[:3])}{more}; "
                                    "use --force to compare anyway")
        if problems:
            report.notes.append(f"forced comparison despite: {'; '.join(problems[:3])}")
        report.verdicts = compute_verdicts(current, table, baselines, baseline_table)
        if len(baselines) == 1:
            report.notes.append(f"Latency verdicts against {stats.ONE_NIGHT_NOTE}.")
        else:
            report.notes.append(f"Latency verdicts against {len(baselines)} past runs, the night as the unit: "
                                "tonight's median vs a t prediction interval of the past run medians "
                                f"(α = {stats.ALPHA_NIGHTS:g} per comparison).")
        report.notes.append(stats.control_report(report.verdicts))
        report.baseline = {"kind": "run" if baseline is not None else "history",
                           "run_ids": [b.run_id for b in baselines], "forced": bool(problems)}
    report.trends = history_trends(current, table, trend_runs)
    if report.trends is None:
        trend_sources = [load_run(p, current.workspace) for p in earlier[-(trend_runs - 1):]] if trend_runs > 1 else []
        report.trends = trend_table([*trend_sources, current], {current.run_id: table})
    if explain:
        from bench.report.explain import sweep_explanations

        report.explanations = sweep_explanations(current, table)
    from bench.report.seed import seed_comparison

    report.seed = seed_comparison(report)
    if table["emulated"].any():
        report.notes.append(f"host-torch rows are {HOST_EMULATION}: decompressed weights in PyTorch on the host CPU")
    return report


def _device_quality(run: RunData, table) -> list[dict[str, Any]]:
    """Scored device captions (bench.report.device_quality); a run that measured only host-torch says that device
    quality needs a phone or a Mac (its BLEU / CIDEr are the host reference)."""
    from bench.report import device_quality

    found = device_quality.rows(run)
    if not found and len(table) and set(table["target_kind"]) == {"host-torch"} and run.evals:
        run.notes.append(device_quality.NEEDS_A_DEVICE)
    return found


def _created(path) -> str:
    import json

    return str(json.loads((path / "run.json").read_text(encoding="utf-8")).get("created_at", ""))


def _concat(frames):
    import pandas as pd

    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
