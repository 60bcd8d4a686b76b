"""`bench finetune` and `bench train-builtin`: the one trainer (bench/train/trainer.py) behind two commands."""

from __future__ import annotations

from pathlib import Path

import typer

from bench.cli._common import console


def finetune(
    checkpoint: Path = typer.Argument(..., help="Local BLIP captioning checkpoint directory (never downloaded)."),
    data: str = typer.Option(..., "--data", help="Dataset spec: synthetic | flickr30k:<json>:<dir> | hf:<path> | manifest:<file>"),
    out: Path = typer.Option(..., "--out", help="Output directory; rerunning with the same one resumes."),
    split: str = typer.Option("train", help="Split to train on."),
    limit: int = typer.Option(None, help="Seeded random subset (the seed used 5000)."),
    steps: int = typer.Option(1000, help="Optimizer steps."),
    batch_size: int = typer.Option(8, help="Images per step."),
    lr: float = typer.Option(1e-5, help="Peak learning rate (AdamW, warm-up then cosine)."),
    warmup_steps: int = typer.Option(50),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(100, help="Checkpoint every N steps (for resuming)."),
    threads: int = typer.Option(None, help="CPU threads (default min(4, cores))."),
    device: str = typer.Option(None, help="cuda | mps | cpu (default: the best present)."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Leave out missing/unreadable images."),
) -> None:
    """Fine-tune a BLIP checkpoint on a captioning dataset; saves a checkpoint with its training metadata."""
    from bench.train.finetune import finetune as run
    from bench.train.trainer import TrainConfig

    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, seed=seed,
                         save_every=save_every, threads=threads, device=device)
    result = run(checkpoint, data, out, config, split=split, limit=limit, skip_missing=skip_missing,
                 log=console().log)
    console().print(f"saved {result.out_dir} (loss {result.final_loss}, {result.train_seconds:.0f} s)")


def train_builtin(
    out: Path = typer.Option(None, "--out", help="Output directory (default: the shipped models/builtin-captioner[-SIZE])."),
    size: str = typer.Option("base", "--size", help="Architecture: base (the default model) or large (the seed's "
                             "base-vs-large axis; models/builtin-captioner-large)."),
    steps: int = typer.Option(None, help="Override the number of steps (default: the shipped recipe)."),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, help="CPU threads (the shipped model was trained with 2)."),
    device: str = typer.Option("cpu", help="cpu keeps the run reproducible; cuda/mps are faster."),
    eval_limit: int = typer.Option(None, help="Test images for the final BLEU check (default: the whole split)."),
) -> None:
    """Train the built-in captioner from scratch on the synthetic set (seeded) and record its held-out BLEU."""
    from bench.paths import builtin_captioner_dir
    from bench.train.builtin import DEFAULT_CONFIG, builtin_architecture, builtin_name, train_builtin as run
    from bench.train.trainer import TrainConfig

    arch = builtin_architecture(size)
    settings = {**DEFAULT_CONFIG, "seed": seed, "threads": threads, "device": device, "keep_checkpoints": False}
    if steps:
        settings["steps"] = steps
    result = run(out or builtin_captioner_dir(size), TrainConfig(**settings), arch=arch, name=builtin_name(size),
                 eval_limit=eval_limit, log=console().log)
    evaluation = result.metadata["evaluation"]
    console().print(f"saved {result.out_dir}: sacreBLEU {evaluation['bleu']} on {evaluation['n']} test images, "
                    f"trained {result.train_seconds:.0f} s")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
    app.command("train-builtin")(train_builtin)
