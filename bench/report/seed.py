"""The seed study's published figures next to ours, as ratios: size ÷ fp32, BLEU change vs fp32, latency ÷ fp32.

The seed's numbers are data (seed_published.json: every figure with the section and table it was copied from). What
can be compared, and why not, is decided by conditions computed here from those numbers and from the run — the
sentences only report what the arithmetic found:

- the seed's fp32 package is more than twice its fp16 package by one fp32 copy of BLIP-base's tied word embedding
  (its fp32-derived packages held it twice), so its fp16 / int8 size ratios are also shown without that copy;
- its pruned packages are its fp32 package stored sparse (their ratios need no correction);
- its conv-only rows print the same size and BLEU as its embedding-only rows, and save far more than pruning BLIP-base's
  only conv could: they are not compared;
- latency ratios are compared only when an iPhone measured them (host-torch is host emulation, not Core ML);
- absolute sizes are compared only for a captioner of BLIP-base's size; BLEU changes from a different captioner or
  data set are compared with that said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import RecordError
from bench.report.data import HOST_EMULATION, ReportData
from bench.report.study import Study, is_dense, ok, seed_study

PUBLISHED = Path(__file__).resolve().parent / "seed_published.json"
SCHEMA, SCHEMA_VERSION = "bench.seed_published", 1
# Agreement bands: size ÷ fp32 within ±0.02; BLEU change within ±10 points of fp32's BLEU; latency ratio within ±10 %.
TOLERANCE = {"size": 0.02, "bleu": 0.10, "latency": 0.10}
MASK_BITS = 1  # coremltools' sparse weights: the non-zero values plus a 1-bit mask per weight
COLUMNS = ["seed row", "our variant", "metric", "seed", "ours", "agreement", "why"]


def load_published(path: Path = PUBLISHED) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RecordError(f"{path}: cannot read the seed's published figures ({err})") from err
    if not isinstance(data, dict) or (data.get("schema"), data.get("schema_version")) != (SCHEMA, SCHEMA_VERSION):
        raise RecordError(f"{path}: not a {SCHEMA} v{SCHEMA_VERSION} file")
    return data


@dataclass(frozen=True)
class Condition:
    key: str
    holds: bool
    text: str  # what the arithmetic found, with its numbers


# ----------------------------------------------------------------------------------------------- the seed's own numbers
def _rows(published: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in published["rows"]}


def duplicate_embedding(published: dict) -> Condition:
    rows = _rows(published)
    fp32, fp16 = rows["fp32"]["size_mb"], rows["fp16"]["size_mb"]
    excess = fp32 - 2 * fp16
    embedding = published["architecture"]["word_embedding_bytes_fp32"] / 1e6
    holds = abs(excess - embedding) <= 0.05 * embedding
    verdict = ("matches" if holds else "does not match")
    return Condition("duplicate_embedding", holds,
                     f"the seed's fp32 package ({fp32:.1f} MB) is {fp32 / fp16:.3f} × its fp16 package ({fp16:.1f} MB), "
                     f"not 2 ×: the {excess:.1f} MB beyond 2 × fp16 {verdict} one more fp32 copy of BLIP-base's tied "
                     f"word embedding ({embedding:.1f} MB)"
                     + (f" — its fp32 package held the embedding twice, its fp16 and int8 packages once, so their "
                        f"size ÷ fp32 is also shown against fp32 without the copy ({fp32 - embedding:.1f} MB)"
                        if holds else ""))


def pruned_from_fp32(published: dict) -> Condition:
    rows = _rows(published)
    fp32 = rows["fp32"]["size_mb"]
    pruned = [r for r in published["rows"] if r["layers"] == "all" and r["sparsity"]]
    found = [r["size_mb"] / fp32 for r in pruned]
    model = [1 - r["sparsity"] + MASK_BITS / 32 for r in pruned]
    holds = bool(pruned) and all(abs(f - m) <= 0.01 for f, m in zip(found, model))
    return Condition("pruned_from_fp32", holds,
                     f"the seed's pruned packages ÷ its fp32 package = {_join(found, '.4f')} vs (1 − s) + 1/32 "
                     f"(non-zeros + 1-bit mask) = {_join(model, '.4f')}"
                     + (": they are its fp32 package stored sparse, the duplicate embedding included, so their size "
                        "ratios need no correction" if holds else ": not its fp32 package stored sparse"))


def conv_rows_copy_embedding(published: dict) -> Condition:
    rows = _rows(published)
    fp32 = rows["fp32"]["size_mb"]
    conv_weights = published["architecture"]["conv_weights"]
    pairs = [(r, e) for r in published["rows"] if r["layers"] == "conv"
             for e in published["rows"] if e["layers"] == "embedding" and e["sparsity"] == r["sparsity"]]
    identical = bool(pairs) and all((c["size_mb"], c["bleu"]) == (e["size_mb"], e["bleu"]) for c, e in pairs)
    saved = [fp32 - c["size_mb"] for c, _ in pairs]
    possible = [conv_weights * 4 * c["sparsity"] / 1e6 for c, _ in pairs]  # every pruned conv weight freed, no mask
    impossible = all(s > p for s, p in zip(saved, possible))
    where = ", ".join(f"{100 * c['sparsity']:.0f} %: {c['size_mb']:.2f} MB, BLEU {c['bleu']}" for c, _ in pairs)
    text = (f"the seed's conv-only rows print {'the same' if identical else 'other'} size and BLEU as its "
            f"embedding-only rows ({where}) and save {_join(saved, '.1f')} MB over fp32, while pruning BLIP-base's "
            f"only conv (the patch embedding, {conv_weights / 1e6:.2f} M weights) can save at most "
            f"{_join(possible, '.2f')} MB")
    holds = identical and impossible
    return Condition("conv_rows_copy_embedding", holds,
                     text + (": the conv rows repeat the embedding rows (only their latencies differ) and are not "
                             "compared" if holds else ""))


# ----------------------------------------------------------------------------------------------- this run
def latency_condition(study: Study, published: dict) -> Condition:
    """Latency ratios are compared on an iPhone only; on another iPhone model than the seed's, that is said."""
    source = next((v for v in study.variants if ok(v["median_ms"])), None)
    setting = published["setting"]
    if source is None:
        return Condition("no_latency", True, "this run measured no latency: latency ratios are not compared")
    if source["target_kind"] == "host-torch":
        return Condition("host_emulation", True,
                         f"this run measured latency on host-torch only — {HOST_EMULATION}: the variant's weights "
                         f"decompressed into PyTorch on the host CPU — so its latency ratios say nothing about Core ML "
                         f"on a phone and are not compared with the seed's {setting['device']}")
    if source["target_kind"] != "iphone":
        return Condition("not_a_phone", True,
                         f"this run's latency is {source['target_kind']} on {source['device_model']}, not an iPhone: "
                         f"latency ratios are not compared with the seed's {setting['device']}")
    if source["device_model"] != setting["device_model"]:
        return Condition("other_phone", True,
                         f"latency measured on {source['device_model']} ({source['compute_unit']}), the seed's on "
                         f"{setting['device_model']} ({setting['device']}): ratios are compared, phones differ")
    return Condition("same_phone", False, "")


def model_condition(study: Study, published: dict, fp32: dict) -> Condition:
    architecture = published["architecture"]
    seed_params, seed_mb = architecture["params"], _rows(published)["fp32"]["size_mb"]
    params = fp32["model_params"]
    if not ok(params):
        return Condition("model_size_unknown", True, "this run's manifests do not record the parameter count: "
                                                     "absolute sizes are not compared")
    ratio = params / seed_params
    holds = abs(ratio - 1) > 0.10
    return Condition("model_size", holds,
                     f"different model size: ours {study.model} has {params / 1e6:.2f} M parameters "
                     f"({fp32['size_mb']:.1f} MB in fp32), the seed's {architecture['name']} "
                     f"{seed_params / 1e6:.1f} M ({seed_mb:.1f} MB): {ratio:.4f} × — absolute sizes are not compared, "
                     "sizes relative to each side's fp32 are" if holds else "")


def data_condition(study: Study, published: dict, fp32: dict, model_differs: bool) -> Condition:
    dataset = str(fp32.get("dataset") or "unknown data")
    other_data = "flickr30k" not in dataset.lower()
    holds = other_data or model_differs
    what = " and ".join(w for w, h in (("captioner", model_differs), ("data", other_data)) if h)
    return Condition("other_quality_setting", holds,
                     f"different {what}: our BLEU is {study.model or 'our captioner'} on {dataset.split('|')[0]}, "
                     "the seed's "
                     f"{published['architecture']['name']} on {published['setting']['dataset']} — BLEU changes are "
                     "relative to each side's fp32, so they compare how much quality pruning or quantizing costs, "
                     "not the captions" if holds else "")


def model_share(published: dict, row: dict, mine: dict, fp32: dict, seed_ratio: float) -> Condition:
    """Why a size ratio differs: the same recipe takes another share of fp32 on another model. The seed's ratio is
    checked against the recipe built by bench on BLIP-base (benchmarks/seed_sizes.py); ours is taken apart into bits
    per weight and bytes outside the weights (quantized), or the share of weights the selected layers hold (pruned
    layers). The model is named as the cause only when that arithmetic lands on the measured ratio."""
    architecture = published["architecture"]
    built = architecture.get("built_by_bench_mb") or {}
    key = f"model_share_{row['variant']}"
    if not (ok(built.get(row["variant"])) and ok(built.get("fp32")) and ok(fp32["model_params"])):
        return Condition(key, False, "")
    blip = built[row["variant"]] / built["fp32"]
    ours = mine["size_mb"] / fp32["size_mb"]
    holds = abs(blip - seed_ratio) <= 0.01 and abs(ours - blip) > TOLERANCE["size"]
    arithmetic, expected = _taken_apart(architecture, row, mine, fp32, ours)
    explained = expected is not None and abs(expected - ours) <= TOLERANCE["size"]
    text = (f"{row['variant']} built by bench on BLIP-base is {blip:.3f} of fp32 (benchmarks/results/seed_sizes.txt), "
            f"as the seed's {seed_ratio:.3f}; on our {fp32['model_params'] / 1e6:.2f} M-parameter captioner "
            f"{arithmetic} — " + ("the ratio differs by the model the recipe is applied to, not by the compression"
                                  if explained else "not taken apart further: the difference is not explained here"
                                  if expected is None else "not the measured ratio: the model's make-up does not "
                                  "explain the difference"))
    return Condition(key, holds, text)


def _taken_apart(architecture: dict, row: dict, mine: dict, fp32: dict, ours: float) -> tuple[str, float | None]:
    """Our ratio rebuilt from what the package holds, and that rebuilt ratio (None when it cannot be rebuilt)."""
    bits = (architecture.get("bits_per_weight") or {}).get(row["precision"])
    if row["precision"] != "fp32" and ok(bits) and ok(mine["bits_per_weight"]) and ok(fp32["total_bytes"]):
        outside = fp32["total_bytes"] - 4 * fp32["model_params"]  # bytes that are not fp32 weights: spec, metadata
        share = outside / fp32["total_bytes"]
        expected = mine["bits_per_weight"] / 32 * (1 - share) + share
        return (f"it stores {mine['bits_per_weight']:.2f} bits per weight (BLIP-base {bits:.2f}) and {outside / 1e6:.2f} "
                f"MB outside the weights ({share:.1%} of fp32): {mine['bits_per_weight']:.2f}/32 × {1 - share:.3f} + "
                f"{share:.3f} = {expected:.3f}, measured {ours:.3f}"), expected
    if row["layers"] not in (None, "all") and ok(mine["sparsity"]) and row["sparsity"]:
        held = mine["sparsity"] / row["sparsity"]  # the selected layers' share of the weights
        expected = 1 - held * (row["sparsity"] - MASK_BITS / 32)  # their zeros freed, a 1-bit mask added
        return (f"it is {ours:.3f}: the {row['layers']} layers hold {held:.1%} of its weights (measured sparsity "
                f"{mine['sparsity']:.2%} at {row['sparsity']:.0%} of them), 1 − {held:.4f} × ({row['sparsity']:g} − "
                f"1/32) = {expected:.3f}"), expected
    return f"it is {ours:.3f}", None


def input_condition(study: Study, candidates: list[dict]) -> Condition:
    settings = {(v["image_size"], v["resize"]) for v in candidates}
    holds = len(settings) < 2
    return Condition("no_input_axis", holds,
                     f"this run has {len(settings)} input setting(s) for {study.model or 'its captioner'}: no input-size or "
                     "crop/resize axis to find a best one" if holds else "")


# ----------------------------------------------------------------------------------------------- the comparison
def _join(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def _match(row: dict, native: list[dict]) -> dict | None:
    for v in native:
        if row["sparsity"]:
            if (v["precision"], v["prune_layers"]) == (row["precision"], row["layers"]) and ok(v["target_sparsity"]) \
                    and abs(v["target_sparsity"] - row["sparsity"]) < 0.006:
                return v
        elif is_dense(v) and v["precision"] == row["precision"]:
            return v
    return None


class _Table:
    """Rows of cells plus the conditions they cite, numbered in the order first cited."""

    def __init__(self, conditions: dict[str, Condition]):
        self.conditions = conditions
        self.cited: list[str] = []
        self.rows: list[list[str]] = []
        self.counts = {"agree": 0, "differ": 0, "not comparable": 0, "undecided": 0}

    def add(self, seed_row: str, ours: str, metric: str, seed: str, mine: str, agreement: str, why: list[str]) -> None:
        refs = []
        for key in why:
            if key in self.conditions and self.conditions[key].holds:
                if key not in self.cited:
                    self.cited.append(key)
                refs.append(f"[{self.cited.index(key) + 1}]")
        self.counts[agreement.split(" (")[0]] += 1
        self.rows.append([seed_row, ours, metric, seed, mine, agreement, " ".join(refs)])


def _agreement(difference: float, tolerance: float, fmt: str, scale: float = 1, unit: str = "") -> str:
    digits = int(fmt.split(".")[1][:-1]) + (2 if fmt.endswith("%") else 0)
    shown = f"{round(difference * scale, digits) or 0.0:{fmt}}{unit}"  # `or 0.0`: no "-0.000"
    return f"agree ({shown})" if abs(difference) <= tolerance else f"differ ({shown})"


def _holds(conditions: dict[str, Condition], key: str) -> bool:
    return key in conditions and conditions[key].holds


def seed_comparison(report: ReportData, published: dict | None = None) -> dict[str, Any] | None:
    """The section's data (columns, rows of cells, numbered conditions, summary); None when the run holds neither an
    fp32 variant nor any of the seed's rows."""
    published = published or load_published()
    study = seed_study(report)
    if study is None:
        return None
    native = study.at_native_axes()
    seed_rows = _rows(published)
    fp32 = _match(seed_rows["fp32"], native)
    matched = [(row, mine) for row in published["rows"] if (mine := _match(row, native)) is not None]
    if fp32 is None or len(matched) < 2:
        return None
    model = model_condition(study, published, fp32)
    conditions = {c.key: c for c in (
        duplicate_embedding(published), pruned_from_fp32(published), conv_rows_copy_embedding(published),
        latency_condition(study, published), model, data_condition(study, published, fp32, model.key == "model_size"
                                                                   and model.holds))}
    table = _Table(conditions)
    for row, mine in matched:
        _compare_row(table, published, row, mine, fp32, conditions)
    _compare_best_input(table, published, study, conditions)
    missing = [row["variant"] for row in published["rows"] if _match(row, native) is None]
    counts = ", ".join(f"{n} {what}" for what, n in table.counts.items() if n)
    source = published["source"]
    return {
        "title": f"Side by side with the seed study ({source['title']})",
        "source": f"{source['title']} — {', '.join(source['authors'])}; {published['setting']['model']}, "
                  f"{published['setting']['device']} ({published['setting']['os']}). Figures as printed "
                  "(bench/report/seed_published.json, each with its section and table).",
        "summary": f"{len(matched)} of the seed's {len(published['rows'])} rows matched by recipe; "
                   f"{sum(table.counts.values())} comparisons (the best input included): {counts}."
                   + (f" Not in this run: {', '.join(missing)}." if missing else ""),
        "legend": (f"Ratios are taken against each side's own fp32; agree = within ±{TOLERANCE['size']} (size ÷ fp32), "
                   f"±{100 * TOLERANCE['bleu']:.0f} points (BLEU change) or ±{100 * TOLERANCE['latency']:.0f} % "
                   "(latency ÷ fp32). The seed printed BLEU on a 0–1 scale, ours is sacreBLEU 0–100: changes are "
                   "scale-free."),
        "columns": COLUMNS, "rows": table.rows,
        "conditions": [f"[{i + 1}] {conditions[key].text}." for i, key in enumerate(table.cited)],
    }


@dataclass(frozen=True)
class _Pair:
    """One seed row, the variant of this run made by the same recipe, and both sides' fp32."""

    row: dict
    mine: dict
    seed_fp32: dict
    fp32: dict
    copy: list[str]  # ["conv_rows_copy_embedding"] when the seed's row repeats another: nothing compared

    @property
    def names(self) -> tuple[str, str]:
        return self.row["variant"], str(self.mine["variant"])


def _compare_row(table: _Table, published: dict, row: dict, mine: dict, fp32: dict,
                 conditions: dict[str, Condition]) -> None:
    copy = ["conv_rows_copy_embedding"] if row["layers"] == "conv" and _holds(conditions, "conv_rows_copy_embedding") \
        else []
    pair = _Pair(row, mine, _rows(published)["fp32"], fp32, copy)
    _compare_size(table, published, pair, conditions)
    if row["variant"] == "fp32":
        return
    _compare_size_ratio(table, published, pair, conditions)
    _compare_bleu(table, pair)
    _compare_latency(table, pair, conditions)


def _compare_size(table: _Table, published: dict, pair: _Pair, conditions: dict[str, Condition]) -> None:
    """Absolute MB: only for a captioner of the seed's size (else one row, fp32's, says why not)."""
    row, mine = pair.row, pair.mine
    seed_mb = f"{row['size_mb']:.1f} MB"
    if _holds(conditions, "model_size") or _holds(conditions, "model_size_unknown"):
        if row["variant"] == "fp32":
            table.add(*pair.names, "size", seed_mb, f"{mine['size_mb']:.1f} MB", "not comparable",
                      ["model_size", "model_size_unknown"])
        return
    duplicate = _holds(conditions, "duplicate_embedding") and row["precision"] == "fp32"
    seed = row["size_mb"] * (1 - _embedding_share(published)) if duplicate else row["size_mb"]
    table.add(*pair.names, "size", seed_mb + (f" → {seed:.1f} MB" if duplicate else ""), f"{mine['size_mb']:.1f} MB",
              "not comparable" if pair.copy else _agreement(mine["size_mb"] / seed - 1, TOLERANCE["size"], "+.1%"),
              pair.copy or (["duplicate_embedding"] if duplicate else []))


def _compare_size_ratio(table: _Table, published: dict, pair: _Pair, conditions: dict[str, Condition]) -> None:
    row, mine = pair.row, pair.mine
    raw = row["size_mb"] / pair.seed_fp32["size_mb"]
    corrected = _holds(conditions, "duplicate_embedding") and row["precision"] != "fp32"
    seed_ratio = row["size_mb"] / (pair.seed_fp32["size_mb"] * (1 - _embedding_share(published))) if corrected else raw
    ours = mine["size_mb"] / pair.fp32["size_mb"]
    why = pair.copy or (["duplicate_embedding"] if corrected else ["pruned_from_fp32"] if row["layers"] == "all" else [])
    if not pair.copy:
        share = model_share(published, row, mine, pair.fp32, seed_ratio)
        conditions[share.key] = share
        why = [*why, share.key]
    table.add(*pair.names, "size ÷ fp32", f"{raw:.3f}" + (f" → {seed_ratio:.3f}" if corrected else ""), f"{ours:.3f}",
              "not comparable" if pair.copy else _agreement(ours - seed_ratio, TOLERANCE["size"], "+.3f"), why)


def _compare_bleu(table: _Table, pair: _Pair) -> None:
    row, mine, fp32 = pair.row, pair.mine, pair.fp32
    if row["bleu"] is None or not pair.seed_fp32["bleu"] or not (ok(mine["bleu"]) and ok(fp32["bleu"]) and fp32["bleu"]):
        return  # the seed published no BLEU for this row, or this run has none
    seed_change = row["bleu"] / pair.seed_fp32["bleu"] - 1
    change = mine["bleu"] / fp32["bleu"] - 1
    table.add(*pair.names, "BLEU change", f"{seed_change:+.1%}", f"{change:+.1%}",
              "not comparable" if pair.copy else _agreement(change - seed_change, TOLERANCE["bleu"], "+.1f", 100, " pt"),
              pair.copy or ["other_quality_setting"])


def _compare_latency(table: _Table, pair: _Pair, conditions: dict[str, Condition]) -> None:
    """Latency ÷ fp32 on the same target; compared only when an iPhone measured it."""
    row, mine, fp32 = pair.row, pair.mine, pair.fp32
    if not (ok(mine["median_ms"]) and ok(fp32["median_ms"])):
        return
    seed_ratio = row["latency_ms"] / pair.seed_fp32["latency_ms"]
    ratio = mine["median_ms"] / fp32["median_ms"]
    blocked = [key for key in ("host_emulation", "not_a_phone") if key in conditions]
    table.add(*pair.names, "latency ÷ fp32", f"{seed_ratio:.3f}", f"{ratio:.3f}",
              "not comparable" if pair.copy or blocked else _agreement(ratio / seed_ratio - 1, TOLERANCE["latency"],
                                                                       "+.1%"),
              pair.copy or blocked or ["other_phone"])


def _embedding_share(published: dict) -> float:
    """The duplicate embedding's share of the seed's fp32 package (and of every package made from it)."""
    return published["architecture"]["word_embedding_bytes_fp32"] / 1e6 / _rows(published)["fp32"]["size_mb"]


def _compare_best_input(table: _Table, published: dict, study: Study, conditions: dict[str, Condition]) -> None:
    """The seed's conclusion (348 px resize best for BLIP-base at 384 px) against this run's best input setting, as a
    fraction of each model's native size and the resize mode."""
    best = published["best_input"]
    native_seed = published["architecture"]["native_image_size"]
    seed_cell = f"{best['image_size']} px {best['resize']} ({best['image_size'] / native_seed:.2f} × {native_seed})"
    fp32 = [v for v in study.variants if v["model"] == study.model and is_dense(v) and v["precision"] == "fp32"
            and ok(v["bleu"]) and v["image_size"]]
    condition = input_condition(study, fp32)
    conditions[condition.key] = condition
    if condition.holds or not fp32:
        table.add("best input", "–", "best BLEU input", seed_cell, "–", "not comparable", [condition.key])
        return
    ranked = sorted(fp32, key=lambda v: -v["bleu"])
    top, runner_up = ranked[0], ranked[1]
    native = study.image_size
    ours = f"{top['image_size']} px {top['resize']} ({top['image_size'] / native:.2f} × {native})"
    side = (best["image_size"] > native_seed) - (best["image_size"] < native_seed)
    our_side = (top["image_size"] > native) - (top["image_size"] < native)
    if ok(top["bleu_lo"]) and runner_up["bleu"] >= top["bleu_lo"]:
        agreement = f"undecided (runner-up {runner_up['variant']} BLEU {runner_up['bleu']:.1f} inside the best's CI)"
    elif (side, best["resize"]) == (our_side, top["resize"]):
        agreement = "agree (same mode, same side of native)"
    else:
        agreement = "differ (mode or side of native)"
    table.add("best input", str(top["variant"]), "best BLEU input", seed_cell, ours, agreement, [])
