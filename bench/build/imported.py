"""Bring your own model: Core ML packages made elsewhere, registered as variants (`bench models import`).

An imported variant lives in `models/imported/<name>-<hash12>/` beside the built ones:
    model.mlpackage (or model.mlmodel)   a byte-for-byte copy of what was imported
    manifest.json                        record kind `bench.imported` v1 (below), sealed like a built variant's

It is content-addressed: `<hash12>` is the start of `content_sha256`, the sha256 of the package's file digests
(relative path + sha256 of every file), so importing the same bytes twice under one name stores them once. The copy
is hashed after it is written (what is stored is what is measured) and checked by bench.build.integrity before every
use, exactly like a built variant. The manifest records where it came from (`provenance`: source path, import time,
the package's own metadata), how to call it (`interface`: functions, inputs with dtypes and fixed / enumerated /
range shapes, images, states) and the same static analysis as built variants (`measured`, bench.build.analyze).

A family groups variants of one model (`--family`, default: the variant's name); one of them is the reference that
drift is measured against: the latest one imported with `--reference`, else the least compressed (most stored bits
per weight, then most weight bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.errors import DamagedError, InputError, RecordError, did_you_mean
from bench.paths import Workspace
from bench.store import records

KIND = "bench.imported"
VERSION = 1
MANIFEST = "manifest.json"
FOLDER = "imported"
_NAME_OK = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-"
MEASURE_NEEDS = ("measuring an imported model needs Core ML: an iPhone (`--targets iphone`, see `bench devices`) or a "
                 "Mac (`--targets macos-coreml`)")


def _check(record: dict[str, Any], source: str) -> None:
    for key in ("variant_id", "name", "family", "content_sha256", "package", "interface", "measured", "provenance"):
        if key not in record:
            raise RecordError(f"{source}: {key}: missing from the imported-model manifest")


records.register_kind(KIND, VERSION, _check)


def imported_root(workspace: Workspace) -> Path:
    return workspace.models_dir / FOLDER


# --------------------------------------------------------------------------------------------------- reading packages


def package_kind(path: Path) -> str:
    """"mlpackage" or "mlmodel", or one line saying why `path` is not a Core ML model."""
    if not os.path.lexists(path):
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "Manifest.json").is_file() or not (path / "Data" / "com.apple.CoreML").is_dir():
            raise InputError(f"{path}: not a Core ML package (an .mlpackage folder holds Manifest.json and "
                             "Data/com.apple.CoreML/)")
        return "mlpackage"
    if path.suffix != ".mlmodel":
        raise InputError(f"{path}: not a Core ML model (give an .mlpackage folder or an .mlmodel file)")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: cannot be read (permission denied)")
    return "mlmodel"


def read_spec(path: Path, kind: str):
    """The model's protobuf specification (coremltools' generated modules only, no coremltools import)."""
    from google.protobuf.message import Error as ProtobufError

    from bench.build.analyze import load_program, package_files, proto_modules

    if kind == "mlpackage":
        package_files(path)  # Manifest.json and the spec file present and readable, else one line
        try:
            return load_program(path)
        except InputError as err:
            if "not an ML program" not in str(err):
                raise
        spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
    else:
        spec_file = path
    Model_pb2, _ = proto_modules()
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_file.read_bytes())
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from None
    except ProtobufError as err:
        raise InputError(f"{path}: not a Core ML model specification ({type(err).__name__})") from None
    if spec.WhichOneof("Type") is None or not spec.specificationVersion:
        raise InputError(f"{path}: not a Core ML model specification (no model type)")
    return spec


_ARRAY_DTYPES = {65568: "float32", 65600: "float64", 65552: "float16", 131104: "int32", 131080: "int8"}


def _feature(feature) -> dict[str, Any]:
    """One input/output/state description as plain data: how to make a value for it, and what comes back."""
    kind = feature.type.WhichOneof("Type")
    described: dict[str, Any] = {"name": feature.name, "optional": bool(feature.type.isOptional)}
    if kind == "stateType":
        array = feature.type.stateType.arrayType
        return {**described, "kind": "state", "dtype": _ARRAY_DTYPES.get(array.dataType, f"code{array.dataType}"),
                "shape": [int(d) for d in array.shape]}
    if kind == "multiArrayType":
        array = feature.type.multiArrayType
        shapes = None
        ranges = None
        flexible = array.WhichOneof("ShapeFlexibility")
        if flexible == "enumeratedShapes":
            shapes = [[int(d) for d in s.shape] for s in array.enumeratedShapes.shapes]
        elif flexible == "shapeRange":
            ranges = [[int(r.lowerBound), int(r.upperBound)] for r in array.shapeRange.sizeRanges]
        return {**described, "kind": "multiarray", "dtype": _ARRAY_DTYPES.get(array.dataType, f"code{array.dataType}"),
                "shape": [int(d) for d in array.shape], "enumerated_shapes": shapes, "shape_range": ranges}
    if kind == "imageType":
        image = feature.type.imageType
        sizes = None
        if image.WhichOneof("SizeFlexibility") == "enumeratedSizes":
            sizes = [[int(s.width), int(s.height)] for s in image.enumeratedSizes.sizes]
        colour = {10: "grayscale", 20: "RGB", 30: "BGR", 40: "grayscale_float16"}.get(image.colorSpace, "unknown")
        return {**described, "kind": "image", "width": int(image.width), "height": int(image.height),
                "color_space": colour, "enumerated_sizes": sizes}
    scalar = {"int64Type": "int64", "doubleType": "float64", "stringType": "string"}.get(kind)
    if scalar:
        return {**described, "kind": "scalar", "dtype": scalar}
    return {**described, "kind": kind or "unknown"}


def describe_interface(spec) -> dict[str, Any]:
    """{default_function, functions: {name: {inputs, outputs, states}}}; a single-function model's function is
    "main". Multi-function packages (coremltools' save_multifunction) list every function."""
    description = spec.description
    functions = {}
    for function in description.functions:
        functions[function.name] = {"inputs": [_feature(f) for f in function.input],
                                    "outputs": [_feature(f) for f in function.output],
                                    "states": [_feature(f) for f in function.state]}
    if not functions:
        functions["main"] = {"inputs": [_feature(f) for f in description.input],
                             "outputs": [_feature(f) for f in description.output],
                             "states": [_feature(f) for f in description.state]}
    default = description.defaultFunctionName or next(iter(functions))
    return {"model_type": spec.WhichOneof("Type"), "specification_version": int(spec.specificationVersion),
            "default_function": default, "functions": functions}


def package_metadata(spec) -> dict[str, Any]:
    """The model's own metadata as its author wrote it (author, description, version, license, user-defined keys)."""
    metadata = spec.description.metadata
    return {"author": metadata.author or None, "short_description": metadata.shortDescription or None,
            "version": metadata.versionString or None, "license": metadata.license or None,
            "user_defined": dict(sorted(metadata.userDefined.items()))}


# --------------------------------------------------------------------------------------------------- importing


@dataclass(frozen=True)
class Candidate:
    """One path checked and read, before anything is stored."""

    source: Path
    kind: str
    name: str
    family: str
    reference: bool
    interface: dict[str, Any]
    metadata: dict[str, Any]
    family_given: bool = False  # --family (or a matrix entry's family:) asked for, not defaulted to the name


@dataclass
class ImportResult:
    name: str
    variant_id: str
    status: str  # imported | cached
    manifest: dict[str, Any]
    seconds: float


def check_name(name: str, what: str = "name") -> str:
    if not name or len(name) > 64 or name[0] in "._+-" or any(ch not in _NAME_OK for ch in name):
        raise InputError(f"{what} {name!r}: use 1-64 letters, digits and . _ + - (not first)")
    return name


def default_name(path: Path) -> str:
    """The file's name in the letters a name allows: accents dropped (réseau → reseau), anything else a dash."""
    import unicodedata

    plain = unicodedata.normalize("NFKD", path.name.rsplit(".", 1)[0])
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    stem = "".join(ch if ch in _NAME_OK else "-" for ch in plain).lstrip("._+-")
    return stem[:64] or "model"


def plan_imports(paths: list[Path | str], *, name: str | None = None, family: str | None = None,
                 reference: bool = False) -> list[Candidate]:
    """Every path checked (a Core ML model, readable, its interface understood) before anything is stored."""
    if not paths:
        raise InputError("give at least one .mlpackage or .mlmodel to import")
    if name is not None and len(paths) > 1:
        raise InputError(f"--name names one model; {len(paths)} paths were given (each is named after its file)")
    if reference and len(paths) > 1:
        raise InputError("--reference marks one model as its family's reference; import it on its own")
    candidates = []
    for raw in paths:
        path = Path(raw).expanduser()
        kind = package_kind(path)
        spec = read_spec(path, kind)
        chosen = check_name(name or default_name(path))
        candidates.append(Candidate(path.resolve(), kind, chosen, check_name(family or chosen, "family"), reference,
                                    describe_interface(spec), package_metadata(spec), family is not None))
    return candidates


def import_models(paths: list[Path | str], workspace: Workspace | None = None, *, name: str | None = None,
                  family: str | None = None, reference: bool = False) -> list[ImportResult]:
    """Register Core ML models as imported variants; returns one result per path, in order.

    Every path is checked first, then every model is copied, hashed and analysed in a temporary folder; only when all
    of them are sound is any renamed into place, so a bad one (even one found bad only by the analysis, e.g. a
    truncated weight file) stores nothing."""
    from bench.build.builder import _exclusive_build

    ws = workspace or Workspace.current()
    candidates = plan_imports(paths, name=name, family=family, reference=reference)
    with _exclusive_build(ws.variants_dir):  # one build or import per workspace at a time (a kernel lock)
        return store_candidates(candidates, ws)


def store_candidate(candidate: Candidate, workspace: Workspace) -> ImportResult:
    """One checked model stored (bench.build.imported.store_candidates of one)."""
    return store_candidates([candidate], workspace)[0]


def store_candidates(candidates: list[Candidate], workspace: Workspace,
                     on_staged: Callable[[int, Candidate], None] | None = None) -> list[ImportResult]:
    """Copy, hash, analyse and seal every checked model, all or nothing; the bytes already stored under the same id
    are reused. `on_staged(index, candidate)` is told before each model is staged (progress).

    Each is written in a scratch folder (`.import-….tmp`) and renamed to its content address once all are sealed: a
    folder with a manifest is always complete. Its name is known only once its bytes are hashed, hence no
    atomic.directory."""
    _refuse_built_names(candidates, workspace)
    staged: list[_Staged] = []
    try:
        for index, candidate in enumerate(candidates):
            if on_staged:
                on_staged(index, candidate)
            staged.append(_stage(candidate, workspace))
        return [_commit(one) for one in staged]
    finally:
        for one in staged:
            shutil.rmtree(one.scratch, ignore_errors=True)


@dataclass
class _Staged:
    candidate: Candidate
    scratch: Path
    final: Path
    variant_id: str
    cached: bool
    started: float


def _stage(candidate: Candidate, workspace: Workspace) -> _Staged:
    import tempfile

    from bench.build import integrity

    started = time.perf_counter()
    root = imported_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    stored_name = f"model.{candidate.kind}"
    scratch = Path(tempfile.mkdtemp(prefix=".import-", suffix=".tmp", dir=root))
    try:
        files = _copy_hashed(candidate.source, scratch, stored_name)
        content = content_sha256(files)
        variant_id = f"{candidate.name}-{content[:12]}"
        final = root / variant_id
        if _intact(final):
            _refuse_regrouping(candidate, read_imported(final))
            return _Staged(candidate, scratch, final, variant_id, True, started)
        try:
            manifest = _manifest(candidate, scratch, stored_name, files, content, variant_id)
        except InputError as err:  # name the user's package, not the scratch copy that is about to vanish
            raise InputError(str(err).replace(str(scratch / stored_name), str(candidate.source))) from None
        records.write(scratch / MANIFEST, KIND, integrity.seal(records.stamp(KIND, manifest), files))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _Staged(candidate, scratch, final, variant_id, False, started)


def _refuse_built_names(candidates: list[Candidate], workspace: Workspace) -> None:
    """A run picks variants by name: an imported model named like a built variant would make `--variants NAME`
    ambiguous, so the name is refused before anything is stored."""
    from bench.build.variants import list_variants

    built = {manifest.name for manifest in list_variants(workspace)}
    for candidate in candidates:
        if candidate.name in built:
            raise InputError(f"{candidate.source}: {candidate.name!r} is the name of a built variant in this "
                             "workspace; import it with another --name")


def _refuse_regrouping(candidate: Candidate, stored: dict[str, Any]) -> None:
    """A stored variant is immutable: asking for another family or for the reference mark is refused, not ignored."""
    wrong_family = candidate.family_given and stored["family"] != candidate.family
    unmarked = candidate.reference and not stored.get("reference")
    if wrong_family or unmarked:
        wanted = f"family {candidate.family!r}" if wrong_family else "the family's reference"
        raise InputError(f"{candidate.source}: already imported as {stored['variant_id']} in family "
                         f"{stored['family']!r}{' (not marked reference)' if unmarked else ''}; a "
                         f"stored variant is not changed — import it with another --name to make it {wanted}")


def _commit(staged: _Staged) -> ImportResult:
    name = staged.candidate.name
    if staged.cached or _intact(staged.final):  # stored meanwhile, e.g. the same bytes twice in one import
        return ImportResult(name, staged.variant_id, "cached", read_imported(staged.final), 0.0)
    if os.path.lexists(staged.final):  # damaged or half-removed: replaced by this fresh, verified copy
        shutil.rmtree(staged.final)
    os.replace(staged.scratch, staged.final)
    return ImportResult(name, staged.variant_id, "imported", read_imported(staged.final),
                        time.perf_counter() - staged.started)


def _intact(directory: Path) -> bool:
    if not (directory / MANIFEST).is_file():
        return False
    try:
        check_imported(directory)
    except (DamagedError, RecordError):
        return False
    return True


def _copy_hashed(source: Path, folder: Path, stored_name: str) -> dict[str, dict[str, Any]]:
    """Copy the model into `folder` as `stored_name` (kernel-side copies), then hash the copy: {relative path:
    {bytes, sha256}} of what is stored, read once from the page cache (I/O bound: benchmarks/test_imported.py)."""
    from bench.build.integrity import digest_file

    target = folder / stored_name
    try:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=False)
        else:
            shutil.copyfile(source, target)
    except (OSError, shutil.Error) as err:
        raise InputError(f"{source}: cannot be read ({_reason(err)})") from None
    stored = [target] if target.is_file() else sorted(p for p in target.rglob("*") if not p.is_dir())
    return {path.relative_to(folder).as_posix(): digest_file(path) for path in stored}


def _reason(err: BaseException) -> str:
    if isinstance(err, shutil.Error) and err.args and isinstance(err.args[0], list) and err.args[0]:
        return str(err.args[0][0][-1])
    return getattr(err, "strerror", None) or str(err)


def content_sha256(files: dict[str, dict[str, Any]]) -> str:
    """The variant's content hash: sha256 over its files' relative paths (below the model) and digests."""
    listing = "".join(f"{rel.split('/', 1)[1] if '/' in rel else ''}\0{info['sha256']}\n"
                      for rel, info in sorted(files.items()))  # a lone .mlmodel: its digest alone
    return hashlib.sha256(listing.encode()).hexdigest()


def _manifest(candidate: Candidate, folder: Path, stored_name: str, files: dict[str, dict[str, Any]],
              content: str, variant_id: str) -> dict[str, Any]:
    from bench.store.environment import host_environment, now_iso

    started = time.perf_counter()
    analysis, measured = analyse_stored(folder / stored_name, candidate.kind)
    return {
        "variant_id": variant_id, "name": candidate.name, "family": candidate.family,
        "reference": candidate.reference, "origin": "imported", "variant_hash": content[:12],
        "content_sha256": content,
        "package": {"path": stored_name, "format": candidate.kind, "bytes": sum(f["bytes"] for f in files.values()),
                    "weight_bytes": measured["weight_bytes"], "sha256": content},
        "interface": candidate.interface,
        "measured": measured,
        "analysis": {"opset": analysis.get("opset"), "op_counts": measured["op_counts"],
                     "seconds": round(time.perf_counter() - started, 3)},
        "provenance": {"source_path": str(candidate.source), "imported_at": now_iso(),
                       "package_metadata": candidate.metadata},
        "environment": host_environment(),
    }


def analyse_stored(path: Path, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(analysis facts, `measured` block) of a stored model: the built variants' analysis for ML programs; for a
    neural-network .mlmodel only its bytes and layer types (its weights are not ML-program constants)."""
    from bench.build.analyze import analyze_package
    from bench.build.verify import measured_summary

    if kind == "mlpackage":
        try:
            analysis = analyze_package(path, package="model")
        except InputError as err:
            if "not an ML program" not in str(err):
                raise
        else:
            measured = measured_summary({"model": analysis}, {})
            return {"opset": analysis.opset}, measured
    spec = read_spec(path, kind)
    model_type = spec.WhichOneof("Type")
    layers: dict[str, int] = {}
    network = getattr(spec, model_type, None)
    for layer in getattr(network, "layers", []):
        kind_name = layer.WhichOneof("layer")
        layers[kind_name] = layers.get(kind_name, 0) + 1
    size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file())
    measured = {"total_bytes": size, "weight_bytes": 0, "params": 0, "nonzero_params": 0, "sparsity": 0.0,
                "bits_per_weight": 0.0, "op_counts": dict(sorted(layers.items())), "decompression_ops": {},
                "tensors": [], "note": f"{model_type}: weights are not analysed (only ML programs' constants are)"}
    return {"opset": None}, measured


# --------------------------------------------------------------------------------------------------- reading back


def read_imported(directory: Path) -> dict[str, Any]:
    record = records.read(Path(directory) / MANIFEST, KIND)
    record["directory"] = str(directory)
    return record


def check_imported(directory: Path | str, *, full: bool = False) -> Any:
    """Refuse a damaged imported variant (DamagedError naming the file), like bench.build.integrity.check_variant."""
    from bench.build import integrity

    directory = Path(directory)
    path = directory / MANIFEST
    hint = "import it again with `bench models import`"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DamagedError(f"{path}: missing — {hint}", path=str(path)) from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedError(f"{path}: corrupt ({err}) — {hint}", path=str(path)) from None
    sealed = stored.get("integrity") if isinstance(stored, dict) else None
    if not isinstance(sealed, dict) or sealed.get("manifest_sha256") != integrity.canonical_sha256(stored) \
            or not isinstance(sealed.get("files"), dict):
        raise DamagedError(f"{path}: changed since it was imported (its own hash differs) — {hint}", path=str(path))
    stored_name = (stored.get("package") or {}).get("path", "model.mlpackage")
    roots = ("encoder.mlpackage", "decoder.mlpackage", TOKENIZER_DIR) if stored.get("captioner") else (stored_name,)
    return integrity.check_files(directory, sealed["files"], roots=roots, full=full, hint=hint)


def list_imported(workspace: Workspace | None = None, *, unreadable: dict[str, str] | None = None) -> list[dict]:
    """Every imported variant (manifest dicts with `directory`), sorted by family, name, id."""
    root = imported_root(workspace or Workspace.current())
    found = []
    if not root.is_dir():
        return found
    for directory in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        try:
            found.append(read_imported(directory))
        except RecordError as err:
            if unreadable is not None:
                unreadable[directory.name] = str(err)
    return sorted(found, key=lambda m: (m["family"], m["name"], m["variant_id"]))


def find_imported(text: str, workspace: Workspace | None = None) -> dict[str, Any] | None:
    """An imported variant by id, unique id prefix or name (the latest import of that name); None if none."""
    variants = list_imported(workspace)
    exact = [v for v in variants if v["variant_id"] == text]
    by_prefix = [v for v in variants if v["variant_id"].startswith(text)]
    by_name = [v for v in variants if v["name"] == text]
    chosen = exact or (by_prefix if len(by_prefix) == 1 else []) or by_name
    if not chosen:
        return None
    return max(chosen, key=lambda v: v["provenance"]["imported_at"])


def load_imported(text: str, workspace: Workspace | None = None) -> dict[str, Any]:
    found = find_imported(text, workspace)
    if found is None:
        names = [v["name"] for v in list_imported(workspace)]
        raise did_you_mean("imported model", text, names)
    return found


def stored_path(manifest: dict[str, Any]) -> Path:
    return Path(manifest["directory"]) / manifest["package"]["path"]


# --------------------------------------------------------------------------------------------------- families


def compression_rank(manifest: dict[str, Any]) -> tuple:
    """Larger = less compressed: stored bits per weight, then weight bytes, then earlier import."""
    measured = manifest.get("measured") or {}
    return (measured.get("bits_per_weight", 0.0), measured.get("weight_bytes", 0),
            [-ord(ch) for ch in manifest["provenance"]["imported_at"]])


def family_reference(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The reference of a family: the latest member imported with --reference, else the least compressed."""
    marked = [m for m in members if m.get("reference")]
    if marked:
        return max(marked, key=lambda m: m["provenance"]["imported_at"])
    return max(members, key=compression_rank)


def families(workspace: Workspace | None = None) -> dict[str, dict[str, Any]]:
    """{family: {"reference": variant_id, "members": [variant ids]}}."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for manifest in list_imported(workspace):
        grouped.setdefault(manifest["family"], []).append(manifest)
    return {family: {"reference": family_reference(members)["variant_id"],
                     "members": [m["variant_id"] for m in members]}
            for family, members in sorted(grouped.items())}


def verify_imported(workspace: Workspace | None = None, names: list[str] | None = None, *,
                    full: bool = False) -> list[tuple[str, Any]]:
    """(variant id, what was checked or the DamagedError) for every imported variant, or those named (name, id or
    id prefix); as bench.build.integrity.verify_workspace does for built ones."""
    root = imported_root(workspace or Workspace.current())
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")] if root.is_dir() else []
    if names:
        folders = [d for d in folders if any(d.name == n or d.name.startswith(f"{n}-") or d.name.startswith(n)
                                             for n in names)]
    results: list[tuple[str, Any]] = []
    for folder in folders:
        try:
            results.append((folder.name, check_imported(folder, full=full)))
        except DamagedError as err:
            results.append((folder.name, err))
    return results


# --------------------------------------------------------------------------------------------------- captioner pairs
# An encoder/decoder pair with its tokenizer folder (`bench models import ENC DEC --captioner DIR`) is stored as
#     encoder.mlpackage, decoder.mlpackage   byte-for-byte copies
#     tokenizer/                             the folder's tokenizer, image processor and text config files (no weights)
#     manifest.json                          `bench.imported` v1 with `captioner: true` and the fields of a built
#                                            variant's manifest a run reads (image_size, resize, decoder_length,
#                                            decode, io, packages with their tree hashes, source.path = tokenizer/)
# so the iPhone and Mac targets run ordinary captioner jobs on it and device quality decodes its ids with its own
# tokenizer. It has no torch weights: host-torch cannot run it and it has no host reference.

PAIR_ROLES = ("encoder", "decoder")
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json", "config.json", "generation_config.json",
                   "bench_captioner.json")
CONTRACT_HINT = "the harness's captioner contract, docs/contracts.md §3"


@dataclass(frozen=True)
class CaptionerCandidate:
    """An encoder/decoder pair and its tokenizer folder, checked and read, before anything is stored."""

    source: Path  # the encoder (provenance names all three)
    decoder: Path
    tokenizer: Path
    name: str
    family: str
    reference: bool
    interface: dict[str, Any]
    metadata: dict[str, Any]
    image_size: int
    decoder_length: int
    decode: dict[str, int]
    preprocessing: dict[str, Any]
    family_given: bool = False
    kind: str = "captioner"


def _main_io(interface: dict[str, Any]) -> dict[str, Any]:
    return interface["functions"][interface["default_function"]]


def _feature_named(features: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((f for f in features if f["name"] == name), None)


def _need(path: Path, role: str, what: str) -> InputError:
    return InputError(f"{path}: not a captioner {role}: {what} ({CONTRACT_HINT})")


def check_pair_contract(encoder: Path, encoder_io: dict[str, Any], decoder: Path,
                        decoder_io: dict[str, Any]) -> tuple[int, int]:
    """(image size S, decoder length L) when the pair speaks the runner's captioner contract: encoder
    `pixel_values` float32 [1,3,S,S] → `image_embeds`; decoder `input_ids`, `attention_mask` int32 [1,L] and
    `image_embeds` → `logits` (recompute decoding, no states); else one line naming what is missing."""
    from bench.build.export import DECODER_INPUTS, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUT

    pixels = _feature_named(encoder_io["inputs"], ENCODER_INPUT)
    if pixels is None or pixels["kind"] != "multiarray":
        raise _need(encoder, "encoder", f"no multi-array input {ENCODER_INPUT!r}")
    shape = pixels["shape"]
    if len(shape) != 4 or shape[:2] != [1, 3] or shape[2] != shape[3] or shape[2] <= 0:
        raise _need(encoder, "encoder", f"input {ENCODER_INPUT!r} is {shape}, not [1, 3, S, S]")
    if _feature_named(encoder_io["outputs"], ENCODER_OUTPUT) is None:
        raise _need(encoder, "encoder", f"no output {ENCODER_OUTPUT!r}")
    if decoder_io["states"]:
        raise _need(decoder, "decoder", "it has states (a kv_cache decoder); import the recompute decoder")
    length = None
    for name in DECODER_INPUTS:
        feature = _feature_named(decoder_io["inputs"], name)
        if feature is None or feature["kind"] != "multiarray":
            raise _need(decoder, "decoder", f"no multi-array input {name!r}")
        if name == "image_embeds":
            continue
        if feature["dtype"] != "int32" or len(feature["shape"]) != 2 or feature["shape"][0] != 1:
            raise _need(decoder, "decoder", f"input {name!r} is {feature['dtype']}{feature['shape']}, not int32[1, L]")
        if length is not None and feature["shape"][1] != length:
            raise _need(decoder, "decoder", "input_ids and attention_mask differ in length")
        length = feature["shape"][1]
    if _feature_named(decoder_io["outputs"], DECODER_OUTPUT) is None:
        raise _need(decoder, "decoder", f"no output {DECODER_OUTPUT!r}")
    return int(shape[2]), int(length)


def read_tokenizer_folder(folder: Path, image_size: int, decoder_length: int) -> tuple[dict[str, int], dict]:
    """(decode ids, preprocessing) from a tokenizer/processor folder the harness can load offline; one line naming
    what is missing otherwise."""
    from bench.train.captioner import load_tokenizer, read_preprocessing

    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (--captioner names the pair's tokenizer/processor folder)")
    if not ((folder / "vocab.txt").is_file() or (folder / "tokenizer.json").is_file()):
        raise InputError(f"{folder}: no tokenizer (vocab.txt or tokenizer.json) in the --captioner folder")
    if not (folder / "preprocessor_config.json").is_file():
        raise InputError(f"{folder}: no image processor config (preprocessor_config.json) in the --captioner folder")
    tokenizer = load_tokenizer(folder)
    prep = read_preprocessing(folder, image_size)
    if prep.image_size != image_size:
        raise InputError(f"{folder / 'preprocessor_config.json'}: size {prep.image_size} but the encoder takes "
                         f"{image_size}×{image_size} pixel values")
    text = _json_or_empty(folder / "config.json").get("text_config") or {}
    decode = {"bos_id": text.get("bos_token_id", tokenizer.cls_token_id),
              "eos_id": text.get("sep_token_id", tokenizer.sep_token_id),
              "pad_id": text.get("pad_token_id", tokenizer.pad_token_id)}
    missing = [k for k, v in decode.items() if v is None]
    if missing:
        raise InputError(f"{folder}: the tokenizer defines no {missing[0].removesuffix('_id')} token (and config.json "
                         "no text_config with it)")
    wanted = (_json_or_empty(folder / "bench_captioner.json").get("decode") or {}).get("max_length") or decoder_length
    decode["max_length"] = min(int(wanted), decoder_length)
    return {k: int(v) for k, v in decode.items()}, {**prep.to_dict(), "resize": "resize", "crop_fraction": 1.0}


def _json_or_empty(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot be read as JSON ({err})") from None
    return document if isinstance(document, dict) else {}


def plan_captioner(encoder: Path | str, decoder: Path | str, tokenizer: Path | str, *, name: str | None = None,
                   family: str | None = None, reference: bool = False) -> CaptionerCandidate:
    """The pair and its folder checked (Core ML packages, the captioner contract, a loadable tokenizer) before
    anything is stored."""
    paths = {role: Path(p).expanduser() for role, p in zip(PAIR_ROLES, (encoder, decoder))}
    interfaces, metadata = {}, {}
    for role, path in paths.items():
        if package_kind(path) != "mlpackage":
            raise InputError(f"{path}: a captioner's {role} must be an .mlpackage (an ML program)")
        spec = read_spec(path, "mlpackage")
        interfaces[role], metadata[role] = describe_interface(spec), package_metadata(spec)
    size, length = check_pair_contract(paths["encoder"], _main_io(interfaces["encoder"]), paths["decoder"],
                                       _main_io(interfaces["decoder"]))
    folder = Path(tokenizer).expanduser()
    decode, preprocessing = read_tokenizer_folder(folder, size, length)
    chosen = check_name(name or default_name(paths["encoder"]))
    interface = {"model_type": "captioner", "specification_version": interfaces["encoder"]["specification_version"],
                 "default_function": "encoder",
                 "functions": {role: _main_io(interfaces[role]) for role in PAIR_ROLES}}
    return CaptionerCandidate(paths["encoder"].resolve(), paths["decoder"].resolve(), folder.resolve(), chosen,
                              check_name(family or chosen, "family"), reference, interface, metadata, size, length,
                              decode, {**preprocessing, "image_size": size}, family is not None)


def import_captioner(encoder: Path | str, decoder: Path | str, tokenizer: Path | str,
                     workspace: Workspace | None = None, *, name: str | None = None, family: str | None = None,
                     reference: bool = False) -> ImportResult:
    """Register an encoder/decoder pair with its tokenizer folder as an imported captioner (all or nothing)."""
    from bench.build.builder import _exclusive_build

    ws = workspace or Workspace.current()
    candidate = plan_captioner(encoder, decoder, tokenizer, name=name, family=family, reference=reference)
    with _exclusive_build(ws.variants_dir):
        staged = _stage_pair(candidate, ws)
        try:
            return _commit(staged)
        finally:
            shutil.rmtree(staged.scratch, ignore_errors=True)


def _stage_pair(candidate: CaptionerCandidate, workspace: Workspace) -> _Staged:
    import tempfile

    from bench.build import integrity

    started = time.perf_counter()
    root = imported_root(workspace)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".import-", suffix=".tmp", dir=root))
    try:
        files = {**_copy_hashed(candidate.source, scratch, "encoder.mlpackage"),
                 **_copy_hashed(candidate.decoder, scratch, "decoder.mlpackage")}
        (scratch / TOKENIZER_DIR).mkdir()
        for file_name in TOKENIZER_FILES:
            if (candidate.tokenizer / file_name).is_file():
                files |= _copy_hashed(candidate.tokenizer / file_name, scratch / TOKENIZER_DIR, file_name)
        files = {(k if k.startswith(("encoder.", "decoder.")) else f"{TOKENIZER_DIR}/{k}"): v
                 for k, v in files.items()}
        content = hashlib.sha256("".join(f"{rel}\0{info['sha256']}\n" for rel, info in sorted(files.items()))
                                 .encode()).hexdigest()  # paths kept whole: the two packages share inner names
        variant_id = f"{candidate.name}-{content[:12]}"
        final = root / variant_id
        if _intact(final):
            _refuse_regrouping(candidate, read_imported(final))
            return _Staged(candidate, scratch, final, variant_id, True, started)
        manifest = _pair_manifest(candidate, scratch, files, content, variant_id)
        records.write(scratch / MANIFEST, KIND, integrity.seal(records.stamp(KIND, manifest), files))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return _Staged(candidate, scratch, final, variant_id, False, started)


def _pair_manifest(candidate: CaptionerCandidate, folder: Path, files: dict[str, dict[str, Any]], content: str,
                   variant_id: str) -> dict[str, Any]:
    from bench.build.analyze import analyze_package
    from bench.build.builder import _graph_io
    from bench.build.verify import measured_summary
    from bench.deploy.hashing import tree_sha256
    from bench.store.environment import host_environment, now_iso

    started = time.perf_counter()
    analyses = {role: analyze_package(folder / f"{role}.mlpackage", package=role) for role in PAIR_ROLES}
    measured = measured_summary(analyses, {})
    packages = {role: {"path": f"{role}.mlpackage",
                       "bytes": sum(f["bytes"] for rel, f in files.items() if rel.startswith(f"{role}.mlpackage/")),
                       "weight_bytes": analyses[role].weight_bytes,
                       "sha256": tree_sha256(folder / f"{role}.mlpackage")} for role in PAIR_ROLES}
    return {
        "variant_id": variant_id, "name": candidate.name, "family": candidate.family,
        "reference": candidate.reference, "origin": "imported", "captioner": True, "variant_hash": content[:12],
        "content_sha256": content,
        "package": {"path": "encoder.mlpackage", "format": "captioner pair",
                    "bytes": sum(f["bytes"] for f in files.values()), "weight_bytes": measured["weight_bytes"],
                    "sha256": content},
        "packages": packages,
        "image_size": candidate.image_size, "resize": "resize", "decoder_length": candidate.decoder_length,
        "decode": candidate.decode,
        "io": {**_graph_io("recompute", analyses), "preprocessing": candidate.preprocessing},
        "source": {"path": str(folder.parent / variant_id / TOKENIZER_DIR), "name": candidate.name,
                   "tokenizer_from": str(candidate.tokenizer), "weights_sha256": None, "params": measured.get("params"),
                   "model_size": None},
        "interface": candidate.interface,
        "measured": measured,
        "analysis": {"opset": analyses["encoder"].opset, "op_counts": measured["op_counts"],
                     "seconds": round(time.perf_counter() - started, 3)},
        "provenance": {"source_path": str(candidate.source), "decoder_path": str(candidate.decoder),
                       "tokenizer_path": str(candidate.tokenizer), "imported_at": now_iso(),
                       "package_metadata": candidate.metadata},
        "environment": host_environment(),
    }


def is_captioner(manifest: dict[str, Any]) -> bool:
    return bool(manifest.get("captioner"))
