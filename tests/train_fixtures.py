"""A tiny randomly initialised BLIP captioning checkpoint in the layout of Salesforce/blip-image-captioning-base
(config.json, model.safetensors, tokenizer files, preprocessor_config.json — no bench_captioner.json), built in a
tmp dir: it stands in for a downloaded checkpoint, which tests may not fetch."""

from __future__ import annotations

from pathlib import Path

TINY = dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64, vision_layers=1, text_layers=1,
            heads=2, max_positions=32, max_length=12)


def save_tiny_blip(directory: Path, seed: int = 0) -> Path:
    from bench.train.captioner import (
        BuiltinArchitecture,
        Preprocessing,
        new_builtin_model,
        write_builtin_tokenizer,
        write_preprocessor_config,
    )

    directory = Path(directory)
    tokenizer = write_builtin_tokenizer(directory)
    model = new_builtin_model(BuiltinArchitecture(**TINY), tokenizer, seed=seed)
    model.save_pretrained(directory)
    write_preprocessor_config(directory, Preprocessing(TINY["image_size"]))
    return directory
