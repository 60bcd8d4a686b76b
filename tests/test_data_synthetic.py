"""The built-in synthetic captioning set: deterministic, split-separated, five Flickr30k-style references."""

from __future__ import annotations

import numpy as np

from bench.data import synthetic
from bench.data.base import open_dataset


def test_same_spec_gives_identical_pixels_and_captions():
    a = open_dataset("synthetic", split="test", limit=5, seed=3)
    b = open_dataset("synthetic", split="test", limit=5, seed=3)
    assert a.signature == b.signature == "synthetic:v1|split:test|n:5|seed:3"
    for x, y in zip(a, b):
        assert x.image_id == y.image_id and x.captions == y.captions
        assert np.array_equal(np.asarray(x.load_image()), np.asarray(y.load_image()))


def test_splits_have_the_documented_sizes_and_do_not_share_images():
    sizes = {split: len(open_dataset("synthetic", split=split)) for split in ("val", "test")}
    assert sizes == {"val": synthetic.SPLIT_SIZES["val"], "test": synthetic.SPLIT_SIZES["test"]}
    test = {np.asarray(s.load_image()).tobytes() for s in open_dataset("synthetic", split="test", limit=50)}
    train = {np.asarray(synthetic.sample_at("train", i).load_image()).tobytes() for i in range(200)}
    assert not test & train


def test_five_distinct_references_that_name_what_is_drawn():
    for sample in open_dataset("synthetic", split="val", limit=40):
        assert len(sample.captions) == 5 and len(set(sample.captions)) == 5
        scene = synthetic.scene_at("val", int(sample.image_id.rsplit("-", 1)[1]))
        assert all(scene.subject.colour in c and scene.subject.shape in c for c in sample.captions)
        image = np.asarray(sample.load_image()).astype(int)
        # the subject's colour is actually painted at its centre
        assert np.abs(image[scene.subject.cy, scene.subject.cx] - synthetic.COLOURS[scene.subject.colour]).max() < 2
        if scene.other is not None:
            axis = "cx" if scene.relation == "left" else "cy"
            assert getattr(scene.subject, axis) < getattr(scene.other, axis)


def test_vocabulary_covers_every_caption():
    words = set(synthetic.vocabulary())
    for sample in open_dataset("synthetic", split="train", limit=300):
        for caption in sample.captions:
            assert set(caption.split()) <= words


def test_export_writes_a_manifest_that_reads_back(tmp_path):
    count = synthetic.export(tmp_path / "out", split="test", limit=4)
    back = open_dataset(f"manifest:{tmp_path / 'out' / 'manifest.jsonl'}", split="test")
    original = open_dataset("synthetic", split="test", limit=4)
    assert count == len(back) == 4
    assert [s.captions for s in back] == [s.captions for s in original]
    assert np.array_equal(np.asarray(back[0].load_image()), np.asarray(original[0].load_image()))


def test_export_refuses_a_folder_it_would_wipe(tmp_path):
    """The export replaces its folder as a whole: a folder holding other files (or `.`) must be refused, untouched."""
    import pytest

    from bench.errors import InputError

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        synthetic.export(tmp_path, split="test", limit=1)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert synthetic.export(tmp_path / "out", split="test", limit=1) == 1
    assert synthetic.export(tmp_path / "out", split="test", limit=2) == 2  # an earlier export is replaced
