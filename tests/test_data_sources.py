"""Dataset sources from local files (Karpathy JSON + images, parquet, save_to_disk Arrow, JSONL/CSV manifests) and
their bad-input errors. All fixtures are built in tmp dirs; nothing is downloaded."""

from __future__ import annotations

import json

import pytest

from bench.data.base import CaptionDataset, open_dataset
from bench.errors import BenchError, DatasetError
from data_fixtures import captions, write_csv, write_jsonl, write_karpathy, write_parquet, write_saved_dataset_dict


def test_karpathy_splits_and_restval_counts_as_train(tmp_path):
    annotations, images = write_karpathy(tmp_path)
    spec = f"flickr30k:{annotations}:{images}"
    train = open_dataset(spec, split="train")
    test = open_dataset(spec, split="test")
    val = open_dataset(spec, split="validation")
    assert isinstance(train, CaptionDataset)
    assert [len(train), len(val), len(test)] == [3, 1, 2]
    assert train[0].captions == tuple(captions(0))
    assert train[0].load_image().mode == "RGB"
    assert train.signature.startswith("flickr30k:") and "|split:train|n:3|seed:0" in train.signature


def test_limit_is_a_seeded_deterministic_subset(tmp_path):
    annotations, images = write_karpathy(tmp_path)
    spec = f"flickr30k:{annotations}:{images}"
    first = [s.image_id for s in open_dataset(spec, split="train", limit=2, seed=1)]
    again = [s.image_id for s in open_dataset(spec, split="train", limit=2, seed=1)]
    assert first == again and len(first) == 2
    others = {tuple(s.image_id for s in open_dataset(spec, split="train", limit=2, seed=seed)) for seed in range(8)}
    assert len(others) > 1  # the seed matters


def test_missing_and_unreadable_images_are_listed_then_skippable(tmp_path):
    annotations, images = write_karpathy(tmp_path)
    (images / "1000.png").unlink()
    (images / "1001.png").write_bytes(b"not a png")
    spec = f"flickr30k:{annotations}:{images}"
    with pytest.raises(DatasetError) as err:
        open_dataset(spec, split="train")
    message = str(err.value)
    assert "2 of 3 images missing or unreadable" in message
    assert "1000.png (missing)" in message and "1001.png (unreadable" in message and "skip" in message
    assert "\n" not in message
    kept = open_dataset(spec, split="train", skip_missing=True)
    assert [s.image_path.name for s in kept] == ["1005.png"]


def test_karpathy_empty_references_name_the_entry(tmp_path):
    annotations, images = write_karpathy(tmp_path)
    payload = json.loads(annotations.read_text())
    payload["images"][3]["sentences"] = [{"raw": "  "}]
    annotations.write_text(json.dumps(payload))
    with pytest.raises(DatasetError, match=r"dataset_flickr30k.json: images\[3\].*empty references"):
        open_dataset(f"flickr30k:{annotations}:{images}", split="test")


def test_parquet_with_struct_and_plain_bytes_images(tmp_path):
    for struct in (True, False):
        path = write_parquet(tmp_path / f"p{struct}" / "flickr.parquet", struct_images=struct)
        test = open_dataset(f"hf:{path}", split="test")
        assert [s.image_id for s in test] == ["1003", "1004"]
        assert test[1].captions == tuple(captions(4))
        assert test[0].load_image().size == (40, 30)
        assert len(open_dataset(f"hf:{path.parent}", split="train")) == 3  # a folder of parquet files


def test_saved_dataset_dict_arrow_folder(tmp_path):
    root = write_saved_dataset_dict(tmp_path / "saved")
    val = open_dataset(f"hf:{root}", split="val")
    assert len(val) == 1 and val[0].captions == tuple(captions(2))
    assert val[0].load_image().mode == "RGB"
    assert len(open_dataset(f"hf:{root}", split="test")) == 2


def test_parquet_corrupt_image_bytes_are_listed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image": [b"garbage", b"\x89PNGnope"], "captions": [["a"], ["b"]]}), path)
    with pytest.raises(DatasetError, match="2 of 2 images missing or unreadable"):
        open_dataset(f"hf:{path}", split="test")


def test_jsonl_manifest_and_paths_relative_to_it(tmp_path):
    manifest = write_jsonl(tmp_path / "m")
    data = open_dataset(f"manifest:{manifest}", split="test")
    assert len(data) == 4 and data[2].captions == tuple(captions(2))
    assert data[2].image_path == manifest.parent / "1002.png"
    assert "|split:all|" in data.signature  # no split column: every row, said honestly


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    manifest = write_jsonl(tmp_path / "m", rows=[
        json.dumps({"image": "1000.png", "captions": ["x"]}),
        "",
        "{not json",
    ])
    with pytest.raises(DatasetError) as err:
        open_dataset(f"manifest:{manifest}")
    assert err.value.file == str(manifest) and err.value.line == 3
    assert str(err.value).startswith(f"{manifest}:3: not valid JSON")


def test_jsonl_empty_references_and_missing_image_key(tmp_path):
    manifest = write_jsonl(tmp_path / "a", rows=[json.dumps({"image": "1000.png", "captions": ["", " "]})])
    with pytest.raises(DatasetError, match=r"manifest.jsonl:1: 1000.png: empty references"):
        open_dataset(f"manifest:{manifest}")
    manifest = write_jsonl(tmp_path / "b", rows=[json.dumps({"captions": ["a"]})])
    with pytest.raises(DatasetError, match=r"manifest.jsonl:1: no image path"):
        open_dataset(f"manifest:{manifest}")


def test_csv_rows_of_one_caption_merge_per_image(tmp_path):
    manifest = write_csv(tmp_path / "c")
    data = open_dataset(f"manifest:{manifest}", split="train")
    assert len(data) == 3
    assert data[1].captions == tuple(captions(1))


def test_csv_bad_row_names_the_line(tmp_path):
    manifest = write_csv(tmp_path / "c", body="image,caption,split\n1000.png,a circle,test\n1001.png,oops\n")
    with pytest.raises(DatasetError) as err:
        open_dataset(f"manifest:{manifest}", split="test")
    assert err.value.line == 3 and "expected 3 fields, found 2" in str(err.value)


def test_empty_dataset_is_one_clear_error(tmp_path):
    manifest = write_csv(tmp_path / "c", body="image,caption,split\n1000.png,a circle,train\n")
    with pytest.raises(DatasetError, match=r"captions.csv: empty dataset: no samples in split 'test'"):
        open_dataset(f"manifest:{manifest}", split="test")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty dataset"):
        open_dataset(f"manifest:{empty}")


def test_unknown_kind_and_split_suggest_names(tmp_path):
    with pytest.raises(BenchError, match="did you mean 'synthetic'"):
        open_dataset("synthtic")
    with pytest.raises(BenchError, match="did you mean 'test'"):
        open_dataset("synthetic", split="tset")
    with pytest.raises(DatasetError, match="expected flickr30k:<dataset_flickr30k.json>:<image dir>"):
        open_dataset("flickr30k:only.json")


def test_data_show_reports_a_broken_manifest_instead_of_empty_splits(tmp_path, capsys):
    from bench.cli import main

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(["data", "show", f"manifest:{empty}"]) == 2
    assert "the CSV has no header row" in capsys.readouterr().err
