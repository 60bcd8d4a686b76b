"""Outputs are written only as regular files (bench/atomic.py): devices, FIFOs, sockets and symbolic links are refused
with one line before anything is written, and nothing a user put in an output folder is ever deleted.

Nothing is faked: real files, a real FIFO and real links in a temporary folder; /dev/null and /dev/full are only
looked at (lstat), never written, even if the policy were broken.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import atomic
from bench.cli import main
from bench.data import synthetic
from bench.errors import InputError


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_device_is_refused_not_replaced(device):
    if not Path(device).exists():
        pytest.skip(f"{device} does not exist here")
    with pytest.raises(InputError, match="character device"):
        atomic.check_target(device)


@pytest.mark.parametrize("writer", [
    lambda path: atomic.write_text(path, "x"),
    lambda path: atomic.write_json(path, {"a": 1}),
    lambda path: atomic.temporary_path(path).__enter__(),
])
def test_every_writer_refuses_links_fifos_and_folders_and_leaves_them_as_they_were(tmp_path, writer):
    real = tmp_path / "real.txt"
    real.write_text("mine")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "nowhere.txt")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    for target, kind in ((link, "symbolic link"), (dangling, "symbolic link"), (fifo, "named pipe"),
                         (folder, "a folder")):
        with pytest.raises(InputError, match=kind):
            writer(target)
    assert link.is_symlink() and os.readlink(link) == str(real) and real.read_text() == "mine"
    assert dangling.is_symlink() and not (tmp_path / "nowhere.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.txt", "folder", "link.txt", "pipe", "real.txt"]


def test_a_regular_file_is_still_replaced_atomically(tmp_path):
    path = tmp_path / "out.md"
    path.write_text("old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.md"]


def test_export_synthetic_never_deletes_a_users_file(tmp_path):
    out = tmp_path / "export"
    assert synthetic.export(out, split="test", limit=2) == 2
    photo = out / "holiday.jpg"
    photo.write_bytes(b"\xff\xd8 a user's photo")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(InputError, match="holiday.jpg"):
        synthetic.export(out, split="test", limit=3)
    assert sorted(p.name for p in out.iterdir()) == before and photo.read_bytes() == b"\xff\xd8 a user's photo"


def test_export_synthetic_refuses_a_linked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    with pytest.raises(InputError, match="symbolic link"):
        synthetic.export(link, split="test", limit=1)
    assert link.is_symlink() and not any(elsewhere.iterdir())


def test_cli_report_out_to_a_link_or_fifo_is_one_line_and_nothing_changes(tmp_path, monkeypatch, capsys):
    from report_fixtures import copy_fixture

    root = copy_fixture(tmp_path / "ws")
    monkeypatch.setenv("BENCH_ROOT", str(root))
    target = tmp_path / "mine.md"
    target.write_text("a user's notes")
    link = tmp_path / "report.md"
    link.symlink_to(target)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for out in (link, fifo):
        code = main(["report", "nightly-2026-11-28", "--format", "markdown", "--out", str(out)])
        line = _one_error_line(capsys.readouterr().err)
        assert code != 0 and "cannot write" in line and "wrote" not in line
    assert link.is_symlink() and target.read_text() == "a user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "mine.md", "report.md", "ws"]
