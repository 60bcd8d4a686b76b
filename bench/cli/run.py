"""`bench run` (measure the matrix), `bench runs` (list runs), `bench compare` (two runs), `bench trend` (history).

Only argument parsing and printing live here; the work is bench.run / bench.store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("runs")(runs_command)
    app.command("compare")(compare_command)
    app.command("trend")(trend_command)


def _names(values: list[str] | None) -> list[str] | None:
    """`--variants a,b --variants c` → [a, b, c]; None when not given."""
    if not values:
        return None
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def run_command(
    config_file: Annotated[Path | None, typer.Argument(help="run.yaml (see docs/run.yaml). Without it: the default matrix on every available target.")] = None,
    variants: Annotated[list[str] | None, typer.Option("--variants", help="Variant names or ids (comma-separated or repeated).")] = None,
    targets: Annotated[list[str] | None, typer.Option("--targets", help="host-torch | macos-coreml | iphone | iphone:<name or udid> | auto.")] = None,
    compute_units: Annotated[list[str] | None, typer.Option("--compute-units", help="cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all.")] = None,
    images: Annotated[int | None, typer.Option("--images", help="Images per job (a fixed subset of the dataset).")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="Minimum rounds (with --fixed: exactly this many).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the interleaved order (recorded; random when not given).")] = None,
    ci_width: Annotated[float | None, typer.Option("--ci-width", help="Stop when the 95 % CI of the median is within ± this fraction.")] = None,
    max_samples: Annotated[int | None, typer.Option("--max-samples", help="Cap on samples per series.")] = None,
    max_seconds: Annotated[float | None, typer.Option("--max-seconds", help="Cap on measuring seconds per series.")] = None,
    fixed: Annotated[bool, typer.Option("--fixed", help="No adaptive stopping: exactly --rounds rounds.")] = False,
    resume: Annotated[str | None, typer.Option("--resume", help="Finish run RUN_ID: only missing or failed jobs are measured.")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --resume: continue even if the harness changed since the run began.")] = False,
    evaluate: Annotated[bool | None, typer.Option("--eval/--no-eval", help="Evaluate caption quality after measuring.")] = None,
    report: Annotated[bool | None, typer.Option("--report/--no-report", help="Write the report after measuring.")] = None,
    lab: Annotated[str | None, typer.Option("--lab", help="HOST[:PORT] of a lab head: measure on the phones of every lab host (docs/lab.md).")] = None,
    runner_timeout: Annotated[float | None, typer.Option("--runner-timeout", help="Seconds to wait for the iPhone runner per job (default: from model size and job length; also with --resume).")] = None,
    strict_os: Annotated[bool, typer.Option("--strict-os", help="Refuse the run when a variant needs a newer iOS/macOS than a chosen device runs (default: skip those pairs, each said in one line).")] = False,
) -> None:
    """Measure variants × targets × compute units × images; store every job at once; resumable."""
    from bench.cli._common import console
    from bench.paths import Workspace
    from bench.run.api import run_pipeline
    from bench.run.config import load_config, with_overrides
    from bench.run.progress import LiveProgress, print_summary
    from bench.run.api import _settings

    config = with_overrides(
        load_config(config_file), variants=_names(variants), targets=_names(targets),
        compute_units=_names(compute_units), images=images, rounds=rounds, seed=seed, ci_width=ci_width,
        max_samples=max_samples, max_seconds=max_seconds, fixed=fixed, evaluate=evaluate, report=report, lab=lab,
        runner_timeout_s=runner_timeout, strict_os=strict_os or None)
    workspace = Workspace.current()
    live = LiveProgress(console(), _settings(config).rule, config.images, config.repeats)
    try:
        with live:
            outcome = run_pipeline(config, workspace, resume=resume, force=force, observer=live, log=live.log)
    except KeyboardInterrupt:
        # typer turns Ctrl-C into a silent exit 130, so say here what was kept and how to go on.
        from rich.console import Console

        where = f"run {live.run_id} is saved; finish it with `bench run --resume {live.run_id}`" if live.run_id \
            else "nothing was measured yet"
        Console(stderr=True).print(f"[yellow]interrupted:[/] {where}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    console().print()
    print_summary(console(), outcome)
    if outcome.status != "complete":
        raise typer.Exit(1)


def runs_command() -> None:
    """List the runs under results/ with their status."""
    from bench.cli._common import console, table
    from bench.paths import Workspace
    from bench.store.runs import list_runs

    rows = [[row["run_id"], row["created_at"], row["status"], row["done"], row["failed"]]
            for row in list_runs(Workspace.current().results_dir)]
    if not rows:
        console().print(f"no runs under {Workspace.current().results_dir} yet; start one with `bench run`",
                        highlight=False, soft_wrap=True)
        return
    console().print(table("runs", ("run", "created", "status", "jobs done", "failed"), rows,
                          numeric=("jobs done", "failed")))


def compare_command(
    run_a: Annotated[str, typer.Argument(help="Baseline run id or directory.")],
    run_b: Annotated[str, typer.Argument(help="Candidate run id or directory.")],
    force: Annotated[bool, typer.Option("--force", help="Compare even if device model, OS build or variant hash differ.")] = False,
) -> None:
    """Median latency per series of two runs; refuses incomparable runs unless forced."""
    from bench.cli._common import console, table
    from bench.paths import Workspace
    from bench.report.escape import rich as esc
    from bench.run.api import resolve_run_dir
    from bench.store.compare import compare_runs
    from bench.store.runs import load_run

    workspace = Workspace.current()
    a, b = (load_run(resolve_run_dir(run, workspace)) for run in (run_a, run_b))
    result = compare_runs(a, b, force=force)
    for problem in result.differences:
        console().print(f"[yellow]forced despite:[/] {esc(problem)}", highlight=False)
    columns = ("variant", "target", "unit", "n a/b", "median a ms", "median b ms", "b/a", "Mann–Whitney p")
    rows = [[row.variant, row.target_kind, row.compute_unit, f"{row.n_a}/{row.n_b}", f"{row.median_a_ns / 1e6:.2f}",
             f"{row.median_b_ns / 1e6:.2f}", "–" if row.ratio is None else f"{row.ratio:.3f}",
             "–" if row.mannwhitney_p is None else f"{row.mannwhitney_p:.3g}"] for row in result.table.itertuples()]
    console().print(table(f"{a.run_id} → {b.run_id}", columns, rows, numeric=columns[3:]))


def trend_command(
    variant: Annotated[str | None, typer.Option("--variant", help="Variant id or name.")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Target id (e.g. host-torch, iphone-<udid>).")] = None,
    compute_unit: Annotated[str | None, typer.Option("--compute-unit")] = None,
    last: Annotated[int | None, typer.Option("--last", min=1, help="Only the last N runs.")] = None,
) -> None:
    """Median and p90 latency per run from results/history.duckdb (the nightly trend)."""
    from bench.cli._common import console, table
    from bench.paths import Workspace
    from bench.store.history import trend

    frame = trend(Workspace.current().history_db, variant=variant, target=target, compute_unit=compute_unit, last=last)
    columns = ("created", "run", "variant", "target", "unit", "n", "median ms", "p90 ms", "throttled")
    rows = [[str(row.created_at)[:16], row.run_id, row.variant_id, row.target_id, row.compute_unit, row.n,
             f"{row.median_ns / 1e6:.2f}", f"{row.p90_ns / 1e6:.2f}", f"{row.throttled_fraction:.0%}"]
            for row in frame.itertuples()]
    console().print(table("latency trend (warm-ups excluded)", columns, rows, numeric=columns[5:]))
