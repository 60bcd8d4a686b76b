"""`bench explain`: the seed's question ("why does the sparse model run slower?") answered from the fixture run's data."""

from __future__ import annotations

import re

import pytest

from bench.errors import InputError
from bench.report.explain import NEURAL_ENGINE, compute_plan_difference, explain, static_difference, unit_name
from bench.report.load import load_run
from report_fixtures import CURRENT


@pytest.fixture(scope="module")
def run():
    return load_run(CURRENT)


@pytest.fixture(scope="module")
def sparse_vs_dense(run):
    return explain(run, "prune-0.20", "fp32")


def test_defaults_pick_the_phone_and_all(sparse_vs_dense):
    assert sparse_vs_dense["target_kind"] == "iphone" and sparse_vs_dense["compute_unit"] == "all"


def test_measured_latency_delta_with_ci(sparse_vs_dense):
    latency = sparse_vs_dense["measured"]["latency"]
    assert latency["outcome"] == "DIFFERENT" and latency["regression"]
    assert latency["ci95"][0] > 0.5  # the 20 %-sparse model is > 50 % slower, CI included
    assert latency["extra"]["paired_by"] == "image"  # the fixture's samples carry image ids on both sides
    loads = {row["what"]: row for row in sparse_vs_dense["measured"]["loads"]}
    assert loads["first prediction"]["delta_ms"] > 0 and loads["cold load"]["delta_ms"] > 0


def test_static_part_shows_decompression_ops_and_formats(sparse_vs_dense):
    static = sparse_vs_dense["static"]
    added = {d["op"]: d["delta"] for d in static["decompression_ops"]}
    assert added["constexpr_sparse_to_dense"] > 0
    assert static["weight_formats"]["a"].get("sparse", 0) > 0 and "sparse" not in static["weight_formats"]["b"]
    assert static["bytes"]["total_bytes"]["a"] < static["bytes"]["total_bytes"]["b"]
    assert static["duplicated_tensors"]["a"]


def test_compute_plan_part_shows_ops_leaving_the_neural_engine(sparse_vs_dense):
    plan = sparse_vs_dense["compute_plan"]
    assert plan["off_neural_engine"]["count"] > 0
    assert all(m["b_unit"] == NEURAL_ENGINE and m["a_unit"] != NEURAL_ENGINE for m in plan["moved"])
    assert any(NEURAL_ENGINE in lost["units_lost"] for lost in plan["supported_lost"])
    added = {g["type"]: g for g in plan["added"]}
    assert added["constexpr_sparse_to_dense"]["count"] > 0 and added["constexpr_sparse_to_dense"]["est_ms"] > 0
    ne = [s for s in plan["unit_shares"] if s["unit"] == NEURAL_ENGINE]
    assert all(s["a_share"] < s["b_share"] for s in ne)
    assert "estimate" in plan["label"]


def test_answer_labels_every_per_op_time_an_estimate(sparse_vs_dense):
    answer = sparse_vs_dense["answer"]
    assert answer[0].startswith("prune-0.20 is") and "slower than fp32" in answer[0]
    assert any("left the Neural Engine" in line for line in answer)
    assert any("constexpr_sparse_to_dense" in line for line in answer)
    assert all("(estimate)" in line for line in answer if "≈" in line)


def test_the_pruning_sweep_is_explained(run):
    """Seed: 20 % sparse is slowest; 36 % and 48.8 % are faster than 20 % though smaller — fewer ops left the NE."""
    by_name = {name: explain(run, name, "fp32") for name in ("prune-0.20", "prune-0.36", "prune-0.488")}
    moved = {name: e["compute_plan"]["off_neural_engine"]["count"] for name, e in by_name.items()}
    assert moved["prune-0.20"] > moved["prune-0.36"] == moved["prune-0.488"] > 0
    slower = {name: e["measured"]["latency"]["relative"] for name, e in by_name.items()}
    assert slower["prune-0.20"] > slower["prune-0.36"]


def test_compute_unit_and_device_selection(run):
    result = explain(run, "prune-0.20", "fp32", device="iPhone14,2", compute_unit="cpuOnly")
    assert result["compute_unit"] == "cpuOnly" and result["compute_plan"] is None
    assert any("No compute plan" in line for line in result["answer"])
    host = explain(run, "int8", "fp32", device="host-torch")
    assert any("host emulation (not Core ML)" in line for line in host["answer"])


def test_errors_are_input_errors(run):
    with pytest.raises(InputError, match="did you mean"):
        explain(run, "prune-0.2", "fp32")
    with pytest.raises(InputError, match="no measurements of both"):
        explain(run, "prune-0.36", "fp32", compute_unit="cpuOnly")
    with pytest.raises(InputError, match="two different"):
        explain(run, "fp32", "fp32")


def test_unit_names():
    assert {unit_name(x) for x in ("neuralEngine", "ANE", "NeuralEngine")} == {NEURAL_ENGINE}
    assert unit_name("gpu") == "GPU" and unit_name("CPU") == "CPU"


def test_plan_diff_without_plans_is_none():
    assert compute_plan_difference(None, {"encoder": []}, {}, {}) is None
    assert static_difference(None, {}) is None


def test_every_sentence_of_the_answer_carries_its_numbers(sparse_vs_dense):
    assert all(re.search(r"\d", line) for line in sparse_vs_dense["answer"])
    cause = [line for line in sparse_vs_dense["answer"] if line.startswith("Cause:")]
    assert len(cause) == 1 and re.search(r"\d+% of the measured \+\d", cause[0])


def test_host_torch_never_claims_a_core_ml_cause(run):
    """host-torch runs dense PyTorch weights: no decompression or placement cause, whatever the verdict; stored
    differences appear only as what would matter on a phone."""
    host = explain(run, "int8", "fp32", device="host-torch")
    answer = " ".join(host["answer"])
    assert host["target_kind"] == "host-torch" and host["compute_plan"] is None
    assert not any(line.startswith("Cause:") for line in host["answer"])
    assert "Neural Engine" not in answer and "must be decompressed" not in answer
    static = [line for line in host["answer"] if "op(s)" in line]
    assert all(line.startswith("On a phone (not measured here)") for line in static)
    if host["measured"]["latency"]["outcome"] != "DIFFERENT":
        assert "slower" not in host["answer"][0] and "faster" not in host["answer"][0]


def test_loads_measured_differently_are_shown_but_not_compared(run):
    """Issue 16: a load that included one-time imports must not be set against one that did not."""
    import copy

    from bench.report.explain import measured_difference

    records = sorted(run.jobs, key=lambda r: r["job_key"])
    job_a = next(r for r in records if (r.get("load") or {}).get("cold_load_ns") is not None)
    job_b = copy.deepcopy(next(r for r in records if r["job_key"] != job_a["job_key"]
                               and r["target"]["id"] == job_a["target"]["id"]
                               and (r.get("load") or {}).get("cold_load_ns") is not None))
    same = measured_difference(run, job_a, job_b, "a", "b")
    assert {row["what"]: row for row in same["loads"]}["cold load"]["delta_ms"] is not None
    job_b["load"]["method"] = "host-torch/mmap-1: …"
    different = measured_difference(run, job_a, job_b, "a", "b")
    for row in different["loads"]:
        assert row["delta_ms"] is None and "not compared: measured differently" in row["note"]
    assert {row["what"]: row for row in different["loads"]}["cold load"]["b_ms"] is not None  # still shown
