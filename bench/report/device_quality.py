"""What the device actually computes: BLEU / CIDEr-D of the captions each device decoded, beside the host reference.

The host reference is the run's bound bench.eval record: the variant's stored weights decompressed into PyTorch (fp32,
host CPU). A device record (bench/store/device_quality.py) holds the ids the runner decoded on one device and compute
unit for the same images. Both are scored exactly as bench/eval/metrics.py scores (sacreBLEU corpus BLEU with every
reference of an image, pycocoevalcap CIDEr-D, bootstrap over images), against the host record's references.

Device vs host reference, paired by image:
- which images changed: the ids differ (a caption is its ids; two ids can decode to one text, the ids are the truth);
- BLEU and CIDEr-D delta (device − host) with a 95 % paired bootstrap CI: both caption sets are scored on the *same*
  resampled image sets (bench.eval.metrics.paired_bootstrap_scores, 1000 resamples, seed 0). Why a bootstrap and not
  a per-image test: BLEU is a corpus statistic (n-gram counts are pooled before the geometric mean), so per-image
  differences have no additive meaning; resampling images and re-aggregating sacreBLEU's sufficient statistics is
  the standard (Koehn 2004) and what the nightly quality verdicts already use. Images whose captions did not change
  contribute zero difference in every resample, so a few changed captions give a CI as narrow as the evidence;
  when nothing changed the delta is exactly 0 with CI [0, 0], no resampling needed.
- the outcome by the report's one decision rule (bench.report.verdicts.classify): SAME only when the CI lies inside
  ±margin (1 BLEU point, 0.05 CIDEr-D), DIFFERENT when significant (the bootstrap p-value < 0.05, the level of the
  95 % CI) and at least the margin, else UNKNOWN with how many images would decide.
"""

from __future__ import annotations

import math
from typing import Any

from bench.report import verdicts as stats
from bench.report.facts import KIND_ORDER, UNIT_ORDER, target_label, variant_name

HOST_REFERENCE = "host reference"
ALPHA = 0.05  # the level of the 95 % bootstrap CI shown beside the delta
RESAMPLES = 1000
MARGINS = {"bleu": stats.BLEU_MARGIN, "cider": stats.CIDER_MARGIN}
UNIT_WORDS = {"cpuAndNeuralEngine": "on the Neural Engine", "all": "on all units (Neural Engine allowed)",
              "cpuAndGPU": "on the GPU", "cpuOnly": "on the CPU"}

NEEDS_A_DEVICE = ("device quality (captions decoded on the phone) needs an iPhone or a Mac: this run measured only "
                  f"host-torch, whose BLEU / CIDEr are the {HOST_REFERENCE}")
COLUMNS = ["variant", "device", "unit", "images", "BLEU device [95% CI]", f"BLEU {HOST_REFERENCE}",
           "CIDEr-D device [95% CI]", f"CIDEr-D {HOST_REFERENCE}", "captions changed", "BLEU Δ [95% CI]", "verdict"]
TITLE = f"Device quality: captions decoded on the device vs the {HOST_REFERENCE}"
NOTES = [f"BLEU / CIDEr-D of the captions each device decoded (evaluation subset), beside the {HOST_REFERENCE}: "
         "the same stored weights decompressed into PyTorch (fp32, host CPU). Δ = device − host reference, paired "
         "bootstrap over images (95 % CI); SAME only when the CI lies inside ±1 BLEU."]


def comparable(device: dict[str, Any], host: dict[str, Any]) -> str | None:
    """Why a device record cannot be set beside a host record (None: it can)."""
    dataset = (host.get("dataset") or {}).get("signature")
    if (device.get("dataset") or {}).get("signature") != dataset:
        return (f"other images than its host reference ({(device.get('dataset') or {}).get('signature')} vs "
                f"{dataset})")
    decoding = host.get("decoding") or {}
    if decoding.get("strategy", "greedy") != "greedy" or decoding.get("beams", 1) != 1:
        return "the host reference was not decoded greedily, the device always is"
    device_max = (device.get("decoding") or {}).get("max_length")
    if device_max is not None and decoding.get("max_length") not in (None, device_max):
        return f"max_length {device_max} on the device vs {decoding.get('max_length')} on the host"
    if [i["image_id"] for i in device["per_image"]] != [i["image_id"] for i in host["per_image"]]:
        return "its images are not those of the host reference"
    return None


def score(device: dict[str, Any], host: dict[str, Any], host_statistics: dict | None = None) -> dict[str, Any]:
    """Device metrics, host-reference metrics, changed images and the paired deltas with their outcome.

    The numbers are bench.eval.metrics' (score_corpus for the device, paired_bootstrap_scores for the deltas), computed
    from each side's statistics once and one pass of resamples (same seed, so the same resampled image sets as those
    functions draw): identical values, a third of the work. `host_statistics` (a dict) keeps the host side's
    statistics across the devices and units of one variant."""
    references = [item["references"] for item in host["per_image"]]
    changed = [d["image_id"] for d, h in zip(device["per_image"], host["per_image"])
               if list(d["tokens"]) != list(h.get("tokens") or []) or d["caption"] != h["caption"]]
    host_metrics = {m: dict(host["metrics"][m]) for m in ("bleu", "cider")}
    n = len(device["per_image"])
    if not changed:  # the same captions score the same: the host record's own numbers (same metric, same images)
        same = {"delta": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}
        return {"n_images": n, "changed": [], "changed_share": 0.0, "device": host_metrics, "host": host_metrics,
                "delta": {m: {**same, **decide(0.0, 0.0, 0.0, 1.0, margin=MARGINS[m], n_images=n, metric=m)}
                          for m in ("bleu", "cider")}}
    device_metrics, deltas = _bootstrapped(device, host, references, host_statistics)
    return {"n_images": n, "changed": changed, "changed_share": len(changed) / n, "device": device_metrics,
            "host": host_metrics, "delta": deltas}


def _bootstrapped(device: dict, host: dict, references: list, cache: dict | None):
    from bench.eval.metrics import (CorpusMetrics, bleu_statistics, bootstrap, cider_per_image, mean_resampled,
                                    paired_result, percentile_interval)

    cache = {} if cache is None else cache
    if "bleu" not in cache:
        host_captions = [item["caption"] for item in host["per_image"]]
        cache["bleu"], cache["cider"] = bleu_statistics(host_captions, references), \
            cider_per_image(host_captions, references)
    captions = [item["caption"] for item in device["per_image"]]
    bleu, cider = bleu_statistics(captions, references), cider_per_image(captions, references)
    bleu_b, bleu_a, cider_b, cider_delta = bootstrap(
        len(captions), RESAMPLES, 0, bleu.resampled_scores, cache["bleu"].resampled_scores,
        lambda counts: mean_resampled(cider, counts), lambda counts: mean_resampled(cider - cache["cider"], counts))
    metrics = CorpusMetrics(bleu=bleu.corpus_score(), bleu_signature=bleu.signature,
                            bleu_ci95=percentile_interval(bleu_b), cider=float(cider.mean()),
                            cider_ci95=percentile_interval(cider_b), cider_per_image=[], resamples=RESAMPLES,
                            seed=0).as_record()
    paired = {"bleu": paired_result("bleu", cache["bleu"].corpus_score(), metrics["bleu"]["score"], bleu_b - bleu_a,
                                    n_images=len(captions), seed=0),
              "cider": paired_result("cider", float(cache["cider"].mean()), metrics["cider"]["score"], cider_delta,
                                     n_images=len(captions), seed=0)}
    deltas = {}
    for metric, result in paired.items():
        (lo, hi), delta, p_value = result.ci95, float(result.delta), float(result.p_value)
        deltas[metric] = {"delta": delta, "ci95": [float(lo), float(hi)], "p_value": p_value,
                          **decide(delta, lo, hi, p_value, margin=MARGINS[metric], n_images=len(captions),
                                   metric=metric)}
    return {m: metrics[m] for m in ("bleu", "cider")}, deltas


def decide(delta: float, lo: float, hi: float, p_value: float, *, margin: float, n_images: int,
           metric: str = "bleu") -> dict[str, Any]:
    """The report's decision rule (verdicts.classify) on a quality delta, and for UNKNOWN how many images would
    decide: shrink the CI (∝ 1/√images) until the delta is significant (if past the margin) or the CI fits inside
    ±margin, each with 80 % power."""
    outcome = str(stats.classify(delta, lo, hi, p_value, alpha=ALPHA, min_effect=margin))
    label = "BLEU" if metric == "bleu" else "CIDEr-D"
    if outcome == stats.SAME:
        return {"outcome": outcome, "detail": f"{label} Δ CI inside ±{margin:g}", "more_images": None}
    if outcome == stats.DIFFERENT:
        word = "lower" if delta < 0 else "higher"
        return {"outcome": outcome, "detail": f"{label} {abs(delta):.2f} {word} than the {HOST_REFERENCE} "
                                              f"(p={p_value:.2g})", "more_images": None}
    z = stats._z(0.5 + stats.CONFIDENCE / 2)
    se = (hi - lo) / (2 * z)
    if se > 0 and abs(delta) >= margin:
        target = abs(delta) / (stats._z(1 - ALPHA / 2) + stats._z(stats.POWER))
    else:
        target = max(margin - abs(delta), margin / 4) / (z + stats._z(stats.POWER))
    more = max(1, math.ceil(n_images * (se / target) ** 2 - n_images)) if se > 0 else n_images
    return {"outcome": outcome, "more_images": more,
            "detail": f"{label} Δ {delta:+.2f} undecided (CI [{lo:+.2f}, {hi:+.2f}]): ~{more} more images would "
                      "decide"}


def point_metrics(device: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """Corpus BLEU (with its signature) and CIDEr-D of the device captions, without intervals: what a nightly
    comparison against an older run needs from that run (the bootstrap there is the paired one)."""
    from bench.eval.metrics import CIDER_SCORER, cider_per_image, corpus_bleu

    if all(list(d["tokens"]) == list(h.get("tokens") or []) for d, h in zip(device["per_image"], host["per_image"])):
        return {m: dict(host["metrics"][m]) for m in ("bleu", "cider")}
    captions = [item["caption"] for item in device["per_image"]]
    references = [item["references"] for item in host["per_image"]]
    bleu, signature = corpus_bleu(captions, references)
    return {"bleu": {"score": bleu, "signature": signature},
            "cider": {"score": float(cider_per_image(captions, references).mean()), "scorer": CIDER_SCORER}}


def rows(run, *, scored: bool = True, only=None) -> list[dict[str, Any]]:
    """One row per device record of the run (variant × device × compute unit), in report order: with `scored`,
    intervals and the paired comparison with the host reference; else point metrics only. `only(record)` limits the
    work to some records (`bench explain` scores two variants, not the whole run). Each row is computed once per run;
    records that cannot be set beside their host reference are left out with a note on the run."""
    done = run.cache.setdefault("device_quality_rows" if scored else "device_quality_points", {})
    scored_rows = run.cache.get("device_quality_rows") or {}
    found = []
    for key, record in sorted((getattr(run, "device_quality", None) or {}).items()):
        if only is not None and not only(record):
            continue
        if key not in done:
            done[key] = scored_rows.get(key) if key in scored_rows else _row(run, key, record, scored)
        if done[key] is not None:
            found.append(done[key])
    plan_order = {vid: i for i, vid in enumerate((run.run.get("plan") or {}).get("variants") or [])}
    found.sort(key=lambda r: (KIND_ORDER.get(r["target_kind"], 9), str(r["target_id"]),
                              UNIT_ORDER.get(r["compute_unit"], 9), plan_order.get(r["variant_id"], 10**6)))
    return found


def _row(run, key: str, record: dict[str, Any], scored: bool) -> dict[str, Any] | None:
    host = run.evals.get(record["variant_id"])
    if host is None and all("references" in item for item in record["per_image"]):
        return _unpaired_row(key, record, run, scored)
    if host is None:
        run.notes.append(f"device quality of {key} not scored: no host reference (eval record) for "
                         f"{record['variant_id']} in this run")
        return None
    why = comparable(record, host)
    if why:
        run.notes.append(f"device quality of {key} not scored: {why}")
        return None
    return {**_row_identity(key, record, run),
            "per_image": [{"image_id": d["image_id"], "caption": d["caption"], "tokens": d["tokens"],
                           "host_caption": h["caption"], "references": h["references"]}
                          for d, h in zip(record["per_image"], host["per_image"])],
            **(score(record, host, run.cache.setdefault("host_statistics", {}).setdefault(record["variant_id"], {}))
               if scored else {"device": point_metrics(record, host)})}


def _row_identity(key: str, record: dict[str, Any], run) -> dict[str, Any]:
    """What names a device-quality row: its series, variant, device and compute unit, and the evaluation set."""
    target = record["target"]
    return {"series_key": key, "variant_id": record["variant_id"],
            "variant": variant_name(record["variant_id"], run.variants.get(record["variant_id"])),
            "variant_hash": record.get("variant_hash"), "target_kind": target["kind"],
            "target_id": target["id"], "device_model": target.get("model"), "os_build": target.get("os_build"),
            "target": target_label(target["kind"], target.get("model"), target.get("name")),
            "compute_unit": record["compute_unit"], "dataset": (record.get("dataset") or {}).get("signature")}


NO_HOST_REFERENCE = "no host reference: an imported captioner (no torch weights)"


def _unpaired_row(key: str, record: dict[str, Any], run, scored: bool) -> dict[str, Any]:
    """An imported captioner pair (bench.build.imported): no torch weights, hence no host reference; its record
    carries the references, and its device captions are scored alone (intervals by bootstrap over images)."""
    from bench.eval.metrics import score_corpus

    captions = [item["caption"] for item in record["per_image"]]
    references = [item["references"] for item in record["per_image"]]
    if scored:
        metrics = score_corpus(captions, references, resamples=RESAMPLES, seed=0).as_record()
        device = {m: metrics[m] for m in ("bleu", "cider")}
    else:
        from bench.eval.metrics import CIDER_SCORER, cider_per_image, corpus_bleu

        bleu, signature = corpus_bleu(captions, references)
        device = {"bleu": {"score": bleu, "signature": signature},
                  "cider": {"score": float(cider_per_image(captions, references).mean()), "scorer": CIDER_SCORER}}
    return {**_row_identity(key, record, run),
            "per_image": [{"image_id": d["image_id"], "caption": d["caption"], "tokens": d["tokens"],
                           "host_caption": None, "references": d["references"]} for d in record["per_image"]],
            "n_images": len(captions), "changed": None, "changed_share": None, "device": device, "host": None,
            "delta": None}


def table_cells(found: list[dict[str, Any]]) -> list[list[str]]:
    """The report table's cells (COLUMNS), one row per variant × device × compute unit."""
    out = []
    for row in found:
        bleu, cider = row["device"]["bleu"], row["device"]["cider"]
        if row["host"] is None:  # an imported captioner: nothing to pair with
            out.append([row["variant"], row["target"], row["compute_unit"], str(row["n_images"]),
                        f"{bleu['score']:.2f} [{_ci(bleu, 1)}]", "-", f"{cider['score']:.3f} [{_ci(cider, 3)}]", "-",
                        "-", "-", NO_HOST_REFERENCE])
            continue
        delta = row["delta"]["bleu"]
        changed = row["changed"]
        out.append([row["variant"], row["target"], row["compute_unit"], str(row["n_images"]),
                    f"{bleu['score']:.2f} [{_ci(bleu, 1)}]", f"{row['host']['bleu']['score']:.2f}",
                    f"{cider['score']:.3f} [{_ci(cider, 3)}]", f"{row['host']['cider']['score']:.3f}",
                    f"{len(changed)} ({row['changed_share']:.0%})" + (f": {_ids(changed)}" if changed else ""),
                    f"{delta['delta']:+.2f} [{delta['ci95'][0]:+.2f}, {delta['ci95'][1]:+.2f}]",
                    f"{delta['outcome']}: {delta['detail']}"])
    return out


def _ci(metric: dict, digits: int) -> str:
    lo, hi = metric.get("ci95") or (math.nan, math.nan)
    return f"{lo:.{digits}f}, {hi:.{digits}f}"


def _ids(ids: list[str], most: int = 5) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" (+{len(ids) - most} more)" if len(ids) > most else "")


def sentence(row: dict[str, Any]) -> str:
    """One finding in words: "on the Neural Engine 7 % of int8's captions change (3 of 40 images), BLEU −0.8 [−1.4,
    −0.2] vs the host reference (UNKNOWN: …)"."""
    where = f"{UNIT_WORDS.get(row['compute_unit'], 'on ' + row['compute_unit'])} of {row['target']}"
    if row["host"] is None:
        bleu = row["device"]["bleu"]
        lo, hi = bleu.get("ci95") or (math.nan, math.nan)
        return (f"{row['variant']} {where}: BLEU {bleu['score']:.2f} [{lo:.2f}, {hi:.2f}] over {row['n_images']} "
                f"images decoded on the device ({NO_HOST_REFERENCE}, so no paired comparison).")
    delta = row["delta"]["bleu"]
    if not row["changed"]:
        return (f"{row['variant']} {where}: no caption changes ({row['n_images']} images decoded on the device, "
                f"identical to the {HOST_REFERENCE}): device BLEU = host reference BLEU "
                f"{row['host']['bleu']['score']:.2f} (SAME).")
    lo, hi = delta["ci95"]
    return (f"{row['variant']} {where}: {row['changed_share']:.0%} of captions change ({len(row['changed'])} of "
            f"{row['n_images']} images: {_ids(row['changed'], 3)}), BLEU {_signed(delta['delta'])} "
            f"[{_signed(lo)}, {_signed(hi)}] vs the {HOST_REFERENCE} ({delta['outcome']}: {delta['detail']}).")


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


# ----------------------------------------------------------------------------------------------- nightly verdicts
def _as_eval(row: dict[str, Any]) -> dict[str, Any]:
    """A scored device row in the shape verdicts.compare_quality reads (metrics, dataset, per_image)."""
    return {"metrics": row["device"], "dataset": {"signature": row["dataset"]},
            "per_image": [{"image_id": i["image_id"], "caption": i["caption"], "references": i["references"]}
                          for i in row["per_image"]]}


def _match(row: dict[str, Any]) -> tuple:
    return (row["variant"], row["target_kind"], row["device_model"], row["compute_unit"])


def nightly_verdicts(current, baselines: list) -> list[stats.Verdict]:
    """Tonight's device captions against the latest baseline run that has the same variant × device model × unit:
    BLEU and CIDEr-D by paired bootstrap over images (verdicts.compare_quality, as for the host reference)."""
    wanted = {_match(row) for row in rows(current)}
    past: dict[tuple, dict] = {}
    for run in reversed(baselines):  # newest first: the latest run with the record wins; older ones are not scored
        def needed(record: dict, run=run) -> bool:
            key = (variant_name(record["variant_id"], run.variants.get(record["variant_id"])),
                   record["target"]["kind"], record["target"].get("model"), record["compute_unit"])
            return key in wanted and key not in past

        for row in rows(run, scored=False, only=needed):
            past.setdefault(_match(row), row)
    found = []
    for row in rows(current):
        base = past.get(_match(row))
        if base is None:
            continue
        key = f"{row['variant']} · {row['device_model']} · {row['compute_unit']} (captions decoded on the device)"
        for metric in ("bleu", "cider"):
            verdict = stats.compare_quality(_as_eval(base), _as_eval(row), metric, key=key)
            verdict.metric = f"device {verdict.metric}"
            verdict.extra["changed_vs_baseline"] = [i["image_id"] for i, j in zip(row["per_image"], base["per_image"])
                                                    if i["tokens"] != j["tokens"]]
            found.append(verdict)
    return found
