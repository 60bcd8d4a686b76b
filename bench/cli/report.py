"""`bench report` (tables, HTML, exports, regression verdicts for CI) and `bench explain A B`.

Only argument parsing lives here; the work is bench.report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
    app.command("explain")(explain_command)


def report_command(
    run: Annotated[str, typer.Argument(help="A run directory, a run id under results/, or `latest`.")] = "latest",
    baseline: Annotated[str | None, typer.Option("--baseline", help="Compare with this run (directory or id).")] = None,
    history: Annotated[int | None, typer.Option(
        "--history", help="Compare with the N runs before this one, night by night (N ≥ 2 estimates run-to-run "
                          "variation).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="terminal | markdown | html | csv | parquet")] = "terminal",
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of the terminal (needed for html/csv/parquet).")] = None,
    fail_on: Annotated[str | None, typer.Option(
        "--fail-on", help="`regression`: exit 1 when any verdict is a regression after the report's "
                          "Benjamini–Hochberg control.")] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Also write the verdicts as JUnit XML here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Compare even if device model, OS build or variant hash differ.")] = False,
) -> None:
    """Merge a run per variant × target × compute unit; with a baseline, give DIFFERENT / SAME / UNKNOWN verdicts."""
    from bench.cli._common import console
    from bench.errors import InputError
    from bench.report import write_report
    from bench.report.data import build_report
    from bench.report.verdicts import RegressionFound

    if fail_on not in (None, "regression"):
        raise InputError(f"--fail-on knows only `regression`, not {fail_on!r}")
    if (fail_on or junit) and baseline is None and history is None:
        raise InputError("--fail-on / --junit need a comparison: give --baseline RUN or --history N")
    report = build_report(run, baseline=baseline, history=history, force=force)
    written = write_report(report, fmt, out, console=console())
    if written is not None:
        console().print(f"wrote {written}", markup=False, highlight=False, soft_wrap=True)
    if junit is not None:
        from bench.report.junit import write_junit

        console().print(f"wrote {write_junit(report, junit)}", markup=False, highlight=False, soft_wrap=True)
    if fail_on == "regression" and report.regressions:
        names = "; ".join(f"{v.metric} {v.key}: {v.detail}" for v in report.regressions[:3])
        raise RegressionFound(f"{len(report.regressions)} regression(s): {names}")


def explain_command(
    a: Annotated[str, typer.Argument(help="The variant to explain (name or id), e.g. prune-0.20.")],
    b: Annotated[str, typer.Argument(help="The variant to compare with, e.g. fp32.")],
    run: Annotated[str, typer.Option("--run", help="Run directory or id (default: the latest run).")] = "latest",
    device: Annotated[str | None, typer.Option("--device", help="Target id, model or name (default: the first phone).")] = None,
    compute_unit: Annotated[str | None, typer.Option("--compute-unit", help="cpuOnly | cpuAndGPU | cpuAndNeuralEngine | all (default: all).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="terminal | markdown")] = "terminal",
) -> None:
    """Why A is slower (or faster) than B on a device and compute unit: measured deltas, static diff, compute plans."""
    from bench.cli._common import console
    from bench.errors import InputError
    from bench.report.explain import explain
    from bench.report.load import load_run

    if fmt not in ("terminal", "markdown"):
        raise InputError(f"explain prints terminal or markdown, not {fmt!r}")
    if compute_unit is not None and compute_unit not in ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"):
        from bench.errors import did_you_mean

        raise did_you_mean("compute unit", compute_unit, ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"))
    result = explain(load_run(run), a, b, device=device, compute_unit=compute_unit)
    if fmt == "markdown":
        from bench.report.markdown import render_explanation

        print(render_explanation(result), end="")
        return
    from bench.report.terminal import render_explanation

    render_explanation(result, console())
