"""Bring your own captioner: an encoder/decoder pair with its tokenizer folder (`bench models import ENC DEC
--captioner DIR`) measured like a built captioner on the protocol-level fake iPhone, its captions decoded on the phone
with its own tokenizer and scored (no host reference: no torch weights).

The pair is exported from the tiny captioner the real builder built (the session fixture `kv_workspace`: its
recompute fp32 variant's two packages, and the checkpoint's tokenizer and processor files without the weights).

Faked: the phone (tests/fake_iphone), i.e. Core ML itself: the ids it decodes are this test's scenario
(fake_iphone/captions.py): the reference caption of every image on the CPU, and on the Neural Engine the captions of
a few chosen images cut short. Real: the import (coremltools' protobuf, the contract check, the tokenizer), the run's
captioner jobs through pymobiledevice3 over sockets, the device-quality records, sacreBLEU / pycocoevalcap, the report.
"""

from __future__ import annotations

import shutil

import pytest

from bench.build import imported
from bench.cli import main
from deploy_fixtures import add_phone, mux, tunneld  # noqa: F401  (fixtures)
from fake_iphone.captions import CaptionScenario
from byo_fixtures import workspace  # noqa: F401  (the fixture: a fresh BENCH_ROOT workspace)

EVAL_IMAGES = 12
CUT = 6  # images whose caption the Neural Engine cuts short


@pytest.fixture
def pair(kv_workspace, tmp_path):
    """(encoder, decoder, tokenizer folder) exported from the built fp32 (recompute) variant."""
    root, manifests = kv_workspace
    built = root / "models" / "variants" / manifests["fp32"].variant_id
    checkpoint = root / "tiny"
    folder = tmp_path / "export" / "tokenizer"
    folder.mkdir(parents=True)
    for file in checkpoint.iterdir():
        if file.is_file() and file.suffix != ".safetensors":  # no torch weights travel with an imported pair
            shutil.copy(file, folder / file.name)
    if not (folder / "preprocessor_config.json").is_file():
        from bench.train.captioner import read_preprocessing, write_preprocessor_config

        write_preprocessor_config(folder, read_preprocessing(checkpoint, manifests["fp32"].image_size))
    return built / "encoder.mlpackage", built / "decoder.mlpackage", folder, manifests["fp32"]


def _scenario(folder, eos: int, max_length: int) -> CaptionScenario:
    from bench.data.base import open_dataset
    from bench.train.captioner import load_tokenizer

    tokenizer = load_tokenizer(folder)
    dataset = open_dataset("synthetic", split="test", limit=EVAL_IMAGES, seed=0, skip_missing=False)
    tokens = {str(s.image_id): tokenizer(s.captions[0], add_special_tokens=False)["input_ids"][:max_length - 2] + [eos]
              for s in dataset}
    cut = {image_id: [ids[0], eos] for image_id, ids in list(tokens.items())[:CUT]}
    return CaptionScenario(tokens=tokens, changed={"cpuAndNeuralEngine": cut})


def test_an_imported_pair_is_measured_and_its_device_captions_scored(pair, workspace, mux, tunneld, capsys):  # noqa: F811
    from bench.report.data import build_report
    from bench.run.api import run_pipeline
    from bench.run.config import RunConfig

    encoder, decoder, folder, built = pair
    assert main(["models", "import", str(encoder), str(decoder), "--captioner", str(folder), "--name", "tinypair"]) == 0
    assert "tinypair-" in capsys.readouterr().out
    (stored,) = imported.list_imported(workspace)
    assert stored["captioner"] and stored["decode"] == dict(built.decode)
    assert (stored["image_size"], stored["decoder_length"]) == (built.image_size, built.decoder_length)
    assert {r: p["sha256"] for r, p in stored["packages"].items()} == {r: p.sha256 for r, p in built.packages.items()}
    assert not (workspace.models_dir / "imported" / stored["variant_id"] / "tokenizer" / "model.safetensors").exists()
    assert main(["models", "inspect", "tinypair", "--no-tensors"]) == 0  # static analysis of both packages
    assert "decoder" in capsys.readouterr().out
    from bench.deploy.api import workspace_package_hashes

    assert {p["sha256"] for p in stored["packages"].values()} <= workspace_package_hashes(workspace)  # kept by a prune

    # host-torch cannot run it: one line saying so
    assert main(["run", "--variants", "tinypair", "--targets", "host-torch", "--fixed"]) != 0
    err = capsys.readouterr().err.strip()
    assert "without torch weights: host-torch cannot run it" in err and "\n" not in err, err

    phone = add_phone(mux, 1, ios="18.1", build="22B83")  # the pair is an iOS 18 package (spec 9)
    tunneld.add(mux, phone)
    phone.captions = _scenario(folder, built.decode["eos_id"], built.decode["max_length"])
    config = RunConfig.model_validate({
        "seed": 0, "targets": ["iphone"], "variants": ["tinypair"], "rounds": 1, "images": 2, "warmup": 0,
        "eval_images": EVAL_IMAGES, "compute_units": ["cpuOnly", "cpuAndNeuralEngine"], "compute_plan": False,
        "adaptive": {"ci_width": None}, "runner_timeout_s": 120})
    outcome = run_pipeline(config, workspace, log=lambda message: None)
    assert outcome.status == "complete", outcome.failures
    assert any("no host reference" in note for note in outcome.notes), outcome.notes
    report = build_report(str(outcome.run_dir))
    rows = report.table
    assert set(rows["compute_unit"]) == {"cpuOnly", "cpuAndNeuralEngine"} and rows["median_ms"].notna().all()
    quality = {row["compute_unit"]: row for row in report.device_quality}
    assert set(quality) == {"cpuOnly", "cpuAndNeuralEngine"}
    assert all(row["host"] is None and row["n_images"] == EVAL_IMAGES for row in quality.values())
    # the phone's ids decoded with the pair's own tokenizer, scored against the evaluation subset's references
    from bench.data.base import open_dataset
    from bench.eval.metrics import corpus_bleu
    from bench.train.captioner import load_tokenizer

    tokenizer = load_tokenizer(folder)
    dataset = list(open_dataset("synthetic", split="test", limit=EVAL_IMAGES, seed=0, skip_missing=False))
    for unit, row in quality.items():
        expected = [tokenizer.decode(phone.captions.tokens_for(str(s.image_id), unit), skip_special_tokens=True).strip()
                    for s in dataset]
        assert [i["caption"] for i in row["per_image"]] == expected
        assert row["device"]["bleu"]["score"] == pytest.approx(corpus_bleu(expected, [s.captions for s in dataset])[0])
    # the captions the Neural Engine cut short score lower
    assert quality["cpuAndNeuralEngine"]["device"]["bleu"]["score"] < quality["cpuOnly"]["device"]["bleu"]["score"]
    text = (outcome.run_dir / "report.md").read_text()
    assert "no host reference: an imported captioner" in text


def test_a_pair_that_does_not_speak_the_contract_or_lacks_a_tokenizer_is_refused(pair, byo_packages, workspace,
                                                                                 tmp_path, capsys):
    encoder, decoder, folder, _ = pair
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "preprocessor_config.json", bare / "preprocessor_config.json")
    cases = [
        ([str(byo_packages["dense"]), str(decoder), "--captioner", str(folder)], "no multi-array input 'pixel_values'"),
        ([str(encoder), str(encoder), "--captioner", str(folder)], "not a captioner decoder: no multi-array input"),
        ([str(encoder), str(decoder), "--captioner", str(bare)], "no tokenizer (vocab.txt or tokenizer.json)"),
        ([str(encoder), "--captioner", str(folder)], "--captioner imports one encoder/decoder pair"),
    ]
    for arguments, expected in cases:
        assert main(["models", "import", *arguments]) != 0
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err and "Traceback" not in err, err
    root = workspace.models_dir / "imported"
    assert not root.exists() or not any(root.iterdir())  # nothing stored, not even a scratch folder
