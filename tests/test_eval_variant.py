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


class _TorchGraphAsCoreML:
    """Stands in for coremltools' MLModel.predict (the Core ML runtime cannot exist on Linux): the same traced
    PyTorch graphs that were converted, behind Core ML's dict-in/dict-out interface."""

    def __init__(self, function, inputs: tuple[str, ...], output: str):
        self.function, self.inputs, self.output = function, inputs, output

    def predict(self, features: dict) -> dict:
        return {self.output: self.function(*(features[name] for name in self.inputs))}


def test_core_ml_evaluation_path_decodes_like_the_torch_path(workspace):
    """`bench eval --compute-unit` routes decoding through Core ML's predict interface; with the runtime faked by
    the exported torch graphs, captions must equal the torch path's token for token."""
    import dataclasses

    from bench.build.coreml_predict import CoreMLCaptioner, CoreMLGenerate
    from bench.build.export import torch_graph_functions
    from bench.build.torch_weights import captioner_from_variant
    from bench.eval.decode import DecodeOptions, decode_images
    from eval_fixtures import shape_image

    root, _checkpoint, variants = workspace
    manifest = variants["fp32"]
    torch_captioner = captioner_from_variant(manifest, None)
    encode, step = torch_graph_functions(torch_captioner.model, manifest.image_size)
    coreml = CoreMLCaptioner(
        manifest, "cpuOnly",
        encoder=_TorchGraphAsCoreML(encode, ("pixel_values",), "image_embeds"),
        decoder=_TorchGraphAsCoreML(step, ("input_ids", "attention_mask", "image_embeds"), "logits"),
    )
    through_coreml = dataclasses.replace(torch_captioner, model=CoreMLGenerate(coreml, torch_captioner.model.config))
    images = [shape_image(i) for i in range(6)]
    expected = decode_images(torch_captioner, images, DecodeOptions(batch_size=3)).outputs
    got = decode_images(through_coreml, images, DecodeOptions(batch_size=3)).outputs
    assert [o.tokens for o in got] == [o.tokens for o in expected]


def test_core_ml_evaluation_needs_macos_and_says_so(workspace, monkeypatch, capsys):
    root, _checkpoint, variants = workspace
    monkeypatch.setenv("BENCH_ROOT", str(root))
    code = main(["eval", variants["fp32"].variant_id, "--compute-unit", "all"])
    assert code == 2
    assert "needs macOS" in capsys.readouterr().err
