"""Static analysis of a stored Core ML ML-program package, straight from its protobuf and weight blob.

Never trust a recipe: everything a variant claims (bytes, sparsity, bits, unique values, decompression ops) is
measured here from the bytes on disk. Only coremltools' generated protobuf modules are loaded (~0.1 s), not the
whole of coremltools (~7 s), so `bench models inspect` stays fast.

Blob layout (weight.bin): each blob-backed value points at a 64-byte metadata record
(u32 sentinel 0xDEADBEEF, u32 dtype, u64 size in bytes, u64 data offset) followed by the data.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import mmap
import os
import struct
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import InputError

BLOB_SENTINEL = 0xDEADBEEF
# Above this many elements a float tensor's unique values are not counted (sorting 23 M floats costs seconds).
UNIQUE_COUNT_LIMIT = 65_536
STORAGE_BY_OP = {
    "constexpr_sparse_to_dense": "sparse",
    "constexpr_lut_to_dense": "palettized",
    "constexpr_affine_dequantize": "affine",
    "constexpr_blockwise_shift_scale": "blockwise",
    # iOS18 joint compression: the non-zero values of a sparse weight are themselves palettized / quantized
    "constexpr_lut_to_sparse": "palettized",
    "constexpr_sparse_blockwise_shift_scale": "blockwise",
}
_PROTO_ALIAS = "_bench_coreml_proto"


@dataclass
class TensorAnalysis:
    package: str
    name: str
    shape: list[int]
    dtype: str
    storage: str  # dense | sparse | palettized | affine | blockwise, joined with "+" for joint compression
    bytes: int
    params: int
    nonzero: int | None
    sparsity: float | None
    bits: float  # stored bits per element, all parts included (mask, LUT, scales)
    unique_values: int | None
    child_op_types: list[str]


@dataclass
class PackageAnalysis:
    path: str
    package: str
    bytes: int
    weight_bytes: int
    opset: str
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    op_counts: dict[str, int]
    decompression_ops: dict[str, int]
    tensors: list[TensorAnalysis]
    duplicated_tensors: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, list[int]] = field(default_factory=dict)  # Core ML state (MLState) tensors, iOS 18+

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def nonzero_params(self) -> int:
        return sum(t.params if t.nonzero is None else t.nonzero for t in self.tensors)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def proto_modules():
    """coremltools' generated Model_pb2 and MIL_pb2, without importing coremltools itself (unless already loaded)."""
    if "coremltools" in sys.modules:
        from coremltools.proto import MIL_pb2, Model_pb2

        return Model_pb2, MIL_pb2
    if _PROTO_ALIAS not in sys.modules:
        spec = importlib.util.find_spec("coremltools")
        if spec is None or spec.origin is None:
            raise InputError("coremltools is not installed; cannot read Core ML packages")
        proto_dir = os.path.join(os.path.dirname(spec.origin), "proto")
        package_spec = importlib.util.spec_from_file_location(
            _PROTO_ALIAS, os.path.join(proto_dir, "__init__.py"), submodule_search_locations=[proto_dir]
        )
        module = importlib.util.module_from_spec(package_spec)
        sys.modules[_PROTO_ALIAS] = module
        previous = os.environ.get("IMPORT_COREMLTOOLS_PROTO")
        os.environ["IMPORT_COREMLTOOLS_PROTO"] = "0"  # the package __init__ would import every module eagerly
        try:
            package_spec.loader.exec_module(module)
        finally:
            if previous is None:
                del os.environ["IMPORT_COREMLTOOLS_PROTO"]
            else:
                os.environ["IMPORT_COREMLTOOLS_PROTO"] = previous
    return (importlib.import_module(f"{_PROTO_ALIAS}.Model_pb2"), importlib.import_module(f"{_PROTO_ALIAS}.MIL_pb2"))


def package_files(path: Path) -> tuple[Path, Path]:
    """(model.mlmodel, weights dir) of an .mlpackage, or one clear error."""
    path = Path(path)
    spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
    if not path.exists():
        raise InputError(f"{path}: no such package")
    if not spec_file.is_file():
        raise InputError(f"{path}: not a Core ML .mlpackage (no Data/com.apple.CoreML/model.mlmodel)")
    _check_package_manifest(path / "Manifest.json")
    return spec_file, spec_file.parent / "weights"


def _check_package_manifest(manifest: Path) -> None:
    """Core ML opens a package through Manifest.json: a damaged one is refused here, before anything trusts the
    package (coremltools' own reader would fail later with a C++ JSON error)."""
    import json

    try:
        data = json.loads(manifest.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{manifest}: missing; the package is incomplete, rebuild the variant") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise InputError(f"{manifest}: corrupt package manifest ({err}); rebuild the variant") from None
    if not isinstance(data, dict) or not isinstance(data.get("itemInfoEntries"), dict) \
            or not isinstance(data.get("rootModelIdentifier"), str):
        raise InputError(f"{manifest}: not a Core ML package manifest (no itemInfoEntries / rootModelIdentifier); "
                         "rebuild the variant")


def load_program(path: Path):
    from google.protobuf.message import Error as ProtobufError  # installed with coremltools; DecodeError's root

    Model_pb2, _ = proto_modules()
    spec_file, _ = package_files(path)
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_file.read_bytes())
    except (OSError, ProtobufError) as err:
        raise InputError(f"{path}: corrupt model specification ({type(err).__name__}: {err})") from None
    if spec.WhichOneof("Type") != "mlProgram":
        raise InputError(f"{path}: not an ML program (model type {spec.WhichOneof('Type')!r}); only ML programs are supported")
    return spec


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def tree_sha256(path: Path) -> str:
    """Hash of a package directory: relative paths and contents, in sorted order."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- blobs


class _Blobs:
    """Random access to blob-backed values of one package."""

    def __init__(self, weights_dir: Path):
        self.weights_dir = weights_dir
        self._maps: dict[str, mmap.mmap] = {}

    def _map(self, file_name: str) -> mmap.mmap:
        if file_name not in self._maps:
            path = self.weights_dir / file_name.replace("@model_path/weights/", "")
            try:
                handle = open(path, "rb")
            except FileNotFoundError:
                raise InputError(f"{path}: weight file referenced by the model is missing") from None
            with handle:
                self._maps[file_name] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[file_name]

    def record(self, blob) -> tuple[int, int]:
        """(data offset, size in bytes) of the blob at `blob.offset`."""
        data = self._map(blob.fileName)
        if blob.offset + 64 > len(data):
            raise InputError(f"{self.weights_dir}: blob offset {blob.offset} beyond the weight file (corrupt package)")
        sentinel, _dtype, size, offset = struct.unpack_from("<IIQQ", data, blob.offset)
        if sentinel != BLOB_SENTINEL or offset + size > len(data):
            raise InputError(f"{self.weights_dir}: bad blob record at offset {blob.offset} (corrupt package)")
        return offset, size

    def raw(self, blob) -> memoryview:
        offset, size = self.record(blob)
        return memoryview(self._map(blob.fileName))[offset : offset + size]

    def close(self) -> None:
        for data in self._maps.values():
            data.close()


def _numpy_dtype(MIL_pb2, data_type: int):
    import numpy as np

    name = MIL_pb2.DataType.Name(data_type)
    table = {
        "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8, "UINT8": np.uint8,
        "INT16": np.int16, "UINT16": np.uint16, "INT32": np.int32, "UINT32": np.uint32, "INT64": np.int64,
        "UINT64": np.uint64, "BOOL": np.bool_,
    }
    return name, table.get(name)


SUB_BYTE_BITS = {"UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4, "UINT6": 6, "INT4": 4}


def _shape(value_type) -> list[int]:
    tensor = value_type.tensorType
    return [int(d.constant.size) for d in tensor.dimensions]


def _unpack_sub_byte(raw: memoryview, bits: int, count: int, signed: bool):
    """Unpack little-endian packed n-bit integers (Core ML's sub-byte storage) into int arrays."""
    import numpy as np

    flat = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: count * bits]
    values = flat.reshape(count, bits).astype(np.int32) @ (1 << np.arange(bits, dtype=np.int32))
    if signed:
        values = np.where(values >= (1 << (bits - 1)), values - (1 << bits), values)
    return values


class _Value:
    """One value of the program: an immediate or a blob, decoded to numpy on demand."""

    def __init__(self, MIL_pb2, blobs: _Blobs, value):
        self.value, self.blobs, self.MIL_pb2 = value, blobs, MIL_pb2
        self.shape = _shape(value.type)
        self.dtype_name, self.np_dtype = _numpy_dtype(MIL_pb2, value.type.tensorType.dataType)
        self.is_blob = value.WhichOneof("value") == "blobFileValue"

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def stored_bytes(self) -> int:
        return self.blobs.record(self.value.blobFileValue)[1] if self.is_blob else 0

    def array(self):
        import numpy as np

        if self.is_blob:
            raw = self.blobs.raw(self.value.blobFileValue)
            if self.dtype_name in SUB_BYTE_BITS:
                values = _unpack_sub_byte(raw, SUB_BYTE_BITS[self.dtype_name], self.count, self.dtype_name == "INT4")
            else:
                values = np.frombuffer(raw, dtype=self.np_dtype, count=self.count)
            return values.reshape(self.shape)
        tensor = self.value.immediateValue.tensor
        kind = tensor.WhichOneof("value")
        if kind == "bytes":
            raw = memoryview(tensor.bytes.values)
            if self.dtype_name in SUB_BYTE_BITS:
                values = _unpack_sub_byte(raw, SUB_BYTE_BITS[self.dtype_name], self.count, self.dtype_name == "INT4")
            else:
                values = np.frombuffer(raw, dtype=self.np_dtype, count=self.count)
            return values.reshape(self.shape)
        values = np.array(list(getattr(tensor, kind).values)) if kind else np.zeros(0)
        return values.reshape(self.shape) if values.size == self.count else values


# ---------------------------------------------------------------------------------------------------- graph walk


def _walk_operations(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk_operations(inner)


def _is_constant_op(op_type: str) -> bool:
    return op_type == "const" or op_type.startswith("constexpr_")


def analyze_package(path: Path | str, *, package: str | None = None, hash_duplicates: bool = True) -> PackageAnalysis:
    """Measure one stored package: bytes, op counts, decompression ops and every blob-backed weight tensor."""
    path = Path(path)
    _, MIL_pb2 = proto_modules()
    spec = load_program(path)
    _, weights_dir = package_files(path)
    blobs = _Blobs(weights_dir)
    try:
        return _analyze(path, package or path.stem, spec, MIL_pb2, blobs, hash_duplicates)
    finally:
        blobs.close()


def _analyze(path, package, spec, MIL_pb2, blobs, hash_duplicates) -> PackageAnalysis:
    op_counts: Counter[str] = Counter()
    producers: dict[str, Any] = {}
    consumers: dict[str, list[str]] = defaultdict(list)
    opsets = []
    for function in spec.mlProgram.functions.values():
        opset = function.opset
        opsets.append(opset)
        for op in _walk_operations(function.block_specializations[opset]):
            op_counts[op.type] += 1
            for output in op.outputs:
                producers[output.name] = op
            for argument in op.inputs.values():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name":
                        consumers[binding.name].append(op.type)

    tensors = []
    seen_blobs: dict[tuple[str, int], str] = {}
    for name, op in producers.items():
        if not _is_constant_op(op.type):
            continue
        children = consumers.get(name, [])
        if not children or all(_is_constant_op(child) for child in children):
            continue  # an intermediate part of a compressed weight, or unused
        tensor = _tensor(package, name, op, producers, MIL_pb2, blobs, seen_blobs, children)
        if tensor is not None:
            tensors.append(tensor)

    decompression = {k: v for k, v in sorted(op_counts.items()) if k.startswith("constexpr_")}
    weight_bytes = sum(f.stat().st_size for f in weights_dir_files(path))
    description = spec.description
    return PackageAnalysis(
        path=str(path), package=package, bytes=tree_bytes(path), weight_bytes=weight_bytes,
        opset=",".join(sorted(set(opsets))),
        inputs={i.name: list(i.type.multiArrayType.shape) for i in description.input},
        outputs={o.name: list(o.type.multiArrayType.shape) for o in description.output},
        op_counts=dict(sorted(op_counts.items())), decompression_ops=decompression, tensors=tensors,
        duplicated_tensors=_duplicates(producers, MIL_pb2, blobs) if hash_duplicates else [],
        states={s.name: list(s.type.stateType.arrayType.shape) for s in description.state},
    )


def weights_dir_files(path: Path) -> list[Path]:
    weights = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    return [f for f in weights.rglob("*") if f.is_file()] if weights.exists() else []


def _constant_parts(op, producers, MIL_pb2, blobs):
    """Every stored value behind a constant or constexpr chain: (op, key, _Value)."""
    parts = []
    for key, value in op.attributes.items():
        if key != "name" and value.WhichOneof("value") in ("blobFileValue", "immediateValue"):
            parts.append((op, key, _Value(MIL_pb2, blobs, value)))
    for key, argument in op.inputs.items():
        for binding in argument.arguments:
            if binding.WhichOneof("binding") == "name" and binding.name in producers:
                parent = producers[binding.name]
                if _is_constant_op(parent.type):
                    parts.extend((p_op, f"{key}.{p_key}" if p_op is not op else p_key, v)
                                 for p_op, p_key, v in _constant_parts(parent, producers, MIL_pb2, blobs))
            elif binding.WhichOneof("binding") == "value":
                parts.append((op, key, _Value(MIL_pb2, blobs, binding.value)))
    return parts


def _tensor(package, name, op, producers, MIL_pb2, blobs, seen_blobs, children) -> TensorAnalysis | None:
    import numpy as np

    parts = _constant_parts(op, producers, MIL_pb2, blobs)
    blob_parts = [(o, k, v) for o, k, v in parts if v.is_blob]
    if not blob_parts:
        return None  # small immediate constants (axes, shapes) are not weights
    output_type = next(o for o in op.outputs if o.name == name).type
    shape = _shape(output_type)
    dtype_name, _ = _numpy_dtype(MIL_pb2, output_type.tensorType.dataType)
    count = int(np.prod(shape)) if shape else 1
    stored = 0
    for _, _, value in blob_parts:
        key = (value.value.blobFileValue.fileName, value.value.blobFileValue.offset)
        if key not in seen_blobs:  # a blob shared by two tensors is paid once
            stored += value.stored_bytes
            seen_blobs[key] = name
    kinds = _chain_kinds(op, producers)
    storage = "+".join(kinds) if kinds else "dense"
    nonzero, unique = _measure_values(op, kinds, parts, count)
    return TensorAnalysis(
        package=package, name=name, shape=shape, dtype=dtype_name.lower(), storage=storage, bytes=stored,
        params=count, nonzero=nonzero, sparsity=None if nonzero is None else round(1 - nonzero / count, 6),
        bits=round(stored * 8 / count, 4) if count else 0.0, unique_values=unique,
        child_op_types=sorted(set(children)),
    )


def _chain_kinds(op, producers) -> list[str]:
    kinds = []
    if op.type in STORAGE_BY_OP:
        kinds.append(STORAGE_BY_OP[op.type])
    for argument in op.inputs.values():
        for binding in argument.arguments:
            parent = producers.get(binding.name) if binding.WhichOneof("binding") == "name" else None
            if parent is not None and _is_constant_op(parent.type):
                kinds.extend(k for k in _chain_kinds(parent, producers) if k not in kinds)
    return kinds


def _part(parts, *keys):
    """The stored value named like one of `keys`: an attribute (iOS16 ops) or an input const (iOS18: "mask.val")."""
    for _, key, value in parts:
        if key.split(".")[-1] in keys:
            return value
    for _, key, value in parts:
        if set(key.split(".")) & set(keys):
            return value
    return None


def _measure_values(op, kinds, parts, count) -> tuple[int | None, int | None]:
    """(non-zero elements, unique values) of a stored tensor, read from its stored parts."""
    import numpy as np

    if "sparse" in kinds:
        # iOS18 stores the bit mask as a uint1 const (joint compression names it indices_mask/data_mask);
        # iOS16 packs it into a uint8 attribute called mask.
        mask = next((v for _, key, v in parts if v.dtype_name == "UINT1" and "mask" in key), None) \
            or _part(parts, "mask")
        if mask is None:
            return None, None
        if mask.dtype_name == "UINT1":
            nonzero = int(mask.array().sum())
        else:  # iOS16 packs the bit mask into uint8
            nonzero = int(np.unpackbits(np.frombuffer(mask.array().tobytes(), dtype=np.uint8))[:count].sum())
        lut = _part(parts, "lut")
        codes = next((v for _, key, v in parts if v.dtype_name in ("INT8", "UINT8", "INT4", "UINT4")
                      and v.is_blob and "mask" not in key.split(".")[-1]), None)
        unique = _unique(lut.array()) if lut is not None else _unique(codes.array()) if codes is not None else None
        return nonzero, unique
    if "palettized" in kinds:
        lut, indices = _part(parts, "lut"), _part(parts, "indices")
        if lut is None or indices is None:
            return None, None
        lut_values = lut.array()
        zero_entries = np.flatnonzero(lut_values.reshape(-1) == 0)
        nonzero = count
        if zero_entries.size and lut_values.ndim <= 1:
            nonzero = int(count - np.isin(indices.array().reshape(-1)[:count], zero_entries).sum())
        per_group = lut_values.shape[-2] if lut_values.ndim >= 2 else lut_values.size
        return nonzero, int(min(per_group, _unique(lut_values) or per_group))
    if "affine" in kinds or "blockwise" in kinds:
        data = _part(parts, "quantized_data", "data")
        if data is None:
            return None, None
        values = data.array()
        zero_point = _part(parts, "zero_point", "offset")
        zero = 0
        if zero_point is not None and np.any(zero_point.array() != zero_point.array().reshape(-1)[0]):
            return None, _unique(values)  # per-channel offsets: zeros are not a single code
        if zero_point is not None:
            zero = zero_point.array().reshape(-1)[0]
        return int(np.count_nonzero(values != zero)), _unique(values)
    value = _part(parts, "val")
    if value is None:
        return None, None
    values = value.array()
    return int(np.count_nonzero(values)), _unique(values)


def _unique(values) -> int | None:
    """Distinct values: exact for integer codes (a histogram, fast) and small float tensors; None for large dense
    float tensors, whose count says nothing a dense format does not already say."""
    import numpy as np

    if values is None:
        return None
    if np.issubdtype(values.dtype, np.integer) and values.size:
        low = int(values.min())
        if int(values.max()) - low < 1 << 20:
            return int(np.count_nonzero(np.bincount((values.reshape(-1).astype(np.int64) - low))))
    if values.size > UNIQUE_COUNT_LIMIT:
        return None
    return int(np.unique(values).size)


def _duplicates(producers, MIL_pb2, blobs) -> list[dict[str, Any]]:
    """Blob-backed constants whose bytes are stored more than once (e.g. a tied embedding kept twice)."""
    by_size: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    seen_offsets = set()
    for name, op in producers.items():
        if op.type != "const":
            continue
        value = op.attributes.get("val")
        if value is None or value.WhichOneof("value") != "blobFileValue":
            continue
        key = (value.blobFileValue.fileName, value.blobFileValue.offset)
        if key in seen_offsets:
            continue
        seen_offsets.add(key)
        size = blobs.record(value.blobFileValue)[1]
        if size >= 4096:  # tiny shared constants (zero biases) are not worth reporting
            by_size[size].append((name, value))
    duplicates = []
    for size, group in by_size.items():
        if len(group) < 2:
            continue
        # Same size is common (a transformer's layers); a few KB from each end tell different weights apart
        # cheaply, so only tensors that agree there are hashed whole (keeps analysis I/O bound).
        by_ends: dict[bytes, list[tuple[str, Any]]] = defaultdict(list)
        for name, value in group:
            raw = blobs.raw(value.blobFileValue)
            by_ends[bytes(raw[:4096]) + bytes(raw[-4096:])].append((name, value))
        digests: dict[str, list[str]] = defaultdict(list)
        for candidates in by_ends.values():
            for name, value in candidates if len(candidates) > 1 else ():
                digests[hashlib.blake2b(blobs.raw(value.blobFileValue), digest_size=16).hexdigest()].append(name)
        for names in digests.values():
            if len(names) > 1:
                duplicates.extend({"name": n, "bytes": size, "same_as": names[0]} for n in names[1:])
    return duplicates


class ConstantReader:
    """The dense floating-point `const` tensors of a stored package, read one at a time into fresh arrays.

    Read with pread-style file reads, not through a mapping: a mapped page that was touched stays in the process's
    resident set until the mapping closes, so mapping a whole package to look at each tensor once would hold it
    all. A fresh array per tensor is released as soon as the caller drops it."""

    def __init__(self, path: Path | str):
        _, MIL_pb2 = proto_modules()
        self.path = Path(path)
        spec = load_program(self.path)
        _, self._weights_dir = package_files(self.path)
        self._blobs = _Blobs(self._weights_dir)
        self._values: dict[str, _Value] = {}
        for function in spec.mlProgram.functions.values():
            for op in _walk_operations(function.block_specializations[function.opset]):
                value = op.attributes.get("val") if op.type == "const" else None
                if value is None or value.WhichOneof("value") not in ("blobFileValue", "immediateValue"):
                    continue
                wrapped = _Value(MIL_pb2, self._blobs, value)
                if wrapped.dtype_name in ("FLOAT16", "FLOAT32", "FLOAT64") and value.type.WhichOneof("type") == "tensorType":
                    self._values[op.outputs[0].name] = wrapped

    def names(self) -> list[str]:
        return list(self._values)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._values[name].shape)

    def read(self, name: str):
        import numpy as np

        value = self._values[name]
        if not value.is_blob:
            return value.array().copy()
        blob = value.value.blobFileValue
        offset, size = self._blobs.record(blob)
        array = np.empty(value.count, dtype=value.np_dtype)
        if array.nbytes != size:
            raise InputError(f"{self.path}: blob of {name!r} holds {size} bytes, its type needs {array.nbytes} "
                             "(corrupt package)")
        with open(self._weights_dir / blob.fileName.replace("@model_path/weights/", ""), "rb") as handle:
            handle.seek(offset)
            if handle.readinto(memoryview(array).cast("B")) != size:
                raise InputError(f"{self.path}: weight file ends inside {name!r} (corrupt package)")
        return array.reshape(value.shape)

    def close(self) -> None:
        self._blobs.close()


def constant_values(path: Path | str) -> dict[str, Any]:
    """{name: numpy array} of every floating-point `const` of a package (dense constants only), all in memory:
    for small packages and tests; the builder reads one tensor at a time (ConstantReader)."""
    reader = ConstantReader(path)
    try:
        return {name: reader.read(name) for name in reader.names()}
    finally:
        reader.close()
