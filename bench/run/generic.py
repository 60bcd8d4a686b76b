"""Generic jobs: any imported Core ML model measured with inputs made from its own description, outputs kept.

Inputs (one fixed, seeded set per family and run, so every variant and compute unit sees the same values):
- made from the model's interface (bench.build.imported.describe_interface): multi-arrays in their dtype and shape
  (the default shape, or a chosen one of its enumerated shapes / inside its ranges), images as 8-bit RGB pixels;
  floats ~ N(0, 1), integers in [0, 10), seeded by (seed, input index, feature name);
- or taken from the user: an `.npz` whose arrays are named like the inputs (shape = one input, or [N, …] = N inputs),
  or a folder of images for a model with one image input.
Stateful models get a fresh state per prediction (outputs depend on the input alone); multi-function packages
run the function asked for (default: the package's default function).

Outputs: each output of the fixed input set, per compute unit, kept as .npy in the run (`outputs/<job_key>/`), sized
and hashed; over the cap, none of that step's outputs is kept and the record says why in one line.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import InputError

DEFAULT_INPUTS = 8  # the fixed input set per family: enough for drift statistics, small next to the samples
DEFAULT_OUTPUT_CAP_BYTES = 1 << 20  # per step: every output of every input of the set
INPUT_SEED = 20260101  # fixed: runs of one family compare outputs of the same inputs
_NUMPY = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int32": "<i4", "int8": "i1", "int64": "<i8"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class GenericSettings:
    """How a run feeds imported models (run.yaml `generic:`)."""

    inputs: int = DEFAULT_INPUTS
    source: str | None = None  # an .npz file or an image folder; None: generated from the model's description
    function: str | None = None  # for multi-function packages; None: the package's default function
    shapes: dict[str, list[int]] = field(default_factory=dict)  # input name -> a shape it allows (default: its own)
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES
    seed: int = INPUT_SEED


@dataclass(frozen=True)
class InputSet:
    input_id: str
    features: dict[str, Any]  # name -> numpy array (images: uint8 [H, W, 3])


def is_imported(variant: Any) -> bool:
    """Whether a VariantRef (or its source) is an imported model that runs generic jobs (bench.build.imported); an
    imported captioner pair runs captioner jobs like a built variant (is_imported_captioner)."""
    source = getattr(variant, "source", variant)
    return isinstance(source, dict) and source.get("origin") == "imported" and not source.get("captioner")


def is_imported_captioner(variant: Any) -> bool:
    """Whether a VariantRef (or its source) is an imported encoder/decoder pair (`bench models import --captioner`):
    captioner jobs on Core ML, no torch weights (never host-torch, no host reference)."""
    source = getattr(variant, "source", variant)
    return isinstance(source, dict) and source.get("origin") == "imported" and bool(source.get("captioner"))


class CaptionerSource(dict):
    """An imported pair's manifest read as a built variant's is (`variant.source.io`, `.decoder_length`, `.source`):
    the targets and device quality use the same code for both; a key it lacks reads as None, as getattr's default."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name)


def function_of(interface: dict[str, Any], wanted: str | None) -> tuple[str, dict[str, Any]]:
    """(function name, its inputs/outputs/states): the one asked for, else the package's default."""
    functions = interface["functions"]
    name = wanted or interface["default_function"]
    if name not in functions:
        from bench.errors import did_you_mean

        raise did_you_mean("function", name, functions)
    return name, functions[name]


def input_shape(feature: dict[str, Any], wanted: list[int] | None) -> list[int]:
    """The shape to feed: the model's default, or `wanted` when the model allows it (enumerated or in range)."""
    default = list(feature["shape"])
    if wanted is None:
        return default
    wanted = [int(d) for d in wanted]
    if feature.get("enumerated_shapes"):
        if wanted not in feature["enumerated_shapes"]:
            raise InputError(f"input {feature['name']!r}: shape {wanted} is not one of its enumerated shapes "
                             f"{feature['enumerated_shapes']}")
        return wanted
    if feature.get("shape_range"):
        ranges = feature["shape_range"]
        fits = len(wanted) == len(ranges) and all(lo <= d and (hi < 0 or d <= hi) for d, (lo, hi) in zip(wanted, ranges))
        if not fits:
            raise InputError(f"input {feature['name']!r}: shape {wanted} is outside its ranges {ranges}")
        return wanted
    if wanted != default:
        raise InputError(f"input {feature['name']!r} has the fixed shape {default}; {wanted} cannot be fed")
    return default


def make_inputs(interface: dict[str, Any], settings: GenericSettings) -> list[InputSet]:
    """The fixed input set of a model: from the user's file or folder, else generated from its description."""
    _, io = function_of(interface, settings.function)
    features = [f for f in io["inputs"] if not (f.get("optional") and f["name"] not in settings.shapes)]
    unknown = sorted(set(settings.shapes) - {f["name"] for f in io["inputs"]})
    if unknown:
        raise InputError(f"shape given for {unknown[0]!r}, which is not an input "
                         f"({', '.join(f['name'] for f in io['inputs'])})")
    if settings.source:
        source = Path(settings.source).expanduser()
        sets = _from_images(source, features) if source.is_dir() else _from_npz(source, features)
        return sets[: settings.inputs]
    return [InputSet(f"input-{index:03d}", {f["name"]: _generated(f, settings, index) for f in features})
            for index in range(settings.inputs)]


def _generated(feature: dict[str, Any], settings: GenericSettings, index: int):
    import numpy as np

    digest = hashlib.sha256(f"{settings.seed}|{index}|{feature['name']}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    if feature["kind"] == "image":
        return rng.integers(0, 256, size=(feature["height"], feature["width"], 3), dtype=np.uint8)
    if feature["kind"] != "multiarray" or feature.get("dtype") not in _NUMPY:
        what = feature.get("dtype") or feature["kind"]
        raise InputError(f"input {feature['name']!r} ({what}) cannot be generated; give your own with "
                         "`generic: {inputs_from: FILE.npz}` in run.yaml")
    shape = input_shape(feature, settings.shapes.get(feature["name"]))
    dtype = np.dtype(_NUMPY[feature["dtype"]])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)


def _from_npz(path: Path, features: list[dict[str, Any]]) -> list[InputSet]:
    """Input sets from an .npz: one array per input, named like it; shape = one input, or [N, …shape] = N inputs."""
    import zipfile

    import numpy as np

    if path.is_file() and not zipfile.is_zipfile(path):  # else numpy reads it as a lone .npy, or talks of pickles
        raise InputError(f"{path}: not an .npz archive (numpy.savez: one array per input, named like it)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (give an .npz of input arrays or a folder of images)") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable .npz ({err})") from None
    names = [f["name"] for f in features]
    missing = [n for n in names if n not in arrays]
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise InputError(f"{path}: arrays {sorted(arrays)} do not match the model's inputs {names}"
                         f"{f' (missing {missing[0]!r})' if missing else f' (unknown {extra[0]!r})'}")
    counts = set()
    batched: dict[str, Any] = {}
    for feature in features:
        array = arrays[feature["name"]]
        expected = _expected_shape(feature)
        want = np.dtype(_NUMPY.get(feature.get("dtype"), "u1")) if feature["kind"] != "image" else np.dtype("u1")
        if array.dtype.kind != want.kind:
            raise InputError(f"{path}: {feature['name']!r} is {array.dtype}, the model takes {want} "
                             f"({feature.get('dtype', 'image')})")
        if _allowed(feature, list(array.shape), expected):
            array = array[None]
        elif not (array.ndim == len(expected) + 1 and _allowed(feature, list(array.shape[1:]), expected)):
            raise InputError(f"{path}: {feature['name']!r} has shape {list(array.shape)}; the model takes {expected}"
                             f" (or [N, {', '.join(map(str, expected))}] for N inputs)")
        counts.add(array.shape[0])
        batched[feature["name"]] = array.astype(want)
    if len(counts) > 1:
        raise InputError(f"{path}: the arrays hold different numbers of inputs ({sorted(counts)})")
    count = counts.pop() if counts else 0
    return [InputSet(f"input-{index:03d}", {name: array[index] for name, array in batched.items()})
            for index in range(count)]


def _expected_shape(feature: dict[str, Any]) -> list[int]:
    if feature["kind"] == "image":
        return [feature["height"], feature["width"], 3]
    return list(feature["shape"])


def _allowed(feature: dict[str, Any], shape: list[int], expected: list[int]) -> bool:
    if shape == expected:
        return True
    if feature["kind"] != "multiarray":
        return False
    try:
        input_shape(feature, shape)
    except InputError:
        return False
    return True


def _from_images(folder: Path, features: list[dict[str, Any]]) -> list[InputSet]:
    """A folder of images for a model with exactly one image input (resized to its size, RGB)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    images = [f for f in features if f["kind"] == "image"]
    if len(images) != 1 or len(features) != 1:
        raise InputError(f"{folder}: an image folder feeds a model with one image input; this one takes "
                         f"{', '.join(f['name'] + ' (' + f['kind'] + ')' for f in features)} — give an .npz")
    feature = images[0]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(_IMAGE_SUFFIXES)})")
    sets = []
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("RGB").resize((feature["width"], feature["height"])))
        except (OSError, UnidentifiedImageError) as err:
            raise InputError(f"{file}: not a readable image ({err})") from None
        sets.append(InputSet(f"input-{index:03d}", {feature["name"]: pixels}))
    return sets


# --------------------------------------------------------------------------------------------------- outputs


class OutputsOverCap(InputError):
    """A step's outputs are larger than the run keeps (run.yaml `generic.output_cap_bytes`)."""


def capped(outputs: dict[tuple[str, str], Any], cap: int) -> dict[tuple[str, str], Any]:
    """The outputs ({(input_id, output name): array}) when they fit the cap together; else OutputsOverCap."""
    total = sum(int(array.nbytes) for array in outputs.values())
    if total > cap:
        biggest = max(outputs.items(), key=lambda kv: kv[1].nbytes)
        raise OutputsOverCap(f"outputs of {len(outputs)} predictions hold {total:,} bytes, over the {cap:,}-byte cap "
                             f"(largest: {biggest[0][1]!r} {list(biggest[1].shape)}); none kept — raise "
                             "`generic.output_cap_bytes` or lower `generic.inputs`")
    return outputs


def write_outputs(folder: Path, outputs: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """Each output as <input_id>__<name>.npy under `folder` (temp-then-rename); their records (file relative to
    the run folder's parent of `folder`, dtype, shape, bytes, sha256)."""
    import io

    import numpy as np

    from bench import atomic

    written = []
    for (input_id, name), array in sorted(outputs.items()):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        data = buffer.getvalue()
        file_name = f"{_safe(input_id)}__{_safe(name)}.npy"
        atomic.write_bytes(folder / file_name, data, durable=False)
        written.append({"input_id": input_id, "name": name, "dtype": str(array.dtype), "shape": list(array.shape),
                        "file": f"{folder.name}/{file_name}", "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    return written


def read_output(run_dir: Path, entry: dict[str, Any]):
    """One stored output, its bytes checked against the recorded hash (DamagedError otherwise)."""
    import io

    import numpy as np

    from bench.errors import DamagedError

    path = Path(run_dir) / "outputs" / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedError(f"{path}: cannot be read ({err.strerror or err})", path=str(path)) from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DamagedError(f"{path}: changed since the run stored it (sha256 differs)", path=str(path))
    return np.load(io.BytesIO(data), allow_pickle=False)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)[:100]


# --------------------------------------------------------------------------------------------------- drift


def looks_like_class_scores(array) -> bool:
    """Floating outputs of a few rows of ≥ 2 scores (e.g. [1, 1000] logits): top-1 agreement means something."""
    import numpy as np

    if array.dtype.kind != "f" or array.ndim < 1 or array.shape[-1] < 2:
        return False
    rows = int(np.prod(array.shape[:-1])) if array.ndim > 1 else 1
    return rows <= 64 and array.shape[-1] <= 100_000


def drift(reference_arrays: list, candidate_arrays: list) -> dict[str, Any]:
    """Drift of one output over the input set: max abs error, relative L2 (‖c − r‖ / ‖r‖), cosine similarity of
    the flattened outputs, and top-1 agreement (share of rows whose argmax agrees) where they look like class
    scores. Computed in float64 over every input together."""
    import numpy as np

    ref = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in reference_arrays])
    cand = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in candidate_arrays])
    difference = cand - ref
    ref_norm, cand_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(cand))
    result = {"n_inputs": len(reference_arrays), "max_abs": float(np.max(np.abs(difference))) if ref.size else 0.0,
              "rel_l2": float(np.linalg.norm(difference)) / ref_norm if ref_norm else None,
              "cosine": float(ref @ cand) / (ref_norm * cand_norm) if ref_norm and cand_norm else None,
              "top1_agreement": None}
    if all(looks_like_class_scores(np.asarray(a)) for a in reference_arrays):
        agree = total = 0
        for r, c in zip(reference_arrays, candidate_arrays):
            r2 = np.asarray(r).reshape(-1, np.asarray(r).shape[-1])
            c2 = np.asarray(c).reshape(-1, np.asarray(c).shape[-1])
            agree += int(np.sum(np.argmax(r2, axis=1) == np.argmax(c2, axis=1)))
            total += r2.shape[0]
        result["top1_agreement"] = agree / total if total else None
    return result
