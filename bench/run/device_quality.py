"""The quality job: what each device actually decodes for the evaluation subset, per variant and compute unit.

Accuracy and performance are kept apart (MLPerf loadgen's two modes): the timed rounds measure latency on the run's
images; afterwards, for every device target (iPhone, macOS Core ML — not host-torch, which *is* the host reference),
one untimed captioner job per variant runs every compute unit of the run over the evaluation subset (the images the
host eval record captions), warm-up 0, one pass, no compute plan. It is the ordinary runner job (the same contract,
deploy layer, validation and executor, so a lab phone works the same way); only the ids it returns are kept: decoded
with the variant's tokenizer and written as bench.devicequality records (bench/store/device_quality.py), bound in
run.json. A failed quality job is a failure of the run (`incomplete`, `bench run --resume` redoes it); a bound record
is never redone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.run.plan import Series
from bench.run.targets.base import ImageItem, Interrupted, RoundRequest, Step, StepResult
from bench.store import device_quality as store
from bench.store.environment import now_iso

DEVICE_KINDS = ("iphone", "macos-coreml")


def quality_key(series: Series) -> str:
    return series.key


def pending_series(series: list[Series], targets: list, bound: dict[str, Any] | None) -> list[Series]:
    """Series of captioners (built, or imported encoder/decoder pairs) on device targets without a bound record
    (failed ones are redone). Imported models running generic jobs (bench.run.generic) have no captions: their device quality is their output drift (bench.report.drift)."""
    from bench.run.generic import is_imported

    kinds = {t.id: t.kind for t in targets}
    done = {key for key, binding in (bound or {}).items() if isinstance(binding, dict) and binding.get("record")}
    return [s for s in series if kinds.get(s.target_id) in DEVICE_KINDS and quality_key(s) not in done
            and not is_imported(s.variant)]


def collect(manifest, series: list[Series], targets: list, executor, images: Callable[[], tuple[list[ImageItem],
            dict]], *, should_stop: Callable[[], bool] = lambda: False, log=print) -> list[tuple[str, str]]:
    """Run the quality jobs a run still lacks; bind each record (or its error) in run.json. Returns the failures
    (series key, why). `images()` opens the evaluation subset only when a device has something to do."""
    todo = pending_series(series, targets, manifest.data.get("device_quality"))
    quarantined = {tid for tid, info in (manifest.data.get("targets") or {}).items()
                   if info.get("state") == "quarantined"}
    if not todo:
        return []
    items, dataset = images()
    by_target = {t.id: t for t in targets}

    def on_target(target_id: str) -> list[tuple[str, str]]:
        target = by_target[target_id]
        mine = [s for s in todo if s.target_id == target_id]
        if target_id in quarantined:
            reason = f"{target.name} was quarantined in this run: {manifest.data['targets'][target_id].get('reason')}"
            return [_bind_error(manifest, s, reason) for s in mine]
        failures = []
        for variant_id in dict.fromkeys(s.variant.variant_id for s in mine):
            steps = [s for s in mine if s.variant.variant_id == variant_id]
            log(f"quality job: {variant_id} on {target.name} ({', '.join(s.compute_unit for s in steps)}), "
                f"{len(items)} images…")
            failures += _one_job(manifest, target, executor, steps, items, dataset, should_stop)
        return failures

    # Phones work in parallel (one thread each, as in the timed rounds); host targets one after another.
    ids = list(dict.fromkeys(s.target_id for s in todo))
    parallel = [i for i in ids if getattr(by_target[i], "parallel_safe", False)]
    failures = [f for i in ids if i not in parallel for f in on_target(i)]
    if parallel:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(parallel), thread_name_prefix="bench-quality") as pool:
            for found in pool.map(on_target, parallel):
                failures += found
    return failures


def _one_job(manifest, target, executor, series: list[Series], items: list[ImageItem], dataset: dict,
             should_stop) -> list[tuple[str, str]]:
    """One runner job: the variant on each of its compute units over the evaluation subset."""
    variant = series[0].variant
    try:
        tokenizer = _tokenizer(variant)
    except BenchError as err:
        return [_bind_error(manifest, s, f"cannot decode its ids: {err}") for s in series]
    steps = [Step(f"{quality_key(s)}--quality", s.key, s.variant, s.compute_unit, 0) for s in series]
    # run_id: the phone reuses the packages it compiled for the timed rounds (compiled once per device per run)
    request = RoundRequest(0, steps, items, warmup=0, repeats=1, compute_plan=False, run_id=manifest.run_id)
    by_job = {step.job_key: s for step, s in zip(steps, series)}
    failures, answered = [], set()
    try:
        for result in executor.run_round(target, request, should_stop):
            s = by_job.get(result.job_key)
            if s is None:
                continue
            answered.add(result.job_key)
            if result.error:
                failures.append(_bind_error(manifest, s, result.error))
                continue
            try:
                payload = _record(s, target, result, items, dataset, tokenizer)
            except BenchError as err:
                failures.append(_bind_error(manifest, s, str(err)))
                continue
            _bind(manifest, s, store.write_record(manifest.run_dir, payload))
    except Interrupted:
        raise
    except BenchError as err:  # the device failed the whole job: every step of it failed, the others go on
        failures += [_bind_error(manifest, by_job[k], f"{type(err).__name__}: {err}") for k in by_job
                     if k not in answered]
    return failures


def _record(series: Series, target, result: StepResult, items: list[ImageItem], dataset: dict,
            tokenizer) -> dict[str, Any]:
    """The bench.devicequality payload of one step: the ids of every image (repeat 0), decoded."""
    ids = {}
    for sample in result.samples:
        if sample.get("repeat", 0) == 0:
            ids[str(sample["image_id"]).split("@", 1)[0]] = sample.get("tokens")
    missing = [item.image_id for item in items if not isinstance(ids.get(item.image_id), list)]
    if missing:
        raise QualityJobError(f"the device returned no ids for {len(missing)} of {len(items)} images "
                              f"(e.g. {missing[0]})")
    variant = series.variant
    from bench.run.generic import is_imported_captioner

    # an imported pair has no host reference to take the references from: its record carries them
    own_references = is_imported_captioner(variant)
    per_image = [{"image_id": item.image_id, "tokens": [int(t) for t in ids[item.image_id]],
                  "caption": tokenizer.decode(ids[item.image_id], skip_special_tokens=True).strip(),
                  **({"references": list(item.references)} if own_references else {})}
                 for item in items]
    extra = result.extra_conditions or {}
    return {"series_key": series.key, "variant_id": variant.variant_id, "variant_name": variant.name,
            "variant_hash": variant.variant_hash, "compute_unit": series.compute_unit,
            "target": {"kind": target.kind, "id": target.id, "name": target.name, "label": target.label,
                       "model": getattr(target, "model", None), "os_build": getattr(target, "os_build", None)},
            "dataset": dataset,
            "decoding": {"strategy": "greedy", "max_length": (variant.decode or {}).get("max_length"),
                         "where": "device"},
            "tokenizer": {"path": str(_source_path(variant))},
            "runner": {"job_id": extra.get("runner_job_id"), "runner_version": extra.get("runner_version")},
            "per_image": per_image, "created_at": now_iso()}


class QualityJobError(BenchError):
    """A quality job's answer cannot be scored (ids missing for some image, no tokenizer)."""


def _source_path(variant) -> Path:
    """Where the variant's tokenizer is: its source checkpoint, or an imported pair's stored tokenizer folder."""
    from bench.build.imported import TOKENIZER_DIR
    from bench.run.generic import is_imported_captioner

    if is_imported_captioner(variant) and variant.path is not None:
        return Path(variant.path) / TOKENIZER_DIR
    source = getattr(variant.source, "source", None) or {}
    path = source.get("path") if isinstance(source, dict) else None
    if not path:
        raise QualityJobError(f"variant {variant.variant_id} names no source checkpoint (its tokenizer)")
    return Path(path)


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(variant):
    """The variant's tokenizer (its source checkpoint's), loaded once per process."""
    path = _source_path(variant)
    if str(path) not in _TOKENIZERS:
        from bench.train.captioner import load_tokenizer

        _TOKENIZERS[str(path)] = load_tokenizer(path)
    return _TOKENIZERS[str(path)]


_BINDING = threading.Lock()  # device threads bind their records into one run.json field


def _bind(manifest, series: Series, binding: dict) -> None:
    with _BINDING:
        bound = dict(manifest.data.get("device_quality") or {})
        bound[quality_key(series)] = binding
        manifest.update(device_quality=bound)


def _bind_error(manifest, series: Series, why: str) -> tuple[str, str]:
    _bind(manifest, series, {"error": why, "at": now_iso()})
    return quality_key(series), why
