"""Bring your own model on an iPhone: imported packages through `bench run` on the protocol-level fake iPhone to a
report with latency, compute plan and output drift — generic jobs (bench.generic-job v1) end to end.

Faked: the phone (tests/fake_iphone; its generic runner is generic_runner.py): Core ML's placement and timing, and
its outputs, which follow the scenario each test sets on the phone (`output_drift` per compute unit). The host is
never told the scenario: it recovers it from the outputs it pulled. Real: pymobiledevice3 over sockets, the deploy
layer, contract validation, the run, the store and the report.
"""

from __future__ import annotations

import json

import pytest

from bench.build import imported
from bench.cli import main
from bench.errors import InputError
from deploy_fixtures import add_phone, mux, tunneld  # noqa: F401
from byo_fixtures import workspace  # noqa: F401  (the fixture: a fresh BENCH_ROOT workspace)

CONV = ("dense", "pruned", "palettized", "int8")


def _ios17_phone(mux, tunneld, index: int, **kwargs):  # noqa: F811
    """A phone that can run the iOS 17 packages (spec 8) `bench run` resolves it for: older ones are skipped."""
    phone = add_phone(mux, index, ios="17.5.1", build="21F90", **kwargs)
    tunneld.add(mux, phone)
    return phone


def test_bench_run_measures_a_conv_family_and_recovers_the_neural_engine_drift(mux, tunneld, byo_packages, workspace,
                                                                              capsys):  # noqa: F811
    phone = _ios17_phone(mux, tunneld, 1, output_drift={"cpuOnly": 0.0, "cpuAndNeuralEngine": 0.05})
    imported.import_models([byo_packages[n] for n in CONV], workspace, family="conv")
    # evaluation on (the default): imported models get no caption quality jobs, and nothing fails for it
    code = main(["run", "--variants", ",".join(CONV), "--targets", "iphone", "--compute-units",
                 "cpuOnly,cpuAndNeuralEngine", "--fixed", "--rounds", "1", "--seed", "5"])
    out = capsys.readouterr()
    assert code == 0, out.err
    (run_dir,) = (workspace.results_dir).glob("2*")
    assert phone.measure_jobs == 1  # one generic job carried all 8 steps
    from bench.report.data import build_report

    report = build_report(str(run_dir))
    rows = report.table
    assert len(rows) == 8 and set(rows["n"]) == {8} and rows["cold_load_ms"].notna().all()
    drift = {(r["variant"], r["compute_unit"]): r for r in report.drift}
    for variant in CONV:
        assert drift[(variant, "cpuOnly")]["rel_l2"] == pytest.approx(0.0, abs=1e-6)
        assert drift[(variant, "cpuAndNeuralEngine")]["rel_l2"] == pytest.approx(0.05, rel=0.01)
        assert drift[(variant, "cpuAndNeuralEngine")]["top1_agreement"] is not None
    # compute plan, as Core ML's stand-in placed the ops (sparse decompression on the CPU under SPARSE_SLOWER)
    job = json.loads(next((run_dir / "jobs").glob("pruned-*cpuAndNeuralEngine*.json")).read_text())
    placed = {op["type"]: op["preferred"] for op in job["compute_plan"]["model"]}
    assert placed["constexpr_sparse_to_dense"] == "cpu"
    text = (run_dir / "report.md").read_text()
    assert "Output drift vs the family reference on cpuOnly" in text
    # static diff of the same variants works beside it
    assert main(["models", "diff", "dense", "pruned"]) == 0
    assert "constexpr_sparse_to_dense" in capsys.readouterr().out
    # bench explain says what the outputs did, with its numbers
    assert main(["explain", "pruned", "dense", "--run", run_dir.name, "--compute-unit", "cpuAndNeuralEngine"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "On cpuAndNeuralEngine, pruned's output 'scores' differs from dense on cpuOnly by 5.00%" in said
    # the next night the Neural Engine drifts twice as much: a drift regression, found against the first night
    phone.output_drift = {"cpuOnly": 0.0, "cpuAndNeuralEngine": 0.10}
    assert main(["run", "--variants", "dense,pruned", "--targets", "iphone", "--compute-units",
                 "cpuOnly,cpuAndNeuralEngine", "--fixed", "--rounds", "1", "--no-eval", "--seed", "6"]) == 0
    second = max((workspace.results_dir).glob("2*"), key=lambda p: p.stat().st_mtime)
    report = build_report(str(second), baseline=str(run_dir))
    verdicts = {v.key: v for v in report.verdicts if v.metric == "drift"}
    regressed = [v for v in verdicts.values() if v.regression]
    assert {v.key.split(" · ")[0] for v in regressed} == {"dense", "pruned"}
    assert all("cpuAndNeuralEngine" in v.key and v.outcome == "DIFFERENT" for v in regressed)
    assert all(v.outcome == "SAME" for k, v in verdicts.items() if "cpuOnly" in k)


def test_dtypes_enumerated_state_and_functions_on_the_phone(mux, byo_packages, workspace):
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 2, output_drift={"cpuOnly": 0.0, "all": 0.02})
    names = ["two_inputs", "enumerated", "stateful", "multifunction", "image_input", "neural_network"]
    imported.import_models([byo_packages[n] for n in names], workspace)
    config = RunConfig.model_validate({"variants": names, "targets": ["iphone"], "compute_units": ["cpuOnly", "all"],
                                       "rounds": 1, "repeats": 1, "warmup": 1, "evaluate": False, "report": False,
                                       "seed": 3, "adaptive": {"ci_width": None}, "generic": {"inputs": 3},
                                       "thermal": {"poll_s": 0.01}})
    outcome = start_run(config, workspace, targets=[IPhoneTarget(phone.udid, poll_s=0.02)],
                        images=[ImageItem("unused", lambda: None)])
    assert outcome.status == "complete", outcome.failures
    job = json.loads(phone.container("org.bench.runner").joinpath(
        "Documents/bench/jobs").glob("generic-*/job.json").__next__().read_text())
    models = {m["variant_id"].rsplit("-", 1)[0]: m for m in job["models"]}
    two = models["two_inputs"]["inputs"][0]["features"]
    assert [(f["name"], f["dtype"]) for f in two] == [("a", "float32"), ("b", "int32")]
    assert models["stateful"]["stateful"] is True and models["multifunction"]["function"] == "dense"
    assert models["enumerated"]["function"] is None
    (image,) = models["image_input"]["inputs"][0]["features"]
    assert (image["kind"], image["dtype"], image["shape"]) == ("image", "uint8", [8, 8, 3])
    from bench.report.data import build_report

    drift = {(r["variant"], r["compute_unit"], r["output"]): r for r in build_report(str(outcome.run_dir)).drift}
    assert drift[("two_inputs", "all", "sum")]["rel_l2"] == pytest.approx(0.02, rel=0.01)
    assert drift[("stateful", "all", "total")]["rel_l2"] == pytest.approx(0.02, rel=0.05)  # fp16 outputs
    assert drift[("multifunction", "all", "scores")]["n_inputs"] == 3
    assert drift[("image_input", "all", "colour")]["rel_l2"] == pytest.approx(0.02, rel=0.01)
    assert models["neural_network"]["package"].endswith("/model.mlmodel")  # a single file, pushed as one
    assert drift[("neural_network", "all", "y")]["rel_l2"] == pytest.approx(0.02, rel=0.01)


def test_outputs_over_the_cap_and_bad_inputs_on_the_phone(mux, byo_packages, workspace, tmp_path):
    import numpy as np

    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 3)
    imported.import_models([byo_packages["dense"], byo_packages["two_inputs"]], workspace)

    def run(names, **generic):
        config = RunConfig.model_validate({"variants": names, "targets": ["iphone"], "compute_units": ["cpuOnly"],
                                           "rounds": 1, "warmup": 0, "evaluate": False, "report": False, "seed": 1,
                                           "adaptive": {"ci_width": None}, "thermal": {"poll_s": 0.01},
                                           "generic": generic})
        return start_run(config, workspace, targets=[IPhoneTarget(phone.udid, poll_s=0.02)],
                         images=[ImageItem("unused", lambda: None)])

    outcome = run(["dense"], output_cap_bytes=100)
    assert outcome.status == "complete"
    record = json.loads(next((outcome.run_dir / "jobs").glob("dense-*.json")).read_text())
    assert record["outputs"]["files"] == [] and "over the job's cap of 100" in record["outputs"]["error"]
    assert not (outcome.run_dir / "outputs").exists()
    bad = tmp_path / "bad.npz"
    np.savez(bad, a=np.ones((1, 4), np.float32))
    jobs_before, runs_before = phone.measure_jobs, sorted(workspace.results_dir.iterdir())
    with pytest.raises(InputError, match=r"^two_inputs: .*missing 'b'"):  # was: a stored run of failed jobs
        run(["two_inputs"], inputs_from=str(bad))
    assert phone.measure_jobs == jobs_before  # refused on the host: nothing was sent
    assert sorted(workspace.results_dir.iterdir()) == runs_before  # nor any run stored


def test_bench_devices_prune_keeps_the_packages_of_imported_variants(mux, tunneld, byo_packages, workspace,
                                                                    capsys):  # noqa: F811
    """A prune keeps what local variants use, imported ones included: the next run pushes nothing again."""
    phone = _ios17_phone(mux, tunneld, 1)
    (dense,) = imported.import_models([byo_packages["dense"]], workspace)
    run = ["run", "--variants", "dense", "--targets", "iphone", "--compute-units", "cpuOnly", "--fixed", "--rounds",
           "1", "--no-eval", "--no-report", "--seed", "3"]
    assert main(run) == 0, capsys.readouterr().err
    from bench.deploy import api

    assert dense.manifest["content_sha256"] in api.held(phone.udid).models
    pushed = phone.model_bytes_written()
    assert main(["devices", "prune", "--device", phone.udid]) == 0, capsys.readouterr().err
    assert api.held(phone.udid).models == (dense.manifest["content_sha256"],)
    assert api.held(phone.udid).inputs == ()  # the generic job's inputs (inputs/<sha>.bin) go too
    assert main(run) == 0, capsys.readouterr().err
    assert phone.model_bytes_written() == pushed  # kept on the phone: nothing pushed again
    assert main(["devices", "prune", "--device", phone.udid, "--all"]) == 0
    assert api.held(phone.udid).models == ()  # --all still removes it
