"""What reaches the terminal: control sequences in untrusted strings are stripped (one function, every renderer),
piped tables keep full names, and library noise stays off stderr unless -v.

Real CLI (bench.cli.main in-process; a real `python -m bench` subprocess for the noise, since libraries log at import).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.report.escape import markdown, rich, terminal

HOSTILE = ("cat\x1b[2J\x1b[31mred\x1b[0m \x1b]0;pwned\x07title \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ "
           "\u202eevil\u202c \x9b2Jc1 bell\x07 nul\x00 [bold]markup[/bold]")


def test_escape_strips_every_kind_of_control_sequence():
    cleaned = terminal(HOSTILE)
    assert not any(ch in cleaned for ch in "\x1b\x07\x00\x9b\u202e\u202c")
    assert cleaned == "catred title link evil c1 bell nul [bold]markup[/bold]"
    assert terminal("two\nlines\ttab") == "two lines tab"
    assert terminal("two\nlines", multiline=True) == "two\nlines"
    assert terminal("café 中文 — ok") == "café 中文 — ok"
    assert rich("[bold]x") == "\\[bold]x"
    assert "\x1b" not in markdown(HOSTILE) and "\u202e" not in markdown(HOSTILE)


def _manifest(folder: Path, image_id: str, caption: str) -> Path:
    from eval_fixtures import shape_image

    folder.mkdir(parents=True, exist_ok=True)
    shape_image(0).save(folder / "a.png")
    path = folder / "m.jsonl"
    path.write_text(json.dumps({"image": "a.png", "image_id": image_id, "captions": [caption]}) + "\n")
    return path


def test_dataset_strings_reach_the_terminal_without_control_sequences(tmp_path, capsys):
    manifest = _manifest(tmp_path, "id\x1b]0;pwned\x07-1", HOSTILE)
    assert main(["data", "show", f"manifest:{manifest}"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "id-1" in out and "[bold]markup[/bold]" in out  # the text itself is kept, markup shown literally


def test_errors_quoting_untrusted_text_are_one_clean_line(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "captions": ["x"], "split": "te\x1b[2Jst\nforged line"}) + "\n")
    assert main(["data", "show", f"manifest:{manifest}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "\x1b" not in err and "unknown split" in err


def test_piped_tables_keep_full_names(tmp_path, capsys):
    long_id = "an-image-id-that-is-much-longer-than-any-column-of-an-eighty-column-terminal-would-allow-0123456789"
    manifest = _manifest(tmp_path, long_id, "a caption")
    assert main(["data", "show", f"manifest:{manifest}"]) == 0
    assert long_id in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    assert main(["trend", "--last", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--last" in err and "\n" not in err


@pytest.mark.slow
def test_library_noise_only_with_verbose(bad_input_template, tmp_path):
    """coremltools logs "Failed to load …" at import on Linux (no Core ML runtime) when a compressed variant's
    weights are first decompressed (an fp32 or fp16 one is read without coremltools): a healthy `bench eval` prints
    none of it on stderr; with -v it shows. Each run gets a fresh copy of the workspace (a second eval reads cached
    host weights and never imports coremltools)."""
    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict

    base = tmp_path / "base"
    shutil.copytree(bad_input_template, base)
    built = build_matrix(matrix_from_dict({"source": str(base / "tiny-ckpt"),
                                           "variants": [{"name": "q8", "quantize": {"bits": 8}}]}), base)
    assert not built.failed, built.failed

    def evaluate(name: str, *flags: str) -> subprocess.CompletedProcess:
        root = tmp_path / name
        shutil.copytree(base, root)
        variant = next((root / "models" / "variants").glob("q8-*"))
        env = {**os.environ, "BENCH_ROOT": str(root), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        return subprocess.run([sys.executable, "-m", "bench", *flags, "eval", str(variant), "--data",
                               f"manifest:{root}/data/manifest.jsonl", "--limit", "1", "--resamples", "100"],
                              env=env, capture_output=True, text=True, timeout=600)

    quiet = evaluate("quiet")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    loud = evaluate("loud", "-v")
    assert loud.returncode == 0, loud.stderr
    if sys.platform == "linux":  # no Core ML runtime here: coremltools says so at import, at WARNING level
        assert "WARNING coremltools" in loud.stderr and "Failed to load" in loud.stderr, loud.stderr
