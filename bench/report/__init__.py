"""Reports, regression verdicts and `bench explain` over stored runs (docs/contracts.md §3–§6).

data.py builds the report DATA (merged table, verdicts, trends, explanations); terminal.py, markdown.py, html.py,
export.py and junit.py only render it; verdicts.py holds every statistic; explain.py answers "why is A slower than B".
Nothing heavy is imported here: `bench --help` stays instant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FORMATS = ("terminal", "markdown", "html", "csv", "parquet")


@contextlib.contextmanager
def output_path(out: Path | str) -> Iterator[None]:
    """An output path that cannot be written (no such folder, read-only, a directory) is bad input, not a crash."""
    from bench.errors import InputError

    try:
        yield
    except OSError as err:
        raise InputError(f"cannot write {out}: {err.strerror or err}") from err


def write_report(report: Any, fmt: str, out: Path | str | None, *, console: Any = None) -> Path | None:
    """Render `report` (a ReportData) as `fmt`; to `out` when given (atomically), else to the console/stdout."""
    from bench import atomic
    from bench.errors import InputError

    if fmt not in FORMATS:
        raise InputError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt in ("csv", "parquet"):
        from bench.report.export import export_table

        if out is None:
            raise InputError(f"--format {fmt} needs --out PATH")
        with output_path(out):
            return export_table(report, out, fmt)
    if fmt == "html":
        from bench.report.html import render_html

        if out is None:
            raise InputError("--format html needs --out PATH (one self-contained .html file)")
        text = render_html(report)
    elif fmt == "markdown":
        from bench.report.markdown import render_report

        text = render_report(report)
        if out is None:
            print(text, end="")
            return None
    else:
        from rich.console import Console

        from bench.report.terminal import render_report as render_terminal

        if out is None:
            render_terminal(report, console or Console())
            return None
        import io

        recorder = Console(record=True, width=220, file=io.StringIO(), color_system=None)
        render_terminal(report, recorder)
        text = recorder.export_text()
    with output_path(out):
        return atomic.write_text(out, text)
