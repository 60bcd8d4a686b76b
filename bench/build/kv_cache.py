"""The decoder apps ship on iOS 18: the self-attention key/value cache kept in Core ML state (`ct.StateType`).

Two graphs, as for the recomputing export (bench.build.export), with other interfaces:
- encoder: `pixel_values` float32 [1, 3, S, S] → `cross_keys`, `cross_values` float32 [layers, 1, N, hidden]: the
  vision encoder and then every decoder layer's cross-attention key and value projections of the image, computed
  once per image (they do not change while a caption is decoded).
- decoder (stateful): `input_ids` int32 [1, 1] (the token at `position`), `position` int32 [1], `cross_keys`,
  `cross_values` → `logits` [1, 1, V]; states `self_keys`, `self_values` float16 [layers, 1, L, hidden] (Core ML
  states are float16 only). Step t writes this token's keys/values into cache slot t and attends to slots 0..t.
  One state per caption: a new state is all zeros, and slots after t are masked, so nothing leaks between captions.

Greedy step t: feed token t (t = 0: bos) at position t, read logits[0, 0], argmax. The host emulates exactly this
(`CachedDecoding`): the same module, run in PyTorch with the cache rounded to float16 like the device's state.
"""

from __future__ import annotations

from typing import Any

from bench.build.export import ENCODER_INPUT, MASKED_SCORE

CROSS_OUTPUTS = ("cross_keys", "cross_values")
DECODER_INPUTS = ("input_ids", "position", *CROSS_OUTPUTS)
DECODER_OUTPUT = "logits"
STATES = ("self_keys", "self_values")
MIN_TARGET = "iOS18"  # Core ML state (MLState) exists from iOS 18 / macOS 15
USAGE = ("step t: input_ids [[token t]] (t=0: bos), position [t], cross_keys/cross_values from the encoder; "
         "read logits[0, 0]; one new state per caption")


def _text_layers(model) -> list:
    return list(model.text_decoder.bert.encoder.layer)


def cross_encoder_module(model):
    """pixel_values → (cross_keys, cross_values): the image's cross-attention keys/values for every layer."""
    import torch

    class CrossEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            # The model's own module paths, so the converter names constants after the parameters they hold.
            self.vision_model = model.vision_model
            self.text_decoder = model.text_decoder

        def forward(self, pixel_values, interpolate: bool = False):
            # interpolate: host emulation of an image size other than the model's (never in an exported graph)
            embeds = self.vision_model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)[0]
            attentions = [layer.crossattention.self for layer in self.text_decoder.bert.encoder.layer]
            keys = torch.stack([attention.key(embeds) for attention in attentions])
            values = torch.stack([attention.value(embeds) for attention in attentions])
            return keys, values

    return CrossEncoder().eval()


def cached_decoder_module(model, max_length: int):
    """One decoding step with the self-attention cache in two float16 buffers (Core ML states when converted)."""
    import torch

    config = model.text_decoder.config
    layers = _text_layers(model)
    heads = config.num_attention_heads
    hidden = config.hidden_size
    head_size = hidden // heads

    def split_heads(x):  # [1, T, hidden] -> [1, heads, T, head_size]
        return x.view(1, x.shape[1], heads, head_size).transpose(1, 2)

    def attend(query, keys, values, additive):
        scores = torch.matmul(split_heads(query), split_heads(keys).transpose(-1, -2)) / (head_size ** 0.5)
        if additive is not None:
            scores = scores + additive
        context = torch.matmul(torch.softmax(scores, dim=-1), split_heads(values))
        return context.transpose(1, 2).reshape(1, query.shape[1], hidden)

    class CachedDecoderStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_decoder = model.text_decoder
            shape = (len(layers), 1, max_length, hidden)
            self.register_buffer(STATES[0], torch.zeros(shape, dtype=torch.float16))
            self.register_buffer(STATES[1], torch.zeros(shape, dtype=torch.float16))

        def forward(self, input_ids, position, cross_keys, cross_values):
            slots = torch.arange(max_length, dtype=torch.int32)
            write = (slots == position).to(torch.float32)[None, :, None]  # [1, L, 1]: this step's slot
            keep = 1.0 - write
            additive = ((slots > position).to(torch.float32) * MASKED_SCORE)[None, None, None, :]
            bert = self.text_decoder.bert
            embeddings = bert.embeddings.word_embeddings(input_ids) + \
                bert.embeddings.position_embeddings(position[None, :])
            hidden_states = bert.embeddings.LayerNorm(embeddings)
            new_keys, new_values = [], []
            for index, layer in enumerate(bert.encoder.layer):
                attention = layer.attention.self
                key, value = attention.key(hidden_states), attention.value(hidden_states)
                new_keys.append(key)
                new_values.append(value)
                # The cache as the state will hold it after this step (float16, like the device's state).
                keys = self.self_keys[index].to(torch.float32) * keep + key.to(torch.float16).to(torch.float32) * write
                values = self.self_values[index].to(torch.float32) * keep + \
                    value.to(torch.float16).to(torch.float32) * write
                context = attend(attention.query(hidden_states), keys, values, additive)
                attended = layer.attention.output(context, hidden_states)
                cross = layer.crossattention
                context = attend(cross.self.query(attended), cross_keys[index], cross_values[index], None)
                crossed = cross.output(context, attended)
                hidden_states = layer.output(layer.intermediate(crossed), crossed)
            write16 = write.to(torch.float16)
            self.self_keys.mul_(keep.to(torch.float16))
            self.self_keys.add_(torch.stack(new_keys).to(torch.float16) * write16)
            self.self_values.mul_(keep.to(torch.float16))
            self.self_values.add_(torch.stack(new_values).to(torch.float16) * write16)
            return self.text_decoder.cls(hidden_states)

    return CachedDecoderStep().eval()


def convert_encoder(model, image_size: int, target: str, precision: str):
    import coremltools as ct
    import numpy as np
    import torch

    from bench.build.export import _common

    pixels = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        trace = torch.jit.trace(cross_encoder_module(model), (pixels,), check_trace=False)
    return ct.convert(
        trace,
        inputs=[ct.TensorType(name=ENCODER_INPUT, shape=tuple(pixels.shape), dtype=np.float32)],
        outputs=[ct.TensorType(name=name, dtype=np.float32) for name in CROSS_OUTPUTS],
        **_common(target, precision),
    )


def _cross_example(model, image_size: int):
    import torch

    vision = model.config.vision_config
    patches = (image_size // vision.patch_size) ** 2 + 1
    return torch.zeros(len(_text_layers(model)), 1, patches, model.text_decoder.config.hidden_size)


def convert_decoder(model, image_size: int, decoder_length: int, target: str, precision: str):
    import coremltools as ct
    import numpy as np
    import torch

    from bench.build.export import _common

    module = cached_decoder_module(model, decoder_length)
    cross = _cross_example(model, image_size)
    example = (torch.zeros(1, 1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32), cross, cross)
    with torch.no_grad():
        trace = torch.jit.trace(module, example, check_trace=False)
    state_shape = tuple(module.self_keys.shape)
    return ct.convert(
        trace,
        inputs=[
            ct.TensorType(name="input_ids", shape=(1, 1), dtype=np.int32),
            ct.TensorType(name="position", shape=(1,), dtype=np.int32),
            ct.TensorType(name="cross_keys", shape=tuple(cross.shape), dtype=np.float32),
            ct.TensorType(name="cross_values", shape=tuple(cross.shape), dtype=np.float32),
        ],
        outputs=[ct.TensorType(name=DECODER_OUTPUT, dtype=np.float32)],
        states=[ct.StateType(wrapped_type=ct.TensorType(shape=state_shape, dtype=np.float16), name=name)
                for name in STATES],
        **_common(target, precision),
    )


class CachedDecoding:
    """Greedy cached decoding in PyTorch through the exact modules that are exported (host emulation and tests).

    `encode(pixel_values)` → (cross_keys, cross_values); `caption(pixel_values, decode)` → token ids after bos up to
    and including eos. `step(token, position, cross)` is one decoder call; `reset()` starts a new caption (the device
    makes a new MLState)."""

    def __init__(self, model, image_size: int, decoder_length: int):
        self.encoder = cross_encoder_module(model)
        self.decoder = cached_decoder_module(model, decoder_length)
        self.image_size, self.decoder_length = image_size, decoder_length

    def reset(self) -> None:
        self.decoder.self_keys.zero_()
        self.decoder.self_values.zero_()

    def encode(self, pixel_values, interpolate: bool = False) -> Any:
        import torch

        with torch.inference_mode():
            return self.encoder(torch.as_tensor(pixel_values), interpolate)

    def step(self, token: int, position: int, cross) -> Any:
        import torch

        with torch.inference_mode():
            ids = torch.tensor([[token]], dtype=torch.int32)
            return self.decoder(ids, torch.tensor([position], dtype=torch.int32), *cross)

    def next_token(self, token: int, position: int, cross) -> int:
        """One decoder step and its greedy choice (what the device times as one decoder call + argmax)."""
        return int(self.step(token, position, cross)[0, -1].argmax())

    def caption(self, pixel_values, decode: dict[str, int]) -> list[int]:
        cross = self.encode(pixel_values)
        self.reset()
        return greedy_cached(lambda token, position: self.step(token, position, cross), decode, self.decoder_length)


def greedy_cached(step, decode: dict[str, int], decoder_length: int) -> list[int]:
    """Greedy decoding through a cached step `step(token, position) -> logits [1, 1, V]` (a fresh cache).
    Same length rule as the recomputing loop (bench.build.export.greedy_tokens): `max_length` counts bos."""
    import numpy as np

    limit = min(int(decode["max_length"]), decoder_length)
    token, tokens = int(decode["bos_id"]), []
    for position in range(limit - 1):
        token = int(np.argmax(np.asarray(step(token, position))[0, -1]))
        tokens.append(token)
        if token == decode["eos_id"]:
            break
    return tokens
