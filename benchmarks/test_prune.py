"""Pruning one saved package: coremltools 9.0's `prune_weights` vs bench's way (issue 16), side by side.

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/test_prune.py --benchmark-only -s -p no:randomly

The package: a BLIP-base-sized word embedding (30,524 x 768, read by a gather) and six 768 x 3,072 linear layers,
37.6 M fp32 parameters (150 MB), built as a MIL program (no torch) and saved. Both sides start from the saved package
loaded without its runtime (each weight's values read beforehand, untimed), prune every weight to 50 % by magnitude with a float32 threshold per weight (bug 1), and
save the result:
- coremltools: the threshold as `np.percentile` snapped to an occurring magnitude, then the public
  `coremltools.optimize.coreml.prune_weights` with coremltools' own sparse packing (bench's bug 5 patch taken off);
- bench: `compress.float32_threshold` (sampled selection) and `compress._compressed` (no re-run of the default
  pipeline, bug 6) with the boolean-mask packing (bug 5).
The stored values of both must be equal, and bench's program must keep the source's ops; figures are wall seconds,
best of three rounds each, interleaved (a change of load hits both sides alike).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

VOCAB, HIDDEN, INTERMEDIATE, LINEARS = 30_524, 768, 3_072, 6
ROUNDS = 3


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    embedding = (rng.standard_normal((VOCAB, HIDDEN)) * 0.02).astype(np.float32)
    weights = [(rng.standard_normal((INTERMEDIATE, HIDDEN) if i % 2 == 0 else (HIDDEN, INTERMEDIATE)) * 0.02)
               .astype(np.float32) for i in range(LINEARS)]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 16), dtype=ct.converters.mil.mil.types.int32)],
                opset_version=ct.target.iOS17)
    def program(ids):
        x = mb.gather(x=embedding, indices=ids, axis=0)
        for weight in weights:
            x = mb.linear(x=x, weight=weight)
        return x

    path = tmp_path_factory.mktemp("prune-bench") / "source.mlpackage"
    ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17).save(str(path))
    return path


def _percentile_threshold(value, sparsity: float) -> float:
    """The threshold before issue 16's change: numpy's percentile, snapped down to an occurring magnitude."""
    magnitudes = np.abs(np.asarray(value, dtype=np.float32)).reshape(-1)
    cut = np.percentile(magnitudes, sparsity * 100, overwrite_input=True)
    return float(np.max(magnitudes, where=magnitudes <= cut, initial=0.0))


def _weights(source: Path) -> dict[str, np.ndarray]:
    """Every prunable weight's values (read once, outside the timed part: the builder reads them from its analysis)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    model = ct.models.MLModel(str(source), skip_model_load=True)
    return {name: meta.val for name, meta in cto.get_weights_metadata(model, weight_threshold=2048).items()}


def _prune(source: Path, weights: dict[str, np.ndarray], out: Path, *, ours: bool) -> float:
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    from bench.build import compress

    compress.patch_sparse_mask_popcount()
    compress.patch_sparse_param_packing()
    if not ours:  # coremltools' own packing
        for attribute in ("compress_by_threshold", "_produce_sparse_param"):
            setattr(prune_weights, attribute, prune_weights.__dict__[f"_coremltools_{attribute.lstrip('_')}"])
    try:
        started = time.perf_counter()
        model = ct.models.MLModel(str(source), skip_model_load=True)
        threshold = compress.float32_threshold if ours else _percentile_threshold
        configs = {name: cto.OpThresholdPrunerConfig(threshold=threshold(value, 0.5),
                                                     minimum_sparsity_percentile=0.0, weight_threshold=0)
                   for name, value in weights.items()}
        config = cto.OptimizationConfig(global_config=None, op_name_configs=configs)
        pruned = compress._compressed(model, "prune", config) if ours else cto.prune_weights(model, config)
        shutil.rmtree(out, ignore_errors=True)
        pruned.save(str(out))
        return time.perf_counter() - started
    finally:  # bench's packing back in place for the next side
        prune_weights.compress_by_threshold = staticmethod(compress._compress_by_threshold)
        prune_weights._produce_sparse_param = staticmethod(compress.sparse_param)


def _stored(package: Path) -> dict[str, np.ndarray]:
    import tempfile

    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from bench.build.analyze import constant_values

    dense = cto.decompress_weights(ct.models.MLModel(str(package), skip_model_load=True))
    with tempfile.TemporaryDirectory() as tmp:
        dense.save(str(Path(tmp) / "dense.mlpackage"))
        return {name.removesuffix("_sparsified"): value
                for name, value in constant_values(Path(tmp) / "dense.mlpackage").items()}


def _ops(package: Path) -> list[str]:
    from bench.build.analyze import load_program

    spec = load_program(package)
    return [op.type for function in spec.mlProgram.functions.values()
            for block in function.block_specializations.values() for op in block.operations
            if op.type != "const" and not op.type.startswith("constexpr_")]


def test_prune_package_bench_vs_coremltools(benchmark, package, tmp_path):
    import coremltools  # noqa: F401  (imported before either side is timed)

    times = {"coremltools": [], "bench": []}
    weights = _weights(package)

    def one_round():
        for side in times:
            times[side].append(_prune(package, weights, tmp_path / f"{side}.mlpackage", ours=side == "bench"))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    ours, theirs = _stored(tmp_path / "bench.mlpackage"), _stored(tmp_path / "coremltools.mlpackage")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    assert _ops(tmp_path / "bench.mlpackage") == _ops(package)
    best = {side: min(values) for side, values in times.items()}
    parameters = VOCAB * HIDDEN + LINEARS * HIDDEN * INTERMEDIATE
    print(f"\nprune 50 % of a saved package ({parameters / 1e6:.1f} M fp32 parameters), best of {ROUNDS} interleaved "
          f"rounds:\n  coremltools 9.0 prune_weights  {best['coremltools']:6.2f} s   "
          f"(rounds: {', '.join(f'{t:.2f}' for t in times['coremltools'])})\n"
          f"  bench                          {best['bench']:6.2f} s   "
          f"(rounds: {', '.join(f'{t:.2f}' for t in times['bench'])})\n"
          f"  {best['coremltools'] / best['bench']:.2f}x faster; stored values equal; ops: bench {len(_ops(package))} "
          f"(as the source), coremltools {len(_ops(tmp_path / 'coremltools.mlpackage'))}")
