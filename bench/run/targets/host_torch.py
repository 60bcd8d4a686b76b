"""`host-torch`: HOST EMULATION (not Core ML). The variant's decompressed weights run in PyTorch on this CPU.

Why it exists: the whole pipeline (plan → measure → store → report) must run on a machine without iPhones or macOS.
What it measures: the same work the on-device runner times — the image encoder once, then a greedy decoder loop,
one fixed-length decoder call per generated token — with the weights decompressed from the stored Core ML package
(`bench.build.torch_weights.captioner_from_variant`), so quality describes the deployed bytes. Its latencies say
nothing about the Neural Engine or the GPU; every table and plot labels them "host emulation (not Core ML)".
There is no compile step (compile_ns None). Only compute unit `cpuOnly` exists.
kv_cache variants (issue 14) run the device's cached loop instead (bench.build.kv_cache.CachedDecoding, the modules
that were converted): the encoder graph once (vision + cross-attention keys/values), a fresh float16 cache per
caption (`state_ns`, the device's makeState), then one single-token step per generated token.

Loads, and what their figures include (`load["method"]` says so in every job record):
- Before any timed window, once per process: the imports (torch, transformers' BLIP) and, per variant, its host
  weights materialised (first use ever, in a child process whose exit gives the memory back) and hash-verified
  (bench.build.host_weights). Before every load, still untimed, they are checked again (`ready_variant`: rebuilt
  in a child if deleted mid-run, re-hashed if their stat changed, refused if damaged or another variant's).
- cold load = the first load of this variant's files in this process: build the module skeleton and memory-map
  the verified host weights (their pages are in the page cache: the hash check just read them). warm load = the same
  again right after, or a reload after the variant was evicted. Neither includes reading the weights: the pages are
  faulted in by the first prediction (`first_prediction_ns`, recorded only for a job that loaded its model).
- At most `resident_variants` models stay loaded (least recently used evicted first). By default: every variant of
  the run when all of them fit in a tenth of this machine's memory, else one at a time. Why not "as many as fit": a
  round measures every variant once, so keeping some but not all of them loaded rarely saves a load (least recently
  used over a cycle never hits) while holding their weights: at BLIP-base size two resident models took a 5-variant
  run to 3.21x the fp32 weights (issue 16, benchmarks/results/scale.txt). A variant's weights are file-backed
  pages, so evicting it gives them back to the OS at once and reloading it costs a skeleton and a mapping (under a
  second at BLIP-base), not a decompression.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from bench.errors import BenchError
from bench.run.targets.base import (
    HOST_EMULATION_LABEL, Conditions, Interrupted, RoundRequest, StepResult, VariantRef, variant_decoding,
)
from bench.store.environment import now_iso

LoadCaptioner = Callable[[VariantRef], Any]
PrepareVariants = Callable[[list[VariantRef]], dict[str, int]]
LOAD_METHOD = ("host-torch/mmap-1: cold = first load of the variant's files in this process, warm = again or after "
               "eviction; skeleton + memory-map of hash-verified host weights; excludes imports, decompression, "
               "hashing and reading the weights (first prediction)")
# Share of physical memory the resident models may take when `resident_variants` is not set.
RESIDENT_MEMORY_FRACTION = 0.10


def captioner_for_variant(variant: VariantRef) -> Any:
    """The timed load: the variant's host weights memory-mapped into the PyTorch captioner. `ready_variant` verified
    them just before, outside the timed window, so nothing here hashes, decompresses or materialises."""
    from bench.build import host_weights
    from bench.build.torch_weights import captioner_from_host_weights
    from bench.errors import DamagedError

    manifest = _manifest(variant)
    weights = host_weights.stored(manifest.directory)
    if weights is None:
        folder = manifest.directory / host_weights.DIRECTORY
        raise DamagedError(f"{folder}: host weights deleted while loading {manifest.variant_id} — run again (they are "
                           "rebuilt from the variant's packages)", path=str(folder))
    return captioner_from_host_weights(manifest, manifest.directory, weights)


def ready_variant(variant: VariantRef) -> None:
    """Untimed, before every load of a variant: its host weights are still there (deleted mid-run: rebuilt in a child
    process) and verified (hashed again when their stat changed, refused if damaged or another variant's)."""
    prepare_variants([variant])


def prepare_variants(variants: list[VariantRef]) -> dict[str, int]:
    """One-time set-up of variants' host weights: {variant_id: bytes} (materialised in a child process, verified)."""
    from bench.build import host_weights

    manifests = [_manifest(v) for v in variants]
    host_weights.materialise_in_child([m for m in manifests if host_weights.stored(m.directory) is None])
    return {m.variant_id: host_weights.ensure(m, m.directory).bytes for m in manifests}


def _manifest(variant: VariantRef):
    from bench.build.variants import load_variant

    if variant.source is not None and getattr(variant.source, "directory", None) is not None:
        return variant.source
    return load_variant(variant.path)


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class HostTorchTarget:
    kind = "host-torch"
    label = HOST_EMULATION_LABEL
    compute_units = ("cpuOnly",)
    parallel_safe = False  # it shares the host CPU with every other host target

    def __init__(self, *, threads: int = 1, load_captioner: LoadCaptioner = captioner_for_variant,
                 prepare: PrepareVariants = prepare_variants, measure_warm_load: bool = True,
                 resident_variants: int | None = None, ready: Callable[[VariantRef], None] = ready_variant):
        self.id = "host-torch"
        self.name = f"{platform.node() or 'host'} (PyTorch CPU, {threads} thread{'s' if threads > 1 else ''})"
        self.threads = threads
        self._load_captioner = load_captioner
        self._prepare = prepare
        self._ready = ready
        self._measure_warm_load = measure_warm_load
        self.resident_variants = resident_variants
        self.resident_budget_bytes = int(RESIDENT_MEMORY_FRACTION * machine_memory_bytes())
        self._captioners: OrderedDict[str, Any] = OrderedDict()  # resident models, least recently used first
        self._sizes: dict[str, int] = {}  # prepared variants: host weights bytes
        self._loaded_before: set[str] = set()
        self._set_up = False
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
        self._one_time_setup()
        unprepared = {s.variant.variant_id: s.variant for s in request.steps if s.variant.variant_id not in self._sizes}
        failed = self._prepare_all(unprepared)
        for step in request.steps:
            captioner = None  # the previous job's model: an evicted one must not stay mapped through the next load
            if should_stop():
                raise Interrupted()
            started = now_iso()
            clock = time.perf_counter()
            if step.variant.variant_id in failed:
                yield StepResult(step.job_key, error=failed[step.variant.variant_id], started_at=started,
                                 finished_at=now_iso(), elapsed_s=0.0)
                continue
            try:
                captioner, load = self._captioner(step.variant)
                pixels = {item.image_id: self._pixels_for(captioner, step.variant, item) for item in request.images}
                clock = time.perf_counter()  # elapsed_s = measuring time; loading is recorded in `load`
                warmup, samples, quality = self._measure(captioner, step.variant, request, pixels, should_stop)
            except BenchError as err:
                yield StepResult(step.job_key, error=str(err), started_at=started, finished_at=now_iso(),
                                 elapsed_s=time.perf_counter() - clock)
                continue
            if warmup and (load["cold_load_ns"] or load["warm_load_ns"]):  # a resident model's is not a first one
                load["first_prediction_ns"] = warmup[0]["total_ns"]
            yield StepResult(step.job_key, samples=samples, warmup=warmup, load=load, quality=quality,
                             started_at=started, finished_at=now_iso(), elapsed_s=time.perf_counter() - clock,
                             extra_conditions={"torch_threads": self.threads, "emulation": True})

    def _prepare_all(self, unprepared: dict[str, VariantRef]) -> dict[str, str]:
        """Prepare these variants (one child process for all); {variant_id: error} of those that cannot be. When the
        batch fails, each is prepared on its own, so that one damaged variant fails only its own jobs."""
        batches = [list(unprepared.values())] if unprepared else []
        failed: dict[str, str] = {}
        while batches:
            batch = batches.pop(0)
            try:
                self._sizes.update(self._prepare(batch) or {})
            except BenchError as err:  # reported on every step of these variants; the others still run
                if len(batch) == 1:
                    failed[batch[0].variant_id] = str(err)
                else:
                    batches += [[variant] for variant in batch]
        return failed

    def _one_time_setup(self) -> None:
        """Imports every load needs, outside any timed window (they cost seconds once per process)."""
        if not self._set_up:
            import transformers.models.blip.modeling_blip  # noqa: F401
            from transformers import BertTokenizer  # noqa: F401

            self._set_up = True

    def _captioner(self, variant: VariantRef) -> tuple[Any, dict]:
        """The resident torch model, or a timed load (cold: first in this process; warm: again, or after eviction)."""
        load: dict[str, Any] = {"compile_ns": None, "cold_load_ns": None, "warm_load_ns": None,
                                "first_prediction_ns": None, "method": LOAD_METHOD}
        if variant.variant_id in self._captioners:
            self._captioners.move_to_end(variant.variant_id)
            return self._captioners[variant.variant_id], load
        self._make_room()
        first = variant.variant_id not in self._loaded_before
        self._ready(variant)  # outside the timed window: what a load must not include (LOAD_METHOD)
        captioner, elapsed = self._timed_load(variant)
        if first:
            load["cold_load_ns"] = {"encoder": None, "decoder": None, "total": elapsed}
            if self._measure_warm_load:
                del captioner
                captioner, elapsed = self._timed_load(variant)
                load["warm_load_ns"] = {"encoder": None, "decoder": None, "total": elapsed}
        else:
            load["warm_load_ns"] = {"encoder": None, "decoder": None, "total": elapsed}
        captioner.model.eval()
        self._loaded_before.add(variant.variant_id)
        self._captioners[variant.variant_id] = captioner
        return captioner, load

    def _timed_load(self, variant: VariantRef) -> tuple[Any, int]:
        started = time.perf_counter_ns()
        captioner = self._load_captioner(variant)
        return captioner, time.perf_counter_ns() - started

    def _make_room(self) -> None:
        """Evict least recently used models until one more may load: the count setting, else all prepared variants
        when they fit in the memory budget together, else one model at a time (module docstring)."""
        def fits() -> bool:
            if not self._captioners:
                return True
            if self.resident_variants is not None:
                return len(self._captioners) < self.resident_variants
            return sum(self._sizes.values()) <= self.resident_budget_bytes

        evicted = False
        while not fits():
            self._captioners.popitem(last=False)
            evicted = True
        if evicted:
            gc.collect()  # a model's last reference may sit in a cycle: unmap its pages now, not later

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
        if variant_decoding(variant) == "kv_cache":
            return self._predict_cached(captioner, variant, pixel_values, image_id, repeat)
        return self._predict_recomputing(captioner, variant, pixel_values, image_id, repeat)

    def _cached_decoding(self, captioner, variant: VariantRef):
        """The exported kv_cache modules around this variant's resident model (made once per loaded model)."""
        from bench.build.kv_cache import CachedDecoding

        cached = getattr(captioner, "_bench_cached_decoding", None)
        if cached is None:
            length = int(getattr(variant.source, "decoder_length", None) or _decode_ids(captioner, variant)["max_length"])
            cached = CachedDecoding(captioner.model, int(variant.image_size or captioner.image_size), length)
            object.__setattr__(captioner, "_bench_cached_decoding", cached)  # Captioner may be a frozen dataclass
        return cached

    def _predict_cached(self, captioner, variant: VariantRef, pixel_values, image_id: str, repeat: int) -> dict:
        """kv_cache variants: the device's cached loop (bench.build.kv_cache) — the encoder graph once (vision +
        the cross-attention keys/values), a fresh float16 cache per caption (the device's makeState, `state_ns`),
        then one single-token step per generated token."""
        cached = self._cached_decoding(captioner, variant)
        decode = _decode_ids(captioner, variant)
        interpolate = int(pixel_values.shape[-1]) != int(captioner.model.config.vision_config.image_size)
        t_start = time.perf_counter_ns()
        begin = time.perf_counter_ns()
        cross = cached.encode(pixel_values, interpolate)
        encoder_ns = time.perf_counter_ns() - begin
        begin = time.perf_counter_ns()
        cached.reset()
        state_ns = time.perf_counter_ns() - begin
        decoder_ns: list[int] = []
        generated: list[int] = []
        token = decode["bos_id"]
        for position in range(min(cached.decoder_length, decode["max_length"]) - 1):
            begin = time.perf_counter_ns()
            token = cached.next_token(token, position, cross)
            decoder_ns.append(time.perf_counter_ns() - begin)
            generated.append(token)
            if token == decode["eos_id"]:
                break
        total = time.perf_counter_ns() - t_start
        return {"image_id": image_id, "repeat": repeat, "encoder_ns": encoder_ns, "decoder_ns": decoder_ns,
                "total_ns": total, "thermal_state": None, "t_ns": t_start, "tokens": generated, "state_ns": state_ns}

    def _predict_recomputing(self, captioner, variant: VariantRef, pixel_values, image_id: str, repeat: int) -> dict:
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
