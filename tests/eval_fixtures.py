"""Fixtures for the eval tests: a tiny randomly initialised BLIP captioner and small captioned image sets.

The tiny model stands in where the built-in captioner would make a test slow; tests that are about the real
captioner load it with `bench.train.captioner.load_captioner`. Its vision `initializer_range` is 0.02 (BLIP's
default 1e-10 underflows in fp16; shared/notes/coreml-on-linux.md). Random weights give arbitrary but
deterministic captions — enough to test decoding, batching and records, not quality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiny_blip import save_random_blip

WORDS = (
    "a the red blue green yellow circle square triangle star left right of above below next to "
    "big small two three on in and is with near"
).split()


def save_tiny_checkpoint(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """A random tiny BLIP saved like a checkpoint: config.json, model.safetensors, tokenizer files."""
    return save_random_blip(directory, words=tuple(WORDS), name="tiny-random", seed=seed, image_size=image_size)


def tiny_captioner(directory: Path):
    """Load a tiny checkpoint through the real loader (bench.train.captioner.load_captioner)."""
    from bench.train.captioner import load_captioner

    return load_captioner(directory)


def shape_image(index: int, size: int = 48):
    """A deterministic little picture: a coloured square on a coloured background."""
    from PIL import Image, ImageDraw

    colours = [(200, 30, 30), (30, 160, 40), (40, 60, 210), (230, 200, 40)]
    image = Image.new("RGB", (size + 8 * (index % 3), size), colours[index % 4])
    draw = ImageDraw.Draw(image)
    offset = 4 + 3 * (index % 5)
    draw.rectangle([offset, offset, offset + size // 2, offset + size // 3], fill=colours[(index + 1) % 4])
    return image


CAPTION_TEMPLATES = (
    "a {a} square on a {b} background",
    "the {a} square is on {b}",
    "a small {a} square",
    "{a} square next to {b}",
    "a {a} shape above a {b} one",
)
COLOUR_NAMES = ("red", "green", "blue", "yellow")


def captions_for(index: int) -> list[str]:
    a, b = COLOUR_NAMES[(index + 1) % 4], COLOUR_NAMES[index % 4]
    return [t.format(a=a, b=b) for t in CAPTION_TEMPLATES]


def write_manifest(directory: Path, n: int) -> Path:
    """A JSONL manifest of `n` PNG images with 5 captions each (the generic manifest source)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        path = directory / f"img{i:03d}.png"
        shape_image(i).save(path)
        lines.append(json.dumps({"image": path.name, "captions": captions_for(i)}))
    manifest = directory / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


class ListDataset(list):
    """The CaptionDataset contract (sized, iterable of samples, name, signature, spec) over in-memory images."""

    def __init__(self, samples, *, name="shapes", spec="memory:shapes"):
        super().__init__(samples)
        self.name, self.spec = name, spec
        self.signature = f"{spec}|n:{len(samples)}"


@dataclass(frozen=True)
class MemorySample:
    image_id: str
    captions: tuple[str, ...]
    image: Any

    def load_image(self):
        return self.image


def memory_dataset(n: int) -> ListDataset:
    return ListDataset([MemorySample(f"img{i:03d}", tuple(captions_for(i)), shape_image(i)) for i in range(n)])
