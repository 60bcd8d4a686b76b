"""Batched caption decoding (greedy or beam search) over a Captioner (docs/contracts.md §1).

A batch of images is preprocessed by the captioner itself (`Captioner.preprocess`, normalised exactly as
the model was trained; input size and resize vs centre-crop are options) and decoded by one call of
transformers' `generate` with `num_beams`. Batching is what makes evaluation fast: one vision pass and one
decoder pass per step for the whole batch instead of per image (benchmarks/test_eval.py).

Tokens: for every image we keep the ids the decoder produced after the BOS prompt, up to and including the
end token when it was reached (padding of shorter captions in the batch dropped). So `len(tokens)` is the
number of decoder steps a device runner needs for that caption, and ids compare one to one with the
runner's `tokens` (contracts §5).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bench.errors import InputError, did_you_mean

if TYPE_CHECKING:
    from PIL import Image as PILImage

RESIZE_MODES = ("resize", "center_crop")
FALLBACK_MAX_LENGTH = 20
MAX_IMAGE_SIZE = 1536  # 4× BLIP-large's 384 px  # transformers' generate default, for captioners without a decode config


class CaptionerLike(Protocol):
    """What decoding needs from a Captioner (bench.train.captioner.Captioner implements it)."""

    model: Any
    tokenizer: Any
    image_size: int
    name: str
    weights_sha256: str

    def preprocess(self, images: list, size: int | None = None, mode: str = "resize") -> Any: ...


@dataclass(frozen=True)
class DecodeOptions:
    """How captions are produced. `image_size` None = the size the captioner is used at (a variant's build size),
    `resize` None = the captioner's own mode (a variant's recipe: resize or centre crop)."""

    beams: int = 1
    batch_size: int = 16
    image_size: int | None = None
    resize: str | None = None
    max_length: int | None = None  # transformers semantics: total length incl. the BOS prompt; None = captioner's

    def validate(self) -> "DecodeOptions":
        if self.beams < 1:
            raise InputError(f"beams must be at least 1, got {self.beams}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if self.image_size is not None and not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            # Past a few thousand pixels the ViT's attention alone needs terabytes: refuse instead of crashing.
            raise InputError(f"image size must be 8 to {MAX_IMAGE_SIZE} pixels, got {self.image_size}")
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise did_you_mean("resize mode", self.resize, RESIZE_MODES)
        if self.max_length is not None and self.max_length < 2:
            raise InputError(f"max length must be at least 2 (BOS + one token), got {self.max_length}")
        return self

    @property
    def strategy(self) -> str:
        return "greedy" if self.beams == 1 else "beam"


@dataclass(frozen=True)
class Decoded:
    caption: str
    tokens: list[int]


@dataclass(frozen=True)
class DecodeRun:
    """Captions of every image plus how long decoding took (model loading and image reading excluded)."""

    outputs: list[Decoded]
    preprocess_seconds: float
    generate_seconds: float
    image_size: int
    max_length: int

    @property
    def seconds(self) -> float:
        return self.preprocess_seconds + self.generate_seconds


def default_image_size(captioner: CaptionerLike) -> int:
    """The input size the captioner is used at unless told otherwise (a variant's is its build size)."""
    return int(captioner.image_size)


def default_resize(captioner: CaptionerLike) -> str:
    """How the captioner's images are fitted unless told otherwise: a variant's recipe says (resize or centre crop),
    a checkpoint resizes (as BLIP's processor does)."""
    return str((getattr(captioner, "metadata", None) or {}).get("resize") or "resize")


def native_image_size(captioner: CaptionerLike) -> int:
    """The size the model's position embeddings are laid out for; other sizes interpolate them."""
    return int(captioner.model.config.vision_config.image_size)


def resolve_max_length(captioner: CaptionerLike, options: DecodeOptions) -> int:
    if options.max_length is not None:
        return options.max_length
    decode = getattr(captioner, "decode", None)
    if decode is not None and getattr(decode, "max_length", None):
        return int(decode.max_length)
    return FALLBACK_MAX_LENGTH


def split_generated(sequence: Sequence[int], *, prompt_length: int, eos_id: int, pad_id: int) -> list[int]:
    """Generated ids after the prompt, through the first EOS; padding after it removed."""
    tokens: list[int] = []
    for token in sequence[prompt_length:]:
        token = int(token)
        tokens.append(token)
        if token == eos_id:
            break
    # HF generate pads only after an EOS (cut above); other generators may pad a caption cut by max_length.
    while tokens and tokens[-1] == pad_id and pad_id != eos_id:
        tokens.pop()
    return tokens


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def generate_batch(captioner: CaptionerLike, pixel_values: Any, *, beams: int, max_length: int, interpolate: bool) -> Any:
    """One `generate` call for a whole batch (deterministic: no sampling)."""
    import torch

    with torch.inference_mode():
        return captioner.model.generate(
            pixel_values=pixel_values.to(captioner.model.device),  # a fine-tuned model may live on cuda/mps
            num_beams=beams,
            num_return_sequences=1,
            do_sample=False,
            max_length=max_length,
            interpolate_pos_encoding=interpolate,
        )


def decode_images(
    captioner: CaptionerLike,
    images: Sequence["PILImage.Image"] | Callable[[int], "PILImage.Image"],
    options: DecodeOptions = DecodeOptions(),
    *,
    count: int | None = None,
) -> DecodeRun:
    """Caption `images` (a list, or a loader `index -> image` with `count`) in batches.

    A loader lets a large evaluation read images batch by batch instead of holding thousands in memory.
    """
    options = options.validate()
    if callable(images):
        if count is None:
            raise InputError("decode_images: a loader needs the number of images (count=)")
        load = images
        total = count
    else:
        load = images.__getitem__
        total = len(images)
    size = options.image_size or default_image_size(captioner)
    max_length = resolve_max_length(captioner, options)
    text_config = captioner.model.config.text_config
    eos_id, pad_id = int(text_config.sep_token_id), int(text_config.pad_token_id)
    # BLIP's position embeddings are for the trained size; other sizes interpolate them (as the seed's 348x348).
    interpolate = size != native_image_size(captioner)

    outputs: list[Decoded] = []
    preprocess_seconds = generate_seconds = 0.0
    for indices in _batches(range(total), options.batch_size):
        batch = [load(i) for i in indices]
        started = time.perf_counter()
        pixel_values = captioner.preprocess(batch, size=size, mode=options.resize or default_resize(captioner))
        prepared = time.perf_counter()
        sequences = generate_batch(captioner, pixel_values, beams=options.beams, max_length=max_length, interpolate=interpolate)
        generate_seconds += time.perf_counter() - prepared
        preprocess_seconds += prepared - started
        for row in sequences.tolist():
            tokens = split_generated(row, prompt_length=1, eos_id=eos_id, pad_id=pad_id)
            caption = captioner.tokenizer.decode(tokens, skip_special_tokens=True).strip()
            outputs.append(Decoded(caption=caption, tokens=tokens))
    return DecodeRun(
        outputs=outputs,
        preprocess_seconds=preprocess_seconds,
        generate_seconds=generate_seconds,
        image_size=size,
        max_length=max_length,
    )
