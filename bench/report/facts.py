"""Facts about variants, targets and jobs that both the report (data.py) and `bench explain` (explain.py) read.

Kept apart so that data.py and explain.py do not import each other: data.py builds the report and asks explain.py for
the sweep's explanations; explain.py needs only these names and labels.
"""

from __future__ import annotations

from typing import Any

HOST_EMULATION = "host emulation (not Core ML)"
UNIT_ORDER = {"all": 0, "cpuAndNeuralEngine": 1, "cpuAndGPU": 2, "cpuOnly": 3}
KIND_ORDER = {"iphone": 0, "macos-coreml": 1, "host-torch": 2}


def variant_name(variant_id: str, manifest: dict | None) -> str:
    if manifest and manifest.get("name"):
        return str(manifest["name"])
    head, _, tail = variant_id.rpartition("-")
    return head if head and len(tail) == 12 else variant_id


def variant_facts(manifest: dict | None) -> dict[str, Any]:
    """What the seed's studies group by: precision, which layers were pruned, the input size (from the recipe)."""
    if not manifest:
        return {"precision": None, "prune_layers": None, "target_sparsity": None, "image_size": None}
    recipe = manifest.get("recipe") or {}
    quantize = recipe.get("quantize") or {}
    palettize = recipe.get("palettize") or {}
    prune = recipe.get("prune") or {}
    if quantize:
        # bench.build's validated recipe says `bits`; older/hand-written manifests say dtype / nbits.
        bits = quantize.get("bits")
        precision = str(quantize.get("dtype") or quantize.get("nbits") or (f"int{bits}" if bits else "quantized"))
    elif palettize:
        precision = f"palettized-{palettize.get('nbits', palettize.get('bits', '?'))}bit"
    else:
        precision = str(recipe.get("precision") or "fp32")
    layers = prune.get("layers") if prune else None
    if isinstance(layers, (list, tuple)):
        layers = ",".join(map(str, layers))
    # bench.build's recipe says `sparsity`; older/hand-written manifests say target_sparsity / amount.
    sparsity = prune.get("target_sparsity", prune.get("amount", prune.get("sparsity"))) if prune else 0.0
    return {"precision": precision, "prune_layers": layers if prune else None, "target_sparsity": sparsity,
            "image_size": manifest.get("image_size")}


def target_label(kind: str | None, model: str | None, name: str | None) -> str:
    if kind == "host-torch":
        return f"host-torch: {HOST_EMULATION}"
    if kind == "macos-coreml":
        return f"macOS Core ML ({model})"
    return f"{model} ({name})" if name and name != model else str(model)


def load_ns(job: dict, field_name: str) -> float | None:
    """A job's load time in ns; per-package values ({encoder, decoder}) are added up (both load before predicting)."""
    value = (job.get("load") or {}).get(f"{field_name}_ns")
    if isinstance(value, dict):
        parts = [v for v in value.values() if v is not None]
        return float(sum(parts)) if parts else None
    return None if value is None else float(value)
