"""Fixtures for the build tests: a tiny, randomly initialised BLIP captioner saved like a real checkpoint.

The built-in captioner (bench/train) is used when it exists; until then, and for speed, tests use this tiny model.
Its vision `initializer_range` is 0.02: BLIP's default (1e-10) underflows to zero in fp16 and would make every
compression test meaningless (shared/notes/coreml-on-linux.md).
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = (
    "a an the man woman dog cat child boy girl people group two three on in at with of and is are "
    "sitting standing running walking playing riding holding wearing red blue green white black "
    "shirt hat ball bike street grass water beach field table road car snow tree building camera "
    "young old small large front near next to while looking down up over his her their it"
).split()
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def tiny_blip_config(vocab_size: int, *, image_size: int = 32, hidden: int = 64, layers: int = 2):
    from transformers import BlipConfig

    text = dict(
        # 64 × 1024 = 65,536 elements: just above fp16's 65,504, so the fp16 pruning bug (note, bug 1) can bite.
        vocab_size=vocab_size, hidden_size=hidden, encoder_hidden_size=hidden, intermediate_size=1024,
        num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
        bos_token_id=SPECIALS.index("[DEC]"), eos_token_id=SPECIALS.index("[SEP]"),
        sep_token_id=SPECIALS.index("[SEP]"), pad_token_id=0,
    )
    vision = dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=2,
        image_size=image_size, patch_size=8, initializer_range=0.02,
    )
    return BlipConfig(text_config=text, vision_config=vision)


def save_tiny_captioner(directory: Path, *, seed: int = 0, image_size: int = 32) -> Path:
    """Save a random tiny BLIP checkpoint (config, safetensors, tokenizer) to `directory`; return it."""
    import torch
    from transformers import BertTokenizer, BlipForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + tuple(WORDS)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True, bos_token="[DEC]")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = tiny_blip_config(len(SPECIALS) + len(WORDS), image_size=image_size)
    config._attn_implementation = "eager"
    model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    (directory / "bench_captioner.json").write_text(
        json.dumps({"name": "tiny-build", "decode": {"max_length": 12}}), encoding="utf-8"
    )
    return directory


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
