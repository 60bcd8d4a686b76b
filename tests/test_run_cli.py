"""The `bench run` / `bench runs` / `bench compare` / `bench trend` commands: bad input is one line, exit code 2.

Runs are produced by the real scheduler against in-test fake devices (tests/run_fixtures.py); the CLI is the real
entry point (bench.cli.main)."""

from __future__ import annotations

import os

import pytest

from bench.cli import main
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from run_fixtures import FakeTarget, images, variants


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    return Workspace(tmp_path)


def fake_run(workspace, run_id, os_build="22A3354"):
    config = RunConfig.model_validate({"seed": 1, "evaluate": False, "report": False, "compute_units": ["cpuOnly"],
                                       "adaptive": {"ci_width": None}})
    return start_run(config, workspace, targets=[FakeTarget(os_build=os_build)], variants=variants("fp16"),
                     images=images(4), run_id=run_id)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_unknown_compute_unit_is_one_line_with_a_suggestion(workspace, capsys):
    assert main(["run", "--compute-units", "cpuAndNE", "--no-eval", "--no-report"]) == 2
    assert "unknown compute unit 'cpuAndNE'; did you mean" in one_error_line(capsys)


def test_unknown_variant_is_refused_before_anything_is_built(workspace, capsys):
    assert main(["run", "--variants", "prune-02", "--no-eval", "--no-report"]) == 2
    assert "unknown variant 'prune-02'; did you mean 'prune-0.2'" in one_error_line(capsys)
    assert not workspace.variants_dir.exists()  # minutes of conversion were not spent on a typo


def test_bad_run_yaml_names_file_and_line(workspace, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("images: 4\nadaptive:\n  ci_widht: 0.01\n")
    assert main(["run", str(config)]) == 2
    assert f"{config}:3: adaptive.ci_widht: unknown key" in one_error_line(capsys)


def test_resume_of_a_corrupt_manifest_is_a_clear_error(workspace, capsys):
    outcome = fake_run(workspace, "broken")
    (outcome.run_dir / "run.json").write_text("{ not json")
    assert main(["run", "--resume", "broken"]) == 2
    assert "run manifest is damaged" in one_error_line(capsys)
    assert main(["run", "--resume", "brokne"]) == 2
    assert "did you mean 'broken'" in one_error_line(capsys)


def test_runs_compare_and_trend(workspace, capsys):
    fake_run(workspace, "r1")
    fake_run(workspace, "r2")
    fake_run(workspace, "r3", os_build="22B83")
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "complete" in out
    assert main(["compare", "r1", "r2"]) == 0
    assert "fp16" in capsys.readouterr().out
    assert main(["compare", "r1", "r3"]) == 2
    assert "not comparable" in one_error_line(capsys)
    assert main(["compare", "r1", "r3", "--force"]) == 0
    assert "forced despite" in capsys.readouterr().out
    assert main(["trend", "--variant", "fp16"]) == 0
    assert capsys.readouterr().out.count("fp16") >= 3


def test_live_view_and_summary_show_progress_failures_and_why(tmp_path):
    """The rich live view renders per-device rows while a run goes on; the summary names each failure and why."""
    from rich.console import Console

    from bench.run.api import _settings
    from bench.run.progress import LiveProgress, print_summary

    config = RunConfig.model_validate({"seed": 1, "evaluate": False, "report": False, "compute_units": ["cpuOnly"],
                                       "rounds": 2, "adaptive": {"ci_width": None}})
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    live = LiveProgress(console, _settings(config).rule, images=4)
    target = FakeTarget(step_errors={"int8": "Core ML refused the model"}, thermal=["serious", "nominal"])
    with live:
        outcome = start_run(config, Workspace(tmp_path), targets=[target], variants=variants("fp16", "int8"),
                            images=images(4), observer=live, sleep=lambda s: None)
        console.print(live)
    print_summary(console, outcome)
    text = console.export_text()
    assert "fake phone" in text and "nominal" in text and "done" in text
    assert "Core ML refused the model" in text and "resume with: bench run --resume" in text
    assert "fixed" in text and "fp16" in text


@pytest.mark.parametrize("damage", [
    lambda run: run.pop("run_id"),
    lambda run: run.pop("plan"),
    lambda run: run["plan"]["config"].update(images="many"),
    lambda run: run["plan"].update(targets=[{"name": "no id"}]),
    lambda run: run.update(jobs={"x": {"attempts": 1}}),
])
def test_a_run_json_that_parses_but_lacks_what_resume_needs_is_one_line(workspace, capsys, damage):
    import json

    outcome = fake_run(workspace, "damaged")
    path = outcome.run_dir / "run.json"
    run = json.loads(path.read_text())
    damage(run)
    path.write_text(json.dumps(run))
    assert main(["run", "--resume", "damaged"]) == 2
    assert "run.json" in one_error_line(capsys)
    assert main(["runs"]) == 0  # the listing shows the other runs, never a traceback
