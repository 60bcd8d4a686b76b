"""Verification: the stored package must show what the recipe asked for, measured from its bytes.

A recipe that silently did nothing (coremltools' fp16 pruning bug), a compression applied to weights outside the
layer selection, or a precision that is not what was asked, is a BuildError — never a silent result.
"""

from __future__ import annotations

from typing import Any

from bench.build.analyze import PackageAnalysis, TensorAnalysis
from bench.build.compress import Plan
from bench.build.torch_weights import base_constant_name
from bench.errors import BuildError

# Measured sparsity may differ from the target by ties at the threshold (fp16 has few distinct magnitudes).
SPARSITY_TOLERANCE = 0.01


def _by_base_name(analysis: PackageAnalysis) -> dict[str, TensorAnalysis]:
    return {base_constant_name(t.name): t for t in analysis.tensors}


def verify_variant(name: str, precision: str, plans: dict[str, Plan], analyses: dict[str, PackageAnalysis],
                   *, expects_compression: bool = False) -> dict[str, Any]:
    """Check every planned tensor against the stored package; return a summary or raise BuildError."""
    if expects_compression and not any(plan.selected for plan in plans.values()):
        raise BuildError(f"variant {name}: the recipe compresses weights, but its layer selection matched none "
                         "(check `layers`; `bench models inspect` lists the weight names)")
    problems: list[str] = []
    worst = 0.0
    checked = 0
    expected_dtype = "float16" if precision == "fp16" else "float32"
    for package, plan in plans.items():
        tensors = _by_base_name(analyses[package])
        for const, expect in plan.selected.items():
            tensor = tensors.get(const)
            if tensor is None:
                problems.append(f"{package}:{const} is missing from the stored package")
                continue
            checked += 1
            worst = max(worst, _check_selected(package, const, tensor, expect, problems))
        for const in plan.untouched:
            tensor = tensors.get(const)
            if tensor is None:
                problems.append(f"{package}:{const} is missing from the stored package")
                continue
            checked += 1
            if tensor.storage != "dense":
                problems.append(f"{package}:{const} is outside the layer selection but stored {tensor.storage}")
        for tensor in analyses[package].tensors:
            if tensor.dtype.startswith("float") and tensor.dtype != expected_dtype:
                problems.append(f"{package}:{tensor.name} is {tensor.dtype}, recipe precision is {precision}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BuildError(f"variant {name}: stored package misses its recipe: {problems[0]}{more}")
    selected = sum(len(p.selected) for p in plans.values())
    return {"ok": True, "checked_tensors": checked, "selected_tensors": selected,
            "max_sparsity_error": round(worst, 6), "sparsity_tolerance": SPARSITY_TOLERANCE}


def _check_selected(package: str, const: str, tensor: TensorAnalysis, expect: dict[str, Any],
                    problems: list[str]) -> float:
    where = f"{package}:{const}"
    error = 0.0
    if "prune" in expect and expect["prune"] > 0:
        target = float(expect["prune"])
        if "sparse" not in tensor.storage:
            problems.append(f"{where}: recipe asked {target:.1%} sparsity, but it is stored {tensor.storage} "
                            f"with {tensor.sparsity or 0:.1%} zeros")
        elif tensor.sparsity is None or abs(tensor.sparsity - target) > SPARSITY_TOLERANCE:
            problems.append(f"{where}: recipe asked {target:.1%} sparsity, stored {tensor.sparsity or 0:.1%}")
        else:
            error = abs(tensor.sparsity - target)
    if "palettize" in expect:
        levels = 2 ** int(expect["palettize"])
        if "palettized" not in tensor.storage:
            problems.append(f"{where}: recipe asked {expect['palettize']}-bit palettization, stored {tensor.storage}")
        elif tensor.unique_values is not None and tensor.unique_values > levels:
            problems.append(f"{where}: {tensor.unique_values} distinct values > {levels} for {expect['palettize']} bits")
    if "quantize" in expect:
        levels = 2 ** int(expect["quantize"])
        if not ({"affine", "blockwise"} & set(tensor.storage.split("+"))):
            problems.append(f"{where}: recipe asked int{expect['quantize']}, stored {tensor.storage}")
        elif tensor.unique_values is not None and tensor.unique_values > levels:
            problems.append(f"{where}: {tensor.unique_values} distinct codes > {levels} for int{expect['quantize']}")
    return error


def measured_summary(analyses: dict[str, PackageAnalysis], plans: dict[str, Plan]) -> dict[str, Any]:
    """The manifest's `measured` block: whole-variant figures plus every tensor."""
    tensors = [t for a in analyses.values() for t in a.tensors]
    params = sum(t.params for t in tensors)
    nonzero = sum(t.params if t.nonzero is None else t.nonzero for t in tensors)
    stored = sum(t.bytes for t in tensors)
    selected_names = {(p.package, c) for p in plans.values() for c in p.selected}
    selected = [t for t in tensors if (t.package, base_constant_name(t.name)) in selected_names]
    sel_params = sum(t.params for t in selected)
    sel_nonzero = sum(t.params if t.nonzero is None else t.nonzero for t in selected)
    compressed_unique = [t.unique_values for t in tensors if t.storage != "dense" and t.unique_values is not None]
    all_unique = [t.unique_values for t in tensors if t.unique_values is not None]
    op_counts: dict[str, int] = {}
    decompression: dict[str, int] = {}
    for analysis in analyses.values():
        for k, v in analysis.op_counts.items():
            op_counts[k] = op_counts.get(k, 0) + v
        for k, v in analysis.decompression_ops.items():
            decompression[k] = decompression.get(k, 0) + v
    return {
        "total_bytes": sum(a.bytes for a in analyses.values()),
        "weight_bytes": sum(a.weight_bytes for a in analyses.values()),
        "params": params,
        "nonzero_params": nonzero,
        "sparsity": round(1 - nonzero / params, 6) if params else 0.0,
        "selected_params": sel_params,
        "selected_sparsity": round(1 - sel_nonzero / sel_params, 6) if sel_params else 0.0,
        "bits_per_weight": round(stored * 8 / params, 4) if params else 0.0,
        "unique_values_max": max(compressed_unique or all_unique or [0]),
        "duplicated_tensors": [{"package": a.package, **d} for a in analyses.values() for d in a.duplicated_tensors],
        "op_counts": dict(sorted(op_counts.items())),
        "decompression_ops": dict(sorted(decompression.items())),
        "tensors": [t.__dict__ for t in tensors],
    }
