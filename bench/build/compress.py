"""Post-training compression of a converted package, following one recipe (coremltools.optimize.coreml).

coremltools problems worked around here (bugs 1 and 2: shared/notes/coreml-on-linux.md; 3 to 6 found at BLIP-base size, issue 16):
- Bug 1: magnitude pruning of float16 weights with more than 65,504 elements prunes nothing (the percentile is
  computed in float16 and overflows). We compute each weight's threshold in float32 ourselves and hand coremltools
  a per-constant threshold pruner, which keeps the fp16 non-zero values.
- Bug 2: `op_type_configs` raises "compression config conflict" when one constant feeds ops of different types
  (the tied word embedding feeds a gather and a linear). We always select constants by name from
  `get_weights_metadata` and pass `op_name_configs` with `global_config=None`.
- Bug 3 (slow): `constexpr_sparse_to_dense.type_inference` counts the mask's set bits in pure Python
  (`sum(bin(x).count("1") for x in self.mask.val)`), which runs every time a pruned program is built or loaded:
  about half of a BLIP-base prune build. `patch_sparse_mask_popcount` swaps in the same checks, vectorised.
  Upstream: apple/coremltools, coremltools/converters/mil/mil/ops/defs/iOS16/constexpr_ops.py,
  `constexpr_sparse_to_dense.type_inference` (still there in 9.0); drop the patch once a release vectorises it.
- Bug 4 (memory): converting with fp16 compute precision, `FP16ComputePrecision.fp16_overflow` checks every fp32
  constant through `abs_value[np.where(abs_value < 1e38)]`: an int64 index of every element plus a gathered copy,
  about 3x the constant's fp32 bytes at once; for BLIP-base's tied word embedding (94 MB) that was the build's peak
  resident memory. `patch_fp16_overflow_check` answers the same question per block of elements.
  Upstream: apple/coremltools, coremltools/converters/mil/mil/passes/defs/quantization.py,
  `FP16ComputePrecision.fp16_overflow` (9.0); drop the patch once a release checks without the index.
- Bug 5 (slow, memory): the threshold pruner builds its sparse form through int64 arrays (`np.where(...)` index of
  every non-zero element, and a 0/1 int64 copy of the whole weight before `np.packbits`): 8 bytes per element twice,
  about a quarter of a BLIP-base prune build. `patch_sparse_param_packing` swaps in the same result from one boolean
  mask. Upstream: coremltools/optimize/coreml/_quantization_passes.py, `prune_weights.compress_by_threshold` and
  `prune_weights._produce_sparse_param` (9.0); drop the patch once a release packs the mask directly.
- Bug 6 (slow, and changes the program): `prune_weights`, `palettize_weights` and `linear_quantize_weights` convert
  the compressed program back through the whole default optimisation pipeline (92 passes) although the program was
  optimised when it was converted. That costs seconds per package at BLIP-base size, and it is not a no-op: on our
  decoder it adds a second negative-index guard (`greater_equal`, `select`, `add`) in front of the embedding gather,
  so every compressed decoder ran five ops its uncompressed twin does not, and latency differences between variants
  were not only the weights'. `_compressed` runs the same compression pass and converts back with only the backend
  passes that serialisation needs. Upstream: coremltools/models/utils.py, `_apply_graph_pass` (9.0).
Only constants that map to a PyTorch parameter are ever compressed: the causal mask the exporter bakes in is not a
weight and pruning it would break attention.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.build.matrix import Recipe

EMBEDDING_NAME = re.compile(r"(^|_)(position_embedding|position_embeddings|word_embeddings|class_embedding)(_|$)")
LINEAR_OPS = {"linear", "matmul"}


@dataclass
class Candidate:
    """A compressible weight constant of the converted model. Its values stay on disk (the saved uncompressed
    package) and are read only when a recipe needs them (a pruning threshold), one tensor at a time."""

    name: str
    params: list[str]
    numel: int
    child_op_types: set[str]
    shape: tuple[int, ...]
    constant: float | None  # the one value of a tensor whose elements are all equal (e.g. zero biases)
    reader: Any = field(repr=False, default=None)  # bench.build.analyze.ConstantReader of the package

    @property
    def value(self):
        return self.reader.read(self.name)


@dataclass
class Plan:
    """What the recipe asked of each constant: verification checks the stored package against it."""

    package: str
    selected: dict[str, dict[str, Any]] = field(default_factory=dict)  # const name -> expectations
    untouched: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # selected but not applicable: const name -> reason


def candidates(analysis, constants, weights_map: dict[str, list[dict]]) -> dict[str, Candidate]:
    """Weight constants that map to PyTorch parameters, with the op types that read them (from the stored
    uncompressed package: bench.build.analyze; `constants` is its ConstantReader)."""
    found = {}
    known = set(constants.names())
    for tensor in analysis.tensors:
        if tensor.name not in weights_map or tensor.name not in known:
            continue
        found[tensor.name] = Candidate(
            name=tensor.name, params=[m["param"] for m in weights_map[tensor.name]], numel=tensor.params,
            child_op_types=set(tensor.child_op_types), shape=constants.shape(tensor.name),
            constant=_single_value(constants.read(tensor.name)), reader=constants,
        )
    return found


def _single_value(value) -> float | None:
    import numpy as np

    flat = value.reshape(-1)
    return float(flat[0]) if flat.size and np.all(flat == flat[0]) else None


def is_embedding(candidate: Candidate) -> bool:
    return "gather" in candidate.child_op_types or bool(EMBEDDING_NAME.search(candidate.name))


def select(cands: dict[str, Candidate], recipe: Recipe) -> list[str]:
    """Names of the constants the recipe compresses (layer selection + minimum size)."""
    selection = recipe.layers.select if recipe.layers else "all"
    pattern = re.compile(recipe.layers.pattern) if recipe.layers and recipe.layers.pattern else None
    chosen = []
    for name, cand in cands.items():
        if cand.numel <= recipe.min_elements:
            continue
        if selection == "conv" and not cand.child_op_types <= {"conv"}:
            continue
        if selection == "embedding" and not is_embedding(cand):
            continue
        if selection == "linear" and (not cand.child_op_types <= LINEAR_OPS or is_embedding(cand)):
            continue
        if selection == "all_but_embedding" and is_embedding(cand):
            continue
        if pattern is not None and not (pattern.search(name) or any(pattern.search(p) for p in cand.params)):
            continue
        chosen.append(name)
    return sorted(chosen)


def not_applicable(candidate: Candidate, recipe: Recipe) -> str | None:
    """Why a selected weight cannot take the recipe's block/group structure (coremltools would skip it silently;
    we record it in the manifest instead and leave the weight dense)."""
    shape = candidate.shape
    q, p = recipe.quantize, recipe.palettize
    if candidate.constant is not None:
        # e.g. freshly initialised zero biases: nothing to prune or quantize (coremltools skips them)
        return f"constant tensor (every value {candidate.constant})"
    if q and q.granularity == "per_block" and (len(shape) < 2 or shape[1] % q.block_size):
        return f"input axis of shape {list(shape)} not divisible by block size {q.block_size}"
    if p and p.granularity == "per_grouped_channel" and shape[0] % p.group_size:
        return f"{shape[0]} output channels not divisible by group size {p.group_size}"
    if recipe.prune and recipe.prune.n_m and (len(shape) < 2 or shape[1] < recipe.prune.n_m[1]):
        return f"shape {list(shape)} too small for {recipe.prune.n_m[0]}:{recipe.prune.n_m[1]} blocks"
    return None


def mask_popcount(mask) -> int:
    """Set bits of a packed uint8 mask: what coremltools' `sum(bin(x).count("1") for x in mask)` computes."""
    import numpy as np

    return int(np.bitwise_count(np.asarray(mask, dtype=np.uint8)).sum(dtype=np.int64))


def _sparse_to_dense_type_inference(self):
    """coremltools 9.0's iOS16 `constexpr_sparse_to_dense.type_inference`, same checks and messages, vectorised."""
    import numpy as np
    from coremltools.converters.mil.mil import types

    if self.nonzero_data.rank != 1:
        raise ValueError("Parameter nonzero_data needs to have rank == 1")
    if self.mask.rank != 1:
        raise ValueError("Parameter mask needs to have rank == 1")
    if mask_popcount(self.mask.val) != self.nonzero_data.shape[0]:
        raise AssertionError(
            "Number of set bits in mask needs to be equal to number of elements in parameter nonzero_data"
        )
    output_size = np.prod(self.shape.val)
    if self.mask.shape[0] != np.ceil(output_size / 8.0):
        raise AssertionError("Constraint Violated: M = ceil( product(shape) / 8) where M = mask.size")
    padding = np.unpackbits(self.mask.val[-1:], bitorder="little")[int(output_size - 8 * (self.mask.shape[0] - 1)):]
    if np.any(padding != 0):
        raise AssertionError("Padded bits in mask should be unset or equals to zero")
    return types.tensor(self.nonzero_data.dtype, self.shape.val)


def patch_sparse_mask_popcount() -> None:
    """Bug 3 (module docstring): install the vectorised type inference on coremltools' iOS16 sparse op (idempotent).
    Every path that builds a pruned program (compressing, decompressing a stored package) calls this first."""
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_sparse_to_dense

    if constexpr_sparse_to_dense.type_inference is not _sparse_to_dense_type_inference:
        constexpr_sparse_to_dense._coremltools_type_inference = constexpr_sparse_to_dense.type_inference
        constexpr_sparse_to_dense.type_inference = _sparse_to_dense_type_inference


# Elements of a constant checked at once for fp16 overflow (4 MB of fp32): bounds the check's temporary arrays.
_OVERFLOW_BLOCK = 1 << 20


def fits_fp16(value) -> bool:
    """False when a finite-looking element (|x| < 1e38) lies beyond fp16's largest value, 65504: coremltools'
    `np.max(abs_value[np.where(abs_value < 1e38)], initial=0.0) > 65504`, negated, without its index array."""
    import numpy as np

    flat = np.asarray(value).reshape(-1)
    for start in range(0, flat.size, _OVERFLOW_BLOCK):
        magnitudes = np.abs(flat[start:start + _OVERFLOW_BLOCK])
        if np.max(magnitudes, where=magnitudes < 1e38, initial=0.0) > 65504:
            return False
    return True


def _fp16_overflow(op) -> bool:
    """coremltools 9.0's `FP16ComputePrecision.fp16_overflow`, same answer (`fits_fp16`), bounded memory."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            if var.op is not None and var.op.op_type == "const" and var.is_tensor_or_scalar_of(dtype="fp32"):
                if not fits_fp16(var.op.val.val):
                    return True
    return False


def patch_fp16_overflow_check() -> None:
    """Bug 4 (module docstring): install the bounded-memory overflow check on coremltools' fp16 pass (idempotent).
    Conversion with fp16 compute precision calls this first."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    if FP16ComputePrecision.__dict__["fp16_overflow"].__func__ is not _fp16_overflow:
        FP16ComputePrecision._coremltools_fp16_overflow = FP16ComputePrecision.__dict__["fp16_overflow"]
        FP16ComputePrecision.fp16_overflow = staticmethod(_fp16_overflow)


def float32_threshold(value, sparsity: float) -> float:
    """The magnitude at or below which coremltools' magnitude pruner zeroes elements, computed in float32 (bug 1).

    coremltools prunes `|x| <= np.percentile(|x|, 100 * sparsity)`, and numpy computes that percentile in the
    weight's dtype: the index (n - 1) * q and the interpolation between its two neighbours are float32 arithmetic
    for fp32 weights (float16, overflowing, for fp16 ones: bug 1). We do the same float32 arithmetic on the two
    neighbours only, then snap the result down to a magnitude that occurs, so that comparing it in the weight's own
    dtype (fp16) is exact. A float64 index would differ: 0.7 of 1,361 elements is index 951.99… in float64 but
    952 in float32, one more weight kept than coremltools keeps."""
    import numpy as np

    magnitudes = np.abs(np.asarray(value, dtype=np.float32)).reshape(-1)  # our own array: free to reorder
    if sparsity <= 0 or not magnitudes.size:
        return 0.0
    last = magnitudes.size - 1
    # numpy.percentile(magnitudes, sparsity * 100) step by step (numpy.lib._function_base_impl, method "linear")
    quantile = np.float32(min(sparsity, 1.0) * 100) / np.float32(100)
    index = np.float32(last) * quantile
    if index >= last:
        return kth_smallest(magnitudes, last)
    below = int(np.floor(index))
    low, high = (np.float32(v) for v in order_statistics(magnitudes, [below, below + 1]))
    weight = np.float32(index - np.floor(index))
    step = high - low
    cut = high - step * (np.float32(1) - weight) if weight >= 0.5 else low + step * weight
    return float(high if high <= cut else low)


# Below this many elements a selection sorts in place; above it, `order_statistics` narrows it down from a sample first.
_SELECT_DIRECT = 1 << 16
_SELECT_SAMPLE = 1 << 14
_SELECT_SPREAD = 4.0  # the sampled bracket's half-width, in standard deviations of the k-th value's sample rank


def kth_smallest(values, k: int) -> float:
    """The k-th smallest (0-based) of a 1-D float array, exactly; `values` may be reordered."""
    return order_statistics(values, [k])[0]


def order_statistics(values, ks: list[int]) -> list[float]:
    """The ks-th smallest (0-based, ascending, close together) of a 1-D float array, exactly; `values` may be
    reordered.

    Why not np.partition alone: on BLIP-base (138 M pruned elements) introselect over every element was a fifth of the
    prune build. A seeded sample brackets the wanted values between two sample values (Floyd and Rivest's selection);
    one counting pass and one gathering pass then leave a few thousand candidates to partition. When the bracket
    misses (improbable; equal values at the bracket's edges are counted, not lost) the answer comes from a full
    partition, so the result never depends on the sample."""
    import numpy as np

    n = values.size
    if n <= _SELECT_DIRECT:
        chosen = np.partition(values, ks)
        return [float(chosen[k]) for k in ks]
    sample = np.sort(values[np.random.default_rng(0).integers(0, n, _SELECT_SAMPLE)])
    spread = _SELECT_SPREAD * np.sqrt(_SELECT_SAMPLE) + 2
    low_index = int(ks[0] / (n - 1) * (_SELECT_SAMPLE - 1) - spread)
    high_index = int(ks[-1] / (n - 1) * (_SELECT_SAMPLE - 1) + spread) + 1
    low = sample[low_index] if low_index > 0 else -np.inf
    high = sample[high_index] if high_index < _SELECT_SAMPLE else np.inf
    below = int(np.count_nonzero(values < low))
    inside = values[(values >= low) & (values <= high)]
    if below <= ks[0] and ks[-1] < below + inside.size:
        chosen = np.partition(inside, [k - below for k in ks])
        return [float(chosen[k - below]) for k in ks]
    chosen = np.partition(values, ks)
    return [float(chosen[k]) for k in ks]


def sparse_param(val, keep=None):
    """coremltools' iOS16 sparse form of `val` (non-zero values, little-endian bit mask, shape), from one boolean mask;
    `keep` (same shape) is False where pruning zeroes an element. Bug 5 (module docstring)."""
    import numpy as np
    from coremltools.optimize import _utils as optimize_utils

    flat = np.asarray(val).reshape(-1)
    mask = flat != 0
    if keep is not None:
        mask &= np.asarray(keep).reshape(-1)
    return optimize_utils.SparseParamsIos16(nonzero_data=flat[mask], mask=np.packbits(mask, bitorder="little"),
                                            shape=np.shape(val))


def _compress_by_threshold(val, threshold, minimum_sparsity_percentile):
    """coremltools 9.0's `prune_weights.compress_by_threshold`, same result and warning, without its int64 arrays."""
    import numpy as np
    from coremltools.optimize.coreml._quantization_passes import logger

    keep = ~(np.abs(val) <= threshold)  # NaN stays, as in coremltools' `np.where(np.abs(val) <= threshold, 0, val)`
    params = sparse_param(val, keep)
    sparsity_percentile = 1 - params.nonzero_data.size / np.size(val)
    if sparsity_percentile < minimum_sparsity_percentile:
        logger.warning(f"weight value has sparsity of {sparsity_percentile} < "
                       f"minimum_sparsity_percentile {minimum_sparsity_percentile}. Skipped.")
        return None
    return params


def patch_sparse_param_packing() -> None:
    """Bug 5 (module docstring): install the boolean-mask sparse packing on coremltools' pruning pass (idempotent);
    the magnitude and n:m pruners reach it through `_produce_sparse_param`."""
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    if prune_weights.__dict__["compress_by_threshold"].__func__ is not _compress_by_threshold:
        prune_weights._coremltools_compress_by_threshold = prune_weights.__dict__["compress_by_threshold"]
        prune_weights._coremltools_produce_sparse_param = prune_weights.__dict__["_produce_sparse_param"]
        prune_weights.compress_by_threshold = staticmethod(_compress_by_threshold)
        prune_weights._produce_sparse_param = staticmethod(sparse_param)


# coremltools' post-training compression passes, by the public function that runs each.
COMPRESSION_PASSES = {"prune": "compression::prune_weights", "palettize": "compression::palettize_weights",
                      "quantize": "compression::linear_quantize_weights"}


def _compressed(mlmodel, compression: str, config, *, joint_compression: bool = False):
    """What `coremltools.optimize.coreml.<compression>_weights(mlmodel, config, joint_compression)` returns, without
    re-running the default optimisation pipeline on the already optimised program (bug 6): the same pass with the
    same options, then only the backend passes that serialising the program needs."""
    from coremltools.converters.mil.converter import mil_convert
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    if mlmodel._is_multifunction():  # as coremltools' `_multifunction_unsupported` refuses
        raise ValueError(f"{compression}_weights is not supported for a multifunction model.")
    graph_pass = PASS_REGISTRY[COMPRESSION_PASSES[compression]]
    graph_pass.set_options([PassOption("config", config), PassOption("joint_compression", joint_compression)])
    spec = mlmodel.get_spec()
    program = model_utils._apply_graph_pass(mlmodel, graph_pass, return_pymil_prog=True)
    return mil_convert(program, convert_from="milinternal", convert_to="mlprogram",
                       compute_units=mlmodel.compute_unit,
                       specification_version=max(spec.specificationVersion,
                                                 model_utils._SPECIFICATION_VERSION_IOS_16),
                       model_description=spec.description, skip_model_load=mlmodel.__proxy__ is None,
                       pass_pipeline=PassPipeline.EMPTY)


def compress_model(mlmodel, recipe: Recipe, cands: dict[str, Candidate], package: str,
                   *, trust_coremltools_pruner: bool = False):
    """Apply the recipe's compressions to one converted model. Returns (model, Plan).

    `trust_coremltools_pruner=True` uses coremltools' own magnitude pruner (bug 1 included); it exists only so a
    test can show that verification turns that silent failure into a BuildError.
    """
    import coremltools.optimize.coreml as cto

    from bench.build.builder import give_back_memory

    patch_sparse_mask_popcount()
    patch_sparse_param_packing()
    chosen = select(cands, recipe)
    skipped = {name: why for name in chosen if (why := not_applicable(cands[name], recipe))}
    chosen = [name for name in chosen if name not in skipped]
    plan = Plan(package=package, selected={name: {} for name in chosen},
                untouched=sorted(set(cands) - set(chosen)), skipped=skipped)
    if not recipe.compressions or not chosen:
        return mlmodel, plan

    model = mlmodel
    names = {name: name for name in chosen}  # current op name of each chosen constant
    if recipe.prune is not None:
        model = _prune(model, recipe, cands, chosen, trust_coremltools_pruner, plan)
        names = {name: f"{name}_sparsified" for name in chosen}
    joint = recipe.prune is not None
    if recipe.palettize is not None:
        p = recipe.palettize
        config = cto.OpPalettizerConfig(
            nbits=p.bits, mode=p.mode, granularity=p.granularity,
            group_size=p.group_size if p.granularity == "per_grouped_channel" else 32, weight_threshold=0,
        )
        groups = _largest_last(chosen, cands) if p.mode == "kmeans" and not joint else [chosen]
        with tempfile.TemporaryDirectory(prefix="bench-palettize-") as scratch:
            for index, group in enumerate(groups):
                if index:  # continue from the saved package: the in-memory program held every dense weight
                    model = _reloaded(model, Path(scratch) / f"step{index}.mlpackage")
                    give_back_memory()  # the previous program's objects refer to each other: collect them now
                model = _compressed(
                    model, "palettize", cto.OptimizationConfig(global_config=None,
                                                               op_name_configs={names[n]: config for n in group}),
                    joint_compression=joint,
                )
        for name in chosen:
            plan.selected[name]["palettize"] = p.bits
    if recipe.quantize is not None:
        q = recipe.quantize
        config = cto.OpLinearQuantizerConfig(
            mode=q.mode, dtype=f"int{q.bits}", granularity=q.granularity,
            block_size=q.block_size if q.granularity == "per_block" else None, weight_threshold=0,
        )
        model = _compressed(
            model, "quantize",
            cto.OptimizationConfig(global_config=None, op_name_configs={names[n]: config for n in chosen}),
            joint_compression=joint,
        )
        for name in chosen:
            plan.selected[name]["quantize"] = q.bits
    return model, plan


# A constant this large is k-means palettized in a pass of its own, after the others (see `_largest_last`).
KMEANS_ALONE_ELEMENTS = 8 << 20


def _largest_last(chosen: list[str], cands: dict[str, Candidate]) -> list[list[str]]:
    """Palettization passes for k-means: the largest constant alone, after every other one, when it is large.

    Why: scikit-learn's k-means (coremltools' k-means palettization of fp32 weights) needs several times its
    tensor's bytes at once (k-means++ candidate distances, labels, norms); for BLIP-base's 23 M-element tied word
    embedding that came on top of a program still holding every other dense weight, the build's peak resident
    memory (issue 16). In its own pass the rest of the program is already palettized (4 bits a weight). Each
    constant is clustered on its own either way (same k-means, same seed), so the stored values do not change."""
    largest = max(chosen, key=lambda name: cands[name].numel, default=None)
    if largest is None or len(chosen) == 1 or cands[largest].numel < KMEANS_ALONE_ELEMENTS:
        return [chosen]
    return [[name for name in chosen if name != largest], [largest]]


def _reloaded(mlmodel, path: Path):
    """The same model read back from `path` (saved there): without the converter's in-memory program."""
    import coremltools as ct

    mlmodel.save(str(path))
    del mlmodel
    return ct.models.MLModel(str(path), skip_model_load=True)


def _prune(model, recipe: Recipe, cands, chosen, trust_coremltools_pruner: bool, plan: Plan):
    import coremltools.optimize.coreml as cto

    prune = recipe.prune
    configs = {}
    for name in chosen:
        if prune.n_m is not None:
            configs[name] = cto.OpMagnitudePrunerConfig(n_m_ratio=tuple(prune.n_m), weight_threshold=0)
            plan.selected[name]["prune"] = prune.n_m[0] / prune.n_m[1]
            plan.selected[name]["n_m"] = list(prune.n_m)
            continue
        if trust_coremltools_pruner:
            configs[name] = cto.OpMagnitudePrunerConfig(target_sparsity=prune.sparsity, weight_threshold=0)
        else:
            configs[name] = cto.OpThresholdPrunerConfig(
                threshold=float32_threshold(cands[name].value, prune.sparsity),
                minimum_sparsity_percentile=0.0, weight_threshold=0,
            )
        plan.selected[name]["prune"] = prune.sparsity
    return _compressed(model, "prune", cto.OptimizationConfig(global_config=None, op_name_configs=configs))
