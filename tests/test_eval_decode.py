"""Batched greedy / beam decoding over a real (tiny, randomly initialised) BLIP loaded by bench.train's loader.

Random weights make arbitrary captions; the tests check what decoding must guarantee whatever the weights:
batching does not change greedy output, tokens follow the contract, preprocessing options take effect.
"""

from __future__ import annotations

import pytest

from bench.errors import InputError
from bench.eval.decode import DecodeOptions, decode_images, split_generated

from eval_fixtures import save_tiny_checkpoint, shape_image, tiny_captioner


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return tiny_captioner(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-eval-decode")))


@pytest.fixture(scope="module")
def images():
    return [shape_image(i) for i in range(10)]


def reference_generate(captioner, image, *, beams=1, size=None, mode="resize"):
    """Plain one-image transformers generate: what batching must reproduce."""
    import torch

    pixels = captioner.preprocess([image], size=size, mode=mode)
    with torch.inference_mode():
        ids = captioner.model.generate(
            pixel_values=pixels, max_length=captioner.decode.max_length, num_beams=beams, do_sample=False,
            interpolate_pos_encoding=bool(size and size != captioner.image_size),
        )
    return ids[0].tolist()


def test_batched_greedy_equals_per_image_generate(captioner, images):
    run = decode_images(captioner, images, DecodeOptions(batch_size=4))
    assert len(run.outputs) == len(images)
    for image, out in zip(images, run.outputs):
        expected = split_generated(
            reference_generate(captioner, image), prompt_length=1,
            eos_id=captioner.decode.eos_id, pad_id=captioner.decode.pad_id,
        )
        assert out.tokens == expected
        assert out.caption == captioner.tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_batched_beam_search_equals_per_image_beam_search(captioner, images):
    run = decode_images(captioner, images[:6], DecodeOptions(batch_size=3, beams=3))
    for image, out in zip(images, run.outputs):
        expected = split_generated(
            reference_generate(captioner, image, beams=3), prompt_length=1,
            eos_id=captioner.decode.eos_id, pad_id=captioner.decode.pad_id,
        )
        assert out.tokens == expected


def test_tokens_follow_the_contract(captioner, images):
    """After BOS, through EOS when reached; never longer than max_length - 1 decoder steps; no padding."""
    run = decode_images(captioner, images, DecodeOptions(batch_size=10))
    eos, pad = captioner.decode.eos_id, captioner.decode.pad_id
    assert run.max_length == captioner.decode.max_length
    for out in run.outputs:
        assert 1 <= len(out.tokens) <= run.max_length - 1
        assert eos not in out.tokens[:-1]
        if out.tokens[-1] != eos:
            assert len(out.tokens) == run.max_length - 1  # stopped by the length limit
        assert pad not in out.tokens or pad == eos


def test_split_generated_cuts_at_eos_and_drops_padding():
    assert split_generated([5, 7, 8, 3, 0, 0], prompt_length=1, eos_id=3, pad_id=0) == [7, 8, 3]
    assert split_generated([5, 7, 8, 9], prompt_length=1, eos_id=3, pad_id=0) == [7, 8, 9]


def test_image_size_and_centre_crop_change_the_input(captioner, images):
    base = decode_images(captioner, images[:2], DecodeOptions())
    bigger = decode_images(captioner, images[:2], DecodeOptions(image_size=48, resize="center_crop"))
    assert base.image_size == captioner.image_size == 32
    assert bigger.image_size == 48
    # Interpolated position embeddings at 48 px: batched output still equals one-image generate.
    expected = split_generated(
        reference_generate(captioner, images[0], size=48, mode="center_crop"), prompt_length=1,
        eos_id=captioner.decode.eos_id, pad_id=captioner.decode.pad_id,
    )
    assert bigger.outputs[0].tokens == expected
    assert bigger.generate_seconds > 0 and bigger.preprocess_seconds > 0


@pytest.mark.parametrize(
    "options, message",
    [
        (DecodeOptions(beams=0), "beams"),
        (DecodeOptions(batch_size=0), "batch size"),
        (DecodeOptions(image_size=4), "image size"),
        (DecodeOptions(resize="centre"), "did you mean 'center_crop'"),
        (DecodeOptions(max_length=1), "max length"),
    ],
)
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(InputError, match=message):
        options.validate()
