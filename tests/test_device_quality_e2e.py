"""Device quality end to end: what the phone decodes for the evaluation subset, scored against the host reference.

Real: the built-in captioner's fp32 variant (coremltools conversion by bench.build), its host reference (bench.eval:
weights decompressed from the stored packages into PyTorch), `bench run`'s pipeline with `targets: [iphone]` (timed
rounds, then the untimed quality job through the deploy layer and pymobiledevice3 over sockets, result validation),
the device-quality records bound in run.json, sacreBLEU / pycocoevalcap scoring, the paired bootstrap, the report
(Markdown), the nightly verdicts, `bench explain`'s findings and the history database.

Faked, because it cannot exist on Linux: the iPhone (tests/fake_iphone) and, inside its runner stand-in, **Core ML
itself**: the fake cannot run a model, so what it decodes is the test's scenario (fake_iphone/captions.py) — on every
unit the ids the host reference decoded ("Core ML computes what PyTorch computes"), except on the Neural Engine, where
the scenario cuts the captions of a few chosen images short (as an fp16 overflow might). The host side only receives
the ids the runner writes into result.json; it must find exactly those images and a BLEU drop whose CI excludes 0.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bench.paths import BUILTIN_CAPTIONER_DIR
from deploy_fixtures import add_phone, mux, tunneld  # noqa: F401  (fixtures)
from fake_iphone.captions import CaptionScenario

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BUILTIN_CAPTIONER_DIR / "model.safetensors").is_file(),
                       reason="built-in captioner weights not shipped"),
]

EVAL_IMAGES = 30
CHANGED = 12  # images whose caption the Neural Engine cuts short in the scenario
CONFIG = {"seed": 0, "targets": ["iphone"], "variants": ["fp32"], "rounds": 1, "images": 2, "warmup": 0, "eval_images": EVAL_IMAGES,
          "compute_units": ["cpuOnly", "cpuAndNeuralEngine"], "compute_plan": False, "adaptive": {"ci_width": None},
          "runner_timeout_s": 120}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The built-in captioner's fp32 variant and its host reference (the eval record the pipeline then reuses)."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from bench.data.base import open_dataset
    from bench.eval.evaluation import EvalOptions, evaluate, open_subject
    from bench.paths import Workspace

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("device-quality-ws")
    report = build_matrix(matrix_from_dict({"source": "builtin", "variants": [{"name": "fp32"}]}), Workspace(root))
    assert not report.failed, [r.error for r in report.failed]
    workspace = Workspace(root)
    (variant,) = report.results
    captioner, subject = open_subject(str(workspace.variants_dir / variant.manifest.variant_id), workspace)
    dataset = open_dataset("synthetic", split="test", limit=EVAL_IMAGES, seed=0, skip_missing=False)
    host = evaluate(captioner, dataset, EvalOptions(threads=1, batch_size=8), subject=subject,
                    evals_dir=workspace.evals_dir)
    return workspace, {item.image_id: list(item.tokens) for item in host.per_image}, captioner.decode.eos_id


def _cut_short(tokens: list[int], eos: int) -> list[int]:
    return [*tokens[:2], eos]


def _run(workspace, mux, tunneld, scenario):  # noqa: F811
    from bench.run.api import run_pipeline
    from bench.run.config import RunConfig

    phone = next(iter(mux.devices.values()), None)
    if phone is None:  # the variants are iOS 17 packages (spec 8): an older phone would be skipped
        phone = add_phone(mux, 1, ios="17.5.1", build="21F90")
        tunneld.add(mux, phone)
    phone.captions = scenario
    outcome = run_pipeline(RunConfig.model_validate(CONFIG), workspace, log=lambda message: None)
    assert outcome.status == "complete", outcome.failures
    return outcome


def test_captions_decoded_on_the_phone_are_scored_and_neural_engine_changes_found(workspace, mux, tunneld):  # noqa: F811
    from bench.report import write_report
    from bench.report.data import build_report
    from bench.report.explain import device_quality_findings
    from bench.report.load import load_run
    from bench.store.history import device_captions

    ws, host_tokens, eos = workspace
    chosen = sorted(host_tokens)[3:3 + CHANGED]
    unchanged_night = CaptionScenario(tokens=host_tokens)
    first = _run(ws, mux, tunneld, unchanged_night)
    phone = next(iter(mux.devices.values()))  # the timed round compiled each package; the quality job reused them
    assert phone.compiled_packages and set(Counter(phone.compiled_packages).values()) == {1}
    changed_night = CaptionScenario(tokens=host_tokens, changed={
        "cpuAndNeuralEngine": {image: _cut_short(host_tokens[image], eos) for image in chosen}})
    second = _run(ws, mux, tunneld, changed_night)

    # Night 1: nothing changes anywhere — SAME, 0 changed, the device's BLEU is the host reference's.
    night1 = build_report(first.run_dir)
    assert {row["compute_unit"] for row in night1.device_quality} == {"cpuOnly", "cpuAndNeuralEngine"}
    for row in night1.device_quality:
        assert row["n_images"] == EVAL_IMAGES and row["changed"] == []
        assert row["delta"]["bleu"]["outcome"] == "SAME" and row["delta"]["bleu"]["ci95"] == [0.0, 0.0]
        assert row["device"]["bleu"]["score"] == row["host"]["bleu"]["score"] > 10

    # Night 2: the Neural Engine cut 8 captions short; the host finds exactly those images and a BLEU drop.
    run = load_run(second.run_dir)
    report = build_report(run, baseline=first.run_dir)
    rows = {row["compute_unit"]: row for row in report.device_quality}
    cpu, ane = rows["cpuOnly"], rows["cpuAndNeuralEngine"]
    assert cpu["changed"] == [] and cpu["delta"]["bleu"]["outcome"] == "SAME"
    assert sorted(ane["changed"]) == chosen and ane["changed_share"] == pytest.approx(CHANGED / EVAL_IMAGES)
    lo, hi = ane["delta"]["bleu"]["ci95"]
    assert hi < 0 and lo <= ane["delta"]["bleu"]["delta"] <= hi
    assert ane["delta"]["bleu"]["outcome"] == "DIFFERENT"
    assert ane["device"]["bleu"]["score"] < ane["host"]["bleu"]["score"]
    assert {i["image_id"] for i in ane["per_image"] if i["caption"] != i["host_caption"]} == set(chosen)

    # Nightly verdicts (after the report's Benjamini–Hochberg control): tonight's Neural Engine captions regressed
    # against last night's; the CPU's did not.
    device_verdicts = {v.key: v for v in report.verdicts if v.metric == "device BLEU"}
    (ane_verdict,) = [v for k, v in device_verdicts.items() if "cpuAndNeuralEngine" in k]
    (cpu_verdict,) = [v for k, v in device_verdicts.items() if "cpuOnly" in k]
    assert ane_verdict.outcome == "DIFFERENT" and ane_verdict.regression
    assert sorted(ane_verdict.extra["changed_vs_baseline"]) == chosen
    assert cpu_verdict.outcome == "SAME"

    # The report shows the device table with the host reference beside it; explain states the finding.
    markdown = write_report(report, "markdown", second.run_dir / "report-check.md").read_text(encoding="utf-8")
    from bench.report.html import view_model

    sections = {section["id"]: section for section in view_model(report)["sections"]}
    assert sections["device-quality"]["tables"][0]["columns"][5] == "BLEU host reference"
    assert "Device quality: captions decoded on the device vs the host reference" in markdown
    assert f"{CHANGED} ({CHANGED / EVAL_IMAGES:.0%})" in markdown
    (finding,) = device_quality_findings(run, (ane["variant_id"],), ane["target_id"], "cpuAndNeuralEngine")
    assert finding["sentence"].startswith("fp32 on the Neural Engine of ")
    assert f"{CHANGED / EVAL_IMAGES:.0%} of captions change" in finding["sentence"] and "BLEU −" in finding["sentence"]

    # The ids came home into the run's records and the history.
    stored = device_captions(ws.history_db, run_id=run.run_id)
    assert len(stored) == 2 * EVAL_IMAGES
    tokens = {(r.compute_unit, r.image_id): r.tokens for r in stored.itertuples()}
    assert json.loads(tokens[("cpuOnly", chosen[0])]) == host_tokens[chosen[0]]
    assert json.loads(tokens[("cpuAndNeuralEngine", chosen[0])]) == _cut_short(host_tokens[chosen[0]], eos)
