"""One interface for every captioning dataset: a sized, indexable, iterable list of `CaptionSample`s.

`open_dataset(spec, ...)` picks the source from the spec's prefix (docs/contracts.md §2):
`synthetic`, `flickr30k:<karpathy json>:<image dir>`, `hf:<saved dir or parquet>`, `manifest:<file.jsonl|file.csv>`.
Subsets are deterministic: the same spec, split, limit and seed always give the same samples in the same order.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import DatasetError, check_seed, did_you_mean

if TYPE_CHECKING:  # PIL is light, but keep import-time work to a minimum for `bench --help`.
    from PIL import Image as PILImage

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "restval": "train"}
# How many missing/unreadable images an error message names before it says "and N more".
MAX_LISTED = 10


def normalise_split(split: str) -> str:
    """Map the spellings datasets use ("validation", "restval", ...) onto train / val / test."""
    name = split.strip().lower()
    name = SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise did_you_mean("split", split, SPLITS)
    return name


@dataclass(frozen=True)
class CaptionSample:
    """One image and its reference captions. Exactly one of `image_path`, `image` or an image loader is set."""

    image_id: str
    captions: tuple[str, ...]
    image_path: Path | None = None
    image: Any = None  # PIL.Image.Image when the source holds images in memory
    # Sources that store encoded bytes (parquet) or draw images (synthetic) load lazily through this.
    loader: Callable[[], "PILImage.Image"] | None = field(default=None, repr=False, compare=False)

    def load_image(self) -> "PILImage.Image":
        """The image as RGB. Raises DatasetError naming the file when it cannot be read."""
        from PIL import Image, UnidentifiedImageError

        if self.image is not None:
            return self.image.convert("RGB")
        if self.loader is not None:
            try:
                return self.loader().convert("RGB")
            except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
                raise DatasetError(f"image {self.image_id!r}: cannot read ({err})") from None
        if self.image_path is None:
            raise DatasetError(f"sample {self.image_id!r} has no image")
        try:
            with open_image(self.image_path) as opened:
                return opened.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
            raise DatasetError(f"cannot read image: {err}", file=str(self.image_path)) from None


def open_image(source) -> "PILImage.Image":
    """PIL's lazy open, refusing an image whose header promises more pixels than PIL's decompression-bomb limit
    (about 89 MP: a few bytes of PNG header could otherwise ask for gigabytes when decoded)."""
    from PIL import Image

    opened = Image.open(source)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and opened.width * opened.height > limit:
        opened.close()
        raise Image.DecompressionBombError(f"{opened.width}×{opened.height} px is more than the {limit:,}-pixel "
                                           "limit for one image (a decompression bomb?)")
    return opened


class CaptionDataset(Sequence[CaptionSample]):
    """A fixed, ordered list of samples plus the name and signature that identify it in records."""

    def __init__(self, samples: Sequence[CaptionSample], *, name: str, signature: str, spec: str, split: str):
        self._samples = list(samples)
        self.name = name
        self.signature = signature
        self.spec = spec
        self.split = split

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, index):  # type: ignore[override]
        return self._samples[index]

    def __iter__(self) -> Iterator[CaptionSample]:
        return iter(self._samples)

    def references(self) -> list[tuple[str, ...]]:
        return [sample.captions for sample in self._samples]

    def __repr__(self) -> str:
        return f"CaptionDataset({self.signature!r})"


def open_dataset(
    spec: str,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    skip_missing: bool = False,
) -> CaptionDataset:
    """Open a dataset by spec; `limit` takes a seeded random subset (kept in source order)."""
    if limit is not None and limit <= 0:
        raise DatasetError(f"limit must be a positive number of samples, got {limit}")
    check_seed(seed)
    split = normalise_split(split)
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        from bench.data import synthetic

        return synthetic.open_synthetic(rest, split=split, limit=limit, seed=seed)
    if kind == "flickr30k":
        from bench.data import flickr30k

        return flickr30k.open_karpathy(spec, rest, split=split, limit=limit, seed=seed, skip_missing=skip_missing)
    if kind == "hf":
        from bench.data import hf

        return hf.open_hf(spec, rest, split=split, limit=limit, seed=seed, skip_missing=skip_missing)
    if kind == "manifest":
        from bench.data import manifest

        return manifest.open_manifest(spec, rest, split=split, limit=limit, seed=seed, skip_missing=skip_missing)
    raise did_you_mean("dataset kind", kind, ("synthetic", "flickr30k", "hf", "manifest"))


# ---- helpers shared by the sources -------------------------------------------------------------------------------


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """A seeded subset of range(n), in source order: the same (n, limit, seed) always gives the same indices."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def signature(source: str, split: str, n: int, seed: int) -> str:
    return f"{source}|split:{split}|n:{n}|seed:{seed}"


def file_digest(path: Path, length: int = 12) -> str:
    """Short content hash of an annotation file, so a changed file gives a different signature."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def clean_captions(raw: Any, *, file: str, line: int | None, what: str) -> tuple[str, ...]:
    """Turn a caption field (string or list of strings) into a non-empty tuple, or raise naming file and line."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise DatasetError(f"{what}: captions must be a string or a list of strings", file=file, line=line)
    captions = tuple(str(c).strip() for c in raw if c is not None and str(c).strip())
    if not captions:
        raise DatasetError(f"{what}: empty references (no non-empty caption)", file=file, line=line)
    return captions


class EmptySplitError(DatasetError):
    """A readable source with no samples in the asked split (`bench data show` lists it as 0, not as a failure)."""


def require_samples(samples: Sequence[Any], *, file: str, split: str) -> None:
    if not samples:
        raise EmptySplitError(f"empty dataset: no samples in split {split!r}", file=file)


def check_image_files(samples: list[CaptionSample], *, source: str, skip_missing: bool) -> list[CaptionSample]:
    """List every missing or unreadable image; stop with all of them named unless told to skip them.

    Only the file header is read (PIL's lazy open), which is enough to catch truncated/non-image files cheaply.
    """
    from PIL import Image, UnidentifiedImageError

    bad: list[str] = []
    kept: list[CaptionSample] = []
    for sample in samples:
        problem = None
        if sample.image_path is not None:
            if not sample.image_path.is_file():
                problem = "missing"
            else:
                try:
                    with open_image(sample.image_path) as opened:
                        opened.verify()
                except Image.DecompressionBombError as err:
                    problem = f"too large: {err}"
                except (OSError, UnidentifiedImageError, SyntaxError) as err:
                    problem = f"unreadable ({type(err).__name__})"
        elif sample.loader is not None and getattr(sample.loader, "encoded", None) is not None:
            try:
                with open_image(io.BytesIO(sample.loader.encoded)) as opened:  # type: ignore[attr-defined]
                    opened.verify()
            except Image.DecompressionBombError as err:
                problem = f"too large: {err}"
            except (OSError, UnidentifiedImageError, SyntaxError) as err:
                problem = f"unreadable ({type(err).__name__})"
        if problem is None:
            kept.append(sample)
        else:
            name = str(sample.image_path) if sample.image_path is not None else sample.image_id
            bad.append(f"{name} ({problem})")
    if bad and not skip_missing:
        listed = ", ".join(bad[:MAX_LISTED]) + (f", and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else "")
        raise DatasetError(
            f"{len(bad)} of {len(samples)} images missing or unreadable: {listed}; "
            "fix them or pass --skip-missing (skip_missing=True) to leave them out",
            file=source,
        )
    return kept


class EncodedImage:
    """A lazy loader for an image stored as encoded bytes (parquet/arrow sources)."""

    def __init__(self, encoded: bytes):
        self.encoded = encoded

    def __call__(self) -> "PILImage.Image":
        with open_image(io.BytesIO(self.encoded)) as opened:
            return opened.convert("RGB")


def finish(
    samples: list[CaptionSample],
    *,
    spec: str,
    name: str,
    source_id: str,
    file: str,
    split: str,
    limit: int | None,
    seed: int,
    skip_missing: bool,
) -> CaptionDataset:
    """Common tail of every file source: non-empty, subset, image check, signature."""
    require_samples(samples, file=file, split=split)
    chosen = [samples[i] for i in subset_indices(len(samples), limit, seed)]
    chosen = check_image_files(chosen, source=file, skip_missing=skip_missing)
    require_samples(chosen, file=file, split=split)
    return CaptionDataset(
        chosen, name=name, signature=signature(source_id, split, len(chosen), seed), spec=spec, split=split
    )
