"""The shipped built-in captioner, loaded and run for real: it must describe held-out synthetic images well."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.paths import BUILTIN_CAPTIONER_DIR  # noqa: E402

N_IMAGES = 30


@pytest.fixture(scope="module")
def builtin():
    from bench.train.captioner import load_captioner

    return load_captioner(BUILTIN_CAPTIONER_DIR)


@pytest.mark.slow
def test_builtin_captions_held_out_images_well(builtin):
    import sacrebleu

    from bench.data.base import open_dataset

    test = open_dataset("synthetic", split="test", limit=N_IMAGES, seed=0)
    captions = builtin.caption([s.load_image() for s in test])
    references = [list(s.captions) for s in test]
    bleu = sacrebleu.corpus_bleu(captions, [list(r) for r in zip(*references)])
    assert bleu.score > 30, (bleu.score, captions[:5])
    # the captions are about the drawn scene: the colours named are the colours painted
    from bench.data import synthetic

    right = 0
    for sample, caption in zip(test, captions):
        scene = synthetic.scene_at("test", int(sample.image_id.rsplit("-", 1)[1]))
        drawn = sorted(o.colour for o in (scene.subject, scene.other) if o is not None)
        right += sorted(w for w in caption.split() if w in synthetic.COLOURS) == drawn
    assert right >= N_IMAGES * 0.8, (right, captions[:5])


def test_shipped_files_and_metadata_agree(builtin):
    meta = json.loads((BUILTIN_CAPTIONER_DIR / "bench_captioner.json").read_text())
    assert meta["schema"] == "bench.captioner"
    assert meta["weights_sha256"] == builtin.weights_sha256  # the metadata describes exactly these bytes
    assert meta["evaluation"]["bleu"] >= 50 and meta["evaluation"]["n"] == 1000
    assert (BUILTIN_CAPTIONER_DIR / "model.safetensors").stat().st_size < 10 * 2**20  # "a few MB"
    assert builtin.model.config._attn_implementation == "eager"
    assert builtin.model.config.vision_config.initializer_range == 0.02
    assert builtin.decode.max_length == meta["decode"]["max_length"]
    assert (BUILTIN_CAPTIONER_DIR / "reproduce.sh").is_file()


def test_large_builtin_architecture_is_the_seeds_base_vs_large_step():
    """`bench train-builtin --size large`: the same seeded recipe on a wider, deeper vision encoder with the same text
    decoder (as BLIP-large vs -base); its config is told apart from base's by what it is, never by a folder name."""
    from bench.errors import InputError
    from bench.train.builtin import builtin_architecture, builtin_name, new_builtin_captioner
    from bench.train.captioner import model_size_label

    def params(size, tmp):
        model = new_builtin_captioner(builtin_architecture(size), 0, tmp).model
        return model, sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.vision_model.parameters())

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        base, base_total, base_vision = params("base", Path(tmp) / "b")
        large, large_total, large_vision = params("large", Path(tmp) / "l")
    assert (base_total, large_total) == (1_448_232, 2_698_728)  # 1.86x, as BLIP-large/base (470 M / 247 M)
    assert large_total - large_vision - (base_total - base_vision) < 0.05 * base_total  # text side alike
    assert [model_size_label(m.config.to_dict()) for m in (base, large)] == ["base", "large"]
    assert model_size_label({"vision_config": {"hidden_size": 1024, "num_hidden_layers": 24}}) == "large"
    assert model_size_label({"vision_config": {"hidden_size": 32, "num_hidden_layers": 1}}) is None
    assert builtin_name("large") == "builtin-captioner-large"
    with pytest.raises(InputError, match="did you mean 'large'"):
        builtin_architecture("larg")
