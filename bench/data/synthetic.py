"""The built-in synthetic captioning set: coloured shapes in spatial relations, five paraphrased captions each.

Every image is drawn on the fly from a seed derived from (version, split, index), so the set needs no files, is
identical on every machine, and any subset is cheap. Captions follow Flickr30k's style (short declarative
sentences, five per image) in lower case, from a small closed grammar the built-in captioner's vocabulary covers.

Version history (part of every signature): v1 — 3 shapes × 5 colours × 2 sizes, one or two objects,
relations left/right/above/below.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from bench.data.base import CaptionDataset, CaptionSample, signature, subset_indices
from bench.errors import DatasetError, InputError, check_seed

VERSION = "v1"
IMAGE_SIZE = 96  # pixels; drawn size (models resize to their own input size)
SPLIT_SIZES = {"train": 50_000, "val": 1_000, "test": 1_000}

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 205, 30),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (9, 12), "large": (16, 20)}  # half-extent in pixels at IMAGE_SIZE
RELATIONS = ("left", "right", "above", "below")
# Phrase for "X is <relation> Y" and the relation seen from Y.
RELATION_PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    size: str
    cx: int
    cy: int
    radius: int

    @property
    def noun(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def full(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A drawable scene: one object, or a subject and an object in a relation (subject `relation` other)."""

    background: tuple[int, int, int]
    subject: Shape
    other: Shape | None = None
    relation: str | None = None


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce (the built-in captioner's vocabulary is built from it)."""
    words: set[str] = set()
    for scene_captions in _grammar_examples():
        for caption in scene_captions:
            words.update(caption.split())
    return sorted(words)


def _grammar_examples():
    for colour in COLOURS:
        for shape in SHAPES:
            for size in SIZES:
                one = Shape(colour, shape, size, 0, 0, 1)
                yield captions_for(Scene((255, 255, 255), one))
                for relation in RELATIONS:
                    yield captions_for(Scene((255, 255, 255), one, one, relation))


def captions_for(scene: Scene) -> tuple[str, ...]:
    """Five paraphrases. The subject is always the left/upper object, so the description order is learnable."""
    a = scene.subject
    if scene.other is None:
        return (
            f"a {a.full} on a white background",
            f"a single {a.noun}",
            f"there is a {a.full} in the picture",
            f"one {a.noun} on its own",
            f"a {a.noun} alone in the image",
        )
    b, rel = scene.other, scene.relation or "left"
    phrase, inverse = RELATION_PHRASE[rel], RELATION_PHRASE[INVERSE[rel]]
    return (
        f"a {a.noun} {phrase} a {b.noun}",
        f"a {a.noun} is {phrase} a {b.noun}",
        f"a {b.noun} {inverse} a {a.noun}",
        f"there is a {a.full} {phrase} a {b.full}",
        f"a {a.noun} placed {phrase} a {b.noun}",
    )


def make_scene(rng: random.Random) -> Scene:
    background = tuple(rng.randint(228, 255) for _ in range(3))
    first = _random_look(rng)
    if rng.random() < 0.25:
        radius = rng.randint(*SIZES[first[2]])
        margin = radius + 4
        cx, cy = rng.randint(margin, IMAGE_SIZE - margin), rng.randint(margin, IMAGE_SIZE - margin)
        return Scene(background, Shape(*first, cx=cx, cy=cy, radius=radius))  # type: ignore[arg-type]
    second = _random_look(rng)
    while second[:2] == first[:2]:  # two identical-looking objects would make the caption ambiguous
        second = _random_look(rng)
    # Subject = left or upper object; captions describe it first (the third paraphrase reverses).
    relation = rng.choice(("left", "above"))
    r1, r2 = rng.randint(*SIZES[first[2]]), rng.randint(*SIZES[second[2]])
    half = IMAGE_SIZE // 2
    # Main axis: the subject in the first half, the other in the second; the cross axis may jitter a little.
    # The objects never overlap: their gap along the main axis is at least 3 pixels.
    b_high = IMAGE_SIZE - r2 - 3
    a_main = rng.randint(r1 + 3, min(half - 2, b_high - r1 - r2 - 3))
    b_main = rng.randint(max(half + 2, a_main + r1 + r2 + 3), b_high)
    centre = IMAGE_SIZE // 2
    jitter = 10
    a_cross = min(max(centre + rng.randint(-jitter, jitter), r1 + 3), IMAGE_SIZE - r1 - 3)
    b_cross = min(max(centre + rng.randint(-jitter, jitter), r2 + 3), IMAGE_SIZE - r2 - 3)
    if relation == "left":
        a_xy, b_xy = (a_main, a_cross), (b_main, b_cross)
    else:
        a_xy, b_xy = (a_cross, a_main), (b_cross, b_main)
    a = Shape(*first, cx=a_xy[0], cy=a_xy[1], radius=r1)  # type: ignore[arg-type]
    b = Shape(*second, cx=b_xy[0], cy=b_xy[1], radius=r2)  # type: ignore[arg-type]
    return Scene(background, a, b, relation)


def _random_look(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(SIZES))


def draw(scene: Scene):
    """Render a scene with PIL (anti-aliasing is not needed: models resize anyway)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    pen = ImageDraw.Draw(image)
    for shape in (scene.subject, scene.other):
        if shape is not None:
            _draw_shape(pen, shape)
    return image


def _draw_shape(pen, shape: Shape) -> None:
    x, y, r = shape.cx, shape.cy, shape.radius
    fill = COLOURS[shape.colour]
    if shape.shape == "circle":
        pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape.shape == "square":
        side = int(r * 0.85)  # same visual area class as the circle
        pen.rectangle((x - side, y - side, x + side, y + side), fill=fill)
    else:
        pen.polygon(((x, y - r), (x - r, y + int(r * 0.8)), (x + r, y + int(r * 0.8))), fill=fill)


def scene_at(split: str, index: int) -> Scene:
    """The scene for one (split, index): seeded by both, so splits never share a random stream."""
    return make_scene(random.Random(f"synthetic-{VERSION}|{split}|{index}"))


def _draw_at(split: str, index: int):
    return draw(scene_at(split, index))


def sample_at(split: str, index: int) -> CaptionSample:
    scene = scene_at(split, index)
    return CaptionSample(
        image_id=f"synthetic-{VERSION}-{split}-{index:05d}",
        captions=captions_for(scene),
        loader=partial(_draw_at, split, index),
    )


def open_synthetic(rest: str, *, split: str, limit: int | None, seed: int) -> CaptionDataset:
    version = rest.strip() or VERSION
    if version != VERSION:
        raise DatasetError(f"unknown synthetic dataset version {version!r}; this bench generates {VERSION!r}")
    indices = subset_indices(SPLIT_SIZES[split], limit, seed)
    samples = [sample_at(split, i) for i in indices]
    return CaptionDataset(
        samples,
        name=f"synthetic-{VERSION}",
        signature=signature(f"synthetic:{VERSION}", split, len(samples), seed),
        spec="synthetic" if not rest else f"synthetic:{version}",
        split=split,
    )


def export(directory, *, split: str, limit: int | None = None, seed: int = 0) -> int:
    """Write a split as PNG files plus a manifest.jsonl that `manifest:` specs read back (same captions).

    The folder is replaced as a whole, so only a new or empty folder, or an earlier export, is accepted.
    """
    import io
    import json

    from bench import atomic

    if limit is not None and limit <= 0:
        raise InputError(f"limit must be a positive number of samples, got {limit}")
    check_seed(seed)
    target = _export_target(Path(directory))
    dataset = open_synthetic("", split=split, limit=limit, seed=seed)
    try:
        with atomic.directory(target) as tmp:
            lines = []
            for sample in dataset:
                buffer = io.BytesIO()
                sample.load_image().save(buffer, format="PNG")
                (tmp / f"{sample.image_id}.png").write_bytes(buffer.getvalue())
                lines.append(json.dumps({"image": f"{sample.image_id}.png", "image_id": sample.image_id,
                                         "captions": list(sample.captions), "split": split}))
            (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    except OSError as err:
        raise InputError(f"cannot write the export here: {err.strerror or err}", file=str(directory)) from None
    return len(dataset)


def _export_target(directory: Path) -> Path:
    """The resolved folder to replace; refuses a link, a file, or a folder holding anything an earlier export did
    not write (the whole folder is replaced, and bench never deletes a file a user put there)."""
    from bench import atomic

    atomic.check_target(directory, folder=True)  # a symbolic link is refused, not followed to somewhere else
    target = directory.resolve()  # "." would otherwise name no folder and the whole working directory be removed
    if target.is_dir() and any(target.iterdir()):
        foreign = _not_exported(target)
        if foreign:
            shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(f"folder holds files an earlier export did not write ({shown}); export replaces the "
                             "whole folder and never deletes your files, so choose a new folder", file=str(directory))
    return target


def _not_exported(folder: Path) -> list[str]:
    """Entries of `folder` that are not an earlier export's manifest.jsonl or one of the images it lists."""
    import json

    manifest = folder / "manifest.jsonl"
    written = {"manifest.jsonl"}
    try:
        for line in manifest.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line) if line.strip() else {}
            if isinstance(entry, dict) and isinstance(entry.get("image"), str):
                written.add(entry["image"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        written = set()  # no readable manifest: nothing here is known to be ours
    return [entry.name for entry in folder.iterdir()
            if entry.name not in written or entry.is_symlink() or not entry.is_file()]
