"""Between PyTorch and the stored packages: which Core ML constant holds which parameter, and back again.

`captioner_from_variant` decompresses a variant's stored packages with coremltools (works on Linux), and loads
every constant into the PyTorch model, so caption quality describes exactly the deployed weight bytes (not the
device's fp16 arithmetic: that needs Core ML itself, bench/build/coreml_predict.py).
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

from bench.errors import BuildError, InputError

# coremltools renames a constant when it compresses it: `<name>_sparsified`, `_palettized`, `_quantized`.
COMPRESSION_SUFFIX = re.compile(r"(_sparsified|_palettized_pcs|_palettized|_quantized)+$")


def base_constant_name(name: str) -> str:
    return COMPRESSION_SUFFIX.sub("", name)


def resize_vision_input(model, image_size: int):
    """A copy of `model` whose vision position embedding is interpolated (as transformers does) to `image_size`."""
    import torch

    native = int(model.config.vision_config.image_size)
    if image_size == native:
        return model
    resized = copy.deepcopy(model)
    embeddings = resized.vision_model.embeddings
    patches = (image_size // embeddings.patch_size) ** 2
    dummy = torch.zeros(1, patches + 1, embeddings.embed_dim)
    with torch.no_grad():
        new = embeddings.interpolate_pos_encoding(dummy, image_size, image_size).detach().clone()
    embeddings.position_embedding = torch.nn.Parameter(new)
    embeddings.image_size, embeddings.num_patches, embeddings.num_positions = image_size, patches, patches + 1
    resized.config.vision_config.image_size = image_size
    return resized.eval()


def map_weights(constants: dict[str, Any], model) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """{constant name: [{param, rows}]} for one converted (uncompressed) package, and the parameters not found.

    `constants` are the package's dense float constants (bench.build.analyze.constant_values).
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

    for const, value in constants.items():
        param = by_name.get(re.sub(r"_to_fp(16|32)$", "", const))
        if param and params[param].shape == value.shape and _equal(params[param], value):
            claim(const, param)
    signatures: dict[tuple, list[str]] = {}
    for const, value in constants.items():
        signatures.setdefault((value.shape, value.dtype.str, value.tobytes()), []).append(const)
    for param, array in params.items():
        if param in claimed:
            continue
        for dtype in {np.dtype(np.float32), np.dtype(np.float16)}:
            consts = signatures.get((array.shape, dtype.str, array.astype(dtype).tobytes()))
            if consts:
                claim(consts[0], param)
                break
        else:
            const, rows = _row_prefix_match(array, constants)
            if const is not None:
                claim(const, param, rows)
    unmapped = sorted(set(params) - claimed)
    return mapping, unmapped


def _equal(param, value) -> bool:
    import numpy as np

    return bool(np.array_equal(param.astype(value.dtype), value))


def _row_prefix_match(array, constants: dict[str, Any]) -> tuple[str | None, int | None]:
    """A constant equal to the first rows of a 2-D parameter (e.g. position embeddings sliced to length L)."""
    import numpy as np

    if array.ndim != 2:
        return None, None
    for const, value in constants.items():
        squeezed = value.reshape(value.shape[-2:]) if value.ndim >= 2 and int(np.prod(value.shape[:-2])) == 1 else None
        if squeezed is None or squeezed.shape[1] != array.shape[1] or squeezed.shape[0] >= array.shape[0]:
            continue
        if _equal(array[: squeezed.shape[0]], squeezed):
            return const, int(squeezed.shape[0])
    return None, None


def deployed_constants(package: Path) -> dict[str, Any]:
    """Every weight constant of a stored package, decompressed by coremltools: {base constant name: array}."""
    import tempfile

    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from bench.build.analyze import constant_values, load_program
    from bench.build.compress import patch_sparse_mask_popcount

    load_program(package)  # a missing, corrupt or non-ML-program package: one clear InputError, not a traceback
    patch_sparse_mask_popcount()
    try:
        mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
        dense = cto.decompress_weights(mlmodel)
    except (ValueError, RuntimeError) as err:  # coremltools' blob reader on a truncated or overwritten weight.bin;
        # its C++ package reader on a garbled Manifest.json (RuntimeError carrying nlohmann::json's parse error)
        raise InputError(f"cannot read the stored weights ({' '.join(str(err).split())}); the package is corrupt, "
                         "rebuild the variant", file=str(package)) from None
    with tempfile.TemporaryDirectory(prefix="bench-decompressed-") as tmp:
        dense.save(str(Path(tmp) / "dense.mlpackage"))
        values = constant_values(Path(tmp) / "dense.mlpackage")
    return {base_constant_name(name): value for name, value in values.items()}


def load_deployed_weights(model, variant_dir: Path, weights_map: dict[str, dict[str, list[dict]]]) -> int:
    """Copy the stored packages' decompressed constants into `model` (in place). Returns parameters loaded."""
    import torch

    loaded = 0
    for package, mapping in weights_map.items():
        constants = deployed_constants(variant_dir / f"{package}.mlpackage")
        for const, targets in mapping.items():
            if const not in constants:
                raise BuildError(f"{variant_dir.name}: constant {const!r} missing from the stored {package} package")
            value = torch.from_numpy(constants[const].astype("float32"))
            for target in targets:
                parameter = model.get_parameter(target["param"])
                with torch.no_grad():
                    if target["rows"] is None:
                        parameter.copy_(value.reshape(parameter.shape))
                    else:
                        parameter[: target["rows"]].copy_(value.reshape(target["rows"], -1))
                loaded += 1
    return loaded


def captioner_from_variant(variant, workspace=None):
    """A Captioner whose PyTorch weights are exactly the variant's stored (decompressed) weights."""
    from bench.build.variants import load_variant, read_weights_map, variant_dir
    from bench.train.captioner import load_captioner

    manifest = variant if not isinstance(variant, (str, Path)) else load_variant(variant, workspace)
    directory = variant_dir(manifest, workspace)
    base = load_captioner(manifest.source["path"])
    if base.weights_sha256 != manifest.cache_key["base_weights_sha256"]:
        raise BuildError(
            f"{manifest.variant_id}: the source checkpoint {manifest.source['path']} changed since the variant was "
            "built (weights hash differs); rebuild the variant"
        )
    model = resize_vision_input(base.model, manifest.image_size)
    load_deployed_weights(model, directory, read_weights_map(directory))
    model.eval()
    preprocessing = dataclasses.replace(base.preprocessing, image_size=manifest.image_size)
    return dataclasses.replace(
        base, model=model, image_size=manifest.image_size, name=manifest.variant_id,
        weights_sha256=manifest.variant_hash, preprocessing=preprocessing, path=directory,
        metadata={**base.metadata, "variant": manifest.variant_id, "resize": manifest.resize},
    )
