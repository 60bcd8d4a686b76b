"""A variant's dense host weights: decompressed once, stored next to the variant, memory-mapped for every load.

Layout: `<variant>/host-weights/<sha256>.safetensors` — every parameter of the PyTorch captioner at the variant's
image size, float32: exactly the values coremltools decompresses from the stored packages (each chain of
`constexpr_*` ops materialised by coremltools itself), and, for the few parameters no package holds, the source
checkpoint's values. The name is the SHA-256 of the file's bytes (content-addressed), checked with bench's integrity
module before use: a file whose bytes no longer match is refused (damaged stored data is never measured).

Choices, argued:
- Materialised on first host use (host-torch, `bench eval`), not at build: those are its only readers, so a lab that
  builds for iPhones never pays 4 bytes per parameter of disk per variant, and `bench models build` costs what the
  compression costs. The first use pays it once, outside any timed load window; every later load only maps the file.
- Written by our own streaming writer (safetensors' format: header length, JSON header, data) one tensor at a time,
  hashing as it writes: `safetensors.torch.save_file` needs every tensor in memory at once, the very copy this
  module exists to avoid. One compressed package is decompressed at a time and released before the next.
- Loaded with `numpy.memmap` in copy-on-write mode: the model's parameters *are* the file's pages (page cache,
  file-backed, given back to the OS the moment the model is dropped); nothing is copied and nothing is decompressed
  at load. The module skeleton is built without initialising weights (transformers' `no_init_weights`), so its
  placeholder tensors are never touched and never become resident.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BuildError, InputError, RecordError

DIRECTORY = "host-weights"
SUFFIX = ".safetensors"
FORMAT = "bench.host_weights/1"
REBUILT = "delete it and it is rebuilt from the variant's packages"  # what to do about a refused file
_HEADER_ALIGN = 8

@dataclass(frozen=True)
class HostWeights:
    path: Path
    sha256: str
    bytes: int


def stored(directory: Path) -> HostWeights | None:
    """The materialised host weights of a variant directory, if any (not yet verified)."""
    folder = Path(directory) / DIRECTORY
    found = sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []
    if not found:
        return None
    path = found[0]
    return HostWeights(path, path.name[: -len(SUFFIX)], path.stat().st_size)


def verify(weights: HostWeights) -> HostWeights:
    """Refuse (DamagedError) a file whose bytes do not hash to its name, through bench's integrity checks: hashed
    the first time, then trusted while its stat identity (size, mtime, ctime, inode) is unchanged."""
    from bench.build import integrity

    integrity.check_file(weights.path, {"bytes": _expected_bytes(weights.path), "sha256": weights.sha256},
                         hint=REBUILT)
    return weights


def _expected_bytes(path: Path) -> int:
    """The size the header promises (a truncated file is refused without hashing it)."""
    from bench.errors import DamagedError

    try:
        header, data_start = read_header(path)
        return data_start + max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
    except (RecordError, KeyError, IndexError, TypeError, ValueError):
        raise DamagedError(f"{path}: host weights header damaged (unreadable) — {REBUILT}", path=str(path)) from None


def ensure(manifest, directory: Path) -> HostWeights:
    """The variant's verified host weights, materialised first if this is their first use."""
    existing = stored(directory)
    if existing is None:
        existing = materialise(manifest, directory)
    return belongs_to(verify(existing), manifest)


def belongs_to(weights: HostWeights, manifest) -> HostWeights:
    """Refuse (DamagedError) host weights materialised for another variant: a file copied over from another variant
    folder hashes to its own name like any intact file, so the hash alone would let it be measured as this one."""
    from bench.errors import DamagedError

    made_for = read_metadata(weights.path)
    if made_for.get("variant_hash") != manifest.variant_hash:
        raise DamagedError(f"{weights.path}: host weights of another variant ({made_for.get('variant_id') or 'unknown'}"
                           f"), not {manifest.variant_id} — {REBUILT}",
                           path=str(weights.path))
    return weights


# ---------------------------------------------------------------------------------------------------- skeleton


def skeleton(source: Path, image_size: int):
    """The captioner's module tree at `image_size`, with uninitialised (never touched) placeholder weights."""
    from transformers import BlipConfig, BlipForConditionalGeneration
    from transformers.initialization import no_init_weights

    from bench.train.captioner import quiet_transformers

    quiet_transformers()
    config = BlipConfig.from_pretrained(source, local_files_only=True)
    config.vision_config.image_size = image_size
    with no_init_weights():
        model = BlipForConditionalGeneration._from_config(config, attn_implementation="eager")
    model.tie_weights()  # the LM head shares the word embedding: one parameter, stored once
    return model.eval()


def load_model(weights: HostWeights, source: Path, image_size: int):
    """A captioner model whose parameters are the mapped file's float32 pages (copy-on-write, zero copy)."""
    model = skeleton(source, image_size)
    state = mapped_tensors(weights.path)
    expected = {name for name, _ in model.named_parameters()}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise RecordError(f"{weights.path}: host weights do not fit the captioner (missing {missing[:2]}, "
                          f"unexpected {extra[:2]}); delete the file and it is rebuilt")
    return _assign(model, state)


def mapped_source_model(checkpoint: Path):
    """The source checkpoint's model with its parameters mapped from model.safetensors (float32 only), so that a
    build holds only the pages the conversion touches; None when the checkpoint cannot be mapped that way."""
    from bench.train.captioner import weights_file

    file = weights_file(Path(checkpoint))
    if file.suffix != SUFFIX:
        return None
    header, _ = read_header(file)
    if any(entry.get("dtype") != "F32" for entry in header.values()):
        return None
    model = skeleton(checkpoint, _native_image_size(checkpoint))
    state = mapped_tensors(file)
    missing = [name for name, _ in model.named_parameters() if name not in state]
    if missing:
        return None  # not a plain captioning checkpoint: load_captioner gives the one clear error
    return _assign(model, {name: state[name] for name, _ in model.named_parameters()})


def _native_image_size(checkpoint: Path) -> int:
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    return int((config.get("vision_config") or {}).get("image_size", 384))


def mapped_tensors(path: Path) -> dict[str, Any]:
    """{name: torch tensor} over a float32 safetensors file, memory-mapped copy-on-write (nothing read yet)."""
    import numpy as np
    import torch

    header, data_start = read_header(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="c")
    state = {}
    for name, entry in header.items():
        if entry.get("dtype") != "F32":
            raise RecordError(f"{path}: {name} is {entry.get('dtype')}, host weights are float32")
        begin, end = entry["data_offsets"]
        if data_start + end > len(mapped):
            raise RecordError(f"{path}: truncated ({name} ends past the file); delete the file and it is rebuilt")
        state[name] = torch.from_numpy(mapped[data_start + begin: data_start + end].view(np.float32)
                                       .reshape(entry["shape"]))
    return state


def _assign(model, state: dict[str, Any]):
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """(tensor entries, offset of the data) of a safetensors file."""
    header, length = _read_raw_header(path)
    header.pop("__metadata__", None)
    return header, 8 + length


def read_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` of a safetensors file ({} when it has none)."""
    metadata = _read_raw_header(path)[0].get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _read_raw_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise RecordError(f"{path}: truncated host weights; delete the file and it is rebuilt")
        (length,) = struct.unpack("<Q", raw)
        try:  # a damaged length field may promise more than the file holds: never allocate for it
            header = json.loads(handle.read(length)) if length <= os.fstat(handle.fileno()).st_size - 8 else None
        except (ValueError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise RecordError(f"{path}: corrupt host weights header; delete the file and it is rebuilt")
    return header, length


# ---------------------------------------------------------------------------------------------------- materialise


def materialise(manifest, directory: Path) -> HostWeights:
    """Decompress the variant's packages once into `host-weights/<sha256>.safetensors` (streamed, hashed)."""
    from bench.build.variants import read_weights_map

    from bench.build.integrity import check_variant

    directory = Path(directory)
    check_variant(manifest)  # the packages must still be the bytes that were built
    source = Path(manifest.source["path"])
    _check_source(manifest, source)
    model = skeleton(source, manifest.image_size)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    del model
    plan = _plan(read_weights_map(directory), shapes)
    folder = directory / DIRECTORY
    folder.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".host-weights.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            digest = _write(handle, plan, shapes, directory, source, manifest)
            handle.flush()
            os.fsync(handle.fileno())
        final = folder / f"{digest}{SUFFIX}"
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return HostWeights(final, digest, final.stat().st_size)


def _check_source(manifest, source: Path) -> None:
    """Parameters no package holds come from the source checkpoint: it must be the one the variant was built from."""
    from bench.build.builder import base_weights_sha256

    if base_weights_sha256(source) != manifest.cache_key["base_weights_sha256"]:
        raise BuildError(f"{manifest.variant_id}: the source checkpoint {source} changed since the variant was "
                         "built (weights hash differs); rebuild the variant")


@dataclass(frozen=True)
class _Slot:
    param: str
    package: str | None  # None: from the source checkpoint
    const: str | None
    rows: int | None  # the constant holds only the first `rows` rows; the rest come from the source


def _plan(weights_map: dict[str, dict[str, list[dict]]], shapes: dict[str, tuple]) -> list[_Slot]:
    """Every parameter once, in writing order: grouped by package and constant (each constant decompressed once),
    then the parameters no package holds. A parameter held by both packages takes the later one, as before."""
    holder: dict[str, _Slot] = {}
    for package, mapping in weights_map.items():
        for const, targets in mapping.items():
            for target in targets:
                if target["param"] in shapes:  # tied aliases (e.g. the LM head) are not separate parameters
                    holder[target["param"]] = _Slot(target["param"], package, const, target["rows"])
    ordered = sorted(holder.values(), key=lambda s: (list(weights_map).index(s.package), s.const, s.param))
    return ordered + [_Slot(name, None, None, None) for name in sorted(set(shapes) - set(holder))]


def _write(handle, plan: list[_Slot], shapes: dict[str, tuple], directory: Path, source: Path, manifest) -> str:
    import numpy as np

    header: dict[str, Any] = {"__metadata__": {"format": FORMAT, "variant_id": manifest.variant_id,
                                               "variant_hash": manifest.variant_hash}}
    offset = 0
    for slot in plan:
        size = int(np.prod(shapes[slot.param], dtype=np.int64)) * 4
        header[slot.param] = {"dtype": "F32", "shape": list(shapes[slot.param]), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % _HEADER_ALIGN)
    digest = hashlib.sha256()

    def emit(data: bytes | memoryview) -> None:
        digest.update(data)
        handle.write(data)

    emit(struct.pack("<Q", len(text)) + text)
    from bench.build.builder import give_back_memory

    with _SourceTensors(source) as originals:
        current_package, constants = None, None
        for slot in plan:
            shape = shapes[slot.param]
            if slot.package is None:
                value = originals.get(slot.param)
            else:
                if slot.package != current_package:
                    if constants is not None:  # release the previous package before decompressing the next
                        constants.close()
                        constants = None
                        give_back_memory()
                    constants = _PackageConstants(directory / manifest.packages[slot.package].path)
                    current_package = slot.package
                value = constants.get(slot.const)
                if slot.rows is not None:
                    full = originals.get(slot.param).copy()
                    full[: slot.rows] = value.reshape(slot.rows, -1)
                    value = full
            value = np.ascontiguousarray(value, dtype=np.float32)
            if value.size != int(np.prod(shape, dtype=np.int64)):
                raise BuildError(f"{manifest.variant_id}: {slot.param} has {value.size} values in "
                                 f"{slot.package or 'the source checkpoint'}, the captioner needs shape {list(shape)}")
            emit(memoryview(value.reshape(-1)).cast("B"))
        if constants is not None:
            constants.close()
    return digest.hexdigest()


class _PackageConstants:
    """The dense value of every weight of one stored package, one at a time.

    A package without `constexpr_*` ops (fp32, fp16) stores its weights as they are: each is read from the weight
    file by bench's own reader, one tensor at a time, and coremltools is not involved (on BLIP-base its program
    loader held the whole package in memory at once, a gigabyte for fp32, and took seconds). A compressed package is
    read into coremltools' MIL program (its stored, compressed bytes); each weight is the output of a `const` or of
    the last op of a `constexpr_*` chain, materialised with that op's own decompression
    (`materialized_val_inference`, what `coremltools.optimize.coreml.decompress_weights` runs), one at a time."""

    def __init__(self, package: Path):
        from bench.build.analyze import ConstantReader, load_program

        self.package = package
        self._reader = None
        self._heads: dict[str, Any] = {}
        spec = load_program(package)
        if _compressed_ops(spec):
            self._load_program(spec)
        else:
            self._reader = ConstantReader(package)
            self._names = set(self._reader.names())

    def _load_program(self, spec) -> None:
        import coremltools as ct  # noqa: F401  (registers the ops the loader needs)
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

        from bench.build.analyze import package_files
        from bench.build.compress import patch_sparse_mask_popcount
        from bench.build.torch_weights import base_constant_name

        patch_sparse_mask_popcount()
        _, weights_dir = package_files(self.package)
        try:
            program = load_milproto(spec, spec.specificationVersion, str(weights_dir))
        except (ValueError, RuntimeError) as err:  # coremltools' blob reader on a truncated or overwritten
            # weight.bin; its C++ package reader on a garbled Manifest.json (nlohmann::json's parse error)
            raise InputError(f"cannot read the stored weights ({' '.join(str(err).split())}); the package is "
                             "corrupt, rebuild the variant", file=str(self.package)) from None
        for function in program.functions.values():
            for op in function.operations:
                if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                    readers = [child for out in op.outputs for child in out.child_ops]
                    if any(not _is_constant(child.op_type) for child in readers):
                        self._heads[base_constant_name(op.outputs[0].name)] = op

    def get(self, const: str):
        if self._reader is not None:
            if const not in self._names:
                raise BuildError(f"{self.package}: constant {const!r} missing from the stored package")
            return self._reader.read(const)
        op = self._heads.get(const)
        if op is None:
            raise BuildError(f"{self.package}: constant {const!r} missing from the stored package")
        return op.outputs[0].val if op.op_type == "const" else op.materialized_val_inference()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._heads.clear()


def _compressed_ops(spec) -> bool:
    """Whether a stored program holds any `constexpr_*` op (a compressed weight)."""
    from bench.build.analyze import _walk_operations

    return any(op.type.startswith("constexpr_")
               for function in spec.mlProgram.functions.values()
               for op in _walk_operations(function.block_specializations[function.opset]))


def _is_constant(op_type: str) -> bool:
    return op_type == "const" or op_type.startswith("constexpr_")


class _SourceTensors:
    """Source-checkpoint tensors by name, read one at a time (safetensors: memory-mapped)."""

    def __init__(self, source: Path):
        self.source = source
        self._handle = None
        self._bin = None

    def __enter__(self):
        from bench.train.captioner import weights_file

        self._file = weights_file(self.source)
        return self

    def get(self, name: str):
        import numpy as np

        if self._file.suffix == ".safetensors":
            if self._handle is None:
                from safetensors import safe_open

                self._handle = safe_open(str(self._file), framework="numpy")
            if name not in self._handle.keys():
                raise BuildError(f"{self._file}: parameter {name!r} not in the source checkpoint")
            return np.asarray(self._handle.get_tensor(name), dtype=np.float32)
        if self._bin is None:
            import torch

            self._bin = torch.load(self._file, map_location="cpu", mmap=True, weights_only=True)
        if name not in self._bin:
            raise BuildError(f"{self._file}: parameter {name!r} not in the source checkpoint")
        return self._bin[name].float().numpy()

    def __exit__(self, *exc):
        self._handle = self._bin = None


# ---------------------------------------------------------------------------------------------------- child process

_ERROR_PREFIX = "bench-host-weights-error: "


def materialise_in_child(manifests: list) -> None:
    """Materialise the host weights of these variants in one child process.

    Why a child: decompressing needs coremltools (hundreds of MB of imports) and a package's program in memory; the
    process that measures (host-torch) should hold neither. The child's exit returns all of it to the OS at once,
    which freeing inside a long-lived process does not reliably do (allocator arenas)."""
    import subprocess
    import sys

    import bench

    if not manifests:
        return
    env = dict(os.environ)
    root = str(Path(bench.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "bench.build.host_weights", *(str(m.directory) for m in manifests)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = [line[len(_ERROR_PREFIX):] for line in done.stderr.splitlines() if line.startswith(_ERROR_PREFIX)]
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise BuildError(lines[-1] if lines else f"materialising host weights failed: {tail}")


def main(directories: list[str]) -> int:
    import sys

    from bench.build.builder import give_back_memory
    from bench.build.variants import load_variant
    from bench.errors import BenchError

    try:
        for directory in directories:
            manifest = load_variant(Path(directory))
            if stored(manifest.directory) is None:
                materialise(manifest, manifest.directory)
                give_back_memory()  # what the variant's packages left in the heap, before the next variant
    except BenchError as err:
        print(f"{_ERROR_PREFIX}{err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
