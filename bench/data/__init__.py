"""Captioning datasets behind one interface (docs/contracts.md §2): `open_dataset(spec, split, limit, seed, skip_missing)`."""

from bench.data.base import CaptionDataset, CaptionSample, open_dataset

__all__ = ["CaptionDataset", "CaptionSample", "open_dataset"]
