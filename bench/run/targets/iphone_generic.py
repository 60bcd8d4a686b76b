"""Imported models on an iPhone: one round's generic steps as one `bench.generic-job` (bench.deploy.generic), and
the runner's result back as per-step results in the runner's sample shape (`total_ns` = one prediction), with the
outputs of the fixed input set (round 0) as arrays for the run to store (bench.run.generic)."""

from __future__ import annotations

import time
from typing import Any

from bench.errors import BenchError, InputError
from bench.run.generic import GenericSettings, function_of, planned_inputs
from bench.run.targets.base import RoundRequest, StepResult
from bench.store.environment import now_iso

_WIRE_DTYPES = {"float32": "float32", "float16": "float16", "float64": "float64", "int32": "int32", "uint8": "uint8"}


def generic_spec(request: RoundRequest, job_id: str | None = None):
    """(GenericJobSpec, {variant_id: (content sha, package path)}, {(variant_id, unit): job key}, functions)."""
    from bench.deploy.generic import Feature, GenericJobSpec, GenericModelSpec

    settings = request.generic or GenericSettings()
    models, packages, functions, seen = [], {}, {}, set()
    for step in request.steps:
        variant = step.variant
        if variant.variant_id in seen:
            continue
        seen.add(variant.variant_id)
        manifest = variant.source
        function, io = function_of(manifest["interface"], settings.function)
        functions[variant.variant_id] = function
        inputs = []
        for item in planned_inputs(variant, settings):
            features = []
            for name, array in item.features.items():
                kind = next(f["kind"] for f in io["inputs"] if f["name"] == name)
                dtype = _WIRE_DTYPES.get(str(array.dtype))
                if dtype is None:
                    raise InputError(f"input {name!r} of {variant.name} is {array.dtype}, which the iPhone runner "
                                     f"cannot feed ({', '.join(_WIRE_DTYPES)})")
                features.append(Feature(name, kind, dtype, tuple(int(d) for d in array.shape),
                                        array.astype(array.dtype.newbyteorder("<")).tobytes()))
            inputs.append((item.input_id, tuple(features)))
        # functionName only for packages that declare functions; a single-function model's is implicit ("main")
        declared = len(manifest["interface"]["functions"]) > 1 or function != "main"
        models.append(GenericModelSpec(variant.variant_id, tuple(inputs), function=function if declared else None,
                                       stateful=bool(io["states"]), save_outputs=request.round == 0))
        packages[variant.variant_id] = (manifest["content_sha256"],
                                        variant.path / manifest["package"]["path"])
    spec = GenericJobSpec(models=tuple(models), steps=tuple((s.variant.variant_id, s.compute_unit)
                                                            for s in request.steps),
                          warmup=request.warmup, repeats=request.repeats, compute_plan=request.compute_plan,
                          output_cap_bytes=settings.output_cap_bytes, job_id=job_id)
    keys = {(s.variant.variant_id, s.compute_unit): s.job_key for s in request.steps}
    return spec, packages, keys, functions


def run_generic_round(target, request: RoundRequest):
    """Deploy and run one generic job on `target`'s phone; yields a StepResult per step."""
    from bench.deploy import generic
    from bench.deploy.logs import JobLog

    started, clock = now_iso(), time.perf_counter()
    try:
        spec, packages, keys, functions = generic_spec(request)
    except BenchError as err:  # inputs that cannot be made or fed: every step of the job says why, in one line
        for step in request.steps:
            yield StepResult(step.job_key, error=f"{type(err).__name__}: {err}", started_at=started,
                             finished_at=now_iso())
        return
    job_id = generic.deploy_job(target.udid, spec, packages)
    target.last_log = log = JobLog(job_id)
    result, outputs = generic.run_job(target.udid, job_id, timeout_s=target.timeout_for(request), on_log=log.add,
                                      poll_s=target._poll_s)
    note = target.save_log(log)
    finished, elapsed = now_iso(), time.perf_counter() - clock
    compiles = {c["variant_id"]: c for c in result["compiles"]}
    reported = set()
    for step in result["steps"]:
        key = keys.get((step["variant_id"], step["compute_unit"]))
        if key is None:
            continue
        reported.add(key)
        if step["error"]:
            yield StepResult(key, error=f"{step['error']} ({note})", started_at=started, finished_at=finished)
            continue
        arrays = {(o["input_id"], o["name"]): _array(outputs[o["path"]], o) for o in step["outputs"]}
        yield StepResult(
            key, samples=[_sample(s) for s in step["samples"]], warmup=[_sample(s) for s in step["warmup"]],
            load={"compile_ns": {"model": compiles.get(step["variant_id"], {}).get("compile_ns")},
                  "cold_load_ns": {"model": step["cold_load_ns"]}, "warm_load_ns": {"model": step["warm_load_ns"]},
                  "first_prediction_ns": step["first_prediction_ns"]},
            compute_plan=step["compute_plan"], outputs=arrays or None, outputs_error=step["outputs_error"],
            started_at=started, finished_at=finished, elapsed_s=elapsed / max(1, len(keys)),
            extra_conditions={"device_end": result["device"], "runner_version": result["runner_version"],
                              "runner_job_id": result["job_id"], "function": functions[step["variant_id"]],
                              "compute_plan_error": step.get("compute_plan_error"),
                              "inputs": {"count": len(spec.models[0].inputs) if spec.models else 0}})
    for key in keys.values():
        if key not in reported:
            reason = result.get("error") or f"runner result status {result.get('status')!r} without this step"
            yield StepResult(key, error=f"{reason} ({note})", started_at=started, finished_at=finished)


def _sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The runner's generic sample in the captioner samples' shape: one prediction is the whole latency."""
    return {"image_id": sample["input_id"], "repeat": sample["repeat"], "encoder_ns": None, "decoder_ns": [],
            "total_ns": sample["predict_ns"], "thermal_state": sample["thermal_state"], "t_ns": sample["t_ns"],
            "tokens": []}


def _array(data: bytes, output: dict[str, Any]):
    import numpy as np

    codes = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int32": "<i4"}
    return np.frombuffer(data, dtype=codes[output["dtype"]]).reshape(output["shape"]).copy()
