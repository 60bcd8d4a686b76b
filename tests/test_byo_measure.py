"""Bring your own model, measured: imported packages through a run on the `macos-coreml` target to a report with
latency, compute plan and output drift against the family's reference.

Faked: only the Core ML runtime (MLModel compile/load/predict, MLComputePlan), which cannot exist on Linux —
tests/byo_fixtures.FakeCoreML, whose outputs follow the scenario each test sets (a given relative drift per compute
unit). The host is never told the scenario: it must recover it from the outputs the run stored.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.build import imported
from bench.paths import Workspace
from bench.run.config import RunConfig
from bench.run.targets.base import ImageItem
from byo_fixtures import FakeCoreML

UNITS = ["cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    root = tmp_path / "ws"
    root.mkdir()
    monkeypatch.setenv("BENCH_ROOT", str(root))
    return Workspace(root)


def run(workspace, names, core_ml, **settings):
    from bench.run.api import start_run
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    config = RunConfig.model_validate({
        "variants": names, "targets": ["macos-coreml"], "compute_units": settings.pop("units", UNITS),
        "rounds": 1, "repeats": 2, "warmup": 1, "evaluate": False, "report": False, "seed": 7,
        "adaptive": {"ci_width": None}, "generic": {"inputs": 4, **settings}})
    outcome = start_run(config, workspace, targets=[MacCoreMLTarget(core_ml=core_ml)],
                        images=[ImageItem("unused", lambda: None)], sleep=lambda seconds: None)
    return outcome


def report_of(outcome, workspace):
    from bench.report.data import build_report

    return build_report(str(outcome.run_dir))


def test_a_conv_family_measured_with_drift_recovered(byo_packages, workspace):
    paths = [byo_packages[name] for name in ("dense", "pruned", "palettized", "int8")]
    imported.import_models(paths, workspace, family="conv")
    core_ml = FakeCoreML({"cpuOnly": 0.0, "cpuAndGPU": 0.001, "cpuAndNeuralEngine": 0.03})
    outcome = run(workspace, ["dense", "pruned", "palettized", "int8"], core_ml)
    assert outcome.status == "complete", outcome.failures
    report = report_of(outcome, workspace)
    # latency per variant × unit, from raw samples (2 repeats × 4 inputs), compile/load recorded
    rows = report.table[report.table["target_kind"] == "macos-coreml"]
    assert len(rows) == 12 and set(rows["n"]) == {8}
    assert rows["compile_ms"].notna().all() and rows["cold_load_ms"].notna().all()
    assert set(rows["precision"]) >= {"imported: sparse_to_dense", "imported: dense"}
    # the compute plan of each job is stored raw
    job = json.loads(next((outcome.run_dir / "jobs").glob("dense-*cpuAndNeuralEngine*.json")).read_text())
    assert job["compute_plan"]["model"][0]["preferred"] == "neuralEngine"
    assert job["conditions"]["function"] == "main"
    # drift: every variant against dense on cpuOnly, recovered without knowing the scenario
    drift = {(r["variant"], r["compute_unit"]): r for r in report.drift}
    assert len(drift) == 12
    for variant in ("dense", "pruned", "palettized", "int8"):
        assert drift[(variant, "cpuOnly")]["rel_l2"] == pytest.approx(0.0, abs=1e-6)
        assert drift[(variant, "cpuAndGPU")]["rel_l2"] == pytest.approx(0.001, rel=0.05)
        assert drift[(variant, "cpuAndNeuralEngine")]["rel_l2"] == pytest.approx(0.03, rel=0.01)
        assert drift[(variant, "cpuAndNeuralEngine")]["cosine"] > 0.999
        assert drift[(variant, "cpuAndNeuralEngine")]["top1_agreement"] is not None  # [1, 10] looks like scores
        assert drift[(variant, "cpuOnly")]["reference"].startswith("dense-")
    # the report shows it: a table and a plot per compute unit
    from bench.report import figures, markdown

    text = markdown.render_report(report)
    assert "Output drift vs the family reference on cpuOnly" in text and "cpuAndNeuralEngine" in text
    assert any(f["id"] == "drift" for f in figures.all_figures(report))
    # outputs are a small part of the run's bytes (default cap; tiny models)
    outputs = sum(p.stat().st_size for p in (outcome.run_dir / "outputs").rglob("*") if p.is_file())
    assert outputs > 0


def test_dtypes_enumerated_shapes_state_and_functions(byo_packages, workspace):
    names = ("two_inputs", "enumerated", "stateful", "multifunction")
    imported.import_models([byo_packages[n] for n in names], workspace)
    outcome = run(workspace, list(names), FakeCoreML(), units=["cpuOnly", "cpuAndNeuralEngine"])
    assert outcome.status == "complete", outcome.failures
    report = report_of(outcome, workspace)
    drift = {(r["variant"], r["compute_unit"], r["output"]): r for r in report.drift}
    assert drift[("two_inputs", "cpuAndNeuralEngine", "sum")]["rel_l2"] == pytest.approx(0.02, rel=0.01)
    assert drift[("enumerated", "cpuAndNeuralEngine", "pooled")]["n_inputs"] == 4
    assert drift[("stateful", "cpuAndNeuralEngine", "total")]["rel_l2"] == pytest.approx(0.02, rel=0.05)  # fp16
    assert ("multifunction", "cpuOnly", "scores") in drift  # the default function ("dense")
    # the chosen function of a multi-function package
    outcome = run(workspace, ["multifunction"], FakeCoreML(), units=["cpuOnly"], function="adder")
    job = json.loads(next((outcome.run_dir / "jobs").glob("multifunction-*.json")).read_text())
    assert job["conditions"]["function"] == "adder"
    assert {f["name"] for f in job["outputs"]["files"]} == {"sum"}
    # a chosen enumerated shape
    outcome = run(workspace, ["enumerated"], FakeCoreML(), units=["cpuOnly"], shapes={"x": [1, 3, 16, 16]})
    assert outcome.status == "complete", outcome.failures


def test_generated_inputs_follow_the_description(byo_packages, workspace):
    from bench.run.generic import GenericSettings, make_inputs

    manifests = {r.name: r.manifest for r in imported.import_models(
        [byo_packages[n] for n in ("two_inputs", "enumerated")], workspace)}
    sets = make_inputs(manifests["two_inputs"]["interface"], GenericSettings(inputs=3))
    assert [s.input_id for s in sets] == ["input-000", "input-001", "input-002"]
    assert sets[0].features["a"].dtype == np.float32 and sets[0].features["b"].dtype == np.int32
    again = make_inputs(manifests["two_inputs"]["interface"], GenericSettings(inputs=3))
    assert all(np.array_equal(x.features["a"], y.features["a"]) for x, y in zip(sets, again))  # seeded
    big = make_inputs(manifests["enumerated"]["interface"], GenericSettings(inputs=1, shapes={"x": [1, 3, 16, 16]}))
    assert big[0].features["x"].shape == (1, 3, 16, 16)


def test_npz_inputs_are_used_and_checked(byo_packages, workspace, tmp_path):
    from bench.errors import InputError
    from bench.run.generic import GenericSettings, make_inputs

    interface = imported.import_models([byo_packages["two_inputs"]], workspace)[0].manifest["interface"]
    good = tmp_path / "good.npz"
    np.savez(good, a=np.ones((5, 1, 4), np.float32), b=np.arange(20, dtype=np.int32).reshape(5, 1, 4))
    sets = make_inputs(interface, GenericSettings(inputs=8, source=str(good)))
    assert len(sets) == 5 and sets[4].features["b"].tolist() == [[16, 17, 18, 19]]
    for arrays, message in [({"a": np.ones((1, 4), np.float32)}, "missing 'b'"),
                            ({"a": np.ones((1, 5), np.float32), "b": np.ones((1, 4), np.int32)}, r"has shape \[1, 5\]"),
                            ({"a": np.ones((1, 4), np.float32), "b": np.full((1, 4), 0.5, np.float32)},
                             "'b' is float32 and holds 0.5"),
                            ({"a": np.ones((1, 4), np.float32), "b": np.ones((1, 4), np.int32),
                              "c": np.ones(1)}, "unknown 'c'")]:
        bad = tmp_path / "bad.npz"
        np.savez(bad, **arrays)
        with pytest.raises(InputError, match=message):
            make_inputs(interface, GenericSettings(source=str(bad)))


def test_bad_generic_inputs_are_refused_by_the_library_before_a_run_is_stored(byo_packages, workspace, tmp_path):
    # was: start_run stored a run whose every job failed "missing 'b'" (a measurement failure in the results, and a
    # resume that fails the same way); `bench run` refused up front. Both now share check_generic_inputs.
    from bench.errors import InputError

    imported.import_models([byo_packages["two_inputs"], byo_packages["enumerated"]], workspace)
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((1, 4), np.float32))
    with pytest.raises(InputError, match=r"^two_inputs: .*bad.npz: .*missing 'b'") as caught:
        run(workspace, ["two_inputs"], FakeCoreML(), units=["cpuOnly"], inputs_from=str(bad))
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="not one of its enumerated shapes"):
        run(workspace, ["enumerated"], FakeCoreML(), units=["cpuOnly"], shapes={"x": [1, 3, 9, 9]})
    assert not workspace.results_dir.exists() or not any(workspace.results_dir.iterdir())


def test_outputs_over_the_cap_are_not_kept_and_said(byo_packages, workspace):
    imported.import_models([byo_packages["dense"]], workspace)
    outcome = run(workspace, ["dense"], FakeCoreML(output_scale=1000), units=["cpuOnly"], output_cap_bytes=4096)
    assert outcome.status == "complete"  # latency is measured; the outputs alone are refused
    job = json.loads(next((outcome.run_dir / "jobs").glob("dense-*.json")).read_text())
    assert job["outputs"]["files"] == [] and "over the 4,096-byte cap" in job["outputs"]["error"]
    assert not (outcome.run_dir / "outputs").exists()
    report = report_of(outcome, workspace)
    assert any("over the 4,096-byte cap" in note for note in report.notes)


def test_damaged_outputs_are_refused_not_compared(byo_packages, workspace):
    imported.import_models([byo_packages["dense"]], workspace)
    outcome = run(workspace, ["dense"], FakeCoreML(), units=["cpuOnly", "cpuAndNeuralEngine"])
    stored = next((outcome.run_dir / "outputs").rglob("*.npy"))
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0x01
    stored.write_bytes(bytes(data))
    report = report_of(outcome, workspace)
    assert any("changed since the run stored it" in note for note in report.notes)


def test_the_family_reference_joins_a_run_that_names_only_a_compressed_variant(byo_packages, workspace):
    imported.import_models([byo_packages["dense"], byo_packages["int8"]], workspace, family="conv")
    outcome = run(workspace, ["int8"], FakeCoreML({"cpuOnly": 0.0, "cpuAndNeuralEngine": 0.04}),
                  units=["cpuOnly", "cpuAndNeuralEngine"])
    assert outcome.status == "complete", outcome.failures
    assert any(note.startswith("added dense-") for note in outcome.notes)
    drift = {(r["variant"], r["compute_unit"]): r for r in report_of(outcome, workspace).drift}
    assert drift[("int8", "cpuAndNeuralEngine")]["rel_l2"] == pytest.approx(0.04, rel=0.01)


def test_an_input_that_cannot_be_generated_is_one_line(byo_packages, workspace):
    """A string input (what describe_interface reports for a stringType feature): nothing can feed it — the line used
    to send users to an .npz, which could not feed it either."""
    import copy

    from bench.errors import InputError
    from bench.run.generic import GenericSettings, make_inputs

    interface = copy.deepcopy(imported.import_models([byo_packages["two_inputs"]], workspace)[0].manifest["interface"])
    interface["functions"]["main"]["inputs"][1] = {"name": "b", "optional": False, "kind": "scalar", "dtype": "string"}
    with pytest.raises(InputError, match=r"input 'b' is a scalar string, which generic jobs cannot feed") as caught:
        make_inputs(interface, GenericSettings())
    assert "\n" not in str(caught.value)
