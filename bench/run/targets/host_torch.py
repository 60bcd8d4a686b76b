"""`host-torch`: HOST EMULATION (not Core ML). The variant's decompressed weights run in PyTorch on this CPU.

Why it exists: the whole pipeline (plan → measure → store → report) must run on a machine without iPhones or macOS.
What it measures: the same work the on-device runner times — the image encoder once, then a greedy decoder loop,
one fixed-length decoder call per generated token — with the weights decompressed from the stored Core ML package
(`bench.build.torch_weights.captioner_from_variant`), so quality describes the deployed bytes. Its latencies say
nothing about the Neural Engine or the GPU; every table and plot labels them "host emulation (not Core ML)".
There is no compile step (compile_ns None); cold load = building the torch model from the package the first time in
this process, warm load = building it again (files now in the page cache). Only compute unit `cpuOnly` exists.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.errors import BenchError
from bench.run.targets.base import (
    HOST_EMULATION_LABEL, Conditions, Interrupted, RoundRequest, StepResult, VariantRef,
)
from bench.store.environment import now_iso

LoadCaptioner = Callable[[VariantRef], Any]


def captioner_for_variant(variant: VariantRef) -> Any:
    """The variant's decompressed weights in the PyTorch captioner (bench/build)."""
    from bench.build.torch_weights import captioner_from_variant

    return captioner_from_variant(variant.source if variant.source is not None else variant.path)


class HostTorchTarget:
    kind = "host-torch"
    label = HOST_EMULATION_LABEL
    compute_units = ("cpuOnly",)
    parallel_safe = False  # it shares the host CPU with every other host target

    def __init__(self, *, threads: int = 1, load_captioner: LoadCaptioner = captioner_for_variant,
                 measure_warm_load: bool = True):
        self.id = "host-torch"
        self.name = f"{platform.node() or 'host'} (PyTorch CPU, {threads} thread{'s' if threads > 1 else ''})"
        self.threads = threads
        self._load_captioner = load_captioner
        self._measure_warm_load = measure_warm_load
        self._captioners: dict[str, Any] = {}
        self._pixels: dict[tuple[str, int, str], Any] = {}
        self._images: dict[str, Any] = {}

    def conditions(self) -> Conditions:
        # A Linux host exposes no thermal state comparable to ProcessInfo.thermalState: None, never "nominal".
        return Conditions(device_model=host_cpu_model(), os_version=platform.release(),
                          os_build=f"{platform.system()} {platform.release()} {platform.version()}"[:160])

    def close(self) -> None:
        self._captioners.clear()
        self._pixels.clear()

    def run_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        import torch

        torch.set_num_threads(self.threads)  # pinned: timings must not depend on what else runs
        for step in request.steps:
            if should_stop():
                raise Interrupted()
            started = now_iso()
            clock = time.perf_counter()
            try:
                captioner, load = self._captioner(step.variant)
                pixels = {item.image_id: self._pixels_for(captioner, step.variant, item) for item in request.images}
                clock = time.perf_counter()  # elapsed_s = measuring time; loading is recorded in `load`
                warmup, samples, quality = self._measure(captioner, step.variant, request, pixels, should_stop)
            except BenchError as err:
                yield StepResult(step.job_key, error=str(err), started_at=started, finished_at=now_iso(),
                                 elapsed_s=time.perf_counter() - clock)
                continue
            if warmup:
                load["first_prediction_ns"] = warmup[0]["total_ns"]
            yield StepResult(step.job_key, samples=samples, warmup=warmup, load=load, quality=quality,
                             started_at=started, finished_at=now_iso(), elapsed_s=time.perf_counter() - clock,
                             extra_conditions={"torch_threads": self.threads, "emulation": True})

    def _captioner(self, variant: VariantRef) -> tuple[Any, dict]:
        """The cached torch model; the first build in this process records cold and warm load times."""
        load: dict[str, Any] = {"compile_ns": None, "cold_load_ns": None, "warm_load_ns": None,
                                "first_prediction_ns": None}
        if variant.variant_id in self._captioners:
            return self._captioners[variant.variant_id], load
        started = time.perf_counter_ns()
        captioner = self._load_captioner(variant)
        load["cold_load_ns"] = {"encoder": None, "decoder": None, "total": time.perf_counter_ns() - started}
        if self._measure_warm_load:
            started = time.perf_counter_ns()
            captioner = self._load_captioner(variant)
            load["warm_load_ns"] = {"encoder": None, "decoder": None, "total": time.perf_counter_ns() - started}
        captioner.model.eval()
        self._captioners[variant.variant_id] = captioner
        return captioner, load

    def _pixels_for(self, captioner: Any, variant: VariantRef, item) -> Any:
        size = variant.image_size or int(captioner.image_size)
        mode = getattr(variant.source, "resize", None) or "resize"
        key = (item.image_id, size, mode)
        if key not in self._pixels:
            if item.image_id not in self._images:
                self._images[item.image_id] = item.load()
            self._pixels[key] = captioner.preprocess([self._images[item.image_id]], size=size, mode=mode)
        return self._pixels[key]

    def _measure(self, captioner, variant: VariantRef, request: RoundRequest, pixels: dict, should_stop):
        warmup: list[dict] = []
        first = request.images[0].image_id
        for index in range(request.warmup):
            warmup.append(self._predict(captioner, variant, pixels[first], first, index))
        samples: list[dict] = []
        captions: dict[str, str] = {}
        for repeat in range(request.repeats):
            for item in request.images:
                if should_stop():
                    raise Interrupted()
                sample = self._predict(captioner, variant, pixels[item.image_id], item.image_id, repeat)
                samples.append(sample)
                if repeat == 0:
                    captions[item.image_id] = captioner.tokenizer.decode(sample["tokens"], skip_special_tokens=True)
        quality = {"captions": captions, "decoding": "greedy", "note": HOST_EMULATION_LABEL}
        return warmup, samples, quality

    def _predict(self, captioner, variant: VariantRef, pixel_values, image_id: str, repeat: int) -> dict:
        """Encoder once, then one decoder call per token with the deployed decoder's fixed input length.

        The Core ML decoder takes `input_ids` and `attention_mask` of shape [1, decoder_length] (ids after step t
        padded, mask 1 up to t) and is read at logits[0, t] (manifest io.decoder.usage); the emulation does the
        same work per step, so its cost per token does not shrink with short prefixes."""
        import torch

        model = captioner.model
        decode = _decode_ids(captioner, variant)
        length = int(getattr(variant.source, "decoder_length", None) or decode["max_length"])
        interpolate = int(pixel_values.shape[-1]) != int(model.config.vision_config.image_size)
        ids = torch.full((1, length), decode["pad_id"], dtype=torch.long)
        mask = torch.zeros((1, length), dtype=torch.long)
        ids[0, 0], mask[0, 0] = decode["bos_id"], 1
        t_start = time.perf_counter_ns()
        with torch.inference_mode():
            begin = time.perf_counter_ns()
            image_embeds = model.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)[0]
            encoder_ns = time.perf_counter_ns() - begin
            decoder_ns: list[int] = []
            generated: list[int] = []
            for step in range(min(length, decode["max_length"]) - 1):
                begin = time.perf_counter_ns()
                logits = model.text_decoder(input_ids=ids, attention_mask=mask,
                                            encoder_hidden_states=image_embeds).logits
                token = int(logits[0, step].argmax())
                decoder_ns.append(time.perf_counter_ns() - begin)
                generated.append(token)
                if token == decode["eos_id"]:
                    break
                ids[0, step + 1], mask[0, step + 1] = token, 1
        total = encoder_ns + sum(decoder_ns)
        return {"image_id": image_id, "repeat": repeat, "encoder_ns": encoder_ns, "decoder_ns": decoder_ns,
                "total_ns": total, "thermal_state": None, "t_ns": t_start, "tokens": generated}


def host_cpu_model() -> str:
    """The CPU's model name (what makes two host measurements comparable), e.g. "AMD EPYC 7B13 (x86_64)"."""
    name = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform.processor() is the best there is
    return f"{name or 'unknown CPU'} ({platform.machine()})"


def _decode_ids(captioner, variant: VariantRef) -> dict[str, int]:
    if variant.decode:
        return {k: int(v) for k, v in variant.decode.items()}
    decode = getattr(captioner, "decode", None)
    if decode is not None:
        return {"bos_id": int(decode.bos_id), "eos_id": int(decode.eos_id), "pad_id": int(decode.pad_id),
                "max_length": int(decode.max_length)}
    config = captioner.model.config.text_config
    return {"bos_id": int(config.bos_token_id), "eos_id": int(config.sep_token_id),
            "pad_id": int(config.pad_token_id), "max_length": 32}
