"""End to end: "why does the 20 %-sparse model run slower?" answered from a run the harness actually performed.

Real: the variant builder (coremltools conversion + `prune_weights` / `linear_quantize_weights` of a tiny random BLIP
captioner, tests/build_fixtures.py), the synthetic images and their preprocessing, `bench run` (planning, rounds,
thermal gating, the store's records + Parquet), the deploy layer and pymobiledevice3 talking over sockets,
result validation, `bench explain`, the report (Markdown + HTML) and the CLI.

Faked, because it cannot exist on Linux: the iPhone (tests/fake_iphone, an iOS 17.5 phone behind a fake tunneld)
and, inside its runner stand-in, the **Core ML runtime's placement and timings** (tests/fake_iphone/coreml_model.py):
it reads the pushed packages' protobuf, places each op on CPU / GPU / Neural Engine by rules copied from what the
seed study observed (sparse decompression on the CPU; linear ops fed by a sparse weight fall off the Neural Engine;
affine/LUT decompression fused and cheap), reports that as the MLComputePlan, and derives every sample's latency from
that placement plus seeded noise. So this test checks that the harness carries a device's placement and timings
through run → store → explain → report and answers the question from them; it cannot check Apple's real placement
(only a Mac + iPhone can: docs/runner.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy_fixtures import add_phone, job_spec, make_inputs, make_variant, mux, tunneld  # noqa: F401  (fixtures)
from fake_iphone.coreml_model import SPARSE_FASTER, SPARSE_SLOWER, TIE

MATRIX = {"variants": [{"name": "fp32"}, {"name": "prune-0.2", "prune": {"sparsity": 0.2}},
                       {"name": "int8", "quantize": {"bits": 8}}]}


@pytest.fixture(scope="module")
def sweep_workspace(tmp_path_factory) -> Path:
    """fp32, prune-0.2 and int8 of the tiny captioner, built by the real builder (~8 s on one thread)."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from bench.paths import Workspace
    from build_fixtures import save_tiny_captioner

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("explain-ws")
    checkpoint = save_tiny_captioner(root / "tiny")
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), Workspace(root))
    assert not report.failed, [r.error for r in report.failed]
    return root


def _run_on_one_fake_iphone(workspace_root: Path, mux, tunneld, rules, *, rounds: int = 3, images: int = 3,  # noqa: F811
                            units: tuple[str, ...] = ("all", "cpuOnly"), names: tuple[str, ...] | None = None):
    """One run on a fake iPhone 15 Pro (iOS 17.5.1) whose Core ML stand-in follows the scenario `rules`."""
    from bench.deploy import api
    from bench.paths import Workspace
    from bench.run.api import built_variants, start_run
    from bench.run.config import RunConfig
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 1, ios="17.5.1", build="21F90", product_type="iPhone15,2",  # MLComputePlan needs 17.4+
                      coreml=rules)
    tunneld.add(mux, phone)
    target = IPhoneTarget(phone.udid, name=phone.name, api=api, timeout_s=60, poll_s=0.05)
    config = RunConfig.model_validate({"seed": 0, "rounds": rounds, "images": images, "warmup": 1,
                                       "compute_plan": True, "compute_units": list(units), "evaluate": False,
                                       "report": False, "adaptive": {"ci_width": None}})
    workspace = Workspace(workspace_root)
    variants = [v for v in built_variants(workspace) if names is None or v.name in names]
    outcome = start_run(config, workspace, targets=[target], variants=variants)
    assert outcome.status == "complete", outcome.failures
    return outcome


@pytest.mark.slow
def test_explain_answers_why_the_sparse_model_is_slower_from_a_fake_iphone_run(sweep_workspace, mux, tunneld,
                                                                                 monkeypatch, capsys):
    from bench.cli import main
    from bench.report import write_report
    from bench.report.data import build_report
    from bench.report.explain import NEURAL_ENGINE, explain
    from bench.report.html import view_model
    from bench.report.load import load_run

    outcome = _run_on_one_fake_iphone(sweep_workspace, mux, tunneld, SPARSE_SLOWER)
    run = load_run(outcome.run_dir)

    # The plans come from the run's own data: the phone's sparse decompression ran on the CPU.
    plans = outcome.data.compute_plans
    assert set(plans["compute_unit"]) == {"all", "cpuOnly"} and (plans["cost"].dropna() <= 1).all()
    sparse_ops = plans[plans["op_type"] == "constexpr_sparse_to_dense"]
    assert len(sparse_ops) and set(sparse_ops["preferred"]) == {"cpu"}
    assert set(sparse_ops["variant_id"]) == {v for v in run.variants if v.startswith("prune-0.2-")}

    on_all = explain(run, "prune-0.2", "fp32", compute_unit="all")
    latency = on_all["measured"]["latency"]
    assert latency["relative"] > 0.03 and latency["outcome"] == "DIFFERENT" and latency["regression"]
    assert on_all["measured"]["n_a"] == on_all["measured"]["n_b"] == 3 * 3  # rounds × images
    added = {d["op"]: d["delta"] for d in on_all["static"]["decompression_ops"]}
    assert added.get("constexpr_sparse_to_dense", 0) > 0  # measured from the stored packages, not the recipe
    plan = on_all["compute_plan"]
    off = plan["off_neural_engine"]
    assert off["count"] > 0 and set(off["to"]) <= {"GPU", "CPU"}
    assert {m["type"] for m in plan["moved"] if m["b_unit"] == NEURAL_ENGINE} >= {"linear"}
    assert any(NEURAL_ENGINE in row["units_lost"] for row in plan["supported_lost"])
    assert {g["type"] for g in plan["added"]} >= {"constexpr_sparse_to_dense"}
    # Every per-op time is labelled an estimate, in the data and in each printed sentence that states one.
    assert "estimate" in plan["label"]
    timed = [line for line in on_all["answer"] if "≈" in line]
    assert timed and all("estimate" in line for line in timed)
    assert any("left the Neural Engine" in line for line in on_all["answer"])
    assert any("constexpr_sparse_to_dense" in line for line in on_all["answer"])

    on_cpu = explain(run, "prune-0.2", "fp32", compute_unit="cpuOnly")
    assert on_cpu["compute_plan"]["off_neural_engine"]["count"] == 0
    assert not any("left the Neural Engine" in line for line in on_cpu["answer"])

    int8 = explain(run, "int8", "fp32", compute_unit="all")
    assert int8["measured"]["latency"]["relative"] < 0.03  # int8 stays on the Neural Engine: about as fast or faster
    assert int8["compute_plan"]["off_neural_engine"]["count"] == 0

    # The report of the same run carries the explanation (Markdown and the self-contained HTML).
    report = build_report(run)
    assert any(e["a"]["name"] == "prune-0.2" and e["b"]["name"] == "fp32" for e in report.explanations)
    markdown = write_report(report, "markdown", outcome.run_dir / "report.md").read_text(encoding="utf-8")
    html = write_report(report, "html", outcome.run_dir / "report.html").read_text(encoding="utf-8")
    section = markdown.split("### Pruned variants vs their dense twins (bench explain)", 1)[-1]
    assert re.search(r"prune-0\.2 vs fp32 on iPhone15,2 \(Fake 1\) / all\*\*: prune-0\.2 is [0-9.]+% slower", section)
    sections = {section["id"]: section for section in view_model(report)["sections"]}  # the HTML's data
    assert "explain" in sections and '"explain-0"' in html  # rendered in the browser from the embedded JSON
    on_all_section = next(section for key, section in sections.items()
                          if key.startswith("explain-") and section["title"].endswith("/ all"))
    assert any("left the Neural Engine" in line for line in on_all_section["answer"])
    assert "left the Neural Engine" in html and "constexpr_sparse_to_dense" in html

    # What a person types: `bench explain prune-0.2 fp32 --run <dir>` (also kept next to the run for the record).
    monkeypatch.setenv("COLUMNS", "160")
    capsys.readouterr()
    assert main(["explain", "prune-0.2", "fp32", "--run", str(outcome.run_dir)]) == 0
    printed = capsys.readouterr().out
    (outcome.run_dir / "explain.txt").write_text(printed, encoding="utf-8")
    assert "Neural Engine" in printed and "estimate" in printed and "constexpr_sparse_to_dense" in printed


SCENARIOS = {"sparse slower": SPARSE_SLOWER, "sparse faster on the Neural Engine": SPARSE_FASTER, "tie": TIE}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_explain_follows_the_evidence_whatever_the_scenario(sweep_workspace, mux, tunneld, scenario):  # noqa: F811
    """The fake phone's placement and timing rules are the test's scenario; `bench explain` reads only the run and
    must say slower + a cause with its share, faster without a decompression cause, or no measurable difference."""
    from bench.report.explain import explain
    from bench.report.load import load_run

    outcome = _run_on_one_fake_iphone(sweep_workspace, mux, tunneld, SCENARIOS[scenario], rounds=2, images=10,
                                      units=("all",), names=("fp32", "prune-0.2"))
    result = explain(load_run(outcome.run_dir), "prune-0.2", "fp32", compute_unit="all")
    latency, answer = result["measured"]["latency"], result["answer"]
    print(f"\n[{scenario}]\n" + "\n".join(answer))  # what a person reads (pytest -s shows it)
    assert latency["extra"]["paired_by"] == "image" and latency["extra"]["n_images"] == 10
    causes = [line for line in answer if line.startswith("Cause:")]
    if scenario == "sparse slower":
        assert latency["outcome"] == "DIFFERENT" and latency["regression"]
        assert "slower than fp32" in answer[0]
        assert len(causes) == 1 and re.search(r"\d+% of the measured \+", causes[0]) and "estimate" in causes[0]
    elif scenario == "tie":
        assert latency["outcome"] == "SAME"
        assert answer[0].startswith("No measurable difference") and not causes
    else:
        assert latency["outcome"] == "DIFFERENT" and not latency["regression"]
        assert "faster than fp32" in answer[0] and not causes
        assert any(line.startswith("No cause found in the recorded data") for line in answer)
    assert not any("slower" in line for line in answer[1:] if scenario != "sparse slower")


def test_the_fake_says_why_a_plan_is_missing_like_the_runner(mux, tunneld, tmp_path):  # noqa: F811
    """No plan on iOS < 17.4, and none for a package Core ML cannot read (the deploy tests' random-byte stand-ins):
    `compute_plan` null with `compute_plan_error`, as runner/BenchRunner/JobRunner.swift writes it; samples still
    come."""
    from bench.deploy import api

    variants = {"int8-abcd": make_variant(tmp_path / "variants", "int8-abcd", 4)}
    old = add_phone(mux, 1)  # iOS 16.7.2
    new = add_phone(mux, 2, ios="17.5.1", build="21F90", product_type="iPhone15,2")
    tunneld.add(mux, new)
    for phone, why in ((old, "MLComputePlan needs iOS 17.4 or later"), (new, "MLComputePlan failed: ")):
        report = api.deploy(phone.udid, job_spec(list(variants), compute_plan=True), variants, make_inputs())
        result = api.run_job(phone.udid, report.job_id, 30, poll_s=0.05)  # validated against the schema
        assert result["status"] == "complete"
        for step in result["steps"]:
            assert step["compute_plan"] is None and step["compute_plan_error"].startswith(why)
            assert len(step["samples"]) == 2 * 2  # repeats × inputs


def test_runner_feature_names_cover_every_decoder_input_of_a_real_variant(sweep_workspace):
    """The runner feeds only the inputs the job names: every input the builder's decoder declares must be named,
    or every decoder prediction on a phone fails (the attention mask once was not)."""
    from bench.build.variants import list_variants
    from bench.deploy.contract import DEFAULT_IO
    from bench.run.targets.iphone import _runner_io
    from bench.paths import Workspace
    from coremltools.proto import Model_pb2

    manifest = next(v for v in list_variants(Workspace(sweep_workspace)) if v.name == "fp32")
    names = {**DEFAULT_IO, **(_runner_io(manifest.io) or {})}
    spec = Model_pb2.Model()
    spec.ParseFromString((manifest.package_path("decoder") / "Data/com.apple.CoreML/model.mlmodel").read_bytes())
    declared = {feature.name for feature in spec.description.input}
    fed = {names["decoder_input_ids"], names["decoder_image_embeds"], names["decoder_attention_mask"]}
    assert declared <= fed, f"decoder inputs the runner would not feed: {declared - fed}"
