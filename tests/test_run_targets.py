"""Full runs against the real targets that exist on Linux.

- host-torch: a tiny BLIP captioner (tests/build_fixtures.py) built by the real builder (coremltools conversion +
  int8 quantisation) and measured by the real host target (decompressed weights in PyTorch). Nothing faked.
- iphone: the protocol-level fake iPhones (tests/fake_iphone) behind the real pymobiledevice3 client and the real
  deploy API. Faked: only what cannot exist here — the device, its Core ML runtime (the runner stand-in returns
  seeded latencies) and the tunnel. Pixel preprocessing is replaced by zeros (the fake runner never reads them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.paths import Workspace
from bench.run.api import built_variants, resume_run, start_run
from bench.run.config import RunConfig
from bench.run.plan import variant_ref
from bench.run.targets import resolve_targets
from bench.run.targets.base import HOST_EMULATION_LABEL, ImageItem, VariantRef
from deploy_fixtures import DECODE, add_phone, make_variant, mux  # noqa: F401  (mux is a fixture)


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> Path:
    """A workspace with two variants (fp32, int8) of a tiny random BLIP, built for real."""
    import torch

    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict
    from build_fixtures import save_tiny_captioner

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run-ws")
    checkpoint = save_tiny_captioner(root / "tiny")
    matrix = matrix_from_dict({"source": str(checkpoint),
                               "variants": [{"name": "fp32"}, {"name": "int8", "quantize": {"bits": 8}}]})
    report = build_matrix(matrix, Workspace(root))
    assert not report.failed, [r.error for r in report.failed]
    return root


@pytest.mark.slow
def test_host_torch_run_measures_the_deployed_weights_and_labels_them_emulation(tiny_workspace):
    from bench.data.base import open_dataset  # noqa: F401  (the default image source must exist)

    workspace = Workspace(tiny_workspace)
    config = RunConfig.model_validate({"targets": ["host-torch"], "images": 3, "rounds": 2, "seed": 5,
                                       "evaluate": False, "report": False,
                                       "adaptive": {"ci_width": None}})
    outcome = start_run(config, workspace)
    assert outcome.status == "complete", outcome.failures
    jobs, samples = outcome.data.jobs, outcome.data.samples
    assert set(jobs["target_label"]) == {HOST_EMULATION_LABEL} and set(jobs["compute_unit"]) == {"cpuOnly"}
    assert len(jobs) == 2 * 2 and (~samples["is_warmup"]).sum() == 2 * 2 * 3
    first = jobs[jobs["round"] == 0]
    assert first["cold_load_decoder_ns"].isna().all() and first["compile_encoder_ns"].isna().all()  # no compile
    records = [r for r in outcome.data.job_records.values() if r["round"] == 0]
    assert all(r["load"]["compile_ns"] is None and r["load"]["cold_load_ns"]["total"] > 0 for r in records)
    assert all(r["load"]["warm_load_ns"]["total"] > 0 for r in records)
    # Both tiny models stay resident: round 1 loads nothing, so it has no first prediction (that one faults the
    # mapped weights in) to mix into the report's median.
    assert all(r["load"]["first_prediction_ns"] > 0 for r in records)
    resident = [r["load"] for r in outcome.data.job_records.values() if r["round"] == 1]
    assert resident and all(load["cold_load_ns"] is None and load["warm_load_ns"] is None
                            and load["first_prediction_ns"] is None for load in resident)
    measured = samples[~samples["is_warmup"]]
    assert (measured["latency_ns"] == measured["encoder_ns"] + measured["decoder_ns"]).all()
    assert (measured["decoder_steps"] >= 1).all() and measured["thermal_state"].isna().all()
    assert all(r["conditions"]["torch_threads"] == 1 and r["conditions"]["versions"]["torch"] for r in records)
    assert all(r["quality"]["captions"] for r in records)  # per-image captions kept with the timings
    hashes = {v.variant_id: v.variant_hash for v in built_variants(workspace)}
    assert dict(zip(jobs["variant_id"], jobs["variant_hash"])) == hashes


@pytest.mark.slow
def test_host_torch_keeps_a_bounded_number_of_variants_and_labels_every_load(tiny_workspace):
    """One resident model at a time: every job after the first loads again (a warm reload after eviction), loads
    say how they were measured, and the weights are the mapped, hash-verified host weights."""
    from bench.build import host_weights
    from bench.run.targets.host_torch import LOAD_METHOD, HostTorchTarget

    workspace = Workspace(tiny_workspace)
    config = RunConfig.model_validate({"targets": ["host-torch"], "images": 1, "rounds": 2, "seed": 2,
                                       "evaluate": False, "report": False, "adaptive": {"ci_width": None}})
    target = HostTorchTarget(resident_variants=1)
    outcome = start_run(config, workspace, targets=[target])
    assert outcome.status == "complete", outcome.failures
    records = sorted(outcome.data.job_records.values(), key=lambda r: min(s["t_ns"] for s in r["warmup"] + r["samples"]))
    assert all(r["load"]["method"] == LOAD_METHOD for r in records)
    cold = [r for r in records if r["load"]["cold_load_ns"] is not None]
    assert sorted(r["variant_id"] for r in cold) == sorted(v.variant_id for v in built_variants(workspace))
    for previous, record in zip([None, *records], records):  # a job loads exactly when the previous one ran another
        loaded = record["load"]["cold_load_ns"] is not None or record["load"]["warm_load_ns"] is not None
        assert loaded == (previous is None or previous["variant_id"] != record["variant_id"])
    for variant in built_variants(workspace):
        assert host_weights.stored(variant.path) is not None  # materialised once, next to the variant


@pytest.mark.slow
def test_host_torch_timed_loads_neither_hash_nor_rebuild_host_weights(tiny_workspace, tmp_path, monkeypatch):
    """A load's figure excludes hashing and decompression (LOAD_METHOD): host weights whose stat changed mid-run are
    re-hashed, and deleted ones rebuilt, before the timed window, never inside it. Faked: the child process that
    materialises (`materialise_in_child` runs the same `materialise` here: a child costs seconds of imports)."""
    import shutil

    from bench.build import host_weights, integrity
    from bench.build.variants import load_variant
    from bench.run.targets.host_torch import HostTorchTarget, captioner_for_variant

    work = {"timed": False, "hashed": 0, "in_window": 0}
    digest_file, materialise = integrity.digest_file, host_weights.materialise

    def counting(function):
        def counted(*args, **kwargs):
            work["hashed"] += function is digest_file
            work["in_window"] += work["timed"]
            return function(*args, **kwargs)
        return counted

    def timed_load(variant):
        work["timed"] = True
        try:
            return captioner_for_variant(variant)
        finally:
            work["timed"] = False

    monkeypatch.setattr(integrity, "digest_file", counting(digest_file))
    monkeypatch.setattr(host_weights, "materialise", counting(materialise))
    monkeypatch.setattr(host_weights, "materialise_in_child",
                        lambda manifests: [host_weights.materialise(m, m.directory) for m in manifests])
    copies = []
    for variant in built_variants(Workspace(tiny_workspace)):  # copies: this test deletes and touches their files
        shutil.copytree(variant.path, tmp_path / variant.path.name)
        copies.append(variant_ref(load_variant(tmp_path / variant.path.name), tmp_path / variant.path.name))
    target = HostTorchTarget(load_captioner=timed_load, resident_variants=1, measure_warm_load=False)
    target._sizes = target._prepare(copies)
    first, second = copies
    target._captioner(first)
    stored = host_weights.stored(first.path)
    stored.path.unlink()  # deleted mid-run ...
    target._captioner(second)  # ... while `first` is evicted
    _, load = target._captioner(first)
    assert load["warm_load_ns"]["total"] > 0 and host_weights.stored(first.path).path == stored.path  # rebuilt
    os.utime(host_weights.stored(second.path).path)  # its stat changes: hashed again before its next load
    hashed = work["hashed"]
    target._captioner(second)
    assert work["hashed"] > hashed and work["in_window"] == 0


@pytest.mark.slow
def test_host_torch_measures_the_intact_variants_when_one_is_damaged(tiny_workspace, tmp_path, monkeypatch):
    """One variant whose host weights are damaged fails its own jobs (one line); the others of the round are still
    measured. Faked: the child process that materialises (the same `materialise`, in this process)."""
    import shutil

    from PIL import Image

    from bench.build import host_weights
    from bench.build.variants import load_variant
    from bench.run.targets.base import RoundRequest, Step
    from bench.run.targets.host_torch import HostTorchTarget

    monkeypatch.setattr(host_weights, "materialise_in_child",
                        lambda manifests: [host_weights.materialise(m, m.directory) for m in manifests])
    refs = {}
    for variant in built_variants(Workspace(tiny_workspace)):
        copy = tmp_path / variant.path.name
        shutil.copytree(variant.path, copy, ignore=shutil.ignore_patterns(host_weights.DIRECTORY))
        manifest = load_variant(copy)
        host_weights.materialise(manifest, copy)
        refs[variant.name] = variant_ref(manifest, copy)
    damaged = host_weights.stored(refs["int8"].path).path
    with open(damaged, "r+b") as handle:
        handle.seek(damaged.stat().st_size - 1)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([last[0] ^ 1]))
    steps = [Step(f"{name}-job", f"{name}-series", ref, "cpuOnly", 0) for name, ref in refs.items()]
    image = ImageItem("black", load=lambda: Image.new("RGB", (32, 32)))
    results = {r.job_key: r for r in HostTorchTarget().run_round(RoundRequest(0, steps, [image], warmup=0),
                                                                 lambda: False)}
    assert "content changed since it was built" in results["int8-job"].error
    assert results["fp32-job"].error is None and len(results["fp32-job"].samples) == 1


def test_host_weights_of_another_variant_are_refused(tiny_workspace, tmp_path):
    """A host-weights file copied over from another variant hashes to its own name like an intact one: it must be
    refused, not measured as this variant."""
    import shutil

    from bench.build import host_weights
    from bench.build.variants import load_variant
    from bench.errors import DamagedError
    from bench.run.targets.host_torch import prepare_variants

    copies = {}
    for variant in built_variants(Workspace(tiny_workspace)):
        shutil.copytree(variant.path, tmp_path / variant.path.name, ignore=shutil.ignore_patterns(host_weights.DIRECTORY))
        copies[variant.name] = load_variant(tmp_path / variant.path.name)
    foreign = host_weights.materialise(copies["fp32"], copies["fp32"].directory).path
    mine = copies["int8"].directory
    (mine / host_weights.DIRECTORY).mkdir()
    shutil.copy2(foreign, mine / host_weights.DIRECTORY / foreign.name)
    with pytest.raises(DamagedError, match=r"host weights of another variant \(fp32-[0-9a-f]{12}\), not int8-"):
        prepare_variants([variant_ref(load_variant(mine), mine)])
    with open(foreign, "r+b") as handle:  # a damaged header length (its top byte): refused in one line too
        handle.seek(7)
        handle.write(b"\x10")
    with pytest.raises(DamagedError, match="host weights header damaged"):
        prepare_variants([variant_ref(copies["fp32"], copies["fp32"].directory)])


def test_host_torch_keeps_every_variant_only_when_all_fit_the_memory_budget():
    """The default residency: all of the run's variants when they fit in the budget together, else one at a time
    (keeping two of five would hold their weights and, over a round of all five, never save a load). Faked: the
    loader (a stand-in model) and the prepared sizes: only the eviction decision is under test."""
    from types import SimpleNamespace

    from bench.run.targets.host_torch import HostTorchTarget

    loads = []

    def load(variant):
        loads.append(variant.variant_id)
        return SimpleNamespace(model=SimpleNamespace(eval=lambda: None))

    variants = [VariantRef(variant_id=f"v{i}-000000000000", name=f"v{i}", variant_hash=str(i), path=Path("."))
                for i in range(5)]
    for budget, resident_after_a_round in ((5 * 900, 5), (4 * 900, 1)):
        target = HostTorchTarget(load_captioner=load, measure_warm_load=False, ready=lambda variant: None)
        target.resident_budget_bytes = budget
        target._sizes = {v.variant_id: 900 for v in variants}
        loads.clear()
        for _ in range(2):  # two rounds over the five variants
            for variant in variants:
                target._captioner(variant)
        assert len(target._captioners) == resident_after_a_round
        assert len(loads) == (5 if resident_after_a_round == 5 else 10)
    target = HostTorchTarget(load_captioner=load, measure_warm_load=False, resident_variants=2,
                             ready=lambda variant: None)
    target._sizes = {v.variant_id: 900 for v in variants}
    for variant in variants:
        target._captioner(variant)
    assert list(target._captioners) == [v.variant_id for v in variants[-2:]]  # the setting wins


def _phone_target(phone, api):
    from bench.run.targets.iphone import IPhoneTarget

    def zeros(images, size, mode, variant):
        import numpy as np

        return np.zeros((len(images), 3, size, size), dtype="float32")

    return IPhoneTarget(phone.udid, name=phone.name, api=api, timeout_s=30, poll_s=0.05, preprocess=zeros)


def _fake_variants(folder: Path) -> list[VariantRef]:
    return [VariantRef(variant_id=vid, name=vid.split("-")[0], variant_hash=vid.split("-")[1],
                       path=make_variant(folder, vid, seed), image_size=32, decode=DECODE)
            for seed, vid in enumerate(("fp16-aaaaaaaaaaaa", "int8-bbbbbbbbbbbb"))]


def test_two_fake_iphones_in_parallel_with_thermal_gating(mux, tmp_path):
    from bench.deploy import api

    phones = [add_phone(mux, 1), add_phone(mux, 2)]
    phones[0].faults.thermal_serious_probes = 1  # the first status job reports "serious", later ones "nominal"
    discovered = resolve_targets(["iphone"], api=api)
    assert sorted(t.id for t in discovered) == sorted(f"iphone-{p.udid}" for p in phones)
    targets = [_phone_target(p, api) for p in phones]
    sleeps = Sleeps()
    config = RunConfig.model_validate({"seed": 1, "rounds": 2, "evaluate": False, "report": False, "warmup": 1,
                                       "compute_units": ["cpuOnly", "cpuAndNeuralEngine"],
                                       "adaptive": {"ci_width": None}, "thermal": {"poll_s": 5}})
    outcome = start_run(config, Workspace(tmp_path), targets=targets, variants=_fake_variants(tmp_path / "v"),
                        images=[ImageItem(f"img-{i}", lambda: None) for i in range(3)], sleep=sleeps)
    assert outcome.status == "complete", outcome.failures
    jobs = outcome.data.jobs
    assert len(jobs) == 2 * 2 * 2 * 2  # phones × variants × units × rounds
    assert set(jobs["device_model"]) == {"iPhone14,2"} and set(jobs["os_build"]) == {"20H115"}
    gated = [r["conditions"]["gate"] for r in outcome.data.job_records.values()
             if r["target"]["id"] == targets[0].id and r["round"] == 0]
    assert all(g["states_seen"] == ["serious", "nominal"] for g in gated) and sleeps == [5.0]
    # Compiled once per phone per run: compile and cold load on the first round's jobs, warm loads on every job.
    first = jobs["round"] == 0
    assert jobs.loc[first, "compile_encoder_ns"].notna().all() and jobs.loc[first, "cold_load_encoder_ns"].notna().all()
    assert jobs.loc[~first, "compile_encoder_ns"].isna().all() and jobs.loc[~first, "cold_load_encoder_ns"].isna().all()
    assert jobs["warm_load_encoder_ns"].notna().all() and jobs["compiles"].sum() == 2 * 2 * 2  # phones × variants × 2
    record = next(iter(outcome.data.job_records.values()))
    assert record["conditions"]["charging"] is True and record["conditions"]["battery_temperature_c"] == 31.2
    measured = outcome.data.samples[~outcome.data.samples["is_warmup"]]
    assert set(measured["image_id"]) == {"img-0", "img-1", "img-2"}
    # The fake runner reports "fair" now and then: exactly those samples are flagged, none is dropped.
    assert (measured["throttled"] == (measured["thermal_state"] != "nominal")).all()
    assert 0 < measured["throttled"].sum() < len(measured) and not jobs["unstable"].any()


def test_a_crashing_fake_iphone_is_retried_then_quarantined_and_resume_finishes(mux, tmp_path):
    from bench.deploy import api

    good, bad = add_phone(mux, 1), add_phone(mux, 2)
    bad.faults.runner_crash = True
    sleeps = Sleeps()
    config = RunConfig.model_validate({"seed": 1, "rounds": 2, "evaluate": False, "report": False,
                                       "compute_units": ["cpuOnly"], "adaptive": {"ci_width": None},
                                       "retry": {"attempts": 2, "backoff_s": 1, "quarantine_after": 1}})
    variants = _fake_variants(tmp_path / "v")
    images = [ImageItem(f"img-{i}", lambda: None) for i in range(2)]
    outcome = start_run(config, Workspace(tmp_path), targets=[_phone_target(good, api), _phone_target(bad, api)],
                        variants=variants, images=images, sleep=sleeps)
    assert outcome.status == "incomplete" and list(outcome.quarantined) == [f"iphone-{bad.udid}"]
    assert sleeps == [1]  # RunnerCrashed is transient: retried once with backoff, then the device is quarantined
    assert all("RunnerCrashed" in why for _, why in outcome.failures)
    assert set(outcome.data.jobs["target_id"]) == {f"iphone-{good.udid}"}

    bad.faults.runner_crash = False  # a person fixed the phone
    done_before = {p.name for p in (outcome.run_dir / "jobs").glob("*.json")}
    resumed = resume_run(outcome.run_id, Workspace(tmp_path), targets=[_phone_target(good, api),
                                                                       _phone_target(bad, api)],
                         variants=variants, images=images, sleep=Sleeps())
    assert resumed.status == "complete"
    after = {p.name for p in (outcome.run_dir / "jobs").glob("*.json")}
    assert done_before < after and len(after) == 2 * 2 * 2
    assert all(f"iphone-{bad.udid}" in name for name in after - done_before)  # only the missing jobs


@pytest.mark.slow
def test_bench_run_command_measures_evaluates_and_reports_on_the_host(tiny_workspace, monkeypatch, capsys):
    """The README's main command path (`bench run` → measure on host-torch → evaluate → report), on tiny variants."""
    from bench.cli import main

    monkeypatch.setenv("BENCH_ROOT", str(tiny_workspace))
    matrix = tiny_workspace / "matrix.yaml"  # the fixture's matrix: both variants are cache hits
    matrix.write_text(f"source: {tiny_workspace / 'tiny'}\nvariants:\n  - name: fp32\n  - name: int8\n"
                      "    quantize: {bits: 8}\n")
    config = tiny_workspace / "run.yaml"
    config.write_text(f"matrix: {matrix}\ntargets: [auto]\nimages: 2\nrounds: 1\neval_images: 4\n"
                      "adaptive: {ci_width: null}\n")
    assert main(["run", str(config), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "fp32: cached" in out and "int8: cached" in out
    assert "host emulation (not Core ML)" in out and "caption quality" in out and "report:" in out
    run_dir = sorted((tiny_workspace / "results").glob("*/run.json"))[-1].parent
    assert (run_dir / "report.html").exists() and (run_dir / "samples.parquet").exists()
    assert len(list((tiny_workspace / "results" / "evals").rglob("*.json"))) == 2


@pytest.mark.slow
def test_host_torch_decodes_exactly_like_the_quality_evaluation(tiny_workspace):
    """The timed loop (fixed-length decoder calls, as deployed) yields the tokens transformers' greedy generate
    yields in bench.eval — so the latency and the quality of a job describe the same captions."""
    from bench.build.torch_weights import captioner_from_variant
    from bench.data.base import open_dataset
    from bench.eval.decode import decode_images
    from bench.run.targets.host_torch import HostTorchTarget

    variant = next(v for v in built_variants(Workspace(tiny_workspace)) if v.name == "int8")
    captioner = captioner_from_variant(variant.source)
    images = [sample.load_image() for sample in open_dataset("synthetic", split="test", limit=4, seed=0)]
    expected = [out.tokens for out in decode_images(captioner, images).outputs]
    target = HostTorchTarget()
    timed = [target._predict(captioner, variant, captioner.preprocess([image], size=variant.image_size), "i", 0)
             for image in images]
    assert [sample["tokens"] for sample in timed] == expected
    assert all(len(s["decoder_ns"]) == len(s["tokens"]) and s["total_ns"] > s["encoder_ns"] > 0 for s in timed)


def test_unknown_device_suggests_the_connected_ones(mux):
    from bench.deploy import api
    from bench.errors import InputError, PlatformUnavailable

    with pytest.raises(PlatformUnavailable, match="no iPhone is connected"):
        resolve_targets(["iphone"], api=api)
    add_phone(mux, 1)
    add_phone(mux, 2)
    with pytest.raises(InputError, match="unknown iPhone 'Fake 3'; did you mean 'Fake [12]' or 'Fake [12]'"):
        resolve_targets(["iphone:Fake 3"], api=api)
    (chosen,) = resolve_targets(["iphone:Fake 2"], api=api)
    assert chosen.name == "Fake 2" and chosen.kind == "iphone"
    assert [t.kind for t in resolve_targets(["auto"], api=api)] == ["iphone", "iphone"]


@pytest.mark.slow
def test_device_inputs_are_preprocessed_as_the_variant_was_built(tiny_workspace):
    """The tensors pushed to a phone match the variant's own preprocessing (manifest io.preprocessing)."""
    import torch

    from bench.build.torch_weights import captioner_from_variant
    from bench.data.base import open_dataset
    from bench.run.targets.iphone import _default_preprocess

    variant = built_variants(Workspace(tiny_workspace))[0]
    image = open_dataset("synthetic", split="test", limit=1, seed=0)[0].load_image()
    expected = captioner_from_variant(variant.source).preprocess([image], size=variant.image_size)
    pushed = _default_preprocess([image], variant.image_size, "resize", variant)
    assert torch.allclose(pushed, expected)


def test_a_broken_devices_yaml_is_reported_not_taken_for_no_iphone(tmp_path):
    """`auto` must not quietly fall back to host emulation because devices.yaml has a typo."""
    from bench.errors import InputError

    (tmp_path / "devices.yaml").write_text("devices:\n  - name: lab1\n    udid: not-a-udid\n")
    with pytest.raises(InputError, match="devices.yaml:3: devices.0.udid: not a UDID"):
        resolve_targets(["auto"], workspace=Workspace(tmp_path))


def test_phone_inputs_of_a_cropped_and_a_resized_variant_of_one_size_are_kept_apart():
    """Two variants of one round at the same size, one centre-cropped: their input tensors differ, so they must not
    share a name in the job (it used to be `<image>@<size>`, the crop was then measured on resized pixels)."""
    from types import SimpleNamespace

    from bench.run.targets.iphone import _preparation, _preparation_label

    def variant(resize, fraction=None, size=64):
        io = {"preprocessing": {"crop_fraction": fraction}} if fraction is not None else {}
        return SimpleNamespace(image_size=size, source=SimpleNamespace(resize=resize, io=io))

    labels = {_preparation_label(_preparation(v)) for v in (
        variant("resize"), variant("center_crop", 1.0), variant("center_crop", 0.875), variant("resize", size=48))}
    assert labels == {"64", "64-crop", "64-crop0.875", "48"}
