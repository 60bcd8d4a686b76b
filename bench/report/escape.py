"""Escaping of device-supplied strings (device names, op names, logs, captions) for every output format.

Each renderer escapes at the point of rendering, never earlier, so the report data keeps the raw strings.
"""

from __future__ import annotations

import html
import json
from typing import Any

_MARKDOWN_SPECIAL = str.maketrans({"|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
                                   "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})


def markdown(text: Any) -> str:
    """A Markdown table cell: pipes, backticks, emphasis, links and raw HTML neutralised; one line."""
    return str(text).translate(_MARKDOWN_SPECIAL)


def rich(text: Any) -> str:
    """Rich console markup: `[...]` in a device name must not become a style."""
    from rich.markup import escape

    return escape(str(text))


def html_text(text: Any) -> str:
    """Text placed into HTML or into Plotly labels (Plotly interprets a few tags and decodes entities)."""
    return html.escape(str(text), quote=True)


def json_for_script(payload: Any) -> str:
    """JSON safe inside <script type="application/json">: no `</script>`, `<!--` or line separators can break out."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
