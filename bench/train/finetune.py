"""`bench finetune`: continue training any local BLIP captioning checkpoint on a dataset (as the seed did on 5k
Flickr30k). Same trainer as the built-in captioner; the base is only read, never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bench.errors import InputError
from bench.train.trainer import TrainConfig, TrainResult, refuse_foreign_out_dir, train


def finetune(
    checkpoint: Path | str,
    data_spec: str,
    out_dir: Path | str,
    config: TrainConfig,
    *,
    split: str = "train",
    limit: int | None = None,
    skip_missing: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    from bench.data.base import open_dataset
    from bench.train.captioner import check_checkpoint_dir, load_captioner

    config.validate()  # bad settings fail before the dataset and the model are loaded
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_checkpoint_dir(checkpoint)  # before opening the dataset: the cheaper error first
    if out_dir.resolve() == checkpoint.resolve():
        raise InputError("--out must differ from the checkpoint being fine-tuned (the base is never overwritten)",
                         file=str(out_dir))
    refuse_foreign_out_dir(out_dir)
    dataset = open_dataset(data_spec, split=split, limit=limit, seed=config.seed, skip_missing=skip_missing)
    captioner = load_captioner(checkpoint)
    base = {"kind": "checkpoint", "id": captioner.weights_sha256, "path": str(checkpoint),
            "weights_sha256": captioner.weights_sha256, "name": captioner.name}
    return train(captioner, dataset, out_dir, config, base=base, name=out_dir.name, progress=progress, log=log)
