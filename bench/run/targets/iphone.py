"""`iphone`: Core ML on a real device, driven through the deployment layer's narrow API (bench/deploy/api.py).

One round = one runner job: every step (variant, compute unit) of the round in the host's randomised order, over the
same preprocessed images. The deployment layer pushes content-addressed packages (an unchanged variant is never sent
again), launches the runner, waits for DONE and validates result.json; this module only maps a round onto a job and
the runner's result back onto per-step results. Each device gets its own worker thread (devices run in parallel).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.errors import DeviceError
from bench.run.targets.base import (
    COMPUTE_UNITS, Conditions, Interrupted, RoundRequest, StepResult, variant_decoding,
)
from bench.store.environment import now_iso

# Failures of transport or of a runner process: worth retrying with backoff. The others (not paired, Developer Mode
# off, no tunnel, runner not installed, invalid result) need a person, so retrying only wastes the night.
TRANSIENT_DEVICE_ERRORS = frozenset({"PushFailed", "LaunchFailed", "RunnerTimeout", "RunnerCrashed", "DeviceNotFound",
                                     "UsbmuxUnavailable"})


def is_transient(err: BaseException) -> bool:
    """A DeviceError marked transient (attribute `transient`), or one of the transport failures above."""
    if not isinstance(err, DeviceError):
        return False
    marked = getattr(err, "transient", None)
    if marked is not None:
        return bool(marked)
    return any(cls.__name__ in TRANSIENT_DEVICE_ERRORS for cls in type(err).__mro__)


def _default_preprocess(images: list, size: int, mode: str, variant=None):
    """Pixel values exactly as the variant's model was trained (its manifest's io.preprocessing: mean, std,
    resampling), else as the built-in captioner's; the runner gets ready tensors and never resizes."""
    from bench.train.captioner import Preprocessing, preprocess_images

    recorded = ((getattr(variant.source, "io", None) or {}).get("preprocessing") if variant is not None else None)
    if recorded:
        fields = {k: recorded[k] for k in ("mean", "std", "resample", "rescale_factor", "crop_fraction")
                  if k in recorded}
        prep = Preprocessing(image_size=size, **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
        return preprocess_images(images, prep, size=size, mode=mode)
    from bench.paths import BUILTIN_CAPTIONER_DIR
    from bench.train.captioner import load_captioner

    global _PREPROCESSOR
    with _PREPROCESSOR_LOCK:  # one worker thread per iPhone: load the captioner once, not once per device
        if _PREPROCESSOR is None:
            _PREPROCESSOR = load_captioner(BUILTIN_CAPTIONER_DIR)
    return _PREPROCESSOR.preprocess(images, size=size, mode=mode)


_PREPROCESSOR = None
_PREPROCESSOR_LOCK = threading.Lock()


def _preparation(variant) -> tuple[int, str, float]:
    """What makes a variant's input tensor differ from another's: size, resize mode, crop fraction."""
    recorded = (getattr(variant.source, "io", None) or {}).get("preprocessing") or {}
    return (int(variant.image_size or 384), getattr(variant.source, "resize", None) or "resize",
            float(recorded.get("crop_fraction", 1.0)))


def _preparation_label(preparation: tuple[int, str, float]) -> str:
    size, mode, fraction = preparation
    if mode == "resize":
        return str(size)
    return f"{size}-crop" if fraction == 1.0 else f"{size}-crop{fraction:g}"

# The default runner timeout of a job is a generous budget, not a prediction: roughly ten times what a recent
# iPhone needs on its slowest compute unit, so only a hung or crashed runner ever reaches it, while a 20-step round
# of fp32 BLIP (about 1 GB) still gets the hour it may need. run.yaml `runner_timeout_s` / `--runner-timeout` fix it.
TIMEOUT_FLOOR_S = 300.0  # launch, the first compile, Core ML's first device specialisation
LOAD_S_PER_GB = 300.0  # per step: compile + cold load + warm load, per GB of the variant's packages
CAPTION_S = 2.0  # per caption (warm-up or sample) of a small model
CAPTION_S_PER_GB = 20.0  # … and per GB of the variant's packages


def runner_timeout(request: RoundRequest, sizes: dict[str, int]) -> float:
    """Seconds to wait for the runner's DONE on one round: floor + per step, load and captions scaled by the size
    of that step's variant (`sizes`: variant_id -> bytes of its encoder and decoder packages)."""
    captions = request.warmup + request.repeats * len(request.images)
    total = TIMEOUT_FLOOR_S
    for step in request.steps:
        gigabytes = sizes.get(step.variant.variant_id, 0) / 1e9
        total += LOAD_S_PER_GB * gigabytes + captions * (CAPTION_S + CAPTION_S_PER_GB * gigabytes)
    return round(total)


def package_bytes(variant_dir: Path | None) -> int:
    """Bytes of a variant's packages on disk (encoder and decoder, or an imported model's; 0 when it has none)."""
    if variant_dir is None:
        return 0
    return sum(path.stat().st_size for role in ("encoder", "decoder", "model")
               for path in (Path(variant_dir) / f"{role}.mlpackage").rglob("*") if path.is_file())


class IPhoneTarget:
    kind = "iphone"
    label = "Core ML on iPhone"
    compute_units = COMPUTE_UNITS
    parallel_safe = True

    def __init__(self, udid: str, *, name: str | None = None, model: str | None = None, os_build: str | None = None,
                 api: Any = None, timeout_s: float | None = None, poll_s: float = 1.0,
                 preprocess: Callable = _default_preprocess, os_version: str | None = None,
                 os_source: str = "the device"):
        """`timeout_s`: seconds to wait for the runner per job; None derives it from the job (runner_timeout).
        `os_version`: the iOS it runs, as known before the run (`os_source`: "the device" over lockdown, or
        "devices.yaml"); the plan leaves out variants that need a newer one (bench/run/os_support.py)."""
        if api is None:
            from bench.deploy import api as deploy_api

            api = deploy_api
        self.udid = udid
        self.id = f"iphone-{udid}"
        self.name = name or udid
        self.model = model
        self.os_build = os_build
        self.os_version, self.os_source = os_version, os_source
        self._api = api
        self._timeout_s = timeout_s
        self._poll_s = poll_s
        self._preprocess = preprocess
        self._inputs: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        self._log_dir: Path | None = None
        self.last_log = None  # the JobLog of the latest round

    @property
    def log_lines(self) -> list[str]:
        return self.last_log.lines if self.last_log is not None else []

    def keep_logs_in(self, folder: Path) -> None:
        """Store each job's runner log lines as <folder>/<runner job id>.log (the run's jobs/ folder)."""
        self._log_dir = Path(folder)

    def conditions(self) -> Conditions:
        status = self._api.device_status(self.udid, timeout_s=min(self._timeout_s or 120.0, 120.0),
                                         poll_s=self._poll_s)
        return self.conditions_from(status)

    def conditions_from(self, status: Any) -> Conditions:
        """Conditions from a device status (here, or sent back by the lab host holding the phone)."""
        battery = _get(status, "battery") or {}
        conditions = Conditions(
            device_model=_get(status, "model_identifier") or _get(status, "model") or self.model,
            os_version=_get(status, "os_version"),
            os_build=_get(status, "os_build") or self.os_build,
            charging=_first(_get(status, "charging"), _get(battery, "charging"), _get(battery, "is_charging")),
            battery_level=_first(_get(status, "battery_level"), _get(battery, "level")),
            battery_temperature_c=_first(_get(status, "battery_temperature_c"), _get(battery, "temperature_c")),
            low_power_mode=_get(status, "low_power_mode"),
            thermal_state=_get(status, "thermal_state"),
        )
        self.model = self.model or conditions.device_model
        self.os_build = self.os_build or conditions.os_build
        return conditions

    def close(self) -> None:
        self._inputs.clear()

    def run_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        """Built captioners as one runner job; imported models (if any) as one generic job after it."""
        import dataclasses

        from bench.run.generic import is_imported

        imported = [step for step in request.steps if is_imported(step.variant)]
        built = [step for step in request.steps if not is_imported(step.variant)]
        if built:
            yield from self._captioner_round(dataclasses.replace(request, steps=built), should_stop)
        if imported:
            if should_stop():
                raise Interrupted()
            from bench.run.targets.iphone_generic import run_generic_round

            yield from run_generic_round(self, dataclasses.replace(request, steps=imported))

    def _captioner_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        if should_stop():
            raise Interrupted()
        from bench.deploy.logs import JobLog

        spec, variant_dirs, inputs, keys = self.job_for(request)
        started, clock = now_iso(), time.perf_counter()
        job_id = self._api.deploy_job(self.udid, spec, variant_dirs, inputs)
        self.last_log = log = JobLog(job_id)
        try:
            result = self._api.run_job(self.udid, job_id, timeout_s=self.timeout_for(request), on_log=log.add,
                                       poll_s=self._poll_s)
        except DeviceError as err:
            if not log.lines:  # never launched, or silent: no log to point at
                raise
            where = self.save_log(log)
            raise (err.with_detail(where) if hasattr(err, "with_detail") else err) from None
        where = self.save_log(log)
        finished, elapsed = now_iso(), time.perf_counter() - clock
        yield from self.step_results(result, keys, started, finished, elapsed, log_note=where)

    def timeout_for(self, request: RoundRequest) -> float:
        if self._timeout_s is not None:
            return self._timeout_s
        for step in request.steps:
            if step.variant.variant_id not in self._sizes:
                self._sizes[step.variant.variant_id] = package_bytes(step.variant.path)
        return runner_timeout(request, self._sizes)

    def save_log(self, log) -> str:
        """Store the job's runner log with the run; the words that point a failure at it."""
        last = log.last_line()
        said = f", last line: {last!r}" if last else ", no lines"
        if self._log_dir is None:
            return f"runner log of job {log.job_id}{said}"
        try:
            path = log.save(self._log_dir)
        except OSError as err:
            return f"runner log of job {log.job_id} not stored ({err.strerror or err}){said}"
        return f"runner log: {path}{said}"

    def job_for(self, request: RoundRequest):
        """The runner job of a round: (spec, variant directories, input tensors, (variant, unit) -> job key)."""
        from bench.deploy import api as deploy_api

        # Variants of one round may take their images at other sizes, or cropped instead of resized: one input
        # tensor per distinct preprocessing (named after it when there are several).
        preparations = {_preparation(step.variant) for step in request.steps}
        inputs: dict[str, Any] = {}
        models, seen = [], set()
        for step in request.steps:
            variant = step.variant
            if variant.variant_id in seen:
                continue
            seen.add(variant.variant_id)
            size = int(variant.image_size or 384)
            ids = []
            for item in request.images:
                prepared = _preparation(variant)
                key = item.image_id if len(preparations) == 1 else f"{item.image_id}@{_preparation_label(prepared)}"
                if key not in self._inputs:
                    pixels = self._preprocess([item.load()], size, prepared[1], variant)
                    array = pixels.numpy() if hasattr(pixels, "numpy") else pixels
                    self._inputs[key] = deploy_api.InputTensor(data=array.astype("<f4").tobytes(),
                                                               shape=(1, 3, size, size))
                inputs[key] = self._inputs[key]
                ids.append(key)
            models.append(deploy_api.ModelSpec(variant_id=variant.variant_id, image_size=size,
                                               decode=dict(variant.decode), inputs=tuple(ids),
                                               decoder_length=getattr(variant.source, "decoder_length", None),
                                               io=_runner_io(getattr(variant.source, "io", None)),
                                               decoding=variant_decoding(variant)))
        # Compile once per device per run: the runner keeps what it compiles under the run's scope for the next
        # rounds (docs/runner.md); a request outside a run compiles in its own job, as before.
        spec = deploy_api.JobSpec(warmup=request.warmup, repeats=request.repeats, compute_plan=request.compute_plan,
                                  steps=tuple((s.variant.variant_id, s.compute_unit) for s in request.steps),
                                  models=tuple(models), compile_scope=compile_scope(request.run_id))
        variant_dirs = {s.variant.variant_id: s.variant.path for s in request.steps}
        keys = {(s.variant.variant_id, s.compute_unit): s.job_key for s in request.steps}
        return spec, variant_dirs, inputs, keys

    def step_results(self, result: dict, keys, started, finished, elapsed, *,
                     log_note: str | None = None) -> Iterator[StepResult]:
        """One StepResult per step of the round from the runner's validated result; `log_note` (where the runner's
        log was kept) is added to every error."""
        device = result.get("device") or {}
        compiles = _compiles_by_variant(result.get("compiles") or [])
        charged: set[str] = set()  # variants whose compiles were already counted on a step of this job
        reported = set()
        for step in result.get("steps") or []:
            key = keys.get((step["variant_id"], step["compute_unit"]))
            if key is None:
                continue
            reported.add(key)
            samples = [_strip_size(s) for s in step.get("samples") or []]
            made = compiles.get(step["variant_id"], {"compile_ns": None, "compiled": 0, "reused": []})
            # The compile is counted once, on the variant's first step in this job (the one whose cold load follows
            # it): the sum of `compiles` over a run's job records is the number of compiles the devices did.
            first = step["variant_id"] not in charged
            charged.add(step["variant_id"])
            load = {"compile_ns": made["compile_ns"], "compiles": made["compiled"] if first else 0,
                    "reused_compiled": made["reused"], "cold_load_ns": step.get("cold_load_ns"),
                    "warm_load_ns": step.get("warm_load_ns"), "first_prediction_ns": step.get("first_prediction_ns")}
            error = _noted(step["error"], log_note) if step.get("error") else None
            yield StepResult(key, samples=samples, warmup=[_strip_size(s) for s in step.get("warmup") or []],
                             load=load, compute_plan=step.get("compute_plan"),
                             quality={"tokens": {s["image_id"]: s.get("tokens") for s in samples if s.get("repeat") == 0}},
                             error=error, started_at=started, finished_at=finished,
                             elapsed_s=elapsed / max(1, len(keys)),
                             extra_conditions={"device_end": device, "runner_version": result.get("runner_version"),
                                               "runner_job_id": result.get("job_id")})
        for key in keys.values():
            if key not in reported:
                reason = result.get("error") or f"runner result status {result.get('status')!r} without this step"
                yield StepResult(key, error=_noted(reason, log_note), started_at=started, finished_at=finished)


def compile_scope(run_id: str | None) -> str | None:
    """The folder name a run's compiled models live under on a phone: its id, or a hash of an id that cannot name a
    folder there."""
    if run_id is None:
        return None
    import hashlib
    import re

    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        return run_id
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:16]


def _compiles_by_variant(records: list[dict]) -> dict[str, dict]:
    """Per variant: compile_ns per package (None when reused or failed), how many packages this job compiled, and
    which it reused compiled from an earlier job of the run (result `compiles[].reused`)."""
    out: dict[str, dict] = {}
    for record in records:
        entry = out.setdefault(record["variant_id"], {"compile_ns": {}, "compiled": 0, "reused": []})
        entry["compile_ns"][record["package"]] = record["compile_ns"]
        if record.get("reused"):
            entry["reused"].append(record["package"])
        elif record["compile_ns"] is not None:
            entry["compiled"] += 1
    return out


RUNNER_IO_KEYS = ("encoder_input", "encoder_output", "decoder_input_ids", "decoder_image_embeds",
                  "decoder_attention_mask", "decoder_output", "decoder_position", "encoder_cross_keys",
                  "encoder_cross_values")



def _runner_io(io: dict | None) -> dict | None:
    """The job's `models[].io` (Core ML feature names, docs/runner.md) from a variant manifest's `io` (graph
    interfaces + preprocessing, contracts §3). Passing the manifest's io through made every real variant's job.json
    invalid ('encoder', 'decoder', 'preprocessing' are not runner keys)."""
    if not io:
        return None
    if set(io) <= set(RUNNER_IO_KEYS):
        return dict(io)  # already in the runner's terms
    encoder, decoder = io.get("encoder") or {}, io.get("decoder") or {}
    decoder_inputs = list(decoder.get("input_names") or decoder.get("inputs") or [])
    if io.get("decoding") == "kv_cache":
        keys, values = list(encoder.get("output_names") or ("cross_keys", "cross_values"))
        names = {"encoder_input": encoder.get("input"), "decoder_input_ids": "input_ids",
                 "decoder_position": "position", "encoder_cross_keys": keys, "encoder_cross_values": values,
                 "decoder_output": decoder.get("output")}
        return {key: str(value) for key, value in names.items() if value}
    names = {"encoder_input": encoder.get("input"), "encoder_output": encoder.get("output"),
             "decoder_input_ids": next((n for n in decoder_inputs if "ids" in n), None),
             "decoder_image_embeds": next((n for n in decoder_inputs if "embed" in n), None),
             "decoder_attention_mask": next((n for n in decoder_inputs if "mask" in n), None),
             "decoder_output": decoder.get("output")}
    return {key: str(value) for key, value in names.items() if value} or None


def _noted(error: str, note: str | None) -> str:
    return f"{error} ({note})" if note else error


def _strip_size(sample: dict) -> dict:
    image_id = str(sample.get("image_id", ""))
    return {**sample, "image_id": image_id.split("@", 1)[0]} if "@" in image_id else sample


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _first(*values):
    return next((value for value in values if value is not None), None)
