"""Small helpers shared by CLI modules: the console, tables of untrusted strings, library noise.

Every table a command prints goes through `table()`: each cell is stripped of control sequences and markup
(bench/report/escape.py), long names fold instead of being cut with "…", and when stdout is not a terminal the
console is as wide as the longest line, so piped output keeps full names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import lru_cache

# Wide enough for any table; a pipe or file has no width of its own.
PIPED_WIDTH = 10_000
# The loggers and warnings of the libraries we drive: captured unless --verbose (they are known and not actionable).
NOISY_ENVIRONMENT = {
    "TQDM_DISABLE": "1",  # coremltools / transformers progress bars per graph pass and per weight load
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",  # transformers logs through its own handler, not the root logger
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
_verbose = False


@lru_cache(maxsize=1)
def console():
    from rich.console import Console

    probe = Console()
    if probe.is_terminal or os.environ.get("COLUMNS"):
        return probe
    return Console(width=PIPED_WIDTH)


def error_console():
    from rich.console import Console

    return Console(stderr=True, width=None if Console(stderr=True).is_terminal else PIPED_WIDTH)


def verbose() -> bool:
    return _verbose


class _Captured(logging.Handler):
    """Keeps library log records (and warnings, through logging.captureWarnings) instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 1000:
            self.records.append(record)


def configure_output(*, verbose: bool) -> None:
    """Called once per command, before anything heavy is imported: without -v, library warnings and log lines are
    captured (not printed); with -v they go to stderr as they happen, tracebacks of unexpected errors included."""
    global _verbose
    _verbose = verbose
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_bench", False)]:
        root.removeHandler(handler)
    if verbose:
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.INFO)
    else:
        handler = _Captured()
        for name, value in NOISY_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    handler._bench = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    logging.captureWarnings(True)


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[object]], *, numeric: Iterable[str] = (),
          **options):
    """A rich Table whose cells are plain text from anywhere (disk, devices): escaped, never cut, right-aligned
    where `numeric` says so. Cells may be None (shown as "–")."""
    from rich.table import Table

    from bench.report.escape import rich as esc

    numeric = set(numeric)
    result = Table(title=esc(title) if title else None, **options)
    for column in columns:
        result.add_column(esc(column), overflow="fold", justify="right" if column in numeric else "left")
    for row in rows:
        result.add_row(*("–" if cell is None else esc(cell, multiline=True) for cell in row))
    return result
