"""End to end (issue 14): a stateful kv_cache package measured on a (fake) iPhone, side by side with the same weights
decoded by recomputing, through run → store → report → explain; and on host-torch.

Real: the builder (coremltools with ct.StateType, iOS 18), `bench run` (plan, rounds, store records + Parquet), the
deploy layer and pymobiledevice3 over sockets, result validation against the contract, the report and `explain`.
Faked, because it cannot exist on Linux: the iPhone and its Core ML runtime (tests/fake_iphone). Its runner stand-in
reads each pushed package's protobuf — including the decoder's state description, what makeState() allocates — and
derives per-token latencies from the ops of the one-token stateful program vs the fixed-length recomputing one
(tests/fake_iphone/coreml_model.py). So this checks that the harness carries per-token samples of a stateful package
through every stage; it cannot check Apple's real MLState timings (only an iPhone can).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_fixtures import add_phone, mux, tunneld  # noqa: F401  (fixtures)
from fake_iphone.coreml_model import SPARSE_SLOWER

pytestmark = pytest.mark.slow
PAIR = ("fp32", "fp32+kv")  # the same weights decoded both ways (tests/kv_fixtures.py also builds int4, kv only)


def _run(workspace_root: Path, targets, *, rounds: int = 2, images: int = 8, units=("all",)):
    from bench.paths import Workspace
    from bench.run.api import built_variants, start_run
    from bench.run.config import RunConfig

    config = RunConfig.model_validate({"seed": 0, "rounds": rounds, "images": images, "warmup": 1,
                                       "compute_units": list(units), "evaluate": False, "report": False,
                                       "adaptive": {"ci_width": None}})
    workspace = Workspace(workspace_root)
    variants = [v for v in built_variants(workspace) if v.name in PAIR]
    return start_run(config, workspace, targets=targets, variants=variants)


def _iphone(mux, tunneld, index: int, ios: str, build: str):  # noqa: F811
    from bench.deploy import api
    from bench.run.targets.iphone import IPhoneTarget

    phone = add_phone(mux, index, ios=ios, build=build, product_type="iPhone16,1", coreml=SPARSE_SLOWER)
    tunneld.add(mux, phone)
    return phone, IPhoneTarget(phone.udid, name=phone.name, api=api, timeout_s=60, poll_s=0.05)


def test_stateful_package_on_a_fake_iphone_gives_per_token_samples_to_store_report_and_explain(
        kv_workspace, mux, tunneld, capsys):  # noqa: F811
    from bench.report.data import build_report
    from bench.report.explain import explain
    from bench.report.load import load_run
    from bench.report.markdown import render_report
    from bench.store.runs import load_run as store_load_run

    phone, target = _iphone(mux, tunneld, 1, "18.1", "22B83")
    outcome = _run(kv_workspace[0], [target])
    assert outcome.status == "complete", outcome.failures

    # The job told the runner to decode with state; the runner made one state per caption and timed it.
    job = json.loads(next(phone.container(phone.runner_bundle_id).rglob("job.json")).read_text())
    decodings = {m["variant_id"].split("-")[0]: m.get("decoding", "recompute") for m in job["models"]}
    assert decodings == {"fp32": "recompute", "fp32+kv": "kv_cache"}
    kv_model = next(m for m in job["models"] if m.get("decoding") == "kv_cache")
    assert kv_model["decoder_length"] == 12 and kv_model["io"]["encoder_cross_keys"] == "cross_keys"

    run = store_load_run(outcome.run_dir)
    records = list(run.job_records.values())
    assert {r["decoding"] for r in records} == {"recompute", "kv_cache"}
    for record in records:
        for sample in record["samples"]:
            assert len(sample["decoder_ns"]) == len(sample["tokens"]) >= 4  # per-token times, stored raw
            assert (sample["state_ns"] is not None) == (record["decoding"] == "kv_cache")
    samples = run.samples[~run.samples["is_warmup"]]
    cached, recomputed = samples[samples["decoding"] == "kv_cache"], samples[samples["decoding"] == "recompute"]
    assert len(cached) == len(recomputed) == 2 * 8
    assert (cached["first_token_ns"] > cached["encoder_ns"] + cached["state_ns"]).all()
    assert recomputed["state_ns"].isna().all() and cached["token_ns"].notna().all()
    # The one-token stateful program does less work per step than the fixed-length recomputing one.
    assert cached["token_ns"].median() < recomputed["token_ns"].median()

    report = build_report(load_run(outcome.run_dir))
    (pair,) = report.decoders
    assert (pair["recompute"]["variant"], pair["kv_cache"]["variant"], pair["compute_unit"]) == ("fp32", "fp32+kv", "all")
    assert pair["kv_cache"]["tokens_per_s"] > pair["recompute"]["tokens_per_s"]
    assert pair["kv_cache"]["first_token_ms"] > 0 and pair["kv_cache"]["token_ms"] < pair["recompute"]["token_ms"]
    # The report's per-token time is the stored one (steps after the first: the first is in time to first token).
    assert pair["kv_cache"]["token_ms"] == pytest.approx(cached["token_ns"].median() / 1e6)
    assert pair["recompute"]["token_ms"] == pytest.approx(recomputed["token_ns"].median() / 1e6)
    per_token = next(v for v in pair["verdicts"] if v["metric"].endswith("per token"))
    assert per_token["outcome"] == "DIFFERENT" and per_token["relative"] < -0.03
    assert per_token["extra"]["paired_by"] == "image" and per_token["extra"]["n_images"] == 8
    markdown = render_report(report)
    assert "recompute vs kv_cache" in markdown and "fp32+kv vs fp32 (all)" in markdown

    answer = explain(load_run(outcome.run_dir), "fp32+kv", "fp32", compute_unit="all")
    metrics = {part["metric"]: part for part in answer["measured"]["parts"]}
    assert "latency: time to first token" in metrics
    assert metrics["latency: decoder per step"]["relative"] < 0
    assert (answer["a"]["decoding"], answer["b"]["decoding"]) == ("kv_cache", "recompute")
    assert any(line.startswith("The decoders differ: fp32+kv keeps the self-attention cache") for line in answer["answer"])


def test_kv_cache_on_an_ios17_phone_fails_its_steps_with_the_reason_and_keeps_the_other(
        kv_workspace, mux, tunneld):  # noqa: F811
    _, target = _iphone(mux, tunneld, 2, "17.5.1", "21F90")
    outcome = _run(kv_workspace[0], [target], rounds=1, images=2)
    failures = " ".join(str(f) for f in outcome.failures)
    assert "needs iOS 18" in failures
    records = [r for r in outcome.data.job_records.values() if r["samples"]]
    assert {r["decoding"] for r in records} == {"recompute"}


def test_host_torch_emulates_cached_decoding_with_the_stored_weights(kv_workspace):
    from bench.build.kv_cache import CachedDecoding
    from bench.build.torch_weights import captioner_from_variant
    from bench.build.variants import load_variant
    from bench.paths import Workspace
    from bench.run.targets import resolve_targets
    from bench.run.targets.base import HOST_EMULATION_LABEL

    (target,) = resolve_targets(["host-torch"])
    outcome = _run(kv_workspace[0], [target], rounds=1, images=2, units=("cpuOnly",))
    assert outcome.status == "complete", outcome.failures
    records = {r["decoding"]: r for r in outcome.data.job_records.values()}
    assert records["kv_cache"]["target"]["label"] == HOST_EMULATION_LABEL
    cached = records["kv_cache"]["samples"]
    assert all(s["state_ns"] is not None and len(s["decoder_ns"]) == len(s["tokens"]) for s in cached)
    # Same weights, same images: cached and recomputing decoding write the same captions.
    assert records["kv_cache"]["quality"]["captions"] == records["recompute"]["quality"]["captions"]
    # explain on host-torch does not claim a Core ML state it never measured.
    from bench.report.explain import explain
    from bench.report.load import load_run

    answer = explain(load_run(outcome.run_dir), "fp32+kv", "fp32", compute_unit="cpuOnly")["answer"]
    (decoders,) = [line for line in answer if line.startswith("The decoders differ")]
    assert "host emulation of the Core ML state" in decoders and "cache in Core ML state" not in decoders
    import torch

    manifest = load_variant("fp32+kv", Workspace(kv_workspace[0]))
    cache = CachedDecoding(captioner_from_variant(manifest).model, 32, 12).decoder
    assert cache.self_keys.dtype == torch.float16 and tuple(cache.self_keys.shape) == (2, 1, 12, 64)  # as the state
