"""Build a compression matrix into content-addressed variant directories.

Cache: a variant's id is `<name>-<hash12>` where the hash covers (base weights hash, recipe, target, image size,
resize, decoder length, coremltools/torch versions, exporter version). A variant whose directory already has a
manifest is reused without loading torch or coremltools at all. Each variant is written in a temporary directory
and renamed into place (bench.atomic.directory): an interrupted build leaves nothing that looks complete.
A variant that fails (conversion error, verification miss) is reported at the end; the others still build.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.build.matrix import Matrix, PlannedVariant, Recipe
from bench.build.variants import as_workspace, read_manifest
from bench.errors import BenchError, BuildError, DamagedError, InputError, did_you_mean
from bench.paths import BUILTIN_SOURCES, Workspace, builtin_captioner_dir

# Bump when the exported graphs or the compression code change in a way that changes the bytes.
EXPORTER_VERSION = 2


@dataclass
class VariantResult:
    name: str
    variant_id: str
    status: str  # built | cached | rebuilt | failed
    seconds: float
    error: str | None = None
    manifest: Any = None
    note: str | None = None  # why a cached variant was rebuilt: the damage found, or "forced"


@dataclass
class BuildReport:
    results: list[VariantResult] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, status: str) -> list[VariantResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[VariantResult]:
        return self.of("failed")

    def by_name(self) -> dict[str, VariantResult]:
        return {r.name: r for r in self.results}


@dataclass(frozen=True)
class ProgressEvent:
    """start: a variant begins; step: a stage inside it (detail says which); done: finished (status)."""

    kind: str
    name: str
    index: int
    total: int
    detail: str = ""


Progress = Callable[[ProgressEvent], None]


def resolve_source(source: str, workspace: Workspace) -> Path:
    """A matrix `source`: a shipped captioner by name (`builtin`, `builtin-large`) or a checkpoint directory."""
    if source in BUILTIN_SOURCES:
        return builtin_captioner_dir(BUILTIN_SOURCES[source])
    path = Path(source).expanduser()
    return path if path.is_absolute() else (workspace.root / path)


def base_weights_sha256(checkpoint: Path) -> str:
    """Hash of the checkpoint's weights file (what load_captioner reports), without importing torch."""
    from bench.train.captioner import check_checkpoint_dir, sha256_file, weights_file

    return sha256_file(weights_file(check_checkpoint_dir(checkpoint)))


def tool_versions() -> dict[str, str | None]:
    from bench.store.environment import package_versions

    return package_versions(("coremltools", "torch"))


def cache_key(recipe: Recipe, weights_sha256: str, image_size: int, decoder_length: int,
              versions: dict[str, str | None]) -> dict[str, Any]:
    return {
        "base_weights_sha256": weights_sha256,
        "recipe": recipe.key_fields(),
        "target": recipe.target,
        "image_size": image_size,
        "resize": recipe.resize,
        "decoder_length": decoder_length,
        "versions": dict(versions),
        "exporter_version": EXPORTER_VERSION,
    }


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _quiet_coremltools() -> None:
    """coremltools' per-pass tqdm bars and version warnings would drown our own progress output."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="coremltools")
    warnings.filterwarnings("ignore", message=".*has not been tested with coremltools.*")
    logging.getLogger("coremltools").setLevel(logging.ERROR)


def give_back_memory() -> None:
    """Collect garbage and return freed heap pages to the OS (glibc's malloc_trim; elsewhere only collects).

    Why in-process and not a child per variant: every large buffer of a build is either file-backed (the mapped
    source checkpoint, packages read per tensor) and leaves the resident set when unmapped, or one package's
    working set inside coremltools, dropped before the next. What glibc keeps after those frees (arena
    fragmentation: "freed but not returned") is what malloc_trim gives back. A child per variant would pay the
    coremltools + torch imports (seconds) each time and still hold the same working set."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS): the allocator returns large blocks itself
        pass


@dataclass
class _Export:
    """One conversion (precision, target, image size, decoder length), saved as uncompressed packages."""

    paths: dict[str, Path]
    weights_map: dict[str, Any]
    cands: dict[str, dict]
    seconds: float
    charged: bool = False  # conversion time is charged to the first variant that uses it


class _Session:
    """State shared by the variants of one build: each conversion's uncompressed packages, saved once in a
    temporary folder, and which constant of them holds which parameter.

    Bounded memory (issue 16): the source model is memory-mapped from its checkpoint, once per graph, and dropped
    after it; each graph is saved and released as soon as it is converted (bench.build.export.export_package);
    weights are mapped and analysed one tensor at a time (analyze.ConstantReader), never copied whole; each
    variant compresses from the saved package, one package at a time, and gives its memory back before the next."""

    def __init__(self, checkpoint: Path, weights_sha256: str):
        self.checkpoint, self.weights_sha256 = checkpoint, weights_sha256
        self.defaults: dict[str, int] = {}
        self.params: int | None = None  # the source model's parameter count, known once it is loaded
        self._exports: dict[tuple, _Export] = {}
        self._about = None  # the source captioner's name, decoding and preprocessing (no model)
        self._folder = tempfile.TemporaryDirectory(prefix="bench-export-")

    def close(self) -> None:
        self._folder.cleanup()

    @property
    def about(self):
        if self._about is None:
            self._source_model()
        return self._about

    def _source_model(self):
        import dataclasses

        from bench.build.host_weights import mapped_source_model
        from bench.train.captioner import captioner_around, load_captioner

        model = mapped_source_model(self.checkpoint)
        captioner = load_captioner(self.checkpoint) if model is None else \
            captioner_around(model, self.checkpoint, weights_sha256=self.weights_sha256)
        self._about = dataclasses.replace(captioner, model=None)
        self.params = sum(parameter.numel() for parameter in captioner.model.parameters())
        return captioner.model

    def exported(self, recipe: Recipe, image_size: int, decoder_length: int) -> tuple[_Export, float]:
        """The conversion's saved packages, weights map and candidates; seconds converting (first use only)."""
        key = (recipe.precision, recipe.target, image_size, decoder_length, recipe.decoder)
        if key not in self._exports:
            self._exports[key] = self._export(key)
        export = self._exports[key]
        seconds = 0.0 if export.charged else export.seconds
        export.charged = True
        return export, seconds

    def _export(self, key: tuple) -> _Export:
        """Convert and save one graph at a time, each from a freshly mapped source model dropped right after, so
        a conversion holds only the weights its graph touches."""
        from bench.build.analyze import ConstantReader, analyze_package
        from bench.build.compress import candidates, patch_fp16_overflow_check
        from bench.build.export import export_package
        from bench.build.torch_weights import map_weights, resize_vision_input
        from bench.build.variants import PACKAGES

        precision, target, image_size, decoder_length, decoder = key
        started = time.perf_counter()
        patch_fp16_overflow_check()  # its unpatched check was the peak of a BLIP-base fp16 conversion
        folder = Path(self._folder.name) / "-".join(map(str, key))
        folder.mkdir()
        paths, maps, unmapped, cands = {}, {}, {}, {}
        for package in PACKAGES:
            model = resize_vision_input(self._source_model(), image_size)
            paths[package] = export_package(package, model, folder, image_size=image_size,
                                            decoder_length=decoder_length, target=target, precision=precision,
                                            decoder=decoder)
            reader = ConstantReader(paths[package])
            maps[package], unmapped[package] = map_weights(reader, model)
            cands[package] = candidates(analyze_package(paths[package], hash_duplicates=False), reader, maps[package])
            del model
            give_back_memory()
        used = {t["param"] for mapping in maps.values() for targets in mapping.values() for t in targets}
        never = sorted(set(unmapped["encoder"]) & set(unmapped["decoder"]) - used)
        return _Export(paths, {"packages": maps, "unmapped_params": never}, cands, time.perf_counter() - started)


def build_matrix(matrix: Matrix, workspace: Workspace | Path | str | None = None, *,
                 progress: Progress | None = None, only: list[str] | None = None,
                 trust_coremltools_pruner: bool = False, force: bool | list[str] = False,
                 verify: bool = False) -> BuildReport:
    """Build every variant of the matrix (or the names in `only`) into the workspace's variants directory.

    A cached variant is checked first (bench.build.integrity; `verify` rehashes every byte) and rebuilt when damaged.
    `force` rebuilds regardless: True for every planned variant, or a list of names.
    """
    ws = as_workspace(workspace)
    started = time.perf_counter()
    planned = matrix.planned()
    imports = matrix.imports()
    known = {p.name for p in planned} | {i.label for i in imports}
    for name in [*(only or []), *(force if isinstance(force, list) else [])]:
        if name not in known:
            raise did_you_mean("variant name", name, known)
    if only:
        planned = [p for p in planned if p.name in only]
        imports = [i for i in imports if i.label in only]
    forced = {p.name for p in planned} if force is True else set(force or [])
    with _exclusive_build(ws.variants_dir):
        imported = _import_packages(matrix, imports, ws, progress)
        if not planned:
            return BuildReport(results=imported, seconds=time.perf_counter() - started)
        report = _build_planned(matrix, ws, planned, forced, verify, progress, trust_coremltools_pruner, started)
    report.results[:0] = imported
    return report


def _import_packages(matrix: Matrix, imports: list, ws: Workspace, progress: Progress | None) -> list[VariantResult]:
    """The matrix's `package:` entries, imported (bench.build.imported); the same bytes already stored are reused.
    Every package is checked before any is stored: a bad path is one line and nothing is imported."""
    from bench.build.imported import Candidate, plan_imports, store_candidates

    notify = progress or (lambda event: None)
    candidates: list[Candidate] = []
    for item in imports:
        candidates += plan_imports([matrix.package_path(item, ws.root)], name=item.name, family=item.family,
                                   reference=item.reference)
    stored = store_candidates(candidates, ws, on_staged=lambda index, candidate: notify(
        ProgressEvent("start", candidate.name, index, len(candidates))))
    results = []
    for index, (candidate, one) in enumerate(zip(candidates, stored)):
        results.append(VariantResult(candidate.name, one.variant_id, one.status, one.seconds,
                                     manifest=_ImportedView(one.manifest)))
        notify(ProgressEvent("done", candidate.name, index, len(candidates), one.status))
    return results


class _ImportedView:
    """What the build report reads from a manifest (measured, target), for an imported variant."""

    def __init__(self, manifest: dict[str, Any]):
        self.measured = manifest["measured"]
        self.target = f"spec v{manifest['interface']['specification_version']}"


@contextlib.contextmanager
def _exclusive_build(variants_dir: Path):
    """One build per workspace at a time; the holder removes the `.tmp` folders that killed builds left behind."""
    import fcntl

    variants_dir.mkdir(parents=True, exist_ok=True)
    with open(variants_dir.parent / ".variants-build.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel when a build dies, so never stale
        for stale in variants_dir.glob(".*.tmp"):  # no other build is running: these are from killed ones
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
        yield


_NOT_BUILT = "not built yet"


def _why_build(final: Path, *, forced: bool, full: bool) -> str | None:
    """None when the cached variant is intact and not forced, else why it is (re)built."""
    from bench.build.integrity import check_variant

    if not os.path.lexists(final):
        return _NOT_BUILT
    if forced:
        return "forced"
    try:
        check_variant(final, full=full)
    except DamagedError as err:
        return str(err).split(" — ")[0]  # the file and what is wrong with it; the hint is what happens now
    return None


def _build_planned(matrix: Matrix, ws: Workspace, planned: list[PlannedVariant], forced: set[str], verify: bool,
                   progress: Progress | None, trust_coremltools_pruner: bool, started: float) -> BuildReport:
    versions = tool_versions()
    sessions = _Sessions(ws)
    report = BuildReport()
    notify = progress or (lambda event: None)
    try:
        for index, item in enumerate(planned):
            notify(ProgressEvent("start", item.name, index, len(planned)))
            t0 = time.perf_counter()
            session = sessions.of(item.source or matrix.source)
            weights_sha256, defaults = session.weights_sha256, session.defaults
            image_size = item.recipe.image_size or defaults["image_size"]
            decoder_length = item.recipe.decoder_length or defaults["max_length"]
            key = cache_key(item.recipe, weights_sha256, image_size, decoder_length, versions)
            variant_id = f"{item.name}-{key_hash(key)[:12]}"
            final = ws.variants_dir / variant_id
            try:
                reason = _why_build(final, forced=item.name in forced, full=verify)
                if reason is None:
                    result = VariantResult(item.name, variant_id, "cached", 0.0, manifest=read_manifest(final))
                else:
                    manifest = _build_one(session, item, key, variant_id, final, image_size, decoder_length,
                                          lambda detail: notify(ProgressEvent("step", item.name, index, len(planned), detail)),
                                          trust_coremltools_pruner)
                    fresh = reason == _NOT_BUILT
                    result = VariantResult(item.name, variant_id, "built" if fresh else "rebuilt", 0.0, manifest=manifest,
                                           note=None if fresh else reason)
            except BenchError as err:
                result = VariantResult(item.name, variant_id, "failed", 0.0, error=str(err))
            except Exception as err:  # a coremltools/torch failure in one variant must not stop the others
                first_line = (str(err).strip().splitlines() or [""])[0]
                result = VariantResult(item.name, variant_id, "failed", 0.0, error=f"{type(err).__name__}: {first_line}")
            result.seconds = time.perf_counter() - t0
            report.results.append(result)
            notify(ProgressEvent("done", item.name, index, len(planned), result.status))
    finally:
        sessions.close()
    report.seconds = time.perf_counter() - started
    return report


class _Sessions:
    """One _Session per source captioner of the matrix (the base-vs-large axis), opened on first use: a source
    that cannot be read fails at its first variant, with the reason."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self._open: dict[str, _Session] = {}

    def of(self, source: str) -> "_Session":
        if source not in self._open:
            checkpoint = resolve_source(source, self.workspace)
            session = _Session(checkpoint, base_weights_sha256(checkpoint))
            session.defaults = _captioner_defaults(checkpoint)
            self._open[source] = session
        return self._open[source]

    def close(self) -> None:
        for session in self._open.values():
            session.close()


def _captioner_defaults(checkpoint: Path) -> dict[str, int]:
    """Image size and decode length of the checkpoint, read from its files (no torch import on cache hits)."""
    from bench.train.captioner import DEFAULT_MAX_LENGTH, read_metadata

    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read: {err}", file=str(checkpoint / "config.json")) from None
    vision = config.get("vision_config") or {}
    metadata = read_metadata(checkpoint)
    return {"image_size": int(vision.get("image_size", 384)),
            "max_length": int(metadata.get("decode", {}).get("max_length", DEFAULT_MAX_LENGTH))}


def _model_size(checkpoint: Path) -> str | None:
    from bench.train.captioner import model_size_label

    return model_size_label(json.loads((checkpoint / "config.json").read_text(encoding="utf-8")))


def _build_one(session: _Session, item: PlannedVariant, key: dict[str, Any], variant_id: str, final: Path,
               image_size: int, decoder_length: int, step: Callable[[str], None], trust_coremltools_pruner: bool):
    from bench import atomic
    from bench.build import integrity
    from bench.build.analyze import analyze_package, tree_sha256
    from bench.build.variants import KIND, MANIFEST, PACKAGES, WEIGHTS_MAP, VariantManifest
    from bench.build.verify import measured_summary, verify_variant
    from bench.store import records
    from bench.store.environment import host_environment

    _quiet_coremltools()
    recipe = item.recipe
    step("convert")
    export, convert_seconds = session.exported(recipe, image_size, decoder_length)
    weights_map, captioner = export.weights_map, session.about
    t0 = time.perf_counter()
    with atomic.directory(final) as tmp:
        plans, analyses, packages = {}, {}, {}
        for package in PACKAGES:
            step(f"compress {package}")
            plans[package] = _compress_package(export.paths[package], tmp / f"{package}.mlpackage", recipe,
                                               export.cands[package], package, trust_coremltools_pruner)
        compress_seconds = time.perf_counter() - t0
        step("verify")
        t1 = time.perf_counter()
        for package in PACKAGES:
            path = tmp / f"{package}.mlpackage"
            analyses[package] = analyze_package(path, package=package)
            analyses[package].path = f"{package}.mlpackage"
            packages[package] = {
                "path": f"{package}.mlpackage", "bytes": analyses[package].bytes,
                "weight_bytes": analyses[package].weight_bytes, "sha256": tree_sha256(path),
                "params": analyses[package].params, "nonzero_params": analyses[package].nonzero_params,
                "op_counts": analyses[package].op_counts, "decompression_ops": analyses[package].decompression_ops,
                "opset": analyses[package].opset,
            }
        verification = verify_variant(item.name, recipe.precision, plans, analyses,
                                      expects_compression=bool(recipe.compressions))
        verification["plan"] = {p: {"selected": sorted(plan.selected), "untouched": len(plan.untouched),
                                    "skipped": plan.skipped} for p, plan in plans.items()}
        analyze_seconds = time.perf_counter() - t1
        atomic.write_json(tmp / WEIGHTS_MAP, weights_map)
        variant_hash = hashlib.sha256(
            (packages["encoder"]["sha256"] + packages["decoder"]["sha256"]).encode()).hexdigest()
        manifest = VariantManifest(
            variant_id=variant_id, name=item.name, variant_hash=variant_hash, cache_key=key,
            recipe=recipe.model_dump(mode="json"), target=recipe.target, image_size=image_size,
            resize=recipe.resize, decoder_length=decoder_length,
            decode={**captioner.decode.to_dict()},
            source={"path": str(session.checkpoint), "name": captioner.name,
                    "weights_sha256": session.weights_sha256, "params": session.params,
                    "model_size": _model_size(session.checkpoint)},
            io={**_graph_io(recipe.decoder, analyses),
                "preprocessing": {**captioner.preprocessing.to_dict(), "image_size": image_size,
                                  "resize": recipe.resize, "crop_fraction": recipe.crop_fraction}},
            packages=packages, measured=measured_summary(analyses, plans), verification=verification,
            build={"convert_seconds": round(convert_seconds, 3), "compress_seconds": round(compress_seconds, 3),
                   "analyze_seconds": round(analyze_seconds, 3),
                   "unmapped_params": weights_map["unmapped_params"]},
            environment=host_environment(),
        )
        sealed = integrity.seal(records.stamp(KIND, manifest.to_record()), integrity.record_files(tmp))
        records.write(tmp / MANIFEST, KIND, sealed)
        manifest.integrity = sealed["integrity"]
    manifest._directory = final
    return manifest


def _graph_io(decoder: str, analyses: dict) -> dict[str, Any]:
    """The manifest's `io` for both graphs: feature names, shapes, states and how one decoding step is fed."""
    from bench.build import kv_cache
    from bench.build.export import DECODER_INPUTS, DECODER_OUTPUT, ENCODER_INPUT, ENCODER_OUTPUT

    encoder, step = analyses["encoder"], analyses["decoder"]
    if decoder == "kv_cache":
        return {"decoding": "kv_cache",
                "encoder": {"inputs": encoder.inputs, "outputs": encoder.outputs, "input": ENCODER_INPUT,
                            "output_names": list(kv_cache.CROSS_OUTPUTS)},
                "decoder": {"inputs": step.inputs, "outputs": step.outputs, "states": step.states,
                            "input_names": list(kv_cache.DECODER_INPUTS), "output": kv_cache.DECODER_OUTPUT,
                            "usage": kv_cache.USAGE}}
    return {"decoding": "recompute",
            "encoder": {"inputs": encoder.inputs, "outputs": encoder.outputs, "input": ENCODER_INPUT,
                        "output": ENCODER_OUTPUT},
            "decoder": {"inputs": step.inputs, "outputs": step.outputs, "input_names": list(DECODER_INPUTS),
                        "output": DECODER_OUTPUT,
                        "usage": "step t: input_ids[0..t] filled (ids[0]=bos), attention_mask 1 up to t, "
                                 "read logits[0, t]"}}


def _compress_package(source: Path, destination: Path, recipe: Recipe, cands: dict, package: str,
                      trust_coremltools_pruner: bool):
    """Compress one saved uncompressed package into `destination`; returns the Plan. An uncompressed recipe copies
    the package; otherwise coremltools works on it alone and its memory is given back before the next package."""
    import shutil

    import coremltools as ct

    from bench.build.compress import compress_model

    mlmodel = ct.models.MLModel(str(source), skip_model_load=True)
    compressed, plan = compress_model(mlmodel, recipe, cands, package,
                                      trust_coremltools_pruner=trust_coremltools_pruner)
    if compressed is mlmodel:
        shutil.copytree(source, destination)
    else:
        compressed.save(str(destination))
    del compressed, mlmodel
    give_back_memory()
    return plan
