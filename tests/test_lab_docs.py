"""Every `pymobiledevice3 …` command the lab documentation (and every one-line error) tells a person to type exists,
with its options, in the installed pymobiledevice3 — checked by walking its own CLI (typer over click), not by a
list kept here. Where a documented command can run without a real phone, network or root, it is run against the
protocol-level fake iPhone (tests/fake_iphone) through pymobiledevice3's own CLI.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deploy_fixtures import add_phone, mux  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench/deploy/README.md", ROOT / "runner/README.md", ROOT / "devices.yaml",
        *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted((ROOT / "bench").rglob("*.py"))  # error messages and docstrings name commands too
SEPARATORS = re.compile(r"\s(?:\||&&|\|\||;|#)\s|\)$")


def code_spans(text: str) -> list[str]:
    """Inline `code` spans and the lines of fenced blocks: where a command someone would type is written."""
    spans = []
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(text):
        spans += block.splitlines()
    text = fenced.sub("", text)
    spans += re.findall(r"`([^`\n]+)`", text)
    return spans


def string_literals(source: str) -> list[str]:
    """Every string constant of a Python file as the program sees it (implicit concatenation joined, escapes
    resolved; an f-string's fields become {})."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `pymobiledevice3`) for every command written in the docs and in bench's messages."""
    found = []
    for path in DOCS + SOURCES:
        text = path.read_text()
        spans = code_spans(text) if path.suffix != ".py" else [
            span for literal in string_literals(text) for span in re.findall(r"`([^`\n]+)`", literal)]
        for span in spans:
            span = SEPARATORS.split(span)[0]
            try:
                words = shlex.split(re.sub(r"<[^>]+>", "PLACEHOLDER", span.replace("{udid}", "PLACEHOLDER")))
            except ValueError:
                continue
            for index, word in enumerate(words):
                if word.split("=")[-1].rsplit("/", 1)[-1] == "pymobiledevice3" and index + 1 < len(words):
                    found.append((f"{path.relative_to(ROOT)}: {span.strip()}", words[index + 1:]))
                    break
    return found


def cli():
    import typer

    from pymobiledevice3.__main__ import app

    return typer.main.get_command(app)


def check(argv: list[str]) -> str | None:
    """None when pymobiledevice3 accepts argv (command path, options, number of arguments), else why not."""
    command = root = cli()
    context = root.context_class(root, info_name="pymobiledevice3")
    words = list(argv)
    while hasattr(command, "list_commands"):  # a group: the next word must name a sub-command
        if not words:
            return f"`{' '.join(argv)}` stops at a group, not a command"
        name = words.pop(0)
        if name not in command.list_commands(context):
            return f"no command {name!r} in `{context.command_path}`"
        command = command.get_command(context, name)
        context = root.context_class(command, parent=context, info_name=name)
    options = {opt: param for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    positional = 0
    while words:
        word = words.pop(0)
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            if name not in options:
                return f"`{context.command_path}` has no option {name}"
            param = options[name]
            if "=" not in word and not (param.is_flag or param.count or name in param.secondary_opts):
                if not words:
                    return f"{name} needs a value"
                words.pop(0)
        else:
            positional += 1
    if not any(a.nargs == -1 for a in arguments) and positional > sum(max(a.nargs, 1) for a in arguments):
        return f"`{context.command_path}` takes {len(arguments)} argument(s), the doc gives {positional}"
    return None


def test_the_docs_name_pymobiledevice3_commands_at_all():
    commands = {" ".join(word for word in argv[:2] if not word.startswith("-")) for _where, argv in documented_commands()}
    assert {"remote tunneld", "lockdown pair", "amfi enable-developer-mode", "amfi reveal-developer-mode", "doctor",
            "usbmux list", "mounter auto-mount"} <= commands


@pytest.mark.parametrize("where,argv", documented_commands(), ids=lambda value: value if isinstance(value, str) else "")
def test_every_documented_command_exists_with_its_options(where, argv):
    assert check(argv) is None, f"{where}: {check(argv)}"


def test_the_checker_refuses_what_pymobiledevice3_refuses():
    assert check(["remote", "tunneld"]) is None and check(["doctor"]) is None
    assert "no command" in check(["mounter", "automount"])
    assert "no option --udidd" in check(["lockdown", "pair", "--udidd", "X"])
    assert "stops at a group" in check(["amfi"])
    assert "argument" in check(["usbmux", "list", "extra"])


def test_sudo_is_always_given_the_absolute_path():
    """`sudo pymobiledevice3 …` fails where sudo's secure_path drops the venv: the docs never say it."""
    for path in DOCS + SOURCES:
        assert not re.search(r"sudo pymobiledevice3", path.read_text()), path


def test_documented_commands_run_against_the_fake_phone(mux):
    """The read-only / harmless ones, through pymobiledevice3's own CLI, against the protocol-level fake."""
    from typer.testing import CliRunner

    from pymobiledevice3.__main__ import app

    phone = add_phone(mux, 1, developer_mode=False)
    listed = CliRunner().invoke(app, ["usbmux", "list"])
    assert listed.exit_code == 0 and phone.udid in listed.output
    revealed = CliRunner().invoke(app, ["amfi", "reveal-developer-mode", "--udid", phone.udid])
    assert revealed.exit_code == 0 and phone.amfi_actions == [0]
    mounted = CliRunner().invoke(app, ["mounter", "list", "--udid", phone.udid])
    assert mounted.exit_code == 0 and '"DiskImageType": "Developer"' in mounted.output
