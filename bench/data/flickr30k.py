"""Flickr30k from local files: Karpathy's split file (`dataset_flickr30k.json`) plus the image folder.

Spec: `flickr30k:<karpathy json>:<image dir>`. Karpathy's "restval" images count as train.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.data.base import CaptionDataset, CaptionSample, clean_captions, file_digest, finish, normalise_split
from bench.errors import DatasetError, InputError


def parse_spec(spec: str, rest: str) -> tuple[Path, Path]:
    annotations, sep, images = rest.partition(":")
    if not sep or not annotations or not images:
        raise DatasetError(f"bad spec {spec!r}; expected flickr30k:<dataset_flickr30k.json>:<image dir>")
    return Path(annotations).expanduser(), Path(images).expanduser()


def open_karpathy(
    spec: str, rest: str, *, split: str, limit: int | None, seed: int, skip_missing: bool
) -> CaptionDataset:
    annotations, image_dir = parse_spec(spec, rest)
    if not annotations.is_file():
        raise DatasetError("Karpathy split file not found", file=str(annotations))
    if not image_dir.is_dir():
        raise DatasetError("image directory not found", file=str(image_dir))
    entries = _read_images(annotations)
    samples = []
    for index, entry in enumerate(entries):
        where = f"images[{index}]"
        if not isinstance(entry, dict) or "filename" not in entry:
            raise DatasetError(f"{where}: an entry needs 'filename', 'split' and 'sentences'", file=str(annotations))
        try:
            entry_split = normalise_split(str(entry.get("split", "")))
        except InputError:
            raise DatasetError(f"{where}: unknown split {entry.get('split')!r}", file=str(annotations)) from None
        if entry_split != split:
            continue
        sentences = entry.get("sentences")
        if not isinstance(sentences, list):
            raise DatasetError(f"{where} ({entry['filename']}): 'sentences' must be a list", file=str(annotations))
        raw = [s.get("raw") if isinstance(s, dict) else s for s in sentences]
        captions = clean_captions(raw, file=str(annotations), line=None, what=f"{where} ({entry['filename']})")
        filename = str(entry["filename"])
        samples.append(CaptionSample(
            image_id=Path(filename).stem,  # the Flickr photo id; Karpathy's "imgid" is only a running index
            captions=captions,
            image_path=image_dir / filename,
        ))
    return finish(
        samples, spec=spec, name="flickr30k", source_id=f"flickr30k:{file_digest(annotations)}",
        file=str(annotations), split=split, limit=limit, seed=seed, skip_missing=skip_missing,
    )


def _read_images(annotations: Path) -> list:
    try:
        payload = json.loads(annotations.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"not valid JSON: {err.msg}", file=str(annotations), line=err.lineno) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read: {err}", file=str(annotations)) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("images"), list):
        raise DatasetError("not a Karpathy split file: expected {\"images\": [...]}", file=str(annotations))
    return payload["images"]
