"""Captions decoded on the device: one immutable record per (variant, device, compute unit) of a run.

`results/<run_id>/quality/<series_key>.json`, kind `bench.devicequality` v1 (docs/contracts.md §6):

    series_key, variant_id, variant_name, variant_hash, compute_unit,
    target     {kind, id, name, label, model, os_build}
    dataset    {spec, split, signature, n}          the evaluation subset, the same images as the host eval record
    decoding   {strategy: "greedy", max_length, where: "device"}
    tokenizer  {path}                               the variant's source checkpoint (decodes the ids)
    runner     {job_id, runner_version}
    per_image  [{image_id, tokens: [ids without bos, eos included], caption}]
    created_at

The ids are what the runner returned (raw); `caption` is their text, decoded on the host with the variant's tokenizer
exactly like bench.eval decodes its own ids (`tokenizer.decode(ids, skip_special_tokens=True).strip()`), so identical
ids always give identical captions and the report needs no tokenizer. Scores are never stored: they are derived
(bench/report/device_quality.py).

run.json (`bench.run` v3) binds each record by path and sha256 (`device_quality: {series_key: {record, sha256} |
{error}}`): a record changed afterwards is refused, never shown.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from bench.errors import RecordError
from bench.store import records

KIND, VERSION = "bench.devicequality", 1
QUALITY_DIR = "quality"


def _check(record: dict[str, Any], source: str) -> None:
    """The fields the report reads without a default, with their types (one line naming the file and field)."""
    def damaged(what: str) -> RecordError:
        return RecordError(f"{source}: damaged device-quality record ({what})")

    for key in ("series_key", "variant_id", "compute_unit"):
        if not isinstance(record.get(key), str):
            raise damaged(f"{key} is missing or not a string")
    target = record.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("id"), str) or not isinstance(target.get("kind"), str):
        raise damaged("target.kind/id missing or not strings")
    per_image = record.get("per_image")
    if not isinstance(per_image, list) or not per_image:
        raise damaged("per_image is missing or empty")
    for index, item in enumerate(per_image):
        if not isinstance(item, dict) or not isinstance(item.get("image_id"), str):
            raise damaged(f"per_image[{index}].image_id is missing or not a string")
        tokens = item.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise damaged(f"per_image[{index}].tokens is not a list of integers")
        if not isinstance(item.get("caption"), str):
            raise damaged(f"per_image[{index}].caption is missing or not a string")


records.register_kind(KIND, VERSION, _check)


def record_name(series_key: str) -> str:
    return f"{QUALITY_DIR}/{series_key}.json"


def write_record(run_dir: Path, payload: dict[str, Any]) -> dict[str, str]:
    """Write one record (immutable: an existing one is replaced only when it was never bound, e.g. a killed run) and
    return its binding {record, sha256} for run.json."""
    name = record_name(payload["series_key"])
    path = Path(run_dir) / name
    records.write(path, KIND, payload, overwrite=True)
    return {"record": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def read_bound(run_dir: Path, binding: Any, series_key: str) -> dict[str, Any]:
    """The record a run.json binding names, refused when its bytes are not the bound ones."""
    if not isinstance(binding, dict) or not isinstance(binding.get("record"), str) \
            or not isinstance(binding.get("sha256"), str):
        raise RecordError(f"{Path(run_dir) / 'run.json'}: device_quality.{series_key} is damaged")
    name = binding["record"]
    if name != record_name(series_key):  # a binding never points outside the run's quality/ folder
        raise RecordError(f"{Path(run_dir) / 'run.json'}: device_quality.{series_key} names {name!r}")
    path = Path(run_dir) / name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RecordError(f"{path}: cannot read ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != binding["sha256"]:
        raise RecordError(f"{path}: changed since the run stored it (sha256 differs); not shown")
    return records.read(path, KIND)


def load_bound(run_dir: Path, run_record: dict[str, Any]) -> tuple[dict[str, dict], list[str]]:
    """Every bound record of a run by series key, and notes on what cannot be shown (failed jobs, damaged records).
    A run before device quality existed (`device_quality` null) has none and needs no note."""
    bound = run_record.get("device_quality")
    if not bound:
        return {}, []
    found, notes = {}, []
    for series_key, binding in sorted(bound.items()):
        if isinstance(binding, dict) and binding.get("error"):
            notes.append(f"device quality of {series_key} not measured: {binding['error']}")
            continue
        try:
            found[series_key] = read_bound(run_dir, binding, series_key)
        except RecordError as err:
            notes.append(f"device quality of {series_key} not shown: {err}")
    return found, notes
