"""Caption through Core ML itself (coremltools predict) with a chosen compute unit — macOS only.

On Linux, Core ML cannot run (`MLModel.predict` is macOS-only); every entry point raises PlatformUnavailable
with what to do instead. Quality of the deployed weights is still measurable on Linux through
bench.build.torch_weights.captioner_from_variant (host emulation in PyTorch).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from bench.deploy.contract import COMPUTE_UNITS  # the names the device runner knows, defined once
from bench.errors import InputError, PlatformUnavailable, did_you_mean


def require_macos() -> None:
    if platform.system() != "Darwin":
        raise PlatformUnavailable(
            f"Core ML prediction needs macOS (this is {platform.system()}); evaluate the variant's deployed weights "
            "in PyTorch instead (target host-torch), or run on a Mac / an iPhone"
        )


def check_compute_unit(name: str) -> str:
    """The name if Core ML knows it; a "did you mean" error otherwise (checked before anything is loaded)."""
    if name not in COMPUTE_UNITS:
        raise did_you_mean("compute unit", name, COMPUTE_UNITS)
    return name


def _compute_unit(name: str):
    check_compute_unit(name)
    import coremltools as ct

    return {"cpuOnly": ct.ComputeUnit.CPU_ONLY, "cpuAndGPU": ct.ComputeUnit.CPU_AND_GPU,
            "cpuAndNeuralEngine": ct.ComputeUnit.CPU_AND_NE, "all": ct.ComputeUnit.ALL}[name]


@dataclass
class CoreMLCaptioner:
    """A variant loaded into Core ML. `tokens(pixel_values)` decodes greedily through both packages."""

    variant: Any
    compute_unit: str
    encoder: Any
    decoder: Any

    def tokens(self, pixel_values, max_length: int | None = None) -> list[int]:
        """Greedy ids after bos; `max_length` (bos included) overrides the variant's decode length."""
        import numpy as np

        from bench.build.export import greedy_tokens

        def encode(pixels):
            return self.encoder.predict({"pixel_values": np.asarray(pixels, dtype=np.float32)})["image_embeds"]

        def step(ids, mask, embeds):
            return self.decoder.predict({"input_ids": ids, "attention_mask": mask, "image_embeds": embeds})["logits"]

        batch = np.asarray(pixel_values, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[0] != 1:
            raise InputError(f"Core ML packages take one image at a time, shape [1,3,S,S]; got {list(batch.shape)}")
        decode = self.variant.decode if max_length is None else {**self.variant.decode, "max_length": max_length}
        if (self.variant.io or {}).get("decoding") == "kv_cache":
            return self._cached_tokens(batch, decode)
        return greedy_tokens(encode, step, batch, decode, self.variant.decoder_length)

    def _cached_tokens(self, batch, decode: dict) -> list[int]:
        """kv_cache variants (macOS 15+): one Core ML state per caption, one token per step (bench.build.kv_cache)."""
        import numpy as np

        from bench.build.kv_cache import CROSS_OUTPUTS, greedy_cached

        encoded = self.encoder.predict({"pixel_values": batch})
        cross = {name: encoded[name] for name in CROSS_OUTPUTS}
        state = self.decoder.make_state()

        def step(token, position):
            features = {"input_ids": np.array([[token]], dtype=np.int32),
                        "position": np.array([position], dtype=np.int32), **cross}
            return self.decoder.predict(features, state=state)["logits"]

        return greedy_cached(step, decode, self.variant.decoder_length)


def load_coreml_captioner(variant, compute_unit: str = "all", workspace=None) -> CoreMLCaptioner:
    """Load a variant's packages into Core ML (macOS only; PlatformUnavailable elsewhere)."""
    require_macos()
    import coremltools as ct

    from bench.build.variants import load_variant

    manifest = variant if not isinstance(variant, str) else load_variant(variant, workspace)
    unit = _compute_unit(compute_unit)
    encoder = ct.models.MLModel(str(manifest.package_path("encoder")), compute_units=unit)
    decoder = ct.models.MLModel(str(manifest.package_path("decoder")), compute_units=unit)
    return CoreMLCaptioner(manifest, compute_unit, encoder, decoder)


class CoreMLGenerate:
    """Stands in for the PyTorch model's `generate` so bench.eval decodes through Core ML with no other change.

    It keeps the torch model's `config` (token ids) and answers `generate(pixel_values, ...)` with rows of
    [bos, tokens…, pad…], exactly the shape transformers returns. Core ML decodes greedily, one image at a time.
    """

    device = "cpu"

    def __init__(self, coreml: CoreMLCaptioner, config: Any):
        self.coreml, self.config = coreml, config

    def generate(self, pixel_values=None, num_beams: int = 1, max_length: int | None = None, **_ignored):
        import torch

        if num_beams != 1:
            raise InputError("Core ML evaluation decodes greedily: use --beams 1 with --compute-unit")
        decode = self.coreml.variant.decode
        # max_length is honoured (the record states it); sampling options do not apply to greedy decoding.
        rows = [[decode["bos_id"], *self.coreml.tokens(pixel_values[i : i + 1].numpy(), max_length)]
                for i in range(len(pixel_values))]
        width = max(len(row) for row in rows)
        return torch.tensor([row + [decode["pad_id"]] * (width - len(row)) for row in rows])


def coreml_captioner_for_eval(variant, compute_unit: str, workspace=None):
    """The variant's Captioner (tokenizer, preprocessing, config) with decoding routed through Core ML (macOS)."""
    import dataclasses

    from bench.build.torch_weights import captioner_from_variant

    coreml = load_coreml_captioner(variant, compute_unit, workspace)
    torch_captioner = captioner_from_variant(coreml.variant, workspace)
    return dataclasses.replace(torch_captioner, model=CoreMLGenerate(coreml, torch_captioner.model.config))
