"""`bench eval` of built variants: real coremltools conversion and compression of a tiny random BLIP
(bench.build), weights decompressed from the stored packages into torch, evaluated and compared with the
checkpoint they were built from. Faked: nothing (no Core ML runtime is needed for quality on the host).
"""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.eval.evaluation import paired_bootstrap
from bench.eval.records import list_records, read_record

from eval_fixtures import save_tiny_checkpoint, write_manifest

pytestmark = pytest.mark.slow

# min_elements 256: the tiny model's tensors are below the default size threshold; prune (nearly) all of them.
MATRIX = {"variants": [{"name": "fp32"}, {"name": "prune-0.9", "prune": {"sparsity": 0.9}, "min_elements": 256}]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from bench.build.builder import build_matrix
    from bench.build.matrix import matrix_from_dict

    root = tmp_path_factory.mktemp("eval-variant-ws")
    checkpoint = save_tiny_checkpoint(root / "tiny-ckpt")
    report = build_matrix(matrix_from_dict({"source": str(checkpoint), **MATRIX}), root)
    if report.failed:
        pytest.fail(f"variant build failed: {[(r.name, r.error) for r in report.failed]}")
    return root, checkpoint, {r.name: r.manifest for r in report.results}


def evaluate_cli(root, subject, manifest, monkeypatch) -> object:
    monkeypatch.setenv("BENCH_ROOT", str(root))
    before = set(list_records(root / "results" / "evals"))
    code = main(["eval", str(subject), "--data", f"manifest:{manifest}", "--resamples", "200", "--threads", "1"])
    assert code == 0
    (new,) = set(list_records(root / "results" / "evals")) - before
    return read_record(new)


def test_variants_are_evaluated_from_their_stored_weights(workspace, monkeypatch):
    root, checkpoint, variants = workspace
    manifest = write_manifest(root / "data", 10)
    base = evaluate_cli(root, checkpoint, manifest, monkeypatch)
    fp32 = evaluate_cli(root, variants["fp32"].variant_id, manifest, monkeypatch)
    pruned = evaluate_cli(root, "prune-0.9", manifest, monkeypatch)  # by matrix name, resolved by bench.build

    assert base.subject.kind == "checkpoint"
    assert fp32.subject.kind == pruned.subject.kind == "variant"
    assert fp32.subject.id == variants["fp32"].variant_id
    assert fp32.subject.variant_hash == variants["fp32"].variant_hash
    # fp32 storage is lossless: the deployed weights caption exactly like the checkpoint.
    assert [i.tokens for i in fp32.per_image] == [i.tokens for i in base.per_image]
    same = paired_bootstrap(base, fp32, "bleu", n=200)
    assert same["delta"] == 0 and same["p_value"] == 1.0
    # 90 % of the weights pruned: the captions come from the decompressed sparse weights, not the checkpoint.
    assert variants["prune-0.9"].measured["sparsity"] > 0.8
    assert [i.tokens for i in pruned.per_image] != [i.tokens for i in base.per_image]
    assert pruned.dataset.signature == base.dataset.signature
    assert paired_bootstrap(base, pruned, "cider", n=200)["delta"] != 0
