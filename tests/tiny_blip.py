"""One tiny, randomly initialised BLIP captioner saved like a real checkpoint (config.json, model.safetensors,
tokenizer files, bench_captioner.json), shared by the build and eval fixtures.

Its vision `initializer_range` is 0.02: BLIP's default (1e-10) underflows to zero in fp16 and would make every
compression test meaningless (shared/notes/coreml-on-linux.md).
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]")


def blip_config(vocab_size: int, *, image_size: int, hidden: int, text_intermediate: int, layers: int = 2):
    from transformers import BlipConfig

    text = dict(
        vocab_size=vocab_size, hidden_size=hidden, encoder_hidden_size=hidden, intermediate_size=text_intermediate,
        num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=64,
        bos_token_id=SPECIALS.index("[DEC]"), eos_token_id=SPECIALS.index("[SEP]"),
        sep_token_id=SPECIALS.index("[SEP]"), pad_token_id=0,
    )
    vision = dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=2,
        image_size=image_size, patch_size=8, initializer_range=0.02,
    )
    return BlipConfig(text_config=text, vision_config=vision)


def save_random_blip(directory: Path, *, words: tuple[str, ...], name: str, seed: int = 0, image_size: int = 32,
                     hidden: int = 32, text_intermediate: int = 64) -> Path:
    """Save a random tiny BLIP checkpoint with a word vocabulary to `directory`; return it."""
    import torch
    from transformers import BertTokenizer, BlipForConditionalGeneration

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + tuple(words)) + "\n", encoding="utf-8")
    BertTokenizer(str(vocab), do_lower_case=True, bos_token="[DEC]").save_pretrained(directory)
    torch.manual_seed(seed)
    config = blip_config(len(SPECIALS) + len(words), image_size=image_size, hidden=hidden,
                         text_intermediate=text_intermediate)
    config._attn_implementation = "eager"
    BlipForConditionalGeneration(config).eval().save_pretrained(directory)
    # Short captions keep the tests fast; the loader reads decode.max_length from the training metadata.
    (directory / "bench_captioner.json").write_text(json.dumps({"name": name, "decode": {"max_length": 12}}),
                                                    encoding="utf-8")
    return directory
