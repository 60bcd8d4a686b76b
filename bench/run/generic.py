"""Generic jobs: any imported Core ML model measured with inputs made from its own description, outputs kept.

Inputs (one fixed, seeded set per family and run, so every variant and compute unit sees the same values):
- made from the model's interface (bench.build.imported.describe_interface): multi-arrays in their dtype and shape
  (the default shape, or a chosen one of its enumerated shapes / inside its ranges), images as 8-bit RGB pixels;
  floats ~ N(0, 1), integers in [0, 10), seeded by (seed, input index, feature name);
- or taken from the user: an `.npz` whose arrays are named like the inputs (shape = one input, or [N, …] = N inputs),
  or a folder of images for a model with one image input; fed whole (at most `inputs` of them), cast to the inputs'
  dtypes only where no value changes (_cast), anything else refused in one line.
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
MAX_INPUTS = 1024  # run.yaml `generic.inputs` at most: every input is pushed to the phone and predicted each round
DEFAULT_OUTPUT_CAP_BYTES = 1 << 20  # per step: every output of every input of the set
INPUT_SEED = 20260101  # fixed: runs of one family compare outputs of the same inputs
_NUMPY = {"float32": "<f4", "float16": "<f2", "float64": "<f8", "int32": "<i4", "int8": "i1", "int64": "<i8"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class GenericSettings:
    """How a run feeds imported models (run.yaml `generic:`)."""

    inputs: int = DEFAULT_INPUTS
    source: str | None = None  # an .npz file or an image folder; None: generated from the model's description
    function: str | None = None  # for multi-function packages; None: the package's default function
    shapes: dict[str, list[int]] = field(default_factory=dict)  # input name -> a shape it allows (default: its own)
    output_cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES
    seed: int = INPUT_SEED
    input_digests: dict[str, str] = field(default_factory=dict)  # variant id -> input-set sha256 its run planned


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
    """The fixed input set of a model: from the user's file or folder, else generated from its description.

    Whatever cannot be fed as given is refused here in one line (InputError) naming the file, the array and the input:
    never cast with a loss, cut short or padded without a word. Called before a run is stored
    (bench.run.api.check_generic_inputs) and again by the targets, which feed what it returns."""
    _, io = function_of(interface, settings.function)
    unknown = sorted(set(settings.shapes) - {f["name"] for f in io["inputs"]})
    if unknown:
        raise InputError(f"shape given for {unknown[0]!r}, which is not an input "
                         f"({', '.join(f['name'] for f in io['inputs'])})")
    for name, wanted in settings.shapes.items():
        feature = next(f for f in io["inputs"] if f["name"] == name)
        if feature["kind"] != "multiarray":  # an image is fed at its declared size; nothing else has a shape
            raise InputError(f"shape given for {name!r}, which takes {_takes(feature)}: only multi-array inputs take "
                             "`generic.shapes`")
        input_shape(feature, wanted)  # one of its shapes, whichever way the inputs are made
    fed = [f for f in io["inputs"] if not (f.get("optional") and f["name"] not in settings.shapes)]
    if settings.source:
        source = Path(settings.source).expanduser()
        if source.is_dir():
            return _from_images(source, fed, settings.inputs)
        return _from_npz(source, io["inputs"], settings.inputs, settings.shapes)
    return [InputSet(f"input-{index:03d}", {f["name"]: _generated(f, settings, index) for f in fed})
            for index in range(settings.inputs)]


def planned_inputs(variant: Any, settings: GenericSettings) -> list[InputSet]:
    """A job's inputs for an imported variant: make_inputs, checked against the sha256 its run planned (when there is
    one). An .npz or image folder changed while the run measures fails the job in one line instead of feeding some
    variants other values than the rest (drift would compare outputs of different inputs); restore it and resume."""
    sets = make_inputs(variant.source["interface"], settings)
    planned = settings.input_digests.get(variant.variant_id)
    if planned and input_set_digest(sets) != planned:
        raise InputError(f"{settings.source or 'the generated inputs'}: changed since the run began (sha256 of the "
                         "input set differs); not measured — restore it, then resume the run")
    return sets


def input_set_digest(sets: list[InputSet]) -> str:
    """sha256 of an input set (ids, names, dtypes, shapes and bytes of every array): recorded in a run's plan so a
    resume can tell the inputs the run began with from an .npz or image folder changed since."""
    import numpy as np

    digest = hashlib.sha256()
    for item in sets:
        digest.update(f"{item.input_id}\0".encode())
        for name in sorted(item.features):
            array = np.ascontiguousarray(item.features[name])
            digest.update(f"{name}\0{array.dtype.str}\0{list(array.shape)}\0".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _fed_dtype(feature: dict[str, Any]):
    """The numpy dtype an input is fed in (images: uint8 pixels); InputError for what generic jobs cannot feed."""
    import numpy as np

    if feature["kind"] == "image":
        return np.dtype("u1")
    if feature["kind"] == "multiarray" and feature.get("dtype") in _NUMPY:
        return np.dtype(_NUMPY[feature["dtype"]])
    what = " ".join(filter(None, (feature["kind"], feature.get("dtype"))))
    raise InputError(f"input {feature['name']!r} is a {what}, which generic jobs cannot feed (they feed images and "
                     f"multi-arrays of {', '.join(_NUMPY)}): this model cannot be measured with them")


def _generated(feature: dict[str, Any], settings: GenericSettings, index: int):
    import numpy as np

    digest = hashlib.sha256(f"{settings.seed}|{index}|{feature['name']}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    dtype = _fed_dtype(feature)
    if feature["kind"] == "image":
        return rng.integers(0, 256, size=(feature["height"], feature["width"], 3), dtype=np.uint8)
    shape = input_shape(feature, settings.shapes.get(feature["name"]))
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    return rng.integers(0, 10, size=shape).astype(dtype)


def _from_npz(path: Path, inputs: list[dict[str, Any]], most: int, shapes: dict[str, list[int]]) -> list[InputSet]:
    """Input sets from an .npz: one array per input, named like it; shape = one input, or [N, …shape] = N inputs.
    Every input that is not optional needs its array; an optional one is fed when the archive holds it. A shape
    also asked in `generic.shapes` must be the array's: the run would record one and measure the other."""
    arrays = _read_npz(path)
    missing = [f["name"] for f in inputs if not f.get("optional") and f["name"] not in arrays]
    unknown = sorted(set(arrays) - {f["name"] for f in inputs})
    if missing or unknown or not arrays:
        said = "; ".join([f"missing {_quoted(missing)}"] * bool(missing)
                         + [f"unknown {_quoted(unknown)}"] * bool(unknown))
        raise InputError(f"{path}: arrays {_quoted(sorted(arrays)) or '(none)'} do not match the model's inputs"
                         f"{f' ({said})' if said else ''}; it takes {_takes_all(inputs)}")
    batched = {f["name"]: _batched(path, f, arrays[f["name"]]) for f in inputs if f["name"] in arrays}
    counts = {name: array.shape[0] for name, array in batched.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"{path}: the arrays hold different numbers of inputs "
                         f"({', '.join(f'{name!r}: {count}' for name, count in counts.items())})")
    for name, wanted in shapes.items():
        held = list(batched[name].shape[1:]) if name in batched else None
        if held != [int(d) for d in wanted]:
            said = f"array {name!r} holds shape {held}" if held else f"it holds no array {name!r}"
            raise InputError(f"{path}: {said}, but `generic.shapes` asks {list(wanted)} — drop one of the two")
    count = next(iter(counts.values()))
    _at_most(path, count, most)
    return [InputSet(f"input-{index:03d}", {name: array[index] for name, array in batched.items()})
            for index in range(count)]


def _read_npz(path: Path) -> dict[str, Any]:
    """Every array of an .npz, or one line saying why the file is not one (numpy alone would talk of pickles, read a
    lone .npy as an array, or hand back the raw bytes of a member that is not an .npy)."""
    import zipfile

    import numpy as np

    if not path.exists():
        raise InputError(f"{path}: no such file or folder (give an .npz of input arrays or a folder of images)")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not an .npz archive (numpy.savez: one array per input, named like it)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                try:
                    arrays[name] = archive[name]
                except ValueError as err:
                    if "allow_pickle" not in str(err):
                        raise
                    raise InputError(f"{path}: array {name!r} holds Python objects; give arrays of numbers") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{path}: not a readable .npz ({err})") from None
    others = sorted(name for name, value in arrays.items() if not isinstance(value, np.ndarray))
    if others:
        what = "is not an .npy array" if len(others) == 1 else "are not .npy arrays"
        raise InputError(f"{path}: {_quoted(others)} in the archive {what} (numpy.savez: one array per input, "
                         "named like it)")
    return arrays


def _batched(path: Path, feature: dict[str, Any], array):
    """One input's array as [N, …shape] in the input's dtype; one line naming the file and array otherwise."""
    name = feature["name"]
    want = _fed_dtype(feature)
    if array.size == 0:
        raise InputError(f"{path}: array {name!r} is empty (shape {list(array.shape)}); input {name!r} takes "
                         f"{_takes(feature)}")
    array = _cast(path, name, array, want, _takes(feature))
    expected = _expected_shape(feature)
    if _allowed(feature, list(array.shape), expected):
        return array[None]
    if array.ndim == len(expected) + 1 and _allowed(feature, list(array.shape[1:]), expected):
        return array
    raise InputError(f"{path}: array {name!r} has shape {list(array.shape)}; input {name!r} takes {_takes(feature)}"
                     " (or [N, …] for N inputs)")


def _cast(path: Path, name: str, array, want, takes: str):
    """`array` in the input's dtype `want`; refused in one line when the cast would change a value.

    Values decide, not dtypes: numpy writes int64 and float64 unless told otherwise, so refusing every other dtype
    would refuse most users' files although their values fit, while comparing dtype kinds (as this once did) let
    int64 300 reach an int8 input as 44 and float64 70000 a float16 one as inf. So:
    - into an integer input (or image pixels, uint8) from any integer, bool or float array: each value must come back
      unchanged — a whole number inside the dtype's range (0.5, NaN and 300 for int8 do not);
    - into a float input from integers: each value must be exact in it (float16 holds whole numbers exactly only up
      to 2048, float32 up to 2**24);
    - into a narrower float (float64 → float32 / float16): values are rounded to the input's precision, because that
      is all the precision the model can receive (a float16 input is fed float16, whatever the file held), and the
      same rounded values reach every variant and compute unit; but a finite value must stay finite (inf is a loss);
    - strings, complex numbers, dates and the like are refused."""
    import numpy as np

    if array.dtype == want:
        return array
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: array {name!r} is {array.dtype}; input {name!r} takes {takes}")
    with np.errstate(all="ignore"):  # overflowing and invalid casts are what is checked next
        cast = array.astype(want)
        if want.kind == "f" and array.dtype.kind == "f":
            changed = np.isinf(cast) & np.isfinite(array)
        else:
            changed = cast.astype(array.dtype) != array  # fractions, NaN, whole numbers a float cannot hold
            if want.kind in "iu":  # a wrap between equal widths (int8 -1 → uint8 255) comes back unchanged
                changed |= (array < np.iinfo(want).min) | (array > np.iinfo(want).max)
    if not changed.any():
        return cast
    where = [int(i) for i in np.argwhere(changed)[0]]
    value = array[tuple(where)].item()
    raise InputError(f"{path}: array {name!r} is {array.dtype} and holds {value} at {where}, {_why_not(value, want)}; "
                     f"input {name!r} takes {takes} — fix the values or their dtype")


def _why_not(value, want) -> str:
    import math

    import numpy as np

    if want.kind == "f":
        if isinstance(value, float):
            return f"beyond {want}'s range ±{np.finfo(want).max:g}"
        return f"which {want} cannot hold exactly"
    if isinstance(value, float) and math.isnan(value):
        return "not a number"
    if isinstance(value, float) and not value.is_integer():
        return "not a whole number" if math.isfinite(value) else "infinite"
    return f"outside {want}'s range {np.iinfo(want).min}..{np.iinfo(want).max}"


def _at_most(source: Path, count: int, most: int) -> None:
    """The user's set is fed whole or refused: cutting it to `generic.inputs` would measure other inputs than asked."""
    if count > most:
        how = (f"set `generic: {{inputs: {count}}}` in run.yaml to feed them all" if count <= MAX_INPUTS
               else f"a run feeds at most {MAX_INPUTS}")
        raise InputError(f"{source}: holds {count} inputs, more than `generic.inputs` ({most}): {how}, or give fewer")


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


def _takes(feature: dict[str, Any]) -> str:
    """What an input takes, in one phrase: 'float32 [1, 4]', 'int32 one of [1, 8], [1, 16]', 'uint8 [8, 8, 3] …'."""
    if feature["kind"] == "image":
        return f"uint8 {_expected_shape(feature)} (an image: height, width, RGB 0..255)"
    if feature["kind"] != "multiarray":
        return " ".join(filter(None, (feature["kind"], feature.get("dtype"))))
    if feature.get("enumerated_shapes"):
        shape = "one of " + ", ".join(str(list(s)) for s in feature["enumerated_shapes"])
    elif feature.get("shape_range"):
        shape = "[" + ", ".join(str(lo) if lo == hi else f"{lo}..{'∞' if hi < 0 else hi}"
                                for lo, hi in feature["shape_range"]) + "]"
    else:
        shape = str(list(feature["shape"]))
    return f"{feature.get('dtype')} {shape}"


def _takes_all(inputs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{f['name']!r} ({_takes(f)}{', optional' if f.get('optional') else ''})" for f in inputs)


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _from_images(folder: Path, features: list[dict[str, Any]], most: int) -> list[InputSet]:
    """A folder of images for a model with exactly one image input (resized to its size, RGB). Files with other
    suffixes are left out (a README, .DS_Store); a folder with no image at all is refused, naming what it holds."""
    import numpy as np
    from PIL import Image

    images = [f for f in features if f["kind"] == "image"]
    if len(images) != 1 or len(features) != 1:
        raise InputError(f"{folder}: an image folder feeds a model with one image input; this one takes "
                         f"{_takes_all(features)} — give an .npz")
    feature = images[0]
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    if not files:
        others = [p.name for p in entries if not p.name.startswith(".")]
        held = (f"it holds {', '.join(others[:3])}{', …' if len(others) > 3 else ''}" if others else "it is empty")
        raise InputError(f"{folder}: no images ({', '.join(_IMAGE_SUFFIXES)}); {held}")
    _at_most(folder, len(files), most)
    sets = []
    for index, file in enumerate(files):
        try:
            with Image.open(file) as image:
                pixels = np.asarray(image.convert("RGB").resize((feature["width"], feature["height"])))
        except (OSError, Image.DecompressionBombError) as err:  # UnidentifiedImageError is an OSError
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
