"""Bad input, all of it: every case of tests/bad_input_cases.py through the real CLI entry point (bench.cli.main) ends
in a non-zero exit, one line on stderr naming the damaged file or option, no traceback, and nothing stored changed.

Nothing is faked: the readers, coremltools, duckdb and pyarrow meet the damaged bytes themselves."""

from __future__ import annotations

import shutil

import pytest

from bad_input_cases import CASES, snapshot
from bench.cli import main


@pytest.fixture
def workspace(bad_input_template, tmp_path, monkeypatch):
    root = tmp_path / "ws"
    shutil.copytree(bad_input_template, root)
    monkeypatch.setenv("BENCH_ROOT", str(root))
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, workspace, capsys):
    argv = case.damage(workspace)
    before = snapshot(workspace)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code not in (0, 3), (code, err)  # 3 = the "unexpected … please report" fallback
    assert err.count("\n") == 0 and err.startswith("error: "), err
    assert "Traceback" not in err and "please report" not in err, err
    assert case.expect in err, err
    assert snapshot(workspace) == before
