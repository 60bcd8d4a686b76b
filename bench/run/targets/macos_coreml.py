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

from bench.errors import BenchError, PlatformUnavailable
from bench.run.targets.base import Conditions, Interrupted, RoundRequest, StepResult
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

    def __init__(self) -> None:
        require_macos()
        self.id = "macos-coreml"
        self.name = f"{platform.node()} (Core ML, macOS {platform.mac_ver()[0]})"

    def conditions(self) -> Conditions:
        return Conditions(device_model=platform.machine(), os_version=platform.mac_ver()[0])

    def close(self) -> None:
        pass

    def run_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        import coremltools as ct

        for step in request.steps:
            if should_stop():
                raise Interrupted()
            started, clock = now_iso(), time.perf_counter()
            try:
                units = getattr(ct.ComputeUnit, _COMPUTE_UNIT_NAMES[step.compute_unit])
                begin = time.perf_counter_ns()
                encoder = ct.models.MLModel(str(step.variant.path / "encoder.mlpackage"), compute_units=units)
                decoder = ct.models.MLModel(str(step.variant.path / "decoder.mlpackage"), compute_units=units)
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

    def _pixels(self, variant, item):
        """Pixel values as the variant was built for (its manifest's preprocessing), from the built-in captioner."""
        from bench.run.targets.iphone import _default_preprocess

        size = int(variant.image_size or 384)
        array = _default_preprocess([item.load()], size, getattr(variant.source, "resize", None) or "resize", variant)
        return array.numpy() if hasattr(array, "numpy") else array

    def _predict(self, encoder, decoder, variant, pixel_values, image_id: str, repeat: int) -> dict:
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
