"""The trainer behind `bench finetune`: a few real optimizer steps on a tiny randomly initialised BLIP (a stand-in
for a downloaded Salesforce checkpoint, which tests may not fetch), exact resume, and clear checkpoint errors."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.errors import InputError  # noqa: E402
from train_fixtures import save_tiny_blip  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


def config(**overrides):
    from bench.train.trainer import TrainConfig

    settings = dict(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, save_every=2, log_every=2, threads=1)
    return TrainConfig(**{**settings, **overrides})


def weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_finetune_saves_a_loadable_checkpoint_with_metadata(base, tmp_path):
    from bench.train.captioner import load_captioner
    from bench.train.finetune import finetune

    out = tmp_path / "tuned"
    result = finetune(base, "synthetic", out, config(), limit=16, progress=False)
    tuned = load_captioner(out)
    meta = json.loads((out / "bench_captioner.json").read_text())
    assert meta["schema"] == "bench.captioner" and meta["schema_version"] == 1
    assert meta["base"]["kind"] == "checkpoint" and meta["base"]["path"] == str(base)
    assert meta["dataset"]["signature"] == "synthetic:v1|split:train|n:16|seed:0"
    assert meta["training"]["seed"] == 0 and meta["result"]["steps"] == 6
    assert meta["environment"]["packages"]["torch"]
    assert meta["weights_sha256"] == tuned.weights_sha256
    assert result.final_loss == meta["result"]["final_loss"] and result.final_loss > 0
    before, after = weights(base), weights(out)
    assert any(not (before[k] == after[k]).all() for k in before)  # training changed the weights
    assert tuned.model.training is False and tuned.model.config._attn_implementation == "eager"


def test_resume_continues_exactly_where_an_interrupted_run_stopped(base, tmp_path):
    import torch

    from bench.train.finetune import finetune

    def interrupt_at_step_4(message):
        if message.startswith("step 4/"):
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        finetune(base, "synthetic", resumed, config(), limit=16, progress=False, log=interrupt_at_step_4)
    assert not (resumed / "model.safetensors").exists()  # nothing final was written
    assert [p.name for p in (resumed / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-0000002"]
    result = finetune(base, "synthetic", resumed, config(), limit=16, progress=False)
    assert result.resumed_from == [2]

    straight = tmp_path / "straight"
    finetune(base, "synthetic", straight, config(), limit=16, progress=False)
    a, b = weights(resumed), weights(straight)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_resume_with_other_settings_is_refused(base, tmp_path):
    from bench.train.finetune import finetune

    out = tmp_path / "out"
    finetune(base, "synthetic", out, config(steps=2), limit=8, progress=False)
    with pytest.raises(InputError, match="cannot resume.*lr=0.001, not 0.01"):
        finetune(base, "synthetic", out, config(steps=4, lr=1e-2), limit=8, progress=False)


def test_checkpoint_without_weights_is_one_clear_error(tmp_path, capsys):
    from bench.cli import main
    from bench.train.captioner import load_captioner

    empty = tmp_path / "blip-base"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "blip"}))
    with pytest.raises(InputError, match="no weights in this checkpoint directory.*never fetches"):
        load_captioner(empty)
    code = main(["finetune", str(empty), "--data", "synthetic", "--out", str(tmp_path / "o"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "no weights" in err and "Traceback" not in err
    with pytest.raises(InputError, match="does not exist"):
        load_captioner(tmp_path / "nowhere")
    assert not (tmp_path / "o").exists()


def test_loaded_checkpoint_preprocesses_and_decodes(base):
    import hashlib

    from bench.data.base import open_dataset
    from bench.train.captioner import load_captioner

    captioner = load_captioner(base)
    assert captioner.weights_sha256 == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert captioner.decode.bos_id == 5 and captioner.decode.eos_id == 3 and captioner.decode.pad_id == 0
    images = [s.load_image() for s in open_dataset("synthetic", split="test", limit=3)]
    pixels = captioner.preprocess(images)
    assert tuple(pixels.shape) == (3, 3, 32, 32)
    assert tuple(captioner.preprocess(images, size=48, mode="center_crop").shape) == (3, 3, 48, 48)
    # normalisation: a white pixel maps to (1 - mean) / std
    from PIL import Image

    white = captioner.preprocess([Image.new("RGB", (10, 10), (255, 255, 255))])
    assert abs(float(white[0, 0, 0, 0]) - (1 - 0.48145466) / 0.26862954) < 1e-5
    tokens = captioner.generate(pixels)
    assert (tokens[:, 0] == captioner.decode.bos_id).all() and tokens.shape[1] <= captioner.decode.max_length


def test_blip_checkpoint_for_another_task_is_refused(base, tmp_path):
    """A VQA/retrieval BLIP would load with a random captioning head; transformers only warns, bench refuses."""
    import shutil

    from safetensors.torch import load_file, save_file

    from bench.train.captioner import load_captioner

    other = tmp_path / "not-captioning"
    shutil.copytree(base, other)
    tensors = {k: v for k, v in load_file(str(other / "model.safetensors")).items()
               if not k.startswith("text_decoder.cls.predictions.transform")}
    save_file(tensors, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match="not a BLIP captioning checkpoint: 4 weights missing"):
        load_captioner(other)


@pytest.mark.parametrize("overrides, message", [
    (dict(save_every=0), "save every must be at least 1"),
    (dict(batch_size=0), "batch size must be at least 1"),
    (dict(threads=-1), "threads must be at least 1"),
    (dict(device="tpu"), "unknown device 'tpu'"),
])
def test_bad_settings_are_one_line_before_anything_loads(overrides, message, tmp_path):
    from bench.train.finetune import finetune

    with pytest.raises(InputError, match=message):
        finetune(tmp_path / "no-such-checkpoint", "synthetic", tmp_path / "out", config(**overrides), progress=False)


def test_damaged_checkpoint_is_one_line_on_resume(base, tmp_path):
    from bench.train.finetune import finetune

    out = tmp_path / "damaged"
    finetune(base, "synthetic", out, config(steps=2), limit=16, progress=False)
    (out / "checkpoints" / "step-0000002" / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot resume from this checkpoint"):
        finetune(base, "synthetic", out, config(steps=4), limit=16, progress=False)


def test_out_dir_holding_other_files_is_refused_before_anything_loads(base, tmp_path):
    from bench.train.finetune import finetune

    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="not a training output.*new or empty --out"):
        finetune(base, "synthetic", home, config(steps=1), limit=4, progress=False)
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    out = tmp_path / "out"  # an earlier training output is resumed or replaced, as documented
    finetune(base, "synthetic", out, config(steps=1), limit=4, progress=False)
    finetune(base, "synthetic", out, config(steps=2), limit=4, progress=False)
