"""Results are immutable once complete, and resume finishes what failed (issue 10, items 2 and 3).

- A complete run's directory is byte-identical (names, bytes and modification times of every file) after every
  later command except an explicit `bench report --out` into it; its report shows the eval records bound to it in
  run.json, whatever `bench eval` adds later.
- Resume is refused, changing nothing, for a complete run, a run another process is measuring, and a run of
  another workspace; failed and quarantined rounds are measured again and the run becomes complete.

Faked: the devices where named — tests/run_fixtures.FakeTarget (answers instantly), and the protocol-level fake
iPhone (tests/fake_iphone) whose runner crashes, a scenario the test sets. The pipeline test is real end to end on
the host (builder, host-torch measuring, bench.eval with sacrebleu, the report, the CLI).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from bench.errors import InputError
from bench.paths import Workspace
from bench.report.data import build_report
from bench.run.api import resume_run, start_run
from bench.run.config import RunConfig
from bench.run.lock import RunBusyError
from deploy_fixtures import DECODE, add_phone, make_variant, mux  # noqa: F401  (fixture)
from report_fixtures import copy_fixture
from run_fixtures import DeviceGone, FakeTarget, images, variants


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` (hidden ones too): sha256 of its bytes and its modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def config(**overrides) -> RunConfig:
    base = {"seed": 7, "evaluate": False, "report": False, "rounds": 3, "compute_units": ["cpuOnly"],
            "adaptive": {"ci_width": None}, "retry": {"attempts": 1, "backoff_s": 0.0, "quarantine_after": 2}}
    return RunConfig.model_validate({**base, **overrides})


def fake_run(root: Path, target: FakeTarget, **overrides):
    return start_run(config(**overrides), Workspace(root), targets=[target], variants=variants("fp16", "int8"),
                     images=images(3), sleep=lambda s: None)


def resume(root: Path, run, target: FakeTarget, **kw):
    return resume_run(run, Workspace(root), targets=[target], variants=variants("fp16", "int8"), images=images(3),
                      sleep=lambda s: None, **kw)


def bleu_by_variant(run_dir: Path) -> dict[str, float | None]:
    table = build_report(str(run_dir), explain=False).table
    return {variant: None if value is None or value != value else float(value)  # NaN: not shown
            for variant, value in zip(table["variant_id"], table["bleu"])}


# --- eval bindings ---------------------------------------------------------------------------------------------

def test_a_later_eval_of_another_dataset_never_changes_an_old_runs_report(tmp_path):
    root = copy_fixture(tmp_path)
    run_dir = root / "results" / "nightly-2026-11-28"
    before, files = bleu_by_variant(run_dir), snapshot(run_dir)
    bound = json.loads((run_dir / "run.json").read_text())["evals"]
    # What `bench eval fp32 --data <more images> --beams 3` leaves: a second, larger record of the same variant
    # (the report used to pick "the largest record", so this changed the old run's BLEU).
    folder = root / "results" / "evals" / "fp32-5129ba620814"
    record = json.loads(next(folder.glob("*.json")).read_text())
    record["dataset"] = {**record["dataset"], "n": 5000, "signature": "flickr30k|n:5000"}
    record["decoding"] = {**record["decoding"], "strategy": "beam", "beams": 3}
    record["metrics"]["bleu"]["score"] = 12.5
    (folder / "later.json").write_text(json.dumps(record))
    assert bleu_by_variant(run_dir) == before and before["fp32-5129ba620814"] is not None
    assert snapshot(run_dir) == files and set(bound) == set(before)


def test_an_eval_record_changed_after_the_run_is_not_shown_and_the_report_says_why(tmp_path):
    root = copy_fixture(tmp_path)
    run_dir = root / "results" / "nightly-2026-11-28"
    path = next((root / "results" / "evals" / "fp32-5129ba620814").glob("*.json"))
    record = json.loads(path.read_text())
    record["metrics"]["bleu"]["score"] = 99.0  # `bench eval --overwrite`, or damage
    path.write_text(json.dumps(record))
    report = build_report(str(run_dir), explain=False)
    assert bleu_by_variant(run_dir)["fp32-5129ba620814"] is None
    assert any("fp32-5129ba620814" in note and "changed afterwards" in note for note in report.notes)


def test_a_v1_run_is_migrated_and_says_its_quality_is_not_bound(tmp_path):
    root = copy_fixture(tmp_path)
    path = root / "results" / "nightly-2026-11-28" / "run.json"
    run = json.loads(path.read_text())
    run.pop("evals")
    path.write_text(json.dumps({**run, "schema_version": 1}))
    report = build_report(str(path.parent), explain=False)
    assert report.table["bleu"].notna().all()
    assert any("predates eval binding" in note for note in report.notes)


# --- resume refusals ---------------------------------------------------------------------------------------------

def test_resume_of_a_complete_run_is_refused_and_touches_nothing(tmp_path):
    outcome = fake_run(tmp_path, FakeTarget())
    assert outcome.status == "complete"
    before = snapshot(outcome.run_dir)
    again = FakeTarget()
    with pytest.raises(InputError, match="is complete"):
        resume(tmp_path, outcome.run_id, again)
    assert snapshot(outcome.run_dir) == before and again.measured == []


def test_a_run_of_another_workspace_is_not_resumed_from_here(tmp_path):
    target = FakeTarget(fail_calls={0: DeviceGone("unplugged", udid="fake1")})
    outcome = fake_run(tmp_path / "a", target, retry={"attempts": 1, "quarantine_after": 1})
    assert outcome.status == "incomplete"
    before = snapshot(outcome.run_dir)
    with pytest.raises(InputError, match="not in this workspace.*BENCH_ROOT="):
        resume(tmp_path / "b", outcome.run_dir, FakeTarget())
    assert snapshot(outcome.run_dir) == before and not (tmp_path / "b").exists()


def test_two_resumes_at_once_measure_each_job_once(tmp_path):
    outcome = fake_run(tmp_path, FakeTarget(fail_calls={0: DeviceGone("unplugged", udid="fake1")}),
                       retry={"attempts": 1, "quarantine_after": 1})
    assert outcome.status == "incomplete"
    started, release = threading.Event(), threading.Event()

    def held(variant_id, unit, rng):  # the first resume holds its first job until the second one was refused
        started.set()
        release.wait(30)
        return 1e7

    first_target = FakeTarget(latency=held)
    results = {}
    first = threading.Thread(target=lambda: results.update(first=resume(tmp_path, outcome.run_id, first_target)))
    first.start()
    assert started.wait(30)
    second_target = FakeTarget()
    before = snapshot(outcome.run_dir)
    with pytest.raises(RunBusyError, match="being measured right now"):
        resume(tmp_path, outcome.run_id, second_target)
    after = snapshot(outcome.run_dir)
    release.set()
    first.join(60)
    assert after == before and second_target.measured == []
    keys = [key for _, key in first_target.measured]
    assert results["first"].status == "complete" and len(keys) == len(set(keys)) == 2 * 3


# --- resume finishes what failed --------------------------------------------------------------------------------

def test_a_failed_round_of_a_series_that_already_stopped_is_measured_again_on_resume(tmp_path):
    # Round 0 fails on the device; rounds 1-3 reach the three rounds the stop rule asks for: the series stops with
    # round 0 failed, and a resume used to measure nothing and leave the run incomplete forever.
    outcome = fake_run(tmp_path, FakeTarget(fail_calls={0: DeviceGone("runner crashed", udid="fake1")}))
    assert outcome.status == "incomplete" and len(outcome.failures) == 2
    healthy = FakeTarget()
    resumed = resume(tmp_path, outcome.run_id, healthy)
    assert sorted(key for _, key in healthy.measured) == sorted(key for key, _ in outcome.failures)
    assert resumed.status == "complete" and not resumed.failures
    assert {e["state"] for e in resumed.data.manifest["jobs"].values()} == {"done"}
    with pytest.raises(InputError, match="is complete"):
        resume(tmp_path, outcome.run_id, FakeTarget())


def test_quarantine_is_recorded_with_its_reason_and_resume_completes_the_run(tmp_path):
    broken = FakeTarget(fail_calls={i: DeviceGone("developer mode off", udid="fake1") for i in range(99)})
    outcome = fake_run(tmp_path, broken)
    assert outcome.status == "incomplete" and outcome.quarantined == {"iphone-fake1": "2 failed jobs in a row"}
    resumed = resume(tmp_path, outcome.run_id, FakeTarget())
    assert resumed.status == "complete" and resumed.quarantined == {}
    target = resumed.data.manifest["targets"]["iphone-fake1"]
    assert target["state"] == "done" and target["reason"] is None
    (quarantine,) = target["quarantines"]
    assert quarantine["reason"] == "2 failed jobs in a row" and "developer mode off" in quarantine["last_error"]


def test_a_fake_iphone_whose_runner_crashes_first_is_completed_by_resume(mux, tmp_path):  # noqa: F811
    """The real deploy layer and pymobiledevice3 against the fake phone; its runner crashes in the first measuring
    job (a scenario set here), then works: the run stops its series with round 0 failed; resume completes it."""
    from bench.deploy import api
    from bench.run.targets.base import ImageItem, VariantRef
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 1)
    phone.faults.runner_crash_first_jobs = 1

    def target():
        return IPhoneTarget(phone.udid, name=phone.name, api=api, timeout_s=30, poll_s=0.05,
                            preprocess=lambda items, size, mode, variant=None: np.zeros((1, 3, size, size), "f4"))

    refs = [VariantRef(f"{name}-abcd", name, f"hash-{name}", path=make_variant(tmp_path / "v", f"{name}-abcd", i),
                       image_size=32, decode=DECODE) for i, name in enumerate(("fp16", "int8"))]
    items = [ImageItem(f"img-{i}", lambda: None) for i in range(2)]
    workspace = Workspace(tmp_path / "ws")
    outcome = start_run(config(rounds=2), workspace, targets=[target()], variants=refs, images=items,
                        sleep=lambda s: None)
    assert outcome.status == "incomplete"
    assert {key.rsplit("--", 1)[1] for key, _ in outcome.failures} == {"r000"}
    assert all("RunnerCrashed" in why for _, why in outcome.failures)
    resumed = resume_run(outcome.run_id, workspace, targets=[target()], variants=refs, images=items,
                         sleep=lambda s: None)
    assert resumed.status == "complete" and len(resumed.data.jobs) == 2 * 3


# --- a complete run never changes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def host_workspace(tmp_path_factory) -> Path:
    """fp32 and int8 of a tiny random BLIP, built for real (~10 s on one thread)."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from build_fixtures import save_tiny_captioner

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("integrity-ws")
    checkpoint = save_tiny_captioner(root / "tiny")
    matrix = {"source": str(checkpoint), "variants": [{"name": "fp32"}, {"name": "int8", "quantize": {"bits": 8}}]}
    (root / "matrix.yaml").write_text(json.dumps(matrix))  # JSON is YAML
    report = build_matrix(matrix_from_dict(matrix), Workspace(root))
    assert not report.failed, [r.error for r in report.failed]
    return root


@pytest.mark.slow
def test_a_complete_runs_directory_is_byte_identical_after_every_later_command(host_workspace, tmp_path,
                                                                                monkeypatch, capsys):
    from bench.cli import main

    root = host_workspace
    monkeypatch.setenv("BENCH_ROOT", str(root))
    monkeypatch.chdir(tmp_path)
    plan = tmp_path / "run.yaml"
    plan.write_text(f"matrix: {root / 'matrix.yaml'}\ntargets: [host-torch]\nimages: 2\nrounds: 1\neval_images: 4\n"
                    "host_threads: 1\nadaptive: {ci_width: null}\n")
    assert main(["run", str(plan), "--seed", "1"]) == 0
    (run_dir,) = [p.parent for p in (root / "results").glob("*/run.json")]
    run = run_dir.name
    bound = json.loads((run_dir / "run.json").read_text())["evals"]
    assert len(bound) == 2 and all(len(b["sha256"]) == 64 for b in bound.values())
    quality, before = bleu_by_variant(run_dir), snapshot(run_dir)
    assert all(value is not None for value in quality.values())
    fp32 = next(variant for variant in bound if variant.startswith("fp32"))
    other = tmp_path / "other-workspace"
    other.mkdir()

    later = [  # (argv, expected exit code, BENCH_ROOT)
        (["report", run], 0, root), (["report", run, "--format", "markdown"], 0, root),
        (["report", run, "--format", "html", "--out", str(tmp_path / "r.html")], 0, root),
        (["report", run, "--format", "csv", "--out", str(tmp_path / "r.csv")], 0, root),
        (["report", run, "--history", "3"], 0, root), (["report", "latest"], 0, root),
        (["compare", run, run], 0, root), (["trend"], 0, root), (["runs"], 0, root),
        (["explain", "int8", "fp32", "--run", run], 0, root), (["models", "ls"], 0, root),
        # A later evaluation of a variant of this run on other images, decoded with beam search:
        (["eval", fp32, "--data", "synthetic", "--limit", "6", "--beams", "2", "--threads", "1",
          "--resamples", "100"], 0, root),
        (["run", "--resume", run], 2, root), (["run", "--resume", str(run_dir)], 2, other),
        (["data", "export-synthetic", str(tmp_path / "export"), "--limit", "2"], 0, root),
        (["run", str(plan), "--seed", "2", "--no-eval", "--no-report"], 0, root),  # a new run, same workspace
    ]
    for argv, code, workspace in later:
        monkeypatch.setenv("BENCH_ROOT", str(workspace))
        assert main(argv) == code, (argv, capsys.readouterr())
        assert snapshot(run_dir) == before, argv
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    monkeypatch.setenv("BENCH_ROOT", str(root))
    assert bleu_by_variant(run_dir) == quality
    assert len(list((root / "results").glob("*/run.json"))) == 2


def test_a_pipeline_killed_while_evaluating_leaves_a_measured_run_that_resume_finishes(tmp_path, monkeypatch):
    """Measured but not yet evaluated and reported: the run is `measured`, not `complete` (which could never be
    resumed to bind its evals); resume measures nothing more and completes it. Faked: the device (FakeTarget) and
    the evaluation (not what is tested here)."""
    from bench.run import api

    plan = config(evaluate=True, report=False)
    first = api.start_run(plan, Workspace(tmp_path), targets=[FakeTarget()], variants=variants("fp16"),
                          images=images(3), sleep=lambda s: None, hold_lock=True)
    first.release()  # the process dies while evaluating: the kernel drops its lock, nothing else happens
    assert first.status == "complete"
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "measured"

    again = FakeTarget()
    monkeypatch.setattr(api, "_targets_and_executor", lambda config, names, workspace: ([again], None))
    monkeypatch.setattr(api, "open_images", lambda config: (images(3), {"spec": "given", "n": 3}))
    monkeypatch.setattr(api, "_planned_variants", lambda plan, workspace: variants("fp16"))
    evaluated = []
    monkeypatch.setattr(api, "evaluate_variants", lambda outcome, *a, **k: evaluated.append(outcome.run_id) or {})
    outcome = api.run_pipeline(plan, Workspace(tmp_path), resume=first.run_id, log=lambda *a: None)
    assert outcome.status == "complete" and evaluated == [first.run_id] and again.measured == []
    assert json.loads((first.run_dir / "run.json").read_text())["status"] == "complete"
    with pytest.raises(InputError, match="is complete"):
        api.run_pipeline(plan, Workspace(tmp_path), resume=first.run_id, log=lambda *a: None)
