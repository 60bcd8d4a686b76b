"""Escaping of untrusted strings (device names, op names, logs, captions, anything read from disk or a device) for
every output format.

Each renderer escapes at the point of rendering, never earlier, so the report data keeps the raw strings. Every
terminal renderer (bench/report/terminal.py, the CLI's tables and its one-line errors) goes through `terminal` or
`rich`: a device named "\x1b]0;pwned\x07" must not retitle the window, clear the screen or reverse the text.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

# ESC sequences (CSI `ESC [ … final`, OSC/DCS/APC/PM/SOS strings up to BEL or ST, two-byte escapes), their 8-bit C1
# forms, every other C0/C1 control, and the bidi embedding/override/isolate marks that reorder what follows.
_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"            # CSI
    r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC, DCS, SOS, PM, APC (terminated or not)
    r"|\x9b[0-?]*[ -/]*[@-~]"              # 8-bit CSI
    r"|[\x9d\x90\x98\x9e\x9f][^\x07\x9c]*[\x07\x9c]?"  # 8-bit OSC/DCS/SOS/PM/APC
    r"|\x1b[ -/]*[0-~]?"                   # any other escape
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"       # remaining C0 (not tab/newline), DEL, C1
    r"|[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]"  # bidi embeddings, overrides, isolates, marks
)
_LINE_BREAKS = re.compile(r"[\t\n\u2028\u2029\x85]+")


def terminal(text: Any, *, multiline: bool = False) -> str:
    """Text safe to print on a terminal: control sequences and bidi overrides removed; one line unless `multiline`."""
    cleaned = _CONTROL.sub("", str(text))
    if multiline:
        return cleaned.replace("\u2028", "\n").replace("\u2029", "\n").replace("\x85", "\n")
    return _LINE_BREAKS.sub(" ", cleaned)

_MARKDOWN_SPECIAL = str.maketrans({"|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
                                   "<": "&lt;", ">": "&gt;", "&": "&amp;", "\n": " ", "\r": " "})


def markdown(text: Any) -> str:
    """A Markdown table cell: pipes, backticks, emphasis, links and raw HTML neutralised; one line, no controls."""
    return terminal(text).translate(_MARKDOWN_SPECIAL)


def rich(text: Any, *, multiline: bool = False) -> str:
    """Rich console markup: `[...]` in a device name must not become a style; control sequences are removed."""
    from rich.markup import escape

    return escape(terminal(text, multiline=multiline))


def html_text(text: Any) -> str:
    """Text placed into HTML or into Plotly labels (Plotly interprets a few tags and decodes entities)."""
    return html.escape(str(text), quote=True)


def json_for_script(payload: Any) -> str:
    """JSON safe inside <script type="application/json">: no `</script>`, `<!--` or line separators can break out."""
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
