"""Small on-disk captioning datasets for the data tests, built in tmp dirs (no downloads): PNG images plus a
Karpathy split JSON, a parquet file with encoded image bytes, a `datasets.save_to_disk`-style Arrow folder, and
JSONL/CSV manifests."""

from __future__ import annotations

import io
import json
from pathlib import Path

SPLITS = ("train", "train", "val", "test", "test", "restval")


def image(index: int):
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (40, 30), (250, 250, 250))
    ImageDraw.Draw(picture).ellipse((5 + index, 5, 25 + index, 25), fill=(200, 20 * index % 255, 40))
    return picture


def png_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    image(index).save(buffer, format="PNG")
    return buffer.getvalue()


def captions(index: int) -> list[str]:
    return [f"a red circle number {index}", f"circle {index} on white", "a round red shape"]


def write_images(directory: Path, n: int = len(SPLITS)) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"{1000 + i}.png"
        (directory / name).write_bytes(png_bytes(i))
        names.append(name)
    return names


def write_karpathy(root: Path) -> tuple[Path, Path]:
    images = root / "flickr30k-images"
    names = write_images(images)
    payload = {
        "dataset": "flickr30k",
        "images": [
            {"filename": name, "imgid": i, "split": SPLITS[i],
             "sentences": [{"raw": c, "tokens": c.split()} for c in captions(i)]}
            for i, name in enumerate(names)
        ],
    }
    annotations = root / "dataset_flickr30k.json"
    annotations.write_text(json.dumps(payload), encoding="utf-8")
    return annotations, images


def write_parquet(path: Path, *, struct_images: bool = True) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(SPLITS)
    images = [{"bytes": png_bytes(i), "path": f"{1000 + i}.jpg"} for i in range(n)] if struct_images else \
        [png_bytes(i) for i in range(n)]
    table = pa.table({
        "image": images,
        "caption": [captions(i) for i in range(n)],
        "split": list(SPLITS),
        "img_id": [str(1000 + i) for i in range(n)],
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_saved_dataset_dict(root: Path) -> Path:
    """The folder layout `DatasetDict.save_to_disk` writes: dataset_dict.json + <split>/data-*.arrow (IPC stream)."""
    import pyarrow as pa

    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    for split, indices in (("train", [0, 1]), ("validation", [2]), ("test", [3, 4])):
        folder = root / split
        folder.mkdir()
        table = pa.table({
            "image": [{"bytes": png_bytes(i), "path": None} for i in indices],
            "sentences": [captions(i) for i in indices],
        })
        with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        (folder / "state.json").write_text("{}")
    return root


def write_jsonl(root: Path, rows: list | None = None) -> Path:
    names = write_images(root, 4)
    rows = rows if rows is not None else [
        json.dumps({"image": name, "captions": captions(i)}) for i, name in enumerate(names)
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


def write_csv(root: Path, body: str | None = None) -> Path:
    names = write_images(root, 3)
    if body is None:
        lines = ["image,caption"]
        for i, name in enumerate(names):
            lines += [f"{name},{c}" for c in captions(i)]
        body = "\n".join(lines) + "\n"
    manifest = root / "captions.csv"
    manifest.write_text(body, encoding="utf-8")
    return manifest
