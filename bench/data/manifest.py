"""A generic manifest: JSONL or CSV rows of image path + one or more captions (+ optional split, image_id).

JSONL: one object per line, `{"image": "a.jpg", "captions": ["...", "..."]}` (or `"caption": "..."`; the image key may
also be `image_path`, `file_name` or `filename`). CSV: a header with an image column and one or more caption columns
(`caption`, `caption_1`, `captions`, ...); rows naming the same image are merged (the common one-caption-per-row layout).
Relative image paths are relative to the manifest's folder. A row with a `split` field only belongs to that split; a
manifest without splits gives all its rows for any split.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from bench.data.base import (
    CaptionDataset,
    CaptionSample,
    clean_captions,
    file_digest,
    finish,
    normalise_split,
)
from bench.errors import DatasetError, InputError

IMAGE_KEYS = ("image", "image_path", "file_name", "filename", "path")
CAPTION_KEYS = ("captions", "caption", "sentences", "text")


def open_manifest(
    spec: str, rest: str, *, split: str, limit: int | None, seed: int, skip_missing: bool
) -> CaptionDataset:
    path = Path(rest).expanduser()
    if not rest:
        raise DatasetError(f"bad spec {spec!r}; expected manifest:<file.jsonl|file.csv>")
    if not path.is_file():
        raise DatasetError("manifest not found", file=str(path))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = list(_jsonl_rows(path))
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DatasetError("unknown manifest format; use .jsonl or .csv", file=str(path))
    has_splits = any(row[3] is not None for row in rows)
    samples = [
        CaptionSample(image_id=image_id, captions=captions, image_path=_resolve(path, image))
        for image_id, image, captions, row_split in rows
        if not has_splits or row_split == split
    ]
    return finish(
        samples, spec=spec, name=path.stem, source_id=f"manifest:{file_digest(path)}",
        file=str(path), split=split if has_splits else "all", limit=limit, seed=seed, skip_missing=skip_missing,
    )


def _resolve(manifest: Path, image: str) -> Path:
    candidate = Path(image).expanduser()
    return candidate if candidate.is_absolute() else manifest.parent / candidate


def _row_split(value, *, file: str, line: int) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        return normalise_split(str(value))
    except InputError:
        raise DatasetError(f"unknown split {value!r} (use train, val or test)", file=file, line=line) from None


def _read_text(path: Path) -> str:
    """The manifest as text; bytes that are not UTF-8 are one error naming the line they are on."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DatasetError(f"not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})", file=str(path),
                           line=line) from None


def _jsonl_rows(path: Path):
    file = str(path)
    for line_no, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: U+2028 is valid JSON
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"not valid JSON ({err.msg})", file=file, line=line_no) from None
        except RecursionError:
            raise DatasetError("not valid JSON (nested too deeply)", file=file, line=line_no) from None
        if not isinstance(row, dict):
            raise DatasetError("each line must be a JSON object", file=file, line=line_no)
        image = next((row[k] for k in IMAGE_KEYS if row.get(k)), None)
        if not isinstance(image, str):
            raise DatasetError(f"no image path (one of {', '.join(IMAGE_KEYS)})", file=file, line=line_no)
        key = next((k for k in CAPTION_KEYS if k in row), None)
        if key is None:
            raise DatasetError(f"no captions (one of {', '.join(CAPTION_KEYS)})", file=file, line=line_no)
        captions = clean_captions(row[key], file=file, line=line_no, what=image)
        image_id = str(row.get("image_id") or row.get("id") or Path(image).stem)
        yield image_id, image, captions, _row_split(row.get("split"), file=file, line=line_no)


def _csv_rows(path: Path, delimiter: str) -> list:
    file = str(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    try:
        return _csv_table(reader, file)
    except csv.Error as err:
        raise DatasetError(f"not a readable CSV ({err})", file=file, line=reader.line_num or 1) from None


def _csv_table(reader, file: str) -> list:
    merged: dict[str, list] = {}
    header = next(reader, None)
    if not header:
        raise DatasetError("empty dataset: the CSV has no header row", file=file, line=1)
    header = [h.strip().lower() for h in header]
    image_col = next((header.index(k) for k in IMAGE_KEYS if k in header), None)
    caption_cols = [i for i, h in enumerate(header) if h.startswith("caption") or h in ("sentence", "text")]
    if image_col is None or not caption_cols:
        raise DatasetError(
            f"header needs an image column ({', '.join(IMAGE_KEYS)}) and caption column(s)", file=file, line=1
        )
    split_col = header.index("split") if "split" in header else None
    id_col = header.index("image_id") if "image_id" in header else None
    for row in reader:
        line_no = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetError(f"expected {len(header)} fields, found {len(row)}", file=file, line=line_no)
        image = row[image_col].strip()
        if not image:
            raise DatasetError("empty image path", file=file, line=line_no)
        captions = clean_captions([row[i] for i in caption_cols], file=file, line=line_no, what=image)
        row_split = _row_split(row[split_col] if split_col is not None else None, file=file, line=line_no)
        if image in merged:
            merged[image][2] = merged[image][2] + captions
        else:
            image_id = row[id_col].strip() if id_col is not None and row[id_col].strip() else Path(image).stem
            merged[image] = [image_id, image, captions, row_split]
    return [tuple(values) for values in merged.values()]
