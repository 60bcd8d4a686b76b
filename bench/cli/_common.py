"""Small helpers shared by CLI modules (console, workspace option)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def console():
    from rich.console import Console

    return Console()
