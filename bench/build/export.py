"""Export a BLIP captioner to two Core ML ML-program packages: vision encoder and one text-decoder step.

Trace-based conversion (torch.jit.trace → ct.convert) is the path that works with our pinned versions;
torch.export does not convert (shared/notes/coreml-on-linux.md).

Graph interfaces (the runner and the host targets code against these names):
- encoder: `pixel_values` float32 [1, 3, S, S] → `image_embeds` [1, N, D]
- decoder: `input_ids` int32 [1, L], `attention_mask` int32 [1, L], `image_embeds` [1, N, D] → `logits` [1, L, V].
  Greedy step t: ids[0..t] filled (ids[0] = bos), mask ones up to t, read logits[0, t]. Causal attention means
  the positions after t (padding) never influence position t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENCODER_INPUT, ENCODER_OUTPUT = "pixel_values", "image_embeds"
DECODER_INPUTS, DECODER_OUTPUT = ("input_ids", "attention_mask", "image_embeds"), "logits"
TARGETS = ("iOS16", "iOS17", "iOS18")
# Large enough to zero a softmax weight, small enough to stay finite in fp16.
MASKED_SCORE = -1.0e4


@dataclass(frozen=True)
class ExportedPair:
    """The converted, not yet compressed, models (coremltools MLModel objects) and what produced them."""

    encoder: Any
    decoder: Any
    image_size: int
    decoder_length: int


def _encoder_module(model, image_size: int):
    import torch

    class VisionEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_model = model.vision_model

        def forward(self, pixel_values):
            # Other input sizes than the trained one: the caller resized the position embedding beforehand
            # (bench.build.torch_weights.resize_vision_input), so the graph holds it as a plain constant.
            return self.vision_model(pixel_values=pixel_values)[0]

    return VisionEncoder().eval()


def _decoder_module(model):
    import torch

    class DecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_decoder = model.text_decoder

        def forward(self, input_ids, attention_mask, image_embeds):
            # The additive mask is built here rather than by transformers' masking utilities, whose traced
            # graph uses ops (new_ones) that coremltools cannot convert. Eager BLIP attention adds it to the scores.
            length = input_ids.shape[1]
            causal = torch.tril(torch.ones(length, length, dtype=torch.float32))[None, None]
            keep = causal * attention_mask[:, None, None, :].to(torch.float32)
            additive = (1.0 - keep) * MASKED_SCORE
            bert = self.text_decoder.bert
            hidden = bert.encoder(
                bert.embeddings(input_ids=input_ids), attention_mask=additive,
                encoder_hidden_states=image_embeds, use_cache=False,
            ).last_hidden_state
            return self.text_decoder.cls(hidden)

    return DecoderStep().eval()


def _target(name: str):
    import coremltools as ct

    return {"iOS16": ct.target.iOS16, "iOS17": ct.target.iOS17, "iOS18": ct.target.iOS18}[name]


def export_pair(model, *, image_size: int, decoder_length: int, target: str, precision: str) -> ExportedPair:
    """Trace and convert `model` (a BlipForConditionalGeneration in eval mode) for one target and precision."""
    encoder = _convert_encoder(model, image_size, target, precision)
    decoder = _convert_decoder(model, image_size, decoder_length, target, precision)
    return ExportedPair(encoder=encoder, decoder=decoder, image_size=image_size, decoder_length=decoder_length)


def export_package(package: str, model, folder, *, image_size: int, decoder_length: int, target: str,
                   precision: str, decoder: str = "recompute"):
    """Convert one graph ("encoder" or "decoder") and save it to `folder/<package>.mlpackage` at once, releasing the
    converted program (an MLModel from the converter keeps every converted weight in memory). Returns the path.
    `decoder`: "recompute" (this module's graphs) or "kv_cache" (bench.build.kv_cache: stateful, iOS 18)."""
    import gc
    from pathlib import Path

    from bench.build import kv_cache

    if decoder == "kv_cache":
        convert_encoder, convert_decoder = kv_cache.convert_encoder, kv_cache.convert_decoder
    else:
        convert_encoder, convert_decoder = _convert_encoder, _convert_decoder
    if package == "encoder":
        mlmodel = convert_encoder(model, image_size, target, precision)
    else:
        mlmodel = convert_decoder(model, image_size, decoder_length, target, precision)
    path = Path(folder) / f"{package}.mlpackage"
    mlmodel.save(str(path))
    del mlmodel
    gc.collect()
    return path


def _common(target: str, precision: str) -> dict:
    import coremltools as ct

    compute_precision = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    return dict(convert_to="mlprogram", minimum_deployment_target=_target(target),
                compute_precision=compute_precision)


def _image_embeds_example(model, image_size: int):
    """A tracing example of the encoder's output, [1, patches + 1, hidden], without running the encoder (its
    values never shape the traced graph; running it would page the vision weights in during the decoder's turn)."""
    import torch

    vision = model.config.vision_config
    return torch.zeros(1, (image_size // vision.patch_size) ** 2 + 1, vision.hidden_size)


def _convert_encoder(model, image_size: int, target: str, precision: str):
    import coremltools as ct
    import numpy as np
    import torch

    pixels = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        trace = torch.jit.trace(_encoder_module(model, image_size), (pixels,), check_trace=False)
    return ct.convert(
        trace,
        inputs=[ct.TensorType(name=ENCODER_INPUT, shape=tuple(pixels.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name=ENCODER_OUTPUT, dtype=np.float32)],
        **_common(target, precision),
    )


def _convert_decoder(model, image_size: int, decoder_length: int, target: str, precision: str):
    import coremltools as ct
    import numpy as np
    import torch

    embeds = _image_embeds_example(model, image_size)
    with torch.no_grad():
        ids = torch.zeros(1, decoder_length, dtype=torch.int32)
        mask = torch.ones(1, decoder_length, dtype=torch.int32)
        trace = torch.jit.trace(_decoder_module(model), (ids, mask, embeds), check_trace=False)
    return ct.convert(
        trace,
        inputs=[
            ct.TensorType(name="input_ids", shape=(1, decoder_length), dtype=np.int32),
            ct.TensorType(name="attention_mask", shape=(1, decoder_length), dtype=np.int32),
            ct.TensorType(name="image_embeds", shape=tuple(embeds.shape), dtype=np.float32),
        ],
        outputs=[ct.TensorType(name=DECODER_OUTPUT, dtype=np.float32)],
        **_common(target, precision),
    )


def greedy_tokens(encode, step, pixel_values, decode: dict[str, int], decoder_length: int) -> list[int]:
    """Greedy decoding through the two exported graphs' interfaces, one image.

    `encode(pixel_values[1,3,S,S]) -> image_embeds` and `step(input_ids, attention_mask, image_embeds) -> logits`
    take and return numpy arrays: the Core ML models (macOS), their PyTorch wrappers, or anything with the same
    interface. Returns the ids after the bos token up to and including eos (transformers' `max_length` counts bos).
    """
    import numpy as np

    embeds = encode(pixel_values)
    length = min(int(decode["max_length"]), decoder_length)
    ids = np.full((1, decoder_length), decode["pad_id"], dtype=np.int32)
    mask = np.zeros((1, decoder_length), dtype=np.int32)
    ids[0, 0], mask[0, 0] = decode["bos_id"], 1
    tokens: list[int] = []
    for position in range(length - 1):
        logits = step(ids, mask, embeds)
        token = int(np.argmax(logits[0, position]))
        tokens.append(token)
        if token == decode["eos_id"] or position + 1 >= decoder_length:
            break
        ids[0, position + 1], mask[0, position + 1] = token, 1
    return tokens


def torch_graph_functions(model, image_size: int):
    """The exact modules that are traced for export, as numpy-in/numpy-out functions for `greedy_tokens`."""
    import torch

    encoder, decoder = _encoder_module(model, image_size), _decoder_module(model)

    def encode(pixels):
        with torch.no_grad():
            return encoder(torch.as_tensor(pixels)).numpy()

    def step(ids, mask, embeds):
        with torch.no_grad():
            return decoder(torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(embeds)).numpy()

    return encode, step
