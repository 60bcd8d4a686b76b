"""`bench data …`: look at a captioning dataset, export the synthetic set."""

from __future__ import annotations

from pathlib import Path

import typer

from bench.cli._common import console

data_app = typer.Typer(help="Captioning datasets: synthetic, flickr30k:<json>:<dir>, hf:<path>, manifest:<file>.",
                       no_args_is_help=True)


@data_app.command("show")
def show(
    spec: str = typer.Argument(..., help="synthetic | flickr30k:<karpathy json>:<image dir> | hf:<path> | manifest:<file>"),
    limit: int = typer.Option(None, help="Seeded random subset of this many samples per split."),
    seed: int = typer.Option(0, help="Seed of the subset."),
    samples: int = typer.Option(3, min=0, help="Example captions to show."),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Leave out missing/unreadable images."),
) -> None:
    """Sizes of each split and a few reference captions."""
    from bench.cli._common import table
    from bench.data.base import SPLITS, EmptySplitError, open_dataset

    rows, shown = [], None
    for split in SPLITS:
        try:
            dataset = open_dataset(spec, split=split, limit=limit, seed=seed, skip_missing=skip_missing)
        except EmptySplitError:
            rows.append([split, "0", "-", "-"])
            continue
        refs = sum(len(s.captions) for s in dataset) / len(dataset)
        rows.append([split, str(len(dataset)), f"{refs:.1f}", dataset.signature])
        shown = shown or dataset
    console().print(table(spec, ("split", "n", "refs/image", "signature"), rows, numeric=("n", "refs/image")))
    if shown is not None and samples:
        examples = [[sample.image_id, "\n".join(sample.captions)] for sample in list(shown)[:samples]]
        console().print(table(f"examples ({shown.split})", ("image_id", "references"), examples))


@data_app.command("export-synthetic")
def export_synthetic(
    directory: Path = typer.Argument(..., help="Folder to write PNGs + manifest.jsonl into (replaced atomically)."),
    split: str = typer.Option("test", help="train | val | test"),
    limit: int = typer.Option(None, help="Seeded random subset of this many samples."),
    seed: int = typer.Option(0),
) -> None:
    """Write the synthetic set as image files and a manifest (readable back as manifest:<dir>/manifest.jsonl)."""
    from bench.data import synthetic
    from bench.data.base import normalise_split

    from bench.report.escape import rich as esc

    count = synthetic.export(directory, split=normalise_split(split), limit=limit, seed=seed)
    console().print(f"wrote {count} images and {esc(directory / 'manifest.jsonl')}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
