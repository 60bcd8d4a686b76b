"""`macos-coreml`: Core ML itself on a Mac host, through coremltools `MLModel.predict` per compute unit.

Real only on macOS: on Linux coremltools converts and compresses but cannot predict ("Model prediction is only
supported on macOS"), so constructing this target here raises PlatformUnavailable with what to use instead.
NOT verified on a Mac from this project's CI (there is none); the code follows coremltools 9's documented API and
the variant manifest's `io` description (the same loop as the runner and host-torch).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

from pathlib import Path

from bench.errors import BenchError, PlatformUnavailable
from bench.run.generic import GenericSettings, InputSet, capped, function_of, is_imported, planned_inputs
from bench.run.targets.base import Conditions, Interrupted, RoundRequest, Step, StepResult, variant_decoding
from bench.store.environment import now_iso

_COMPUTE_UNIT_NAMES = {"cpuOnly": "CPU_ONLY", "cpuAndGPU": "CPU_AND_GPU", "cpuAndNeuralEngine": "CPU_AND_NE",
                       "all": "ALL"}


def require_macos() -> None:
    if platform.system() != "Darwin":
        raise PlatformUnavailable(
            f"target macos-coreml needs macOS with Core ML (coremltools cannot predict on {platform.system()}); "
            "use --targets host-torch for host emulation or an iphone target")


class MacCoreMLTarget:
    kind = "macos-coreml"
    label = "Core ML on macOS host"
    compute_units = tuple(_COMPUTE_UNIT_NAMES)
    parallel_safe = False

    def __init__(self, core_ml: Any = None, pixels: Callable | None = None) -> None:
        """`core_ml`: what loads, compiles and predicts (default: coremltools on this Mac, CoreMLTools below).
        Tests on Linux give a stand-in for the Core ML runtime, the one thing that cannot exist there.
        `pixels(variant, image item) -> array`: the captioner's input (default: preprocessed here; a lab host gets
        them ready from the driver, bench/lab/host.py)."""
        if core_ml is None:
            require_macos()
        self.core_ml = core_ml or CoreMLTools()
        self._pixels = pixels or self._preprocessed
        self.id = "macos-coreml"
        self.os_version, self.os_source = platform.mac_ver()[0] or None, "the device"
        self.name = f"{platform.node()} (Core ML, macOS {platform.mac_ver()[0] or '?'})"

    def conditions(self) -> Conditions:
        return Conditions(device_model=platform.machine(), os_version=platform.mac_ver()[0])

    def close(self) -> None:
        pass

    def run_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        for step in request.steps:
            if should_stop():
                raise Interrupted()
            if is_imported(step.variant):
                yield self._generic_step(step, request, should_stop)
                continue
            started, clock = now_iso(), time.perf_counter()
            try:
                begin = time.perf_counter_ns()
                encoder = self.core_ml.load_package(Path(step.variant.path) / "encoder.mlpackage", step.compute_unit)
                decoder = self.core_ml.load_package(Path(step.variant.path) / "decoder.mlpackage", step.compute_unit)
                cold = time.perf_counter_ns() - begin
                pixels = {item.image_id: self._pixels(step.variant, item) for item in request.images}
                first = request.images[0].image_id
                warmup = [self._predict(encoder, decoder, step.variant, pixels[first], first, index)
                          for index in range(request.warmup)]
                samples = []
                for repeat in range(request.repeats):
                    for item in request.images:
                        if should_stop():
                            raise Interrupted()
                        samples.append(self._predict(encoder, decoder, step.variant, pixels[item.image_id],
                                                     item.image_id, repeat))
            except (BenchError, RuntimeError, OSError, ValueError) as err:
                yield StepResult(step.job_key, error=f"{type(err).__name__}: {err}", started_at=started,
                                 finished_at=now_iso(), elapsed_s=time.perf_counter() - clock)
                continue
            yield StepResult(step.job_key, samples=samples, warmup=warmup,
                             load={"compile_ns": None, "cold_load_ns": {"total": cold}, "warm_load_ns": None,
                                   "first_prediction_ns": warmup[0]["total_ns"] if warmup else None},
                             started_at=started, finished_at=now_iso(), elapsed_s=time.perf_counter() - clock)

    def _preprocessed(self, variant, item):
        """Pixel values as the variant was built for (its manifest's preprocessing), from the built-in captioner."""
        from bench.run.targets.iphone import _default_preprocess

        size = int(variant.image_size or 384)
        array = _default_preprocess([item.load()], size, getattr(variant.source, "resize", None) or "resize", variant)
        return array.numpy() if hasattr(array, "numpy") else array

    def _predict(self, encoder, decoder, variant, pixel_values, image_id: str, repeat: int) -> dict:
        if variant_decoding(variant) == "kv_cache":
            return self._predict_cached(encoder, decoder, variant, pixel_values, image_id, repeat)
        return self._predict_recomputing(encoder, decoder, variant, pixel_values, image_id, repeat)

    def _predict_cached(self, encoder, decoder, variant, pixel_values, image_id: str, repeat: int) -> dict:
        """kv_cache variants (macOS 15+): the runner's cached loop through coremltools' state API — the encoder
        once (cross-attention keys/values), `decoder.make_state()` per caption (`state_ns`), then one
        `decoder.predict(..., state=state)` per token with [[token]] at [position], read at logits[0, 0]
        (manifest io.decoder.usage). Unverified here: needs macOS."""
        import numpy as np

        io = getattr(variant.source, "io", None) or {}
        enc_io, dec_io = io.get("encoder", {}), io.get("decoder", {})
        ids_name, position_name, *cross_names = dec_io.get("input_names",
                                                           ["input_ids", "position", "cross_keys", "cross_values"])
        decode = variant.decode
        length = int(getattr(variant.source, "decoder_length", None) or decode["max_length"])
        t_start = time.perf_counter_ns()
        begin = time.perf_counter_ns()
        encoded = encoder.predict({enc_io.get("input", "pixel_values"): pixel_values})
        encoder_ns = time.perf_counter_ns() - begin
        cross = {name: encoded[name] for name in cross_names}
        begin = time.perf_counter_ns()
        state = decoder.make_state()
        state_ns = time.perf_counter_ns() - begin
        decoder_ns, tokens, token = [], [], decode["bos_id"]
        for position in range(min(length, decode["max_length"]) - 1):
            features = {ids_name: np.array([[token]], dtype=np.int32),
                        position_name: np.array([position], dtype=np.int32), **cross}
            begin = time.perf_counter_ns()
            logits = decoder.predict(features, state=state)[dec_io.get("output", "logits")]
            token = int(np.argmax(logits[0, -1]))
            decoder_ns.append(time.perf_counter_ns() - begin)
            tokens.append(token)
            if token == decode["eos_id"]:
                break
        return {"image_id": image_id, "repeat": repeat, "encoder_ns": encoder_ns, "decoder_ns": decoder_ns,
                "total_ns": time.perf_counter_ns() - t_start, "thermal_state": None, "t_ns": t_start,
                "tokens": tokens, "state_ns": state_ns}

    def _predict_recomputing(self, encoder, decoder, variant, pixel_values, image_id: str, repeat: int) -> dict:
        """Same loop as the runner: encoder once, then fixed-length decoder calls read at logits[0, t]
        (manifest io.decoder.usage). Unverified here: needs macOS."""
        import numpy as np

        io = getattr(variant.source, "io", None) or {}
        enc_io, dec_io = io.get("encoder", {}), io.get("decoder", {})
        names = dec_io.get("input_names", ["input_ids", "attention_mask", "image_embeds"])
        decode = variant.decode
        length = int(getattr(variant.source, "decoder_length", None) or decode["max_length"])
        ids = np.full((1, length), decode["pad_id"], dtype=np.int32)
        mask = np.zeros((1, length), dtype=np.int32)
        ids[0, 0], mask[0, 0] = decode["bos_id"], 1
        t_start = time.perf_counter_ns()
        begin = time.perf_counter_ns()
        embeds = encoder.predict({enc_io.get("input", "pixel_values"): pixel_values})[enc_io.get("output", "image_embeds")]
        encoder_ns = time.perf_counter_ns() - begin
        decoder_ns, tokens = [], []
        for step in range(min(length, decode["max_length"]) - 1):
            begin = time.perf_counter_ns()
            logits = decoder.predict(dict(zip(names, (ids, mask, embeds))))[dec_io.get("output", "logits")]
            token = int(np.argmax(logits[0, step]))
            decoder_ns.append(time.perf_counter_ns() - begin)
            tokens.append(token)
            if token == decode["eos_id"]:
                break
            ids[0, step + 1], mask[0, step + 1] = token, 1
        return {"image_id": image_id, "repeat": repeat, "encoder_ns": encoder_ns, "decoder_ns": decoder_ns,
                "total_ns": encoder_ns + sum(decoder_ns), "thermal_state": None, "t_ns": t_start, "tokens": tokens}

    # --- imported models (generic jobs) --------------------------------------------------------------------------
    def _generic_step(self, step: Step, request: RoundRequest, should_stop: Callable[[], bool]) -> StepResult:
        """One imported model on one compute unit: compile, cold and warm load, warm-up, then `repeats` passes over
        the fixed input set, one timed prediction each (a fresh state per prediction for stateful models); the
        outputs of the first pass are kept in round 0 (bench.run.generic)."""
        settings = request.generic or GenericSettings()
        manifest = step.variant.source
        started, clock = now_iso(), time.perf_counter()
        try:
            function, io = function_of(manifest["interface"], settings.function)
            inputs = planned_inputs(step.variant, settings)
            package = Path(step.variant.path) / manifest["package"]["path"]
            stateful = bool(io["states"])
            begin = time.perf_counter_ns()
            compiled = self.core_ml.compile(package)
            compile_ns = time.perf_counter_ns() - begin
            begin = time.perf_counter_ns()
            model = self.core_ml.load(compiled, step.compute_unit, function)
            cold_ns = time.perf_counter_ns() - begin
            begin = time.perf_counter_ns()
            model = self.core_ml.load(compiled, step.compute_unit, function)
            warm_ns = time.perf_counter_ns() - begin
            warmup = [self._timed(model, inputs[0], 0, stateful)[0] for _ in range(request.warmup)]
            samples, outputs = [], {}
            for repeat in range(request.repeats):
                for item in inputs:
                    if should_stop():
                        raise Interrupted()
                    sample, produced = self._timed(model, item, repeat, stateful)
                    samples.append(sample)
                    if repeat == 0 and step.round == 0:
                        outputs.update({(item.input_id, name): value for name, value in produced.items()})
            plan, plan_error = None, None
            if request.compute_plan:
                plan, plan_error = self._compute_plan(compiled, step.compute_unit, function)
        except (BenchError, RuntimeError, OSError, ValueError, KeyError) as err:
            return StepResult(step.job_key, error=f"{type(err).__name__}: {err}", started_at=started,
                              finished_at=now_iso(), elapsed_s=time.perf_counter() - clock)
        kept, why = None, None
        if outputs:
            try:
                kept = capped(outputs, settings.output_cap_bytes)
            except BenchError as err:
                why = str(err)
        return StepResult(step.job_key, samples=samples, warmup=warmup,
                          load={"compile_ns": {"model": compile_ns}, "cold_load_ns": {"model": cold_ns},
                                "warm_load_ns": {"model": warm_ns},
                                "first_prediction_ns": warmup[0]["total_ns"] if warmup else None},
                          compute_plan=plan, started_at=started, finished_at=now_iso(),
                          elapsed_s=time.perf_counter() - clock, outputs=kept, outputs_error=why,
                          extra_conditions={"function": function, "compute_plan_error": plan_error,
                                            "inputs": {"count": len(inputs), "seed": settings.seed,
                                                       "source": settings.source}})

    def _timed(self, model, item: InputSet, repeat: int, stateful: bool) -> tuple[dict, dict]:
        """One prediction: (the runner's sample shape, its outputs as numpy arrays)."""
        features = self.core_ml.features(model, item.features)
        state = model.make_state() if stateful else None
        t_start = time.perf_counter_ns()
        produced = model.predict(features, state=state) if stateful else model.predict(features)
        elapsed = time.perf_counter_ns() - t_start
        sample = {"image_id": item.input_id, "repeat": repeat, "encoder_ns": None, "decoder_ns": [],
                  "total_ns": elapsed, "thermal_state": self.core_ml.thermal_state(), "t_ns": t_start, "tokens": []}
        return sample, {name: _as_array(value) for name, value in produced.items()}

    def _compute_plan(self, compiled, compute_unit: str, function: str) -> tuple[dict | None, str | None]:
        try:
            return {"cost_kind": "estimate", "model": self.core_ml.compute_plan(compiled, compute_unit, function)}, None
        except (RuntimeError, OSError, ValueError, AttributeError, ImportError) as err:
            return None, f"MLComputePlan failed: {type(err).__name__}: {err}"


def _as_array(value):
    import numpy as np

    return np.asarray(value)


_DEVICE_NAMES = {"MLCPUComputeDevice": "cpu", "MLGPUComputeDevice": "gpu", "MLNeuralEngineComputeDevice": "neuralEngine"}


class CoreMLTools:
    """Core ML on this Mac through coremltools 9 (compile, load per compute unit and function, predict, compute
    plan). NOT verified from this project's CI (Linux): it follows coremltools' documented API."""

    def compile(self, package: Path):
        import coremltools as ct

        return Path(ct.utils.compile_model(str(package)))

    def load_package(self, package: Path, compute_unit: str):
        """An .mlpackage loaded for predictions with `compute_unit` (coremltools compiles it on the way)."""
        import coremltools as ct

        units = getattr(ct.ComputeUnit, _COMPUTE_UNIT_NAMES[compute_unit])
        return ct.models.MLModel(str(package), compute_units=units)

    def load(self, compiled: Path, compute_unit: str, function: str):
        import coremltools as ct

        units = getattr(ct.ComputeUnit, _COMPUTE_UNIT_NAMES[compute_unit])
        return ct.models.CompiledMLModel(str(compiled), compute_units=units, function_name=function)

    def features(self, model, arrays: dict) -> dict:
        """Images (uint8 [H, W, 3]) become PIL images, as coremltools feeds image inputs; arrays pass as they are."""
        from PIL import Image

        return {name: Image.fromarray(value) if value.dtype.kind == "u" and value.ndim == 3 and value.shape[-1] == 3
                else value for name, value in arrays.items()}

    def thermal_state(self) -> str | None:
        return None  # macOS exposes no per-process thermal state to Python; the runner records it on iPhones

    def compute_plan(self, compiled: Path, compute_unit: str, function: str) -> list[dict]:
        import coremltools as ct
        from coremltools.models.compute_plan import MLComputePlan

        units = getattr(ct.ComputeUnit, _COMPUTE_UNIT_NAMES[compute_unit])
        plan = MLComputePlan.load_from_path(path=str(compiled), compute_units=units)
        program = plan.model_structure.program
        if program is None:
            raise ValueError("not an ML program")
        ops = []
        for operation in program.functions[function].block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
            cost = plan.get_estimated_cost_for_mlprogram_operation(operation)
            ops.append({"name": operation.outputs[0].name if operation.outputs else "",
                        "type": operation.operator_name,
                        "preferred": _device(usage.preferred_compute_device) if usage else None,
                        "supported": [_device(d) for d in usage.supported_compute_devices] if usage else [],
                        "cost": float(cost.weight) if cost is not None else None})
        return ops


def _device(device) -> str:
    return _DEVICE_NAMES.get(type(device).__name__, "unknown")
