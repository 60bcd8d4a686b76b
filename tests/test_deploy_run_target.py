"""The run stage's iPhone target (bench/run/targets/iphone.py) driving the protocol-level fake iPhone through
bench.deploy.api: resolve → conditions (status job) → one round (deploy + run + validated result → step results).

Faked: the phone (tests/fake_iphone) and image preprocessing (zeros instead of the captioner's tensors, to keep
torch out of this test). Real: pymobiledevice3 over sockets, the deploy layer, the contract validation.
"""

from __future__ import annotations

import numpy as np

from deploy_fixtures import DECODE, RUNNER, add_phone, make_variant, mux  # noqa: F401


def test_iphone_target_runs_a_round_on_the_fake(mux, tmp_path):
    from bench.run.targets import resolve_targets
    from bench.run.targets.base import ImageItem, RoundRequest, Step, VariantRef
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, 1)
    assert [t.udid for t in resolve_targets(["iphone"])] == [phone.udid]

    target = IPhoneTarget(phone.udid, poll_s=0.05,
                          preprocess=lambda images, size, mode, variant=None: np.zeros((1, 3, size, size), "f4"))
    conditions = target.conditions()
    assert (conditions.device_model, conditions.thermal_state) == ("iPhone14,2", "nominal")

    variant = VariantRef("int8-abcd", "int8", "hash", path=make_variant(tmp_path, "int8-abcd", 1), image_size=32,
                         decode=DECODE)
    steps = [Step("k-cpu", "s-cpu", variant, "cpuOnly", 0), Step("k-all", "s-all", variant, "all", 0)]
    request = RoundRequest(0, steps, [ImageItem("img-1", lambda: None)], warmup=1, repeats=3, compute_plan=False)
    results = {r.job_key: r for r in target.run_round(request, lambda: False)}
    assert set(results) == {"k-cpu", "k-all"}
    assert all(r.error is None and len(r.samples) == 3 and len(r.warmup) == 1 for r in results.values())
    assert any("step int8-abcd all" in line for line in target.log_lines)


def test_a_run_compiles_each_package_once_per_device(mux, tmp_path):
    """Compile once, measure many: a 3-round run of 3 variants on two units compiles each package exactly once on
    the phone (the fake runner counts its compiles as the Swift runner's compileModel calls would be); the first
    round's jobs carry the compile and cold-load times, every job its warm loads, and the records add up to the
    compiles that happened. Faked: the phone and Core ML's compile (a folder standing in for the .mlmodelc)."""
    from collections import Counter

    from bench.deploy.api import package_hashes
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem, VariantRef
    from bench.run.targets.iphone import IPhoneTarget
    from bench.store.runs import load_run

    phone = add_phone(mux, 1)
    variants = [VariantRef(f"{name}-{i:012x}", name, f"{i:012x}", path=make_variant(tmp_path / "v", f"{name}-{i:012x}", i),
                           image_size=32, decode=DECODE) for i, name in enumerate(("fp16", "int8", "prune"), start=1)]
    target = IPhoneTarget(phone.udid, poll_s=0.02,
                          preprocess=lambda images, size, mode, variant=None: np.zeros((1, 3, size, size), "f4"))
    config = RunConfig.model_validate({"seed": 3, "evaluate": False, "report": False, "rounds": 3, "warmup": 0,
                                       "adaptive": {"ci_width": None}, "compute_units": ["cpuOnly", "all"],
                                       "thermal": {"poll_s": 0.01}})
    outcome = start_run(config, Workspace(tmp_path), targets=[target], variants=variants,
                        images=[ImageItem("img-1", lambda: None)], run_id="compile-once")
    assert outcome.status == "complete", outcome.failures
    assert phone.measure_jobs == 3  # one runner job per round

    packages = {f"models/{sha}/{role}.mlpackage" for v in variants for role, sha in package_hashes(v.path).items()}
    assert Counter(phone.compiled_packages) == Counter({path: 1 for path in packages})  # 6 packages, once each
    kept = phone.container(RUNNER) / "Documents/bench/compiled/compile-once"
    assert len(list(kept.glob("*/*.mlmodelc"))) == len(packages)

    run = load_run(tmp_path / "results" / "compile-once")
    jobs = run.job_records.values()
    assert sum(job["load"]["compiles"] for job in jobs) == len(packages)
    for job in jobs:
        load, first_round = job["load"], job["round"] == 0
        assert (load["cold_load_ns"]["encoder"] is not None) == first_round, job["job_key"]
        assert (load["compile_ns"]["encoder"] is not None) == first_round
        assert load["reused_compiled"] == ([] if first_round else ["encoder", "decoder"])
        assert all(load["warm_load_ns"][p] for p in ("encoder", "decoder"))
    assert int(run.jobs["compiles"].sum()) == len(packages)
    from bench.report.data import build_report

    rows = build_report(str(run.run_dir)).table  # the report keeps the compile and cold-load times of the round that compiled
    assert len(rows) == 3 * 2 and rows["compile_ms"].notna().all() and rows["cold_load_ms"].notna().all()
    assert rows["warm_load_ms"].notna().all()
