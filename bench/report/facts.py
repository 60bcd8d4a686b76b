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


FACT_COLUMNS = ["precision", "prune_layers", "target_sparsity", "image_size", "resize", "crop_fraction", "model",
                "model_size", "model_params"]


def variant_facts(manifest: dict | None) -> dict[str, Any]:
    """What the seed's studies group by: precision, which layers were pruned (`all`, `conv`, `embedding`, `n:m`…),
    the input size, resize mode and (centre crop) crop fraction, and which captioner (name, `base`/`large` read from
    its config by bench.train.captioner.model_size_label, parameter count: the base-vs-large axis)."""
    if not manifest:
        return dict.fromkeys(FACT_COLUMNS)
    if manifest.get("origin") == "imported":  # no recipe: its storage is what the analysis measured
        ops = sorted((manifest.get("measured") or {}).get("decompression_ops") or {})
        return {**dict.fromkeys(FACT_COLUMNS), "model": manifest.get("family"),
                "precision": "imported: " + (", ".join(op.removeprefix("constexpr_") for op in ops) or "dense"),
                "model_params": (manifest.get("measured") or {}).get("params")}
    recipe = manifest.get("recipe") or {}
    prune = recipe.get("prune") or {}
    # bench.build's recipe says `sparsity`; older/hand-written manifests say target_sparsity / amount.
    sparsity = prune.get("target_sparsity", prune.get("amount", prune.get("sparsity"))) if prune else 0.0
    n_m = prune.get("n_m") if prune else None
    if n_m and sparsity is None:
        sparsity = n_m[0] / n_m[1]
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    resize = manifest.get("resize") or recipe.get("resize")
    return {"precision": _precision(recipe), "prune_layers": _pruned_layers(recipe) if prune else None,
            "target_sparsity": sparsity, "image_size": manifest.get("image_size"), "resize": resize,
            "crop_fraction": float(recipe.get("crop_fraction", 1.0)) if resize == "center_crop" else None,
            "model": source.get("name"), "model_size": source.get("model_size"),
            # the source captioner's parameters (bench.build records them), else what the packages hold
            "model_params": source.get("params") or (manifest.get("measured") or {}).get("params")}


def _precision(recipe: dict) -> str:
    quantize = recipe.get("quantize") or {}
    palettize = recipe.get("palettize") or {}
    if quantize:
        # bench.build's validated recipe says `bits`; older/hand-written manifests say dtype / nbits.
        bits = quantize.get("bits")
        return str(quantize.get("dtype") or quantize.get("nbits") or (f"int{bits}" if bits else "quantized"))
    if palettize:
        return f"palettized-{palettize.get('nbits', palettize.get('bits', '?'))}bit"
    return str(recipe.get("precision") or "fp32")


def _pruned_layers(recipe: dict) -> str:
    """`all` for unstructured pruning of every eligible weight; the selection (bench.build: recipe.layers.select, or
    a pattern) when only some layers were pruned; `n:m` for structured n:m sparsity."""
    prune = recipe.get("prune") or {}
    if prune.get("n_m"):
        n, m = prune["n_m"]
        return f"{n}:{m}"
    selection = recipe.get("layers") or {}
    if selection.get("select") == "pattern":
        return f"pattern {selection.get('pattern')}"
    layers = selection.get("select") or prune.get("layers") or "all"
    return ",".join(map(str, layers)) if isinstance(layers, (list, tuple)) else str(layers)


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
