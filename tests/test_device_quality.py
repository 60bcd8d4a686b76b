"""Device quality, piece by piece (fast): the decision rule on a quality delta, scoring device captions against the
host reference, the stored records (bound by sha256, migrated run.json), a failed quality job, and a host-torch run.

Real: sacreBLEU, pycocoevalcap, the run store, the scheduler. Faked: the device in the quality-job test (run_fixtures'
FakeTarget, answering instantly) — the end-to-end path over the protocol-level fake iPhone is
tests/test_device_quality_e2e.py.
"""

from __future__ import annotations

import json

import pytest

from bench.errors import RecordError
from bench.report import device_quality as dq
from bench.store import device_quality as store
from bench.store import records

REFERENCES = [
    ["a red circle left of a blue square", "red circle beside a blue square"],
    ["a green triangle above a yellow circle", "green triangle over a yellow circle"],
    ["two blue squares below a red triangle", "blue squares under a red triangle"],
    ["a yellow square right of a green circle", "yellow square beside a green circle"],
] * 5
CAPTIONS = [refs[0] for refs in REFERENCES]


def _host(captions=CAPTIONS):
    from bench.eval.metrics import score_corpus

    metrics = score_corpus(captions, REFERENCES, resamples=200).as_record()
    return {"dataset": {"signature": "synthetic:v1|n:20"}, "decoding": {"strategy": "greedy", "beams": 1,
                                                                         "max_length": 20},
            "metrics": metrics,
            "per_image": [{"image_id": f"img-{i}", "caption": c, "tokens": [i, 102], "references": REFERENCES[i]}
                          for i, c in enumerate(captions)]}


def _device(changed: dict[int, str] | None = None):
    changed = changed or {}
    return {"series_key": "fp32-abc--iphone-1--cpuAndNeuralEngine", "variant_id": "fp32-abc",
            "compute_unit": "cpuAndNeuralEngine", "target": {"kind": "iphone", "id": "iphone-1", "model": "iPhone15,2"},
            "dataset": {"signature": "synthetic:v1|n:20"}, "decoding": {"strategy": "greedy", "max_length": 20},
            "per_image": [{"image_id": f"img-{i}", "caption": changed.get(i, c),
                           "tokens": [i, 7, 102] if i in changed else [i, 102]} for i, c in enumerate(CAPTIONS)]}


def test_the_decision_rule_is_the_reports():
    assert dq.decide(0.1, -0.5, 0.6, 0.7, margin=1.0, n_images=40)["outcome"] == "SAME"
    assert dq.decide(-3.0, -5.0, -1.5, 0.001, margin=1.0, n_images=40)["outcome"] == "DIFFERENT"
    # The example: a real but small drop (CI excludes 0, estimate under the margin) is not DIFFERENT, and
    # UNKNOWN says how many images would decide.
    small = dq.decide(-0.8, -1.4, -0.2, 0.01, margin=1.0, n_images=40)
    assert small["outcome"] == "UNKNOWN" and small["more_images"] > 0 and "more images" in small["detail"]
    assert dq.decide(-0.8, -3.0, 1.4, 0.5, margin=1.0, n_images=40)["outcome"] == "UNKNOWN"


def test_unchanged_captions_are_same_with_the_host_numbers():
    result = dq.score(_device(), _host())
    assert result["changed"] == [] and result["changed_share"] == 0
    assert result["delta"]["bleu"] | {"detail": None} == {"delta": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0,
                                                          "outcome": "SAME", "more_images": None, "detail": None}
    assert result["device"]["bleu"]["score"] == result["host"]["bleu"]["score"]


def test_changed_captions_are_found_and_cost_bleu():
    bad = {1: "a", 5: "a", 9: "a", 13: "a", 17: "a"}
    result = dq.score(_device(bad), _host())
    assert result["changed"] == [f"img-{i}" for i in sorted(bad)] and result["changed_share"] == 0.25
    lo, hi = result["delta"]["bleu"]["ci95"]
    assert hi < 0 and result["delta"]["bleu"]["delta"] < -1
    assert result["delta"]["bleu"]["outcome"] == "DIFFERENT"
    assert result["device"]["bleu"]["score"] < result["host"]["bleu"]["score"]
    # exactly the numbers bench.eval gives the device's captions and the paired test (one pass of resamples here)
    from bench.eval.metrics import corpus_bleu, paired_bootstrap_scores, score_corpus

    captions = [bad.get(i, c) for i, c in enumerate(CAPTIONS)]
    assert result["device"]["bleu"]["score"] == pytest.approx(corpus_bleu(captions, REFERENCES)[0])
    alone = score_corpus(captions, REFERENCES, resamples=dq.RESAMPLES, seed=0)
    assert result["device"]["bleu"]["ci95"] == alone.bleu_ci95 and result["device"]["cider"]["ci95"] == alone.cider_ci95
    for metric in ("bleu", "cider"):
        paired = paired_bootstrap_scores(CAPTIONS, captions, REFERENCES, metric, n=dq.RESAMPLES, seed=0)
        assert result["delta"][metric]["ci95"] == pytest.approx(paired.ci95)
        assert result["delta"][metric]["p_value"] == paired.p_value
        assert result["delta"][metric]["delta"] == pytest.approx(paired.delta)


def test_records_of_other_images_or_decoding_are_not_compared():
    other = _device()
    other["dataset"]["signature"] = "synthetic:v1|n:30"
    assert "other images" in dq.comparable(other, _host())
    longer = _device()
    longer["decoding"]["max_length"] = 30
    assert "max_length" in dq.comparable(longer, _host())
    assert dq.comparable(_device(), _host()) is None


def test_a_bound_record_changed_afterwards_is_refused(tmp_path):
    payload = _device()
    binding = store.write_record(tmp_path, payload)
    run = {"device_quality": {payload["series_key"]: binding, "other--iphone-1--all": {"error": "RunnerTimeout"}}}
    found, notes = store.load_bound(tmp_path, run)
    assert list(found) == [payload["series_key"]] and found[payload["series_key"]]["per_image"][0]["tokens"] == [0, 102]
    assert notes == ["device quality of other--iphone-1--all not measured: RunnerTimeout"]
    path = tmp_path / binding["record"]
    path.write_text(path.read_text().replace('"img-0"', '"img-X"'))
    found, notes = store.load_bound(tmp_path, run)
    assert not found and "changed since the run stored it" in notes[0]
    with pytest.raises(RecordError, match="names"):
        store.read_bound(tmp_path, {**binding, "record": "../run.json"}, payload["series_key"])


def test_a_run_json_v2_migrates_to_no_device_quality():
    from bench.store.runs import RUN_VERSION  # (importing it registers bench.run)

    upgraded = records.upgrade({"schema": "bench.run", "schema_version": 2, "run_id": "r", "evals": {}}, "bench.run")
    # through every later migration too (v4 added `skipped`): the v3 step's answer must survive them
    assert upgraded["schema_version"] == RUN_VERSION and upgraded["device_quality"] is None


def test_a_failed_quality_job_leaves_the_run_incomplete_and_says_why(tmp_path, monkeypatch):
    """The FakeTargets' variants name no source checkpoint: their ids cannot be decoded, so the quality job fails —
    bound as an error in run.json, the run `incomplete` (resume asks again), the timed jobs untouched."""
    from bench.paths import Workspace
    from bench.run import api
    from bench.run.config import RunConfig
    from run_fixtures import FakeTarget, images, variants

    config = RunConfig.model_validate({"seed": 1, "rounds": 1, "images": 2, "warmup": 0, "eval_images": 3,
                                       "compute_units": ["all"], "report": False, "adaptive": {"ci_width": None}})
    monkeypatch.setattr(api, "open_images", lambda config, limit=None: (images(3), {"spec": "given", "n": 3}))
    phones = [FakeTarget(), FakeTarget(id="iphone-fake2", seed=1)]  # two phones: their quality jobs run in parallel
    outcome = api.start_run(config, Workspace(tmp_path), targets=phones, variants=variants("fp16"),
                            images=images(2), sleep=lambda s: None, device_quality=True)
    run = json.loads((outcome.run_dir / "run.json").read_text())
    assert len(run["device_quality"]) == 2  # both bound, neither lost to the other's rewrite
    assert all("source checkpoint" in binding["error"] for binding in run["device_quality"].values())
    assert outcome.status == "incomplete" and any("quality job" in key for key, _ in outcome.failures)
    assert all(entry["state"] == "done" for entry in run["jobs"].values())


def test_a_host_torch_run_says_device_quality_needs_a_phone(tmp_path):
    """Nothing else changes on host-torch: no device-quality rows, one note."""
    from bench.paths import Workspace
    from bench.report.data import build_report
    from bench.report.load import load_run
    from bench.run import api
    from bench.run.config import RunConfig
    from run_fixtures import FakeTarget, images, variants

    config = RunConfig.model_validate({"seed": 1, "rounds": 1, "images": 2, "warmup": 0, "compute_units": ["cpuOnly"],
                                       "report": False, "adaptive": {"ci_width": None}})
    host = FakeTarget(id="host-torch", kind="host-torch", name="host", label="host emulation (not Core ML)",
                      compute_units=("cpuOnly",))
    outcome = api.start_run(config, Workspace(tmp_path), targets=[host], variants=variants("fp16"),
                            images=images(2), sleep=lambda s: None, device_quality=True)
    assert json.loads((outcome.run_dir / "run.json").read_text())["device_quality"] == {}  # asked, nothing to do
    run = load_run(outcome.run_dir)
    run.evals = {run.jobs[0]["variant_id"]: _host()}
    report = build_report(run)
    assert report.device_quality == [] and dq.NEEDS_A_DEVICE in report.notes


def test_bench_explain_and_the_report_state_what_the_device_decoded(tmp_path, monkeypatch, capsys):
    """On the committed fixture run (tests/fixtures/report_run), device records bound for prune-0.20 and fp32 on the
    iPhone's `all` unit: prune-0.20 changed 5 of 20 captions, fp32 none. `bench explain` prints both findings and the
    Markdown report carries the device-quality table."""
    from bench.cli import main
    from report_fixtures import CURRENT, copy_fixture

    root = copy_fixture(tmp_path)
    run_dir = root / "results" / CURRENT.name
    manifest = json.loads((run_dir / "run.json").read_text())
    bound = {}
    for name in ("prune-0.20", "fp32"):
        variant_id = next(v for v in manifest["evals"] if v.rsplit("-", 1)[0] == name)
        job = json.loads((run_dir / "jobs" / f"{variant_id}__00008110-000A1B2C3D4E5F60__all.json").read_text())
        series_key = f"{variant_id}--{job['target']['id']}--all"
        host = json.loads((root / "results" / "evals" / manifest["evals"][variant_id]["record"]).read_text())
        changed = {i for i in range(0, 20, 4)} if name == "prune-0.20" else set()
        per_image = [{"image_id": item["image_id"], "tokens": [5, 102] if i in changed else item["tokens"],
                      "caption": "a a a" if i in changed else item["caption"]}
                     for i, item in enumerate(host["per_image"])]
        payload = {"series_key": series_key, "variant_id": variant_id, "compute_unit": "all",
                   "target": job["target"], "dataset": host["dataset"],
                   "decoding": {"strategy": "greedy", "max_length": host["decoding"]["max_length"]},
                   "per_image": per_image}
        bound[series_key] = store.write_record(run_dir, payload)
    manifest["device_quality"] = bound
    (run_dir / "run.json").write_text(json.dumps(manifest))

    monkeypatch.setenv("BENCH_ROOT", str(root))
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    assert main(["explain", "prune-0.20", "fp32", "--run", str(run_dir), "--compute-unit", "all"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "prune-0.20 on all units (Neural Engine allowed) of iPhone14,2" in printed
    assert "25% of captions change (5 of 20 images: img-000, img-004, img-008 (+2 more)), BLEU −" in printed
    assert "fp32 on all units (Neural Engine allowed) of iPhone14,2" in printed and "no caption changes" in printed
    assert main(["report", str(run_dir), "--format", "markdown", "--out", str(tmp_path / "r.md")]) == 0
    markdown = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "### Device quality: captions decoded on the device vs the host reference" in markdown
    assert "| prune-0.20 | iPhone14,2" in markdown and "5 (25%): img-000" in markdown
