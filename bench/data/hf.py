"""Hugging Face captioning data from local files, read with pyarrow (the `datasets` package is not needed).

Spec: `hf:<path>` where path is
- a parquet file, or a folder of parquet files (e.g. a downloaded nlphuji/flickr_30k snapshot), or
- a folder written by `datasets.save_to_disk`: a DatasetDict (dataset_dict.json + one sub-folder per split) or a
  single Dataset (state.json + data-*.arrow in Arrow stream format).
The image column holds encoded bytes, or `{bytes, path}` structs as `datasets.Image` stores them; the caption column
holds a list of strings (or one string). A `split` column, or the DatasetDict's split folders, select the split;
data without split information gives all its rows for any split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.data.base import (
    CaptionDataset,
    CaptionSample,
    EncodedImage,
    clean_captions,
    finish,
    normalise_split,
)
from bench.errors import DatasetError, InputError

IMAGE_COLUMNS = ("image", "img", "jpg", "png", "picture")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "raw", "text", "alt_text")
ID_COLUMNS = ("img_id", "image_id", "filename", "file_name", "id")


def open_hf(spec: str, rest: str, *, split: str, limit: int | None, seed: int, skip_missing: bool) -> CaptionDataset:
    if not rest:
        raise DatasetError(f"bad spec {spec!r}; expected hf:<saved dataset dir or parquet file/dir>")
    root = Path(rest).expanduser()
    if not root.exists():
        raise DatasetError("not found", file=str(root))
    files, split_from_files = _data_files(root, split)
    tables = [(_read_table(file), file) for file in files]
    samples: list[CaptionSample] = []
    has_split_column = False
    for table, file in tables:
        columns = _choose_columns(table, file)
        has_split_column = has_split_column or columns["split"] is not None
        samples += _samples(table, file, columns, split, root)
    effective_split = split if (split_from_files or has_split_column) else "all"
    return finish(
        samples, spec=spec, name=root.stem, source_id=f"hf:{_files_digest(files)}", file=str(root),
        split=effective_split, limit=limit, seed=seed, skip_missing=skip_missing,
    )


def _data_files(root: Path, split: str) -> tuple[list[Path], bool]:
    """The files holding the requested split, and whether the split was chosen by file layout."""
    if root.is_file():
        return [root], False
    if (root / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk
        try:
            splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"corrupt dataset_dict.json: {err}", file=str(root / "dataset_dict.json")) from None
        matching = [s for s in splits if _same_split(s, split)]
        if not matching:
            raise DatasetError(f"no split {split!r} in this saved dataset (has {', '.join(splits)})", file=str(root))
        return sorted((root / matching[0]).glob("*.arrow")), True
    arrow = sorted(root.glob("*.arrow"))
    if arrow:
        return arrow, False
    by_split = [p for p in sorted(root.rglob("*.parquet")) if any(_same_split(part, split) for part in _split_hints(p, root))]
    if by_split:
        return by_split, True
    parquet = sorted(root.rglob("*.parquet"))
    if not parquet:
        raise DatasetError("no .parquet or .arrow files found", file=str(root))
    return parquet, False


def _split_hints(path: Path, root: Path) -> list[str]:
    """Split names a hub snapshot encodes in paths: data/train-00000-of-00002.parquet or train/0000.parquet."""
    parts = list(path.relative_to(root).parts[:-1]) + [path.stem.split("-")[0]]
    return parts


def _same_split(name: str, split: str) -> bool:
    try:
        return normalise_split(name) == split
    except InputError:
        return False


def _read_table(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if file.suffix == ".parquet":
            return pq.read_table(file)
        # No context manager: the table's buffers point into the mapping, which must outlive this function.
        source = pa.memory_map(str(file))
        try:
            return pa.ipc.open_stream(source).read_all()  # datasets writes Arrow *stream* files
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as err:
        raise DatasetError(f"cannot read as Arrow/parquet: {err}", file=str(file)) from None


def _choose_columns(table, file: Path) -> dict[str, Any]:
    import pyarrow as pa

    names = {name.lower(): name for name in table.column_names}

    def first(candidates):
        return next((names[c] for c in candidates if c in names), None)

    image = first(IMAGE_COLUMNS)
    if image is None:  # any binary or {bytes, path} struct column will do
        for field in table.schema:
            if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type) or (
                pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0
            ):
                image = field.name
                break
    captions = first(CAPTION_COLUMNS)
    if image is None or captions is None:
        raise DatasetError(
            f"needs an image column and a captions column; found {', '.join(table.column_names)}", file=str(file)
        )
    return {"image": image, "captions": captions, "id": first(ID_COLUMNS), "split": names.get("split")}


def _samples(table, file: Path, columns: dict[str, Any], split: str, root: Path) -> list[CaptionSample]:
    split_values = table.column(columns["split"]).to_pylist() if columns["split"] else None
    keep = [i for i in range(table.num_rows) if split_values is None or _same_split(str(split_values[i]), split)]
    if not keep:
        return []
    import pyarrow as pa

    subset = table.take(pa.array(keep))
    images = subset.column(columns["image"]).to_pylist()
    captions = subset.column(columns["captions"]).to_pylist()
    ids = subset.column(columns["id"]).to_pylist() if columns["id"] else [None] * len(keep)
    samples = []
    for row, image, raw_captions, image_id in zip(keep, images, captions, ids):
        where = f"row {row}"
        refs = clean_captions(raw_captions, file=str(file), line=None, what=where)
        sample_id = str(image_id) if image_id is not None else f"{file.stem}-{row}"
        samples.append(_sample(image, refs, sample_id, file, where, root))
    return samples


def _sample(image: Any, captions: tuple[str, ...], image_id: str, file: Path, where: str, root: Path) -> CaptionSample:
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data:
            return CaptionSample(image_id=image_id, captions=captions, loader=EncodedImage(bytes(data)))
        if path:  # datasets.Image may keep only a path (relative to the data files)
            candidate = Path(path)
            return CaptionSample(image_id=image_id, captions=captions,
                                 image_path=candidate if candidate.is_absolute() else file.parent / candidate)
    elif isinstance(image, (bytes, bytearray)) and image:
        return CaptionSample(image_id=image_id, captions=captions, loader=EncodedImage(bytes(image)))
    elif isinstance(image, str) and image:
        candidate = Path(image)
        return CaptionSample(image_id=image_id, captions=captions,
                             image_path=candidate if candidate.is_absolute() else root / candidate)
    raise DatasetError(f"{where}: no image bytes or path", file=str(file))


def _files_digest(files: list[Path]) -> str:
    """Cheap identity of the data files: names and sizes (hashing gigabytes of images would be slow)."""
    import hashlib

    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()[:12]
