"""The captioner (docs/contracts.md §1) and the one trainer for the built-in model and `bench finetune`."""

from bench.train.captioner import Captioner, DecodeConfig, load_captioner

__all__ = ["Captioner", "DecodeConfig", "load_captioner"]
