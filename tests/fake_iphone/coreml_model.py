"""A stand-in for the Core ML runtime's placement and timing of one ML-program package (a test double).

No Core ML runtime exists on Linux, so the fake runner cannot ask MLComputePlan where an operation runs or time a
prediction. This module reads the pushed package's protobuf (Data/com.apple.CoreML/model.mlmodel, parsed with
coremltools' generated proto modules; the fake never imports bench code) and derives, deterministically:

- a compute plan per compute unit: every operation of `main` (nested blocks included) with `name` (first output),
  `type`, `preferred` and `supported` devices and an estimated `cost` (normalised to sum 1 per package);
- the time of one prediction on that plan: the sum of per-op times on their devices plus a penalty for each hand-over
  between devices.

Placement and timing are a SCENARIO each test sets (`CoreMLRules`, given to the fake phone as `coreml=`), never a
result a test then "discovers": `SPARSE_SLOWER` (the default) copies what the seed study saw on an iPhone 13 Pro,
`SPARSE_FASTER` a newer Neural Engine that reads sparse weights itself and is bound by weight bandwidth, `TIE` one that
reads them but gains nothing. `bench explain` must report each correctly without knowing which one ran.

The default rules copy what the seed study saw on iPhones, not Apple's real heuristics:
- `cpuOnly` puts every op on the CPU; `cpuAndGPU` puts compute ops on the GPU; `cpuAndNeuralEngine` / `all` put every
  op the Neural Engine supports there.
- `constexpr_sparse_to_dense` (and the other sparse decompression ops) run on the CPU at every prediction, and the
  linear / matmul / conv ops fed by a sparse-decompressed weight lose Neural Engine support: they fall to the GPU
  (`all`) or the CPU (`cpuAndNeuralEngine`).
- `constexpr_affine_dequantize`, `constexpr_blockwise_shift_scale` and `constexpr_lut_to_dense` are fused into their
  consumer: they take its device, cost almost nothing, and the consumer reads the compressed (smaller) weight.
- `const` ops are not dispatched to any device: preferred null, supported [], cost null (as MLComputePlan reports).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPU, GPU, NE = "cpu", "gpu", "neuralEngine"
ALLOWED = {"cpuOnly": (CPU,), "cpuAndGPU": (CPU, GPU), "cpuAndNeuralEngine": (CPU, NE), "all": (CPU, GPU, NE)}
SPARSE_DECOMPRESSION = frozenset({"constexpr_sparse_to_dense", "constexpr_lut_to_sparse",
                                  "constexpr_sparse_blockwise_shift_scale"})
FUSED_DECOMPRESSION = frozenset({"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale",
                                 "constexpr_lut_to_dense", "constexpr_cast"})
WEIGHTED = frozenset({"linear", "matmul", "conv", "conv_transpose", "einsum", "gather"})
# Relative work per output element of ops without a weight (a crude roofline; only the ordering matters).
ELEMENTWISE_WORK = {"softmax": 5.0, "layer_norm": 5.0, "gelu": 8.0, "silu": 4.0, "sigmoid": 4.0, "tanh": 4.0,
                    "reshape": 0.3, "transpose": 0.5, "expand_dims": 0.2, "squeeze": 0.2, "slice_by_index": 0.3,
                    "cast": 0.5, "concat": 0.5}
# Nanoseconds per unit of work, per byte of weight read, and per op dispatch, by device. Chosen so the tiny test
# captioner reproduces the seed's iPhone 13 Pro ratios: 20 %-sparse ≈ +70 % on `all` (seed: 400 vs 239 ms), int8 a
# little faster than fp32, cpuOnly several times slower than the Neural Engine.
NS_PER_WORK = {CPU: 0.9, GPU: 0.15, NE: 0.1}
NS_PER_WEIGHT_BYTE = {CPU: 0.25, GPU: 0.1, NE: 0.08}
DISPATCH_NS = {CPU: 1_500, GPU: 3_000, NE: 2_000}
HANDOVER_NS = 3_000  # copying activations between devices when consecutive ops run on different ones
SPARSE_WORK_PER_ELEMENT = 0.3  # scatter of the non-zero values into a dense buffer, on the CPU, every prediction
FUSED_WORK_PER_ELEMENT = 0.02
DTYPE_BITS = {"FLOAT16": 16, "FLOAT32": 32, "FLOAT64": 64, "INT8": 8, "UINT8": 8, "INT16": 16, "UINT16": 16,
              "INT32": 32, "UINT32": 32, "INT64": 64, "UINT64": 64, "BOOL": 8, "UINT1": 1, "UINT2": 2, "UINT3": 3,
              "UINT4": 4, "UINT6": 6, "INT4": 4, "BFLOAT16": 16}
_PROTO_ALIAS = "_fake_iphone_coreml_proto"


@dataclass(frozen=True)
class CoreMLRules:
    """How the stand-in places and times ops: the scenario a test chooses."""

    # True: the Neural Engine reads sparse weights itself (decompression fused into the consumer, like affine/LUT);
    # False: sparse decompression runs on the CPU and its consumers lose the Neural Engine (the seed's iPhone 13 Pro).
    sparse_on_neural_engine: bool = False
    # With sparse_on_neural_engine: the consumer reads only the stored (non-zero + mask) bytes, not the dense weight.
    sparse_reads_compressed: bool = False
    # Nanoseconds per byte of weight read on the Neural Engine (the default is compute-bound; a large value makes
    # decoding weight-bandwidth-bound, as on phones decoding one token at a time).
    ne_ns_per_weight_byte: float = 0.08


SPARSE_SLOWER = CoreMLRules()
SPARSE_FASTER = CoreMLRules(sparse_on_neural_engine=True, sparse_reads_compressed=True, ne_ns_per_weight_byte=2.0)
TIE = CoreMLRules(sparse_on_neural_engine=True, sparse_reads_compressed=False, ne_ns_per_weight_byte=2.0)


class ModelUnreadable(Exception):
    """The package is not an ML program this stand-in can read (MLComputePlan would fail to load it)."""


def _proto_modules():
    """coremltools' generated Model_pb2 / MIL_pb2 without importing coremltools itself (~7 s) unless it is loaded."""
    if "coremltools" in sys.modules:
        from coremltools.proto import MIL_pb2, Model_pb2

        return Model_pb2, MIL_pb2
    if _PROTO_ALIAS not in sys.modules:
        spec = importlib.util.find_spec("coremltools")
        if spec is None or spec.origin is None:
            raise ModelUnreadable("coremltools is not installed")
        proto_dir = os.path.join(os.path.dirname(spec.origin), "proto")
        package_spec = importlib.util.spec_from_file_location(
            _PROTO_ALIAS, os.path.join(proto_dir, "__init__.py"), submodule_search_locations=[proto_dir])
        module = importlib.util.module_from_spec(package_spec)
        sys.modules[_PROTO_ALIAS] = module
        previous = os.environ.get("IMPORT_COREMLTOOLS_PROTO")
        os.environ["IMPORT_COREMLTOOLS_PROTO"] = "0"  # the package __init__ would import every module eagerly
        try:
            package_spec.loader.exec_module(module)
        finally:
            if previous is None:
                os.environ.pop("IMPORT_COREMLTOOLS_PROTO", None)
            else:
                os.environ["IMPORT_COREMLTOOLS_PROTO"] = previous
    return (importlib.import_module(f"{_PROTO_ALIAS}.Model_pb2"), importlib.import_module(f"{_PROTO_ALIAS}.MIL_pb2"))


@dataclass(frozen=True)
class Op:
    name: str
    type: str
    work: float  # compute, in abstract units (≈ multiply-adds or element touches)
    weight_bytes: int  # weight bytes the op reads at each prediction
    sparse_weight: bool  # fed by a sparse-decompressed weight
    consumer: int | None  # for fused decompression ops: index of the op that uses the weight
    stored_weight_bytes: int = 0  # of a sparse weight: the bytes stored (values + mask), not the dense weight


@dataclass(frozen=True)
class PlannedOp:
    name: str
    type: str
    preferred: str | None
    supported: tuple[str, ...]
    cost: float | None
    time_ns: float


@dataclass(frozen=True)
class Placement:
    ops: tuple[PlannedOp, ...]
    time_ns: float  # one prediction: op times + hand-overs between devices

    def plan(self) -> list[dict]:
        """The contract's op records (docs/runner.md, result.json `compute_plan`)."""
        return [{"name": op.name, "type": op.type, "preferred": op.preferred, "supported": list(op.supported),
                 "cost": op.cost} for op in self.ops]


@dataclass(frozen=True)
class Interface:
    """A package's feature description, as Core ML's MLModelDescription shows it: inputs, outputs, and the state
    tensors (iOS 18 MLState; `stateDescriptionsByName`) — what `makeState()` allocates."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    states: dict  # name -> shape
    state_bytes: int


def read_interface(package: Path) -> Interface:
    """The package's description read from its protobuf (Model.description: input, output, state)."""
    spec_file = Path(package) / "Data" / "com.apple.CoreML" / "model.mlmodel"
    try:
        stat = spec_file.stat()
    except OSError as err:
        raise ModelUnreadable(f"{spec_file.name}: {err.strerror}") from None
    return _read_interface_cached(str(spec_file), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _read_interface_cached(spec_file: str, _mtime_ns: int, _size: int) -> Interface:
    Model_pb2, _ = _proto_modules()
    model = Model_pb2.Model()
    try:
        model.ParseFromString(Path(spec_file).read_bytes())
    except Exception as err:  # protobuf's DecodeError and friends: a corrupt or foreign file
        raise ModelUnreadable(f"cannot parse the model specification ({type(err).__name__})") from None
    description = model.description
    states, state_bytes = {}, 0
    for state in description.state:
        array = state.type.stateType.arrayType
        shape = [int(d) for d in array.shape]
        states[state.name] = shape
        bits = 16 if array.dataType == Model_pb2.ArrayFeatureType.FLOAT16 else 32
        state_bytes += _count(shape) * bits // 8
    return Interface(tuple(i.name for i in description.input), tuple(o.name for o in description.output), states,
                     state_bytes)


def read_program(package: Path) -> tuple[Op, ...]:
    """The operations of `main` (program order, nested blocks included) with their work and weight traffic."""
    spec_file = Path(package) / "Data" / "com.apple.CoreML" / "model.mlmodel"
    try:
        stat = spec_file.stat()
    except OSError as err:
        raise ModelUnreadable(f"{spec_file.name}: {err.strerror}") from None
    return _read_program_cached(str(spec_file), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=64)
def _read_program_cached(spec_file: str, _mtime_ns: int, _size: int) -> tuple[Op, ...]:
    Model_pb2, MIL_pb2 = _proto_modules()
    model = Model_pb2.Model()
    try:
        model.ParseFromString(Path(spec_file).read_bytes())
    except Exception as err:  # protobuf's DecodeError and friends: a corrupt or foreign file
        raise ModelUnreadable(f"cannot parse the model specification ({type(err).__name__})") from None
    if model.WhichOneof("Type") != "mlProgram" or "main" not in model.mlProgram.functions:
        raise ModelUnreadable("not an ML program with a main function")
    function = model.mlProgram.functions["main"]
    if function.opset not in function.block_specializations:
        raise ModelUnreadable(f"main has no block for opset {function.opset!r}")
    dtype_name = lambda data_type: MIL_pb2.DataType.Name(data_type)  # noqa: E731
    raw = list(_walk(function.block_specializations[function.opset]))
    shapes: dict[str, list[int]] = {i.name: _shape(i.type) for i in function.inputs}
    bits: dict[str, int] = {}
    producers: dict[str, int] = {}
    for index, op in enumerate(raw):
        for output in op.outputs:
            shapes[output.name] = _shape(output.type)
            bits[output.name] = DTYPE_BITS.get(dtype_name(output.type.tensorType.dataType), 32)
            producers[output.name] = index
    consumer_of: dict[int, int] = {}
    for index, op in enumerate(raw):
        for name in _input_names(op):
            if name in producers and raw[producers[name]].type.startswith("constexpr_"):
                consumer_of.setdefault(producers[name], index)
    ops = []
    for index, op in enumerate(raw):
        ops.append(_op(index, op, raw, shapes, bits, producers, consumer_of, dtype_name))
    return tuple(ops)


def _walk(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def _shape(value_type) -> list[int]:
    if value_type.WhichOneof("type") != "tensorType":
        return []
    return [int(d.constant.size) if d.WhichOneof("dimension") == "constant" else 1
            for d in value_type.tensorType.dimensions]


def _count(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n


def _input_names(op) -> list[str]:
    return [b.name for argument in op.inputs.values() for b in argument.arguments if b.WhichOneof("binding") == "name"]


def _stored_bits(op, raw, producers, dtype_name) -> int:
    """Bits of every blob-backed part of a decompression op (attributes on iOS16/17, const inputs on iOS18)."""
    total = 0
    values = [v for k, v in op.attributes.items() if k != "name"]
    for name in _input_names(op):
        parent = raw[producers[name]] if name in producers else None
        if parent is not None and parent.type == "const" and "val" in parent.attributes:
            values.append(parent.attributes["val"])
    for value in values:
        if value.WhichOneof("value") == "blobFileValue" and value.type.WhichOneof("type") == "tensorType":
            total += _count(_shape(value.type)) * DTYPE_BITS.get(dtype_name(value.type.tensorType.dataType), 32)
    return total


def _op(index, op, raw, shapes, bits, producers, consumer_of, dtype_name) -> Op:
    name = op.outputs[0].name if op.outputs else ""
    out_elements = _count(shapes.get(name, []))
    if op.type == "const":
        return Op(name, op.type, 0.0, 0, False, None, 0)
    if op.type in SPARSE_DECOMPRESSION:
        return Op(name, op.type, out_elements * SPARSE_WORK_PER_ELEMENT, 0, True, consumer_of.get(index), 0)
    if op.type.startswith("constexpr_"):
        return Op(name, op.type, out_elements * FUSED_WORK_PER_ELEMENT, 0, False, consumer_of.get(index), 0)
    weight_bytes, stored_bytes, sparse, weight_shape = 0, 0, False, None
    for key in ("weight", "y", "x"):
        argument = op.inputs.get(key)
        for binding in (argument.arguments if argument is not None else []):
            source = binding.name if binding.WhichOneof("binding") == "name" else None
            parent = raw[producers[source]] if source in producers else None
            if parent is None or not (parent.type == "const" or parent.type.startswith("constexpr_")):
                continue
            weight_shape = shapes.get(source, [])
            if parent.type in SPARSE_DECOMPRESSION:
                sparse = True  # decompressed on the CPU: the consumer reads the dense weight
                weight_bytes += _count(weight_shape) * bits.get(source, 32) // 8
                stored_bytes += _stored_bits(parent, raw, producers, dtype_name) // 8
            elif parent.type.startswith("constexpr_"):
                weight_bytes += _stored_bits(parent, raw, producers, dtype_name) // 8  # fused: compressed bytes
            else:
                weight_bytes += _count(weight_shape) * bits.get(source, 32) // 8
    if op.type in ("linear", "conv", "conv_transpose") and weight_shape:
        work = out_elements * _count(weight_shape) / max(weight_shape[0], 1)
    elif op.type in ("matmul", "einsum"):
        x_shape = next((shapes.get(n, []) for n in _input_names(op)[:1]), [])
        work = out_elements * (x_shape[-1] if x_shape else 1)
    else:
        work = out_elements * ELEMENTWISE_WORK.get(op.type, 1.0)
    return Op(name, op.type, float(work), int(weight_bytes), sparse and op.type in WEIGHTED, None,
              int(stored_bytes) if sparse else int(weight_bytes))


def _fused(op: Op, rules: CoreMLRules) -> bool:
    return op.type in FUSED_DECOMPRESSION or (rules.sparse_on_neural_engine and op.type in SPARSE_DECOMPRESSION)


def _capable(op: Op, rules: CoreMLRules) -> tuple[str, ...]:
    if rules.sparse_on_neural_engine:
        return (CPU, GPU, NE)  # the Neural Engine reads sparse weights itself
    if op.type in SPARSE_DECOMPRESSION:
        return (CPU,)
    if op.sparse_weight:
        return (CPU, GPU)  # a sparse-decompressed weight is not consumable by the Neural Engine
    return (CPU, GPU, NE)


def _op_time(op: Op, device: str, rules: CoreMLRules) -> float:
    fused = _fused(op, rules)
    dispatch = 0 if fused else DISPATCH_NS[device]  # fused into the consumer's kernel
    work = op.work * FUSED_WORK_PER_ELEMENT / SPARSE_WORK_PER_ELEMENT if fused and op.type in SPARSE_DECOMPRESSION \
        else op.work
    weight_bytes = op.weight_bytes
    if op.sparse_weight and rules.sparse_on_neural_engine and rules.sparse_reads_compressed and device == NE:
        weight_bytes = op.stored_weight_bytes
    per_byte = rules.ne_ns_per_weight_byte if device == NE else NS_PER_WEIGHT_BYTE[device]
    return work * NS_PER_WORK[device] + weight_bytes * per_byte + dispatch


def place(ops: tuple[Op, ...], compute_unit: str, rules: CoreMLRules = SPARSE_SLOWER) -> Placement:
    """Where each op runs under `compute_unit` (by the scenario's `rules`), its estimated cost share, and one
    prediction's time."""
    allowed = ALLOWED[compute_unit]
    preferred: list[str | None] = []
    supported: list[tuple[str, ...]] = []
    for op in ops:
        if op.type == "const":
            preferred.append(None)
            supported.append(())
            continue
        units = tuple(d for d in (CPU, GPU, NE) if d in allowed and d in _capable(op, rules))
        supported.append(units)
        preferred.append(NE if NE in units else GPU if GPU in units else CPU)
    for index, op in enumerate(ops):  # fused decompression runs where its consumer runs
        if _fused(op, rules) and op.consumer is not None and preferred[op.consumer] is not None:
            preferred[index] = preferred[op.consumer]
    times = [0.0 if device is None else _op_time(op, device, rules) for op, device in zip(ops, preferred)]
    total = sum(times)
    planned = tuple(PlannedOp(op.name, op.type, device, units,
                              None if device is None else round(t / total, 6) if total else 0.0, t)
                    for op, device, units, t in zip(ops, preferred, supported, times))
    handovers, last = 0, None
    for op, device in zip(ops, preferred):
        if device is None or op.type.startswith("constexpr_"):
            continue  # weights are not activations: only compute ops hand tensors over
        handovers += last is not None and device != last
        last = device
    return Placement(planned, total + handovers * HANDOVER_NS)
