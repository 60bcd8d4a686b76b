"""Between PyTorch and the stored packages: which Core ML constant holds which parameter, and back again.

`captioner_from_variant` gives the PyTorch captioner whose weights are exactly the variant's stored weights as
coremltools decompresses them (bench.build.host_weights: decompressed once, then memory-mapped), so caption quality
describes the deployed weight bytes (not the device's fp16 arithmetic: that needs Core ML, coreml_predict.py).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

# coremltools renames a constant when it compresses it: `<name>_sparsified`, `_palettized`, `_quantized`.
COMPRESSION_SUFFIX = re.compile(r"(_sparsified|_palettized_pcs|_palettized|_quantized)+$")


def base_constant_name(name: str) -> str:
    return COMPRESSION_SUFFIX.sub("", name)


def resize_vision_input(model, image_size: int):
    """`model` itself, its vision position embedding interpolated (as transformers does) to `image_size`.

    In place, not on a copy: the build hands it a freshly mapped source model it owns (one per graph), and a
    deep copy would turn every memory-mapped weight into a second, anonymous, full-precision copy (issue 16)."""
    import torch

    native = int(model.config.vision_config.image_size)
    if image_size == native:
        return model
    embeddings = model.vision_model.embeddings
    patches = (image_size // embeddings.patch_size) ** 2
    dummy = torch.zeros(1, patches + 1, embeddings.embed_dim)
    with torch.no_grad():
        new = embeddings.interpolate_pos_encoding(dummy, image_size, image_size).detach().clone()
    embeddings.position_embedding = torch.nn.Parameter(new)
    embeddings.image_size, embeddings.num_patches, embeddings.num_positions = image_size, patches, patches + 1
    model.config.vision_config.image_size = image_size
    return model.eval()


def map_weights(constants, model) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """{constant name: [{param, rows}]} for one converted (uncompressed) package, and the parameters not found.

    `constants` reads the package's dense float constants one at a time (bench.build.analyze.ConstantReader); only
    a digest of each is kept, so mapping a BLIP-base package holds one tensor at a time, not a copy of the package.
    Matched by name first (the converter names constants after the traced parameters: `a.b.w` → `a_b_w[_to_fp16]`),
    then by value: the converter de-duplicates equal constants (tied embedding, zero biases, unit LayerNorm
    weights), so one constant may stand for several parameters. `rows` marks a constant that is the first rows of
    a parameter (the text position embedding, sliced to the decoder length at conversion).
    """
    import numpy as np

    params = {name: p.detach().cpu().numpy() for name, p in model.named_parameters()}
    by_name = {name.replace(".", "_"): name for name in params}
    mapping: dict[str, list[dict[str, Any]]] = {}
    claimed: set[str] = set()

    def claim(const: str, param: str, rows: int | None = None) -> None:
        mapping.setdefault(const, []).append({"param": param, "rows": rows})
        claimed.add(param)

    signatures: dict[tuple, list[str]] = {}
    for const in constants.names():
        value = constants.read(const)
        param = by_name.get(re.sub(r"_to_fp(16|32)$", "", const))
        if param and params[param].shape == value.shape and _equal(params[param], value):
            claim(const, param)
        signatures.setdefault(_signature(value), []).append(const)
        del value
    for param, array in params.items():
        if param in claimed:
            continue
        for dtype in {np.dtype(np.float32), np.dtype(np.float16)}:
            consts = signatures.get(_signature(array.astype(dtype)))
            if consts:
                claim(consts[0], param)
                break
        else:
            const, rows = _row_prefix_match(array, constants)
            if const is not None:
                claim(const, param, rows)
    unmapped = sorted(set(params) - claimed)
    return mapping, unmapped


def _signature(value) -> tuple:
    import hashlib

    import numpy as np

    return value.shape, value.dtype.str, hashlib.blake2b(np.ascontiguousarray(value).data, digest_size=16).digest()


def _equal(param, value) -> bool:
    import numpy as np

    return bool(np.array_equal(param.astype(value.dtype), value))


def _row_prefix_match(array, constants) -> tuple[str | None, int | None]:
    """A constant equal to the first rows of a 2-D parameter (e.g. position embeddings sliced to length L)."""
    import numpy as np

    if array.ndim != 2:
        return None, None
    for const in constants.names():
        shape = constants.shape(const)
        if len(shape) < 2 or int(np.prod(shape[:-2])) != 1:
            continue
        rows, width = shape[-2], shape[-1]
        if width != array.shape[1] or rows >= array.shape[0]:
            continue
        if _equal(array[:rows], constants.read(const).reshape(rows, width)):
            return const, int(rows)
    return None, None


def captioner_from_variant(variant, workspace=None):
    """A Captioner whose PyTorch weights are exactly the variant's stored (decompressed) weights.

    The weights are the variant's host weights (bench.build.host_weights): decompressed once, then memory-mapped;
    the source checkpoint only lends its tokenizer, decoding and preprocessing settings (its weights are not read).
    Call `prepare_variant` first to keep decompression and hashing out of a timed load."""
    from bench.build import host_weights

    manifest, directory = _variant_and_dir(variant, workspace)
    weights = host_weights.ensure(manifest, directory)
    return captioner_from_host_weights(manifest, directory, weights)


def prepare_variant(variant, workspace=None):
    """One-time set-up before a variant's first load in this process: the host weights materialised (first use
    ever) and their hash verified (first use in this process). Returns the verified HostWeights."""
    from bench.build import host_weights

    manifest, directory = _variant_and_dir(variant, workspace)
    return host_weights.ensure(manifest, directory)


def captioner_from_host_weights(manifest, directory: Path, weights):
    """Map already verified host weights into a captioner: no decompression, no hashing, no copy."""
    from bench.build import host_weights
    from bench.train.captioner import captioner_around

    source = Path(manifest.source["path"])
    model = host_weights.load_model(weights, source, manifest.image_size)
    base = captioner_around(model, source, weights_sha256=manifest.variant_hash)
    crop_fraction = float((manifest.recipe or {}).get("crop_fraction", 1.0))
    preprocessing = dataclasses.replace(base.preprocessing, image_size=manifest.image_size, crop_fraction=crop_fraction)
    return dataclasses.replace(
        base, image_size=manifest.image_size, name=manifest.variant_id, preprocessing=preprocessing,
        path=directory, metadata={**base.metadata, "variant": manifest.variant_id, "resize": manifest.resize},
    )


def _variant_and_dir(variant, workspace):
    from bench.build.variants import load_variant, variant_dir

    manifest = variant if not isinstance(variant, (str, Path)) else load_variant(variant, workspace)
    return manifest, variant_dir(manifest, workspace)
