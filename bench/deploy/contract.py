"""The runner contract: job.json the host writes, result.json the iPhone runner writes (docs/runner.md).

Everything pulled from a device is untrusted: it is size-checked before parsing, checked against the JSON
Schemas in bench/deploy/schemas/ (draft 2020-12), then against what the schema cannot say (every step names a
model of the job, the result answers this job, timings add up). Each failure is one `ContractError` line naming
the file and the field.

Container layout, relative to CONTAINER_ROOT inside the runner's data container (contracts.md §5):
    models/<sha256>/encoder.mlpackage, models/<sha256>/decoder.mlpackage
    inputs/<sha256>.f32
    compiled/<run scope>/<sha256>/encoder.mlmodelc   compiled once per device per run, reused by later jobs
    jobs/<job_id>/job.json                      written last, after every push was verified
    results/<job_id>/result.partial.json        after each compile phase and each step
    results/<job_id>/result.json                atomic
    results/<job_id>/DONE                       the only signal that result.json is final
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from bench.errors import ContractError, RecordError
from bench.store import records

JOB_KIND = "bench.job"
RESULT_KIND = "bench.result"
JOB_VERSION = 1
RESULT_VERSION = 1
records.register_kind(JOB_KIND, JOB_VERSION)
records.register_kind(RESULT_KIND, RESULT_VERSION)
# Generic jobs: any imported Core ML model (bench.build.imported), their own kinds so captioner jobs never change.
GENERIC_JOB_KIND = "bench.generic-job"
GENERIC_RESULT_KIND = "bench.generic-result"
GENERIC_JOB_VERSION = 1
GENERIC_RESULT_VERSION = 1
records.register_kind(GENERIC_JOB_KIND, GENERIC_JOB_VERSION)
records.register_kind(GENERIC_RESULT_KIND, GENERIC_RESULT_VERSION)
SCHEMA_FILES = {"job": "job.v1", "result": "result.v1", "generic-job": "generic-job.v1",
                "generic-result": "generic-result.v1"}
GENERIC_PACKAGE = "model"
OUTPUTS_DIR = "outputs"

COMPUTE_UNITS = ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all")
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
THROTTLED_STATES = ("serious", "critical")
BATTERY_STATES = ("unknown", "unplugged", "charging", "full")
MODES = ("measure", "status")
RESULT_STATUSES = ("complete", "partial", "failed")
# A failed result whose error starts with this: the runner left the foreground (phone locked, another app in front)
# and stopped measuring (runner/BenchRunner/AppState.swift). The host reports it as AppLeftForeground.
APP_LEFT_FOREGROUND = "app left the foreground"
PACKAGES = ("encoder", "decoder")

CONTAINER_ROOT = "Documents/bench"
MODELS_DIR = "models"
INPUTS_DIR = "inputs"
COMPILED_DIR = "compiled"
JOBS_DIR = "jobs"
RESULTS_DIR = "results"
JOB_FILE = "job.json"
PARTIAL_RESULT_FILE = "result.partial.json"
RESULT_FILE = "result.json"
DONE_FILE = "DONE"

MAX_RESULT_BYTES = 64 * 1024 * 1024
MAX_JOB_BYTES = 16 * 1024 * 1024
MAX_PATH_CHARS = 1024
MAX_COMPONENT_CHARS = 255

# Core ML feature names the runner uses unless a job's model entry says otherwise (model["io"]).
DEFAULT_IO = {
    "encoder_input": "pixel_values",
    "encoder_output": "image_embeds",
    "decoder_input_ids": "input_ids",
    "decoder_image_embeds": "image_embeds",
    # Fed only when the decoder declares it (the builder's decoder step takes one; older exports may not).
    "decoder_attention_mask": "attention_mask",
    "decoder_output": "logits",
    # kv_cache decoding (models[].decoding, iOS 18): the step's position input, and the encoder's cross-attention
    # keys/values, fed to the decoder under the same names at every step.
    "decoder_position": "position",
    "encoder_cross_keys": "cross_keys",
    "encoder_cross_values": "cross_values",
}
DECODINGS = ("recompute", "kv_cache")

_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A compile scope names the folder a run's compiled models live in on a device (one per run: its run id).
_COMPILE_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------------------------------- paths


def safe_container_path(path: str) -> str:
    """Return `path` if it is a plain relative POSIX path that stays inside the container, else ContractError.

    Refused: empty, absolute, `..` or `.` components, empty components (`a//b`), backslashes, NUL or other
    control characters, over-long paths or components.
    """
    if not isinstance(path, str):
        raise ContractError(f"container path must be a string, got {type(path).__name__}")
    shown = repr(path[:80])
    if not path:
        raise ContractError("container path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise ContractError(f"container path {shown}… is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ContractError(f"container path {shown} contains NUL or control characters")
    if "\\" in path:
        raise ContractError(f"container path {shown} contains a backslash")
    if path.startswith("/") or path.startswith("~"):
        raise ContractError(f"container path {shown} is absolute; it must be relative to {CONTAINER_ROOT}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ContractError(f"container path {shown} has a {part or 'empty'!r} component (escapes or is ambiguous)")
        if len(part) > MAX_COMPONENT_CHARS:
            raise ContractError(f"container path {shown} has a component longer than {MAX_COMPONENT_CHARS} characters")
    return path


def _checked_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
        raise ContractError(f"job_id {job_id!r} must match {_JOB_ID.pattern} (it names a folder on the device)")
    return job_id


def _checked_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise ContractError(f"{sha256!r} is not a lowercase hex sha256")
    return sha256


def in_container(relative: str) -> str:
    """The path inside the app's data container (what house_arrest/AFC sees) for a contract-relative path."""
    return f"{CONTAINER_ROOT}/{safe_container_path(relative)}"


def model_package_path(sha256: str, package: str) -> str:
    """`models/<sha256>/<package>.mlpackage`, relative to CONTAINER_ROOT (content-addressed by tree hash)."""
    if package not in PACKAGES:
        raise ContractError(f"package must be one of {PACKAGES}, got {package!r}")
    return f"{MODELS_DIR}/{_checked_sha(sha256)}/{package}.mlpackage"


def input_path(sha256: str) -> str:
    """`inputs/<sha256>.f32`, relative to CONTAINER_ROOT (sha256 of the little-endian float32 bytes)."""
    return f"{INPUTS_DIR}/{_checked_sha(sha256)}.f32"


def checked_compile_scope(scope: str) -> str:
    if not isinstance(scope, str) or not _COMPILE_SCOPE.match(scope):
        raise ContractError(f"compile scope {scope!r} must match {_COMPILE_SCOPE.pattern} (it names a folder on the "
                            "device)")
    return scope


def compiled_model_path(scope: str, sha256: str, package: str) -> str:
    """`compiled/<scope>/<sha256>/<package>.mlmodelc`: where the runner keeps a package compiled once for the run
    `scope` (keyed by the package's tree hash, so variants sharing a package share its compiled model too)."""
    if package not in PACKAGES:
        raise ContractError(f"package must be one of {PACKAGES}, got {package!r}")
    return f"{COMPILED_DIR}/{checked_compile_scope(scope)}/{_checked_sha(sha256)}/{package}.mlmodelc"


def job_dir(job_id: str) -> str:
    return f"{JOBS_DIR}/{_checked_job_id(job_id)}"


def job_file(job_id: str) -> str:
    return f"{job_dir(job_id)}/{JOB_FILE}"


def results_dir(job_id: str) -> str:
    return f"{RESULTS_DIR}/{_checked_job_id(job_id)}"


def result_file(job_id: str) -> str:
    return f"{results_dir(job_id)}/{RESULT_FILE}"


def partial_result_file(job_id: str) -> str:
    return f"{results_dir(job_id)}/{PARTIAL_RESULT_FILE}"


def done_file(job_id: str) -> str:
    return f"{results_dir(job_id)}/{DONE_FILE}"


# --------------------------------------------------------------------------------------------------- schemas


def schema_text(kind: str) -> str:
    """The packaged JSON Schema of `kind` ("job" or "result") as text."""
    if kind not in SCHEMA_FILES:
        raise ContractError(f"unknown contract schema {kind!r}")
    return resources.files("bench.deploy.schemas").joinpath(f"{SCHEMA_FILES[kind]}.schema.json").read_text(
        encoding="utf-8")


@lru_cache(maxsize=4)
def schema(kind: str) -> dict[str, Any]:
    return json.loads(schema_text(kind))


@lru_cache(maxsize=4)
def _validator(kind: str):
    import jsonschema

    base = jsonschema.Draft202012Validator
    base.check_schema(schema(kind))

    # JSON Schema counts 5.0 as an integer; the contract wants real integers (nanoseconds, token ids).
    def is_strict_integer(_checker, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    checker = base.TYPE_CHECKER.redefine("integer", is_strict_integer)
    strict = jsonschema.validators.extend(base, type_checker=checker)
    return strict(schema(kind))


# --------------------------------------------------------------------------------------------------- loading


def _field(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _load(data: bytes | str | dict | Path, *, source: str | None, default_source: str, max_bytes: int) -> tuple[dict, str]:
    """Turn bytes/str/Path/dict into a dict, refusing oversize input before parsing it."""
    if isinstance(data, Mapping):
        return dict(data), source or default_source
    if isinstance(data, Path):
        label = source or str(data)
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            raise ContractError(f"{label}: not found") from None
        except OSError as err:
            raise ContractError(f"{label}: cannot be read ({err.strerror})") from None
        if size > max_bytes:
            raise ContractError(f"{label}: {size} bytes is over the {max_bytes}-byte limit; refused without parsing")
        try:
            raw = data.read_bytes()
        except OSError as err:
            raise ContractError(f"{label}: cannot be read ({err.strerror})") from None
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw, label = bytes(data), source or default_source
    elif isinstance(data, str):
        raw, label = data.encode("utf-8"), source or default_source
    else:
        raise ContractError(f"{source or default_source}: expected bytes, a path or a dict, got {type(data).__name__}")
    if len(raw) > max_bytes:
        raise ContractError(f"{label}: {len(raw)} bytes is over the {max_bytes}-byte limit; refused without parsing")
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ContractError(f"{label}: not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ContractError(f"{label}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except RecursionError:
        raise ContractError(f"{label}: JSON nested too deeply") from None
    if not isinstance(parsed, dict):
        raise ContractError(f"{label}: expected a JSON object, found {type(parsed).__name__}")
    return parsed, label


def _check_kind_and_version(record: dict, kind: str, label: str) -> dict:
    found = record.get("schema")
    if found != kind:
        raise ContractError(f"{label}: schema: expected {kind!r}, found {found!r}")
    version = record.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContractError(f"{label}: schema_version: expected a positive integer, found {version!r}")
    try:
        return records.upgrade(record, kind, source=label)
    except RecordError as err:
        raise ContractError(str(err)) from None


def _check_schema(record: dict, kind: str, label: str) -> None:
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(kind).iter_errors(record))
    if error is not None:
        message = error.message
        shown = repr(error.instance)
        if len(shown) > 80 and shown in message:  # keep the reason visible when the bad value is huge
            message = message.replace(shown, shown[:60] + "…")
        if len(message) > 300:
            message = message[:300] + "…"
        raise ContractError(f"{label}: {_field(error.absolute_path)}: {message}")


# --------------------------------------------------------------------------------------------------- jobs


def validate_job(data: bytes | str | dict | Path, *, source: str | None = None, max_bytes: int = MAX_JOB_BYTES) -> dict:
    """Check a job.json (bytes, text, path or dict) against the contract; return it as a dict."""
    job, label = _load(data, source=source, default_source=JOB_FILE, max_bytes=max_bytes)
    job = _check_kind_and_version(job, JOB_KIND, label)
    _check_schema(job, "job", label)
    _check_job_semantics(job, label)
    return job


def _check_job_semantics(job: dict, label: str) -> None:
    models: dict[str, dict] = {}
    for index, model in enumerate(job["models"]):
        where = f"{label}: models[{index}]"
        if model["variant_id"] in models:
            raise ContractError(f"{where}.variant_id: {model['variant_id']!r} appears twice")
        models[model["variant_id"]] = model
        _check_model_paths(model, where)
        decode = model["decode"]
        if decode["eos_id"] == decode["bos_id"]:
            raise ContractError(f"{where}.decode: eos_id equals bos_id ({decode['eos_id']})")
        if model.get("decoding") == "kv_cache" and "decoder_length" not in model:
            raise ContractError(f"{where}.decoder_length: kv_cache decoding needs it (the cache's slots)")
        if model.get("decoder_length", decode["max_length"]) < decode["max_length"]:
            raise ContractError(f"{where}.decoder_length: shorter than decode.max_length ({decode['max_length']})")
        seen_images: set[str] = set()
        for number, item in enumerate(model["inputs"]):
            if item["image_id"] in seen_images:
                raise ContractError(f"{where}.inputs[{number}].image_id: {item['image_id']!r} appears twice")
            seen_images.add(item["image_id"])
            shape = item["shape"]
            if len(shape) != 4 or shape[:2] != [1, 3] or shape[2] != model["image_size"] or shape[3] != model["image_size"]:
                raise ContractError(
                    f"{where}.inputs[{number}].shape: expected [1, 3, {model['image_size']}, {model['image_size']}], "
                    f"found {shape}"
                )
    for index, step in enumerate(job["steps"]):
        if step["variant_id"] not in models:
            raise ContractError(
                f"{label}: steps[{index}].variant_id: {step['variant_id']!r} is not one of the job's models "
                f"({', '.join(sorted(models)) or 'none'})"
            )
        if not models[step["variant_id"]]["inputs"] and job["mode"] == "measure":
            raise ContractError(f"{label}: steps[{index}]: model {step['variant_id']!r} has no inputs to measure")
    if job["mode"] == "measure":
        if not job["steps"]:
            raise ContractError(f"{label}: steps: a measure job needs at least one step")
        if job["repeats"] < 1:
            raise ContractError(f"{label}: repeats: a measure job needs at least 1")
        unused = sorted(set(models) - {step["variant_id"] for step in job["steps"]})
        if unused:
            raise ContractError(f"{label}: models: {', '.join(unused)} not measured by any step")


def _check_model_paths(model: dict, where: str) -> None:
    for package in PACKAGES:
        path = model[package]
        try:
            safe_container_path(path)
        except ContractError as err:
            raise ContractError(f"{where}.{package}: {err}") from None
        parts = path.split("/")
        if parts[0] != MODELS_DIR or not path.endswith(".mlpackage"):
            raise ContractError(f"{where}.{package}: {path!r} must be {MODELS_DIR}/<sha256>/<name>.mlpackage")
    for package, path in (model.get("compiled") or {}).items():
        try:
            safe_container_path(path)
        except ContractError as err:
            raise ContractError(f"{where}.compiled.{package}: {err}") from None
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != COMPILED_DIR or parts[3] != f"{package}.mlmodelc":
            raise ContractError(f"{where}.compiled.{package}: {path!r} must be "
                                f"{COMPILED_DIR}/<run scope>/<sha256>/{package}.mlmodelc")
    for number, item in enumerate(model["inputs"]):
        path = item["path"]
        try:
            safe_container_path(path)
        except ContractError as err:
            raise ContractError(f"{where}.inputs[{number}].path: {err}") from None
        if path.split("/")[0] != INPUTS_DIR or not path.endswith(".f32"):
            raise ContractError(f"{where}.inputs[{number}].path: {path!r} must be {INPUTS_DIR}/<sha256>.f32")


def model_io(model: Mapping[str, Any]) -> dict[str, str]:
    """The feature names a job's model entry resolves to (defaults filled in), as the runner reads them."""
    return {**DEFAULT_IO, **dict(model.get("io") or {})}


def build_job(
    *,
    job_id: str,
    models: Sequence[Mapping[str, Any]] = (),
    steps: Sequence[tuple[str, str] | Mapping[str, str]] = (),
    mode: str = "measure",
    warmup: int = 3,
    repeats: int = 5,
    compute_plan: bool = True,
    created_at: str | None = None,
) -> dict:
    """Build and validate a job.json payload (schema + schema_version first).

    `models`: entries as in the contract — {variant_id, encoder, decoder, image_size, decode, inputs, [io],
    [decoder_length]}; use `model_entry(...)` to make them from content hashes.
    `steps`: (variant_id, compute_unit) pairs or {variant_id, compute_unit} dicts, in measuring order.
    """
    from bench.store.environment import now_iso

    payload = {
        "schema": JOB_KIND,
        "schema_version": JOB_VERSION,
        "job_id": job_id,
        "created_at": created_at or now_iso(),
        "mode": mode,
        "warmup": warmup,
        "repeats": repeats,
        "compute_plan": compute_plan,
        "models": [dict(model) for model in models],
        "steps": [_step_dict(step) for step in steps],
    }
    return validate_job(payload, source=f"job {job_id!r}")


def status_job(job_id: str, *, created_at: str | None = None) -> dict:
    """A "status" job: the runner only records device conditions (thermal state, battery), then DONE."""
    return build_job(job_id=job_id, mode="status", warmup=0, repeats=0, compute_plan=False, created_at=created_at)


def model_entry(
    *,
    variant_id: str,
    encoder_sha256: str,
    decoder_sha256: str,
    image_size: int,
    decode: Mapping[str, int],
    inputs: Sequence[tuple[str, str]],
    io: Mapping[str, str] | None = None,
    decoder_length: int | None = None,
    compile_scope: str | None = None,
    decoding: str | None = None,
) -> dict:
    """One job model entry from content hashes; `inputs` are (image_id, sha256 of the .f32 bytes) pairs.

    `compile_scope` (a run id): the runner compiles each package once per device for that scope and reuses the
    compiled model in later jobs of the same scope (`compiled`); None compiles in every job, as before."""
    entry: dict[str, Any] = {
        "variant_id": variant_id,
        "encoder": model_package_path(encoder_sha256, "encoder"),
        "decoder": model_package_path(decoder_sha256, "decoder"),
        "image_size": image_size,
        "decode": {key: decode[key] for key in ("bos_id", "eos_id", "pad_id", "max_length")},
        "inputs": [
            {"image_id": image_id, "path": input_path(sha), "shape": [1, 3, image_size, image_size]}
            for image_id, sha in inputs
        ],
    }
    if io:
        entry["io"] = dict(io)
    if decoder_length is not None:
        entry["decoder_length"] = decoder_length
    if compile_scope is not None:
        entry["compiled"] = {"encoder": compiled_model_path(compile_scope, encoder_sha256, "encoder"),
                             "decoder": compiled_model_path(compile_scope, decoder_sha256, "decoder")}
    if decoding is not None and decoding != "recompute":  # the default stays implicit: older runners read the job
        entry["decoding"] = decoding
    return entry


def _step_dict(step: tuple[str, str] | Mapping[str, str]) -> dict[str, str]:
    if isinstance(step, Mapping):
        return {"variant_id": step.get("variant_id"), "compute_unit": step.get("compute_unit")}
    if isinstance(step, (tuple, list)) and len(step) == 2:
        return {"variant_id": step[0], "compute_unit": step[1]}
    raise ContractError(f"a job step must be (variant_id, compute_unit), got {step!r}")


# --------------------------------------------------------------------------------------------------- results


def validate_result(
    data: bytes | str | dict | Path,
    *,
    max_bytes: int = MAX_RESULT_BYTES,
    job: Mapping[str, Any] | None = None,
    job_id: str | None = None,
    source: str | None = None,
) -> dict:
    """Check a result.json / result.partial.json pulled from a device; return it as a dict.

    With `job` (the job.json dict that was deployed) the result must answer it: same job_id, steps in the job's
    order (a prefix unless complete), image ids and warm-up/sample counts as asked. `job_id` alone checks the id.
    """
    result, label = _load(data, source=source, default_source=RESULT_FILE, max_bytes=max_bytes)
    result = _check_kind_and_version(result, RESULT_KIND, label)
    _check_schema(result, "result", label)
    expected_id = job["job_id"] if job is not None else job_id
    if expected_id is not None and result["job_id"] != expected_id:
        raise ContractError(f"{label}: job_id: {result['job_id']!r} does not match the job sent ({expected_id!r})")
    _check_result_semantics(result, label)
    if job is not None:
        _check_result_answers_job(result, job, label)
    return result


def _check_result_semantics(result: dict, label: str) -> None:
    if result["status"] == "failed" and not result["error"]:
        raise ContractError(f"{label}: error: a failed result must say why")
    if result["status"] == "complete" and result["finished_at"] is None:
        raise ContractError(f"{label}: finished_at: a complete result must say when it finished")
    reused = set()
    for index, item in enumerate(result["compiles"]):
        if item.get("reused"):
            if item["compile_ns"] is not None or item.get("error"):
                raise ContractError(f"{label}: compiles[{index}]: a reused compiled model has no compile time or "
                                    "compile error")
            reused.add((item["variant_id"], item["package"]))
    for index, step in enumerate(result["steps"]):
        where = f"{label}: steps[{index}]"
        if step["error"] is None:
            for key in ("cold_load_ns", "warm_load_ns"):
                for package in PACKAGES:
                    # A package compiled by an earlier job of the run had its cold load measured there.
                    if step[key][package] is None and not (key == "cold_load_ns"
                                                           and (step["variant_id"], package) in reused):
                        raise ContractError(f"{where}.{key}.{package}: missing although the step has no error")
        for group in ("warmup", "samples"):
            for number, sample in enumerate(step[group]):
                _check_sample(sample, f"{where}.{group}[{number}]")
            _check_sample_clock(step[group], f"{where}.{group}")


def _check_sample_clock(samples: list[dict], where: str) -> None:
    for number in range(1, len(samples)):
        if samples[number]["t_ns"] < samples[number - 1]["t_ns"]:
            raise ContractError(f"{where}[{number}].t_ns: earlier than the sample before it (the clock is monotonic)")


def _check_sample(sample: dict, where: str) -> None:
    if len(sample["decoder_ns"]) != len(sample["tokens"]):
        raise ContractError(
            f"{where}.tokens: {len(sample['tokens'])} tokens but {len(sample['decoder_ns'])} decoder steps "
            "(each decoder step yields one token)"
        )
    state = sample.get("state_ns") or 0
    parts = sample["encoder_ns"] + state + sum(sample["decoder_ns"])
    if sample["total_ns"] < parts:
        named = "encoder_ns + state_ns + sum(decoder_ns)" if state else "encoder_ns + sum(decoder_ns)"
        raise ContractError(f"{where}.total_ns: {sample['total_ns']} is less than {named} = {parts}")


def _check_result_answers_job(result: dict, job: Mapping[str, Any], label: str) -> None:
    job_steps = [(step["variant_id"], step["compute_unit"]) for step in job["steps"]]
    got_steps = [(step["variant_id"], step["compute_unit"]) for step in result["steps"]]
    if got_steps != job_steps[: len(got_steps)]:
        first = next(i for i, pair in enumerate(got_steps) if i >= len(job_steps) or pair != job_steps[i])
        expected = job_steps[first] if first < len(job_steps) else "no further step"
        raise ContractError(f"{label}: steps[{first}]: {got_steps[first]} does not follow the job's order (expected {expected})")
    if result["status"] == "complete" and len(got_steps) != len(job_steps):
        raise ContractError(f"{label}: steps: complete result has {len(got_steps)} of the job's {len(job_steps)} steps")
    images = {model["variant_id"]: [item["image_id"] for item in model["inputs"]] for model in job["models"]}
    for index, step in enumerate(result["steps"]):
        known = set(images[step["variant_id"]])
        for group in ("warmup", "samples"):
            for number, sample in enumerate(step[group]):
                if sample["image_id"] not in known:
                    raise ContractError(
                        f"{label}: steps[{index}].{group}[{number}].image_id: {sample['image_id']!r} is not an input of the job"
                    )
        if step["error"] is None and result["status"] != "failed":
            expected_samples = job["repeats"] * len(images[step["variant_id"]])
            if len(step["samples"]) != expected_samples:
                raise ContractError(
                    f"{label}: steps[{index}].samples: {len(step['samples'])} samples, the job asked for "
                    f"{expected_samples} ({job['repeats']} repeats × {len(known)} inputs)"
                )
            if len(step["warmup"]) != job["warmup"]:
                raise ContractError(
                    f"{label}: steps[{index}].warmup: {len(step['warmup'])} warm-up samples, the job asked for {job['warmup']}"
                )
    compiled = {(item["variant_id"], item["package"]) for item in result["compiles"]}
    keeps = {model["variant_id"]: bool(model.get("compiled")) for model in job["models"]}
    for item in result["compiles"]:
        if item["variant_id"] not in images:
            raise ContractError(f"{label}: compiles: {item['variant_id']!r} is not one of the job's models")
        if item.get("reused") and not keeps[item["variant_id"]]:
            raise ContractError(f"{label}: compiles: {item['variant_id']}/{item['package']} says reused, but the job "
                                "gave no compiled path to reuse")
    if result["status"] == "complete" and job["mode"] == "measure":
        missing = sorted(f"{v}/{p}" for v in images for p in PACKAGES if (v, p) not in compiled)
        if missing:
            raise ContractError(f"{label}: compiles: no compile record for {', '.join(missing)}")


def is_throttled(thermal_state: str) -> bool:
    """Whether a sample's thermal state means iOS may be throttling (serious or critical)."""
    return thermal_state in THROTTLED_STATES


# --------------------------------------------------------------------------------------------------- generic jobs


def generic_package_path(sha256: str, suffix: str = ".mlpackage") -> str:
    """`models/<content sha256>/model.mlpackage` (or `.mlmodel`): an imported model on the device."""
    if suffix not in (".mlpackage", ".mlmodel"):
        raise ContractError(f"an imported model is an .mlpackage or an .mlmodel, not {suffix!r}")
    return f"{MODELS_DIR}/{_checked_sha(sha256)}/{GENERIC_PACKAGE}{suffix}"


def generic_input_path(sha256: str) -> str:
    """`inputs/<sha256>.bin`: one input feature's little-endian bytes (dtype and shape in the job)."""
    return f"{INPUTS_DIR}/{_checked_sha(sha256)}.bin"


def generic_outputs_dir(job_id: str) -> str:
    return f"{results_dir(job_id)}/{OUTPUTS_DIR}"


_ITEM_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int32": 4, "uint8": 1}


def feature_bytes(dtype: str, shape: Sequence[int]) -> int:
    count = 1
    for dimension in shape:
        count *= int(dimension)
    return count * _ITEM_BYTES[dtype]


def build_generic_job(*, job_id: str, models: Sequence[Mapping[str, Any]], steps: Sequence[tuple[str, str]],
                      warmup: int, repeats: int, compute_plan: bool, output_cap_bytes: int,
                      created_at: str | None = None) -> dict:
    """A bench.generic-job payload, validated (schema + semantics)."""
    from bench.store.environment import now_iso

    payload = {"schema": GENERIC_JOB_KIND, "schema_version": GENERIC_JOB_VERSION, "job_id": job_id,
               "created_at": created_at or now_iso(), "warmup": warmup, "repeats": repeats,
               "compute_plan": compute_plan, "output_cap_bytes": output_cap_bytes,
               "models": [dict(model) for model in models], "steps": [_step_dict(step) for step in steps]}
    return validate_generic_job(payload, source=f"job {job_id!r}")


def validate_generic_job(data: bytes | str | dict | Path, *, source: str | None = None,
                         max_bytes: int = MAX_JOB_BYTES) -> dict:
    job, label = _load(data, source=source, default_source=JOB_FILE, max_bytes=max_bytes)
    job = _check_kind_and_version(job, GENERIC_JOB_KIND, label)
    _check_schema(job, "generic-job", label)
    models: dict[str, dict] = {}
    for index, model in enumerate(job["models"]):
        where = f"{label}: models[{index}]"
        if model["variant_id"] in models:
            raise ContractError(f"{where}.variant_id: {model['variant_id']!r} appears twice")
        models[model["variant_id"]] = model
        package = model["package"]
        safe_container_path(package)
        if package.split("/")[0] != MODELS_DIR or not package.endswith((".mlpackage", ".mlmodel")):
            raise ContractError(f"{where}.package: {package!r} must be {MODELS_DIR}/<sha256>/<name>.mlpackage "
                                "(or .mlmodel)")
        seen: set[str] = set()
        names = None
        for number, item in enumerate(model["inputs"]):
            if item["input_id"] in seen:
                raise ContractError(f"{where}.inputs[{number}].input_id: {item['input_id']!r} appears twice")
            seen.add(item["input_id"])
            features = [f["name"] for f in item["features"]]
            if names is not None and features != names:
                raise ContractError(f"{where}.inputs[{number}].features: {features} differ from the first "
                                    f"input's {names} (every input feeds the same features)")
            names = features
            for feature in item["features"]:
                safe_container_path(feature["path"])
                if feature["path"].split("/")[0] != INPUTS_DIR:
                    raise ContractError(f"{where}.inputs[{number}]: {feature['path']!r} must be under {INPUTS_DIR}/")
                if feature["kind"] == "image" and (feature["dtype"] != "uint8" or len(feature["shape"]) != 3
                                                   or feature["shape"][2] != 3):
                    raise ContractError(f"{where}.inputs[{number}].{feature['name']}: an image is uint8 [H, W, 3]")
    for index, step in enumerate(job["steps"]):
        if step["variant_id"] not in models:
            raise ContractError(f"{label}: steps[{index}].variant_id: {step['variant_id']!r} is not one of the "
                                f"job's models ({', '.join(sorted(models))})")
    unused = sorted(set(models) - {step["variant_id"] for step in job["steps"]})
    if unused:
        raise ContractError(f"{label}: models: {', '.join(unused)} not measured by any step")
    return job


def validate_generic_result(data: bytes | str | dict | Path, *, job: Mapping[str, Any],
                            max_bytes: int = MAX_RESULT_BYTES, source: str | None = None) -> dict:
    """A generic result.json pulled from a device, checked against the job it answers: steps in the job's order,
    the samples and outputs asked for, output files inside the job's outputs folder and within the cap."""
    result, label = _load(data, source=source, default_source=RESULT_FILE, max_bytes=max_bytes)
    result = _check_kind_and_version(result, GENERIC_RESULT_KIND, label)
    _check_schema(result, "generic-result", label)
    if result["job_id"] != job["job_id"]:
        raise ContractError(f"{label}: job_id: {result['job_id']!r} does not match the job sent ({job['job_id']!r})")
    if result["status"] == "failed" and not result["error"]:
        raise ContractError(f"{label}: error: a failed result must say why")
    if result["status"] == "complete" and result["finished_at"] is None:
        raise ContractError(f"{label}: finished_at: a complete result must say when it finished")
    job_steps = [(s["variant_id"], s["compute_unit"]) for s in job["steps"]]
    got = [(s["variant_id"], s["compute_unit"]) for s in result["steps"]]
    if got != job_steps[: len(got)] or (result["status"] == "complete" and len(got) != len(job_steps)):
        raise ContractError(f"{label}: steps: {got} do not answer the job's steps {job_steps}")
    models = {m["variant_id"]: m for m in job["models"]}
    outputs_dir = generic_outputs_dir(job["job_id"]) + "/"
    for index, step in enumerate(result["steps"]):
        where = f"{label}: steps[{index}]"
        model = models[step["variant_id"]]
        inputs = {item["input_id"] for item in model["inputs"]}
        for group in ("warmup", "samples"):
            for number, sample in enumerate(step[group]):
                if sample["input_id"] not in inputs:
                    raise ContractError(f"{where}.{group}[{number}].input_id: {sample['input_id']!r} is not an input "
                                        "of the job")
            _check_sample_clock(step[group], f"{where}.{group}")
        if step["error"] is None and result["status"] != "failed":
            if len(step["samples"]) != job["repeats"] * len(inputs):
                raise ContractError(f"{where}.samples: {len(step['samples'])} samples, the job asked for "
                                    f"{job['repeats'] * len(inputs)}")
            if len(step["warmup"]) != job["warmup"]:
                raise ContractError(f"{where}.warmup: {len(step['warmup'])} warm-up samples, the job asked for "
                                    f"{job['warmup']}")
        total = 0
        for number, output in enumerate(step["outputs"]):
            try:
                safe_container_path(output["path"])
            except ContractError as err:
                raise ContractError(f"{where}.outputs[{number}].path: {err}") from None
            if not output["path"].startswith(outputs_dir) or output["input_id"] not in inputs:
                raise ContractError(f"{where}.outputs[{number}]: {output['path']!r} is not an output of this job")
            if output["bytes"] != feature_bytes(output["dtype"], output["shape"]):
                raise ContractError(f"{where}.outputs[{number}].bytes: {output['bytes']} for {output['dtype']} "
                                    f"{output['shape']}")
            total += output["bytes"]
        if total > job["output_cap_bytes"]:
            raise ContractError(f"{where}.outputs: {total} bytes, over the job's cap of {job['output_cap_bytes']}")
        if step["outputs"] and not model["save_outputs"]:
            raise ContractError(f"{where}.outputs: the job did not ask for outputs")
    return result
