"""`bench eval` (caption quality of a checkpoint or a built variant) and `bench eval-compare` (paired bootstrap).

Only argument parsing and printing live here; the work is bench.eval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("eval-compare")(compare_command)


def eval_command(
    subject: Annotated[str, typer.Argument(help="A checkpoint directory, or a variant id / directory (models/variants/<id>).")],
    data: Annotated[str, typer.Option("--data", help="Dataset spec: synthetic | flickr30k:<json>:<dir> | hf:<path> | manifest:<file>.")] = "synthetic",
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    limit: Annotated[int | None, typer.Option(help="Evaluate a seeded subset of N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset and of the bootstrap.")] = 0,
    skip_missing: Annotated[bool, typer.Option("--skip-missing", help="Leave out missing/unreadable images instead of stopping.")] = False,
    beams: Annotated[int, typer.Option(help="1 = greedy; more = beam search.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per generate call.")] = 16,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Input size in pixels (default: the model's; the seed found 348 best for BLIP-base).")] = None,
    resize: Annotated[str | None, typer.Option(help="resize | center_crop (default: a variant's own, else resize)")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Max tokens incl. BOS (default: the captioner's).")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95 % intervals.")] = 1000,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: torch's choice).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing record of the same evaluation.")] = False,
    compute_unit: Annotated[str | None, typer.Option("--compute-unit", help="Caption a variant through Core ML itself on this compute unit (cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all; macOS only). Default: its deployed weights in PyTorch.")] = None,
) -> None:
    """Caption a dataset with a checkpoint or variant; write sacreBLEU / CIDEr-D with 95 % CIs as a record."""
    from bench.cli._common import console
    from bench.data.base import open_dataset
    from bench.eval.evaluation import EvalOptions, evaluate, open_subject
    from bench.paths import Workspace

    options = EvalOptions(
        beams=beams, batch_size=batch_size, image_size=image_size, resize=resize, max_length=max_length,
        resamples=resamples, seed=seed, threads=threads,
    ).validate()  # bad options fail before anything heavy is loaded
    workspace = Workspace.current()
    dataset = open_dataset(data, split=split, limit=limit, seed=seed, skip_missing=skip_missing)
    captioner, described = open_subject(subject, workspace, compute_unit=compute_unit)
    from bench.report.escape import rich as esc

    with console().status(f"captioning {len(dataset)} images with {esc(described.id)} …"):
        record = evaluate(captioner, dataset, options, subject=described, evals_dir=workspace.evals_dir, overwrite=overwrite)
    _print_summary(record)


def compare_command(
    baseline: Annotated[Path, typer.Argument(help="Eval record of the baseline (results/evals/…json).")],
    variant: Annotated[Path, typer.Argument(help="Eval record of the variant, same images and decoding.")],
    metric: Annotated[str, typer.Option(help="bleu | cider")] = "bleu",
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Paired bootstrap test: variant minus baseline on the same images (delta, 95 % CI, p-value)."""
    from bench.cli._common import console
    from bench.eval.evaluation import paired_bootstrap

    result = paired_bootstrap(baseline, variant, metric, n=resamples, seed=seed)
    lo, hi = result["ci95"]
    from bench.report.escape import rich as esc

    console().print(
        f"{esc(metric)}: {esc(result['variant_subject'])} {result['variant']:.3f} vs {esc(result['baseline_subject'])} "
        f"{result['baseline']:.3f} → delta {result['delta']:+.3f} [95 % CI {lo:+.3f}, {hi:+.3f}], "
        f"p = {result['p_value']:.4f} ({result['n_images']} images, {result['resamples']} resamples)",
        highlight=False,
        soft_wrap=True,
    )


def _print_summary(record) -> None:
    from bench.cli._common import console, table
    from bench.report.escape import rich as esc

    bleu, cider = record.metrics.bleu, record.metrics.cider
    rows = [["sacreBLEU", f"{bleu.score:.2f} ({bleu.score_01:.3f})", f"[{bleu.ci95[0]:.2f}, {bleu.ci95[1]:.2f}]"],
            ["CIDEr-D", f"{cider.score:.3f}", f"[{cider.ci95[0]:.3f}, {cider.ci95[1]:.3f}]"]]
    out = console()
    out.print(table(f"{record.subject.id} on {record.dataset.signature}", ("metric", "score", "95 % CI"), rows))
    out.print(f"BLEU signature: {esc(bleu.signature)}", highlight=False, soft_wrap=True)
    decoding = record.decoding
    out.print(
        f"{decoding.strategy} (beams {decoding.beams}), {decoding.image_size}px {decoding.resize}, "
        f"{record.timing.images_per_second:.1f} images/s",
        highlight=False,
    )
    out.print(f"record: {esc(record.path)}", highlight=False, soft_wrap=True)
