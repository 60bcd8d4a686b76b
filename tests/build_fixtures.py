"""Fixtures for the build tests: a tiny, randomly initialised BLIP captioner saved like a real checkpoint.

The built-in captioner (bench/train) is used when it exists; until then, and for speed, tests use this tiny model.
Its vision `initializer_range` is 0.02: BLIP's default (1e-10) underflows to zero in fp16 and would make every
compression test meaningless (shared/notes/coreml-on-linux.md).
"""

from __future__ import annotations

from pathlib import Path

from tiny_blip import save_random_blip

WORDS = (
    "a an the man woman dog cat child boy girl people group two three on in at with of and is are "
    "sitting standing running walking playing riding holding wearing red blue green white black "
    "shirt hat ball bike street grass water beach field table road car snow tree building camera "
    "young old small large front near next to while looking down up over his her their it"
).split()


def save_tiny_captioner(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random tiny BLIP checkpoint (config, safetensors, tokenizer) to `directory`; return it."""
    # Text MLP 64 × 1024 = 65,536 elements: just above fp16's 65,504, so the fp16 pruning bug (note, bug 1) can bite.
    return save_random_blip(directory, words=tuple(WORDS), name="tiny-build", seed=seed, image_size=image_size,
                            hidden=64, text_intermediate=1024)


# A small matrix covering every storage format and layer selection the build tests check (seconds to build).
TEST_MATRIX = {
    "variants": [
        {"name": "fp32"},
        {"name": "fp16", "precision": "fp16"},
        {"name": "int8", "quantize": {"bits": 8}},
        {"name": "prune", "prune": {"sparsities": [0.5, 0.672]}},
        {"name": "fp16-prune", "precision": "fp16", "prune": {"sparsity": 0.5}},
        {"name": "conv-prune", "prune": {"sparsity": 0.4}, "layers": {"select": "conv"}},
        {"name": "embedding-prune", "prune": {"sparsity": 0.4}, "layers": {"select": "embedding"}},
        {"name": "mlp-prune", "prune": {"sparsity": 0.3}, "layers": {"select": "pattern", "pattern": r"mlp\.fc1"}},
        {"name": "palettize-2", "palettize": {"bits": 2, "mode": "uniform"}},
        {"name": "int4-ios18", "target": "iOS18", "quantize": {"bits": 4, "granularity": "per_block"}},
        {"name": "joint-ios18", "target": "iOS18", "prune": {"sparsity": 0.5}, "palettize": {"bits": 4, "mode": "uniform"}},
    ]
}


def quiet_torch() -> None:
    import torch

    torch.set_num_threads(1)
