"""The runner stand-in's generic jobs (bench.generic-job v1): any Core ML package, as the Swift GenericJobRunner does.

Core ML's part is a scenario, as for captioner jobs (coreml_model.py):
- latency: the package's `main` placed for the step's compute unit by the phone's CoreMLRules (a package without a
  readable `main`, e.g. a multi-function package, gets size-based latencies and `compute_plan_error`);
- outputs: every output the chosen function declares (name, shape, dtype read from the package's own description)
  equals an exact answer that depends only on the input bytes and the output name — so every variant of a family
  "computes the same function" — plus the phone's `output_drift[compute unit]` of relative noise. The host is never
  told the drift: it must recover it by comparing outputs with the family's reference on cpuOnly.
Files: results/<job>/outputs/<step index>/<input_id>__<name>.bin (little-endian), listed with size and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import numpy as np

from .coreml_model import ModelUnreadable, _proto_modules, place, read_program

_DTYPES = {65568: ("float32", "<f4"), 65552: ("float16", "<f2"), 65600: ("float64", "<f8"), 131104: ("int32", "<i4")}


def _declared_outputs(package: Path, function: str | None) -> list[tuple[str, list[int], str, str]]:
    Model_pb2, _ = _proto_modules()
    spec = Model_pb2.Model()
    spec_file = package if package.is_file() else package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.ParseFromString(spec_file.read_bytes())
    description = spec.description
    outputs = description.output
    if description.functions:
        wanted = function or description.defaultFunctionName
        outputs = next(f.output for f in description.functions if f.name == wanted)
    declared = []
    for output in outputs:
        array = output.type.multiArrayType
        name, code = _DTYPES.get(array.dataType, ("float32", "<f4"))
        declared.append((output.name, [max(int(d), 1) for d in array.shape], name, code))
    return declared


def _answer(inputs: bytes, name: str, shape: list[int], drift: float, unit: str):
    key = hashlib.sha256(inputs).digest()
    truth = np.random.default_rng(int.from_bytes(hashlib.sha256(key + name.encode()).digest()[:8], "little"))
    exact = truth.standard_normal(shape)
    noise = np.random.default_rng(int.from_bytes(hashlib.sha256(key + name.encode() + unit.encode()).digest()[:8],
                                                 "little")).standard_normal(shape)
    return exact + drift * noise * np.linalg.norm(exact) / max(float(np.linalg.norm(noise)), 1e-12)


async def measure_generic(device, job: dict, bench: Path, results: Path, log, make_result, finish, seeded) -> None:
    steps_out, compiles = [], []
    models = {m["variant_id"]: m for m in job["models"]}
    for model in job["models"]:
        package = bench / model["package"]
        ok = package.exists()
        if ok:
            device.compiled_packages.append(model["package"])
        compiles.append({"variant_id": model["variant_id"], "compile_ns": 40_000_000 if ok else None,
                         "error": None if ok else f"missing on device: {package.name}"})
    clock = 0
    for index, step in enumerate(job["steps"]):
        model = models[step["variant_id"]]
        unit = step["compute_unit"]
        log(f"step {model['variant_id']} {unit}")
        await asyncio.sleep(device.faults.runner_seconds)
        package = bench / model["package"]
        missing = [f["path"] for item in model["inputs"] for f in item["features"] if not (bench / f["path"]).is_file()]
        if not package.exists() or missing:
            steps_out.append(_step(step, f"missing on device: {(missing or [package.name])[0]}"))
            continue
        try:
            placement, plan_error = place(read_program(package), unit, device.coreml), None
        except ModelUnreadable as err:
            placement, plan_error = None, f"MLComputePlan failed: {err}"
        base_ns = placement.time_ns if placement is not None else 50_000 + package.stat().st_size

        def sample(item, repeat):
            nonlocal clock
            clock += 1
            rng = seeded(device.udid, model["variant_id"], unit, item["input_id"], repeat)
            return {"input_id": item["input_id"], "repeat": repeat, "predict_ns": int(base_ns * rng.uniform(0.97, 1.05)),
                    "thermal_state": "fair" if clock % 7 == 6 else "nominal", "t_ns": clock * 10_000_000}

        out = _step(step, None)
        out["cold_load_ns"], out["warm_load_ns"] = 90_000_000, 9_000_000
        out["warmup"] = [sample(model["inputs"][0], r) for r in range(job["warmup"])]
        out["samples"] = [sample(item, r) for r in range(job["repeats"]) for item in model["inputs"]]
        out["first_prediction_ns"] = out["warmup"][0]["predict_ns"] if out["warmup"] else out["samples"][0]["predict_ns"]
        if job["compute_plan"]:
            if placement is not None:
                out["compute_plan"] = {"cost_kind": "estimate", "model": placement.plan()}
            else:
                out["compute_plan_error"] = plan_error
        if model["save_outputs"]:
            out["outputs"], out["outputs_error"] = _outputs(device, job, model, bench, results, index, unit)
        steps_out.append(out)
    finish(results, {**make_result(device, job["job_id"], "complete", None, [], []), "schema": "bench.generic-result",
                     "compiles": compiles, "steps": steps_out})
    log("done")


def _outputs(device, job, model, bench: Path, results: Path, index: int, unit: str):
    declared = _declared_outputs(bench / model["package"], model["function"])
    drift = device.output_drift.get(unit, 0.0)
    planned = []
    for item in model["inputs"]:
        given = b"".join((bench / f["path"]).read_bytes() for f in sorted(item["features"], key=lambda f: f["name"]))
        for name, shape, dtype, code in declared:
            planned.append((item["input_id"], name, shape, dtype, _answer(given, name, shape, drift, unit).astype(code)))
    total = sum(array.nbytes for *_, array in planned)
    if total > job["output_cap_bytes"]:
        return [], f"outputs hold {total} bytes, over the job's cap of {job['output_cap_bytes']}; none written"
    written = []
    for input_id, name, shape, dtype, array in planned:
        relative = f"results/{job['job_id']}/outputs/{index}/{input_id}__{name}.bin"
        data = array.tobytes()
        path = bench / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append({"input_id": input_id, "name": name, "dtype": dtype, "shape": shape, "path": relative,
                        "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return written, None


def _step(step: dict, error: str | None) -> dict:
    return {"variant_id": step["variant_id"], "compute_unit": step["compute_unit"], "error": error,
            "cold_load_ns": None, "warm_load_ns": None, "first_prediction_ns": None, "warmup": [], "samples": [],
            "compute_plan": None, "compute_plan_error": None, "outputs": [], "outputs_error": None}
