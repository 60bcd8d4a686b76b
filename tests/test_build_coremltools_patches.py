"""The coremltools work-arounds of bench/build/compress.py checked against coremltools' own code (real coremltools).

Bug 1: the pruning threshold is computed in float32 (fp16 weights too) and is a magnitude that occurs in the weight.
Bug 4: the fp16 conversion's overflow check answers as coremltools' own does on random constants (finite, huge,
infinite, NaN), one block of elements at a time.
Bug 3: the iOS16 sparse op's pure-Python mask popcount is replaced by a vectorised copy of the same checks; on random
masks, valid and broken, the copy must answer exactly what coremltools' original answers (type or error message).
Bug 5: the threshold pruner's sparse packing from one boolean mask stores what coremltools' int64 version stores.
The threshold's selection (a sample narrows it, a partition decides) equals a full sort's answer, whichever way the
sample falls.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bench.build import compress
from bench.build.compress import float32_threshold, kth_smallest, mask_popcount, patch_sparse_mask_popcount


def _original_and_patched():
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_sparse_to_dense

    patch_sparse_mask_popcount()
    return constexpr_sparse_to_dense._coremltools_type_inference, constexpr_sparse_to_dense.type_inference


def _var(value):
    value = np.asarray(value)
    return SimpleNamespace(val=value, rank=value.ndim, shape=value.shape, dtype=value.dtype)


def _op(mask, nonzero: int, shape):
    from coremltools.converters.mil.mil import types

    data = np.ones(nonzero, dtype=np.float32)
    op = SimpleNamespace(nonzero_data=_var(data), mask=_var(mask), shape=_var(np.asarray(shape, dtype=np.uint32)))
    op.nonzero_data.dtype = types.fp32
    return op


def _outcome(function, op):
    try:
        return ("type", repr(function(op)))
    except (AssertionError, ValueError) as err:
        return (type(err).__name__, str(err))


def test_mask_popcount_equals_coremltools_expression_on_random_masks():
    rng = np.random.default_rng(0)
    for size in (0, 1, 7, 8, 9, 1000, 65_537):
        for density in (0.0, 0.1, 0.5, 1.0):
            mask = np.packbits(rng.random(size * 8) < density, bitorder="little")
            assert mask_popcount(mask) == sum(bin(x).count("1") for x in mask)


def test_patched_type_inference_answers_like_the_original_on_random_masks():
    original, patched = _original_and_patched()
    assert patched is not original
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        elements = int(rng.integers(1, 200))
        bits = rng.random(elements) < rng.random()
        mask = np.packbits(bits, bitorder="little")
        nonzero = int(bits.sum()) + int(rng.choice([0, 0, -1, 1]))
        shape = [elements]
        if rng.random() < 0.2 and elements % 8:  # a set padding bit past the last element
            mask[-1] |= np.uint8(1 << 7)
            nonzero = int(bits.sum()) + 1
        if rng.random() < 0.1:  # a mask of the wrong length
            mask = np.concatenate([mask, np.zeros(1, np.uint8)])
        if nonzero < 0:
            continue
        op = _op(mask, nonzero, shape)
        expected, got = _outcome(original, op), _outcome(patched, op)
        assert got == expected, (bits, mask, nonzero)
        seen.add(expected[0] if expected[0] == "type" else expected[1][:20])
    assert len(seen) >= 3, seen  # valid masks and at least two kinds of broken one were exercised


def test_a_pruned_program_builds_through_the_patched_op():
    from coremltools.converters.mil import Builder as mb

    patch_sparse_mask_popcount()
    weight = np.arange(1, 21, dtype=np.float32).reshape(4, 5) * np.array([1, 0, 1, 0, 1], dtype=np.float32)
    bits = (weight.reshape(-1) != 0)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 5))])
    def program(x):
        dense = mb.constexpr_sparse_to_dense(nonzero_data=weight.reshape(-1)[bits],
                                             mask=np.packbits(bits, bitorder="little"),
                                             shape=np.array([4, 5], dtype=np.uint32))
        return mb.linear(x=x, weight=dense)

    op = next(op for op in program.functions["main"].operations if op.op_type == "constexpr_sparse_to_dense")
    np.testing.assert_array_equal(op.materialized_val_inference(), weight)
    with pytest.raises(AssertionError, match="Number of set bits"):
        @mb.program(input_specs=[mb.TensorSpec(shape=(1, 5))])
        def broken(x):
            dense = mb.constexpr_sparse_to_dense(nonzero_data=np.ones(3, np.float32),
                                                 mask=np.packbits(bits, bitorder="little"),
                                                 shape=np.array([4, 5], dtype=np.uint32))
            return mb.linear(x=x, weight=dense)


@pytest.fixture(params=["direct", "sampled"])
def selection(request, monkeypatch):
    """The threshold's selection as it runs on small weights (a partition), and as on large ones (the sampled
    bracket), made to decide on these small test arrays."""
    if request.param == "sampled":
        monkeypatch.setattr(compress, "_SELECT_DIRECT", 64)
        monkeypatch.setattr(compress, "_SELECT_SAMPLE", 256)
    return request.param


def test_float32_threshold_is_the_percentile_snapped_to_an_occurring_magnitude(selection):
    rng = np.random.default_rng(2)
    for trial in range(200):
        value = rng.standard_normal(int(rng.integers(1, 3000))).astype(np.float32) * 0.02
        if trial % 3 == 0:
            value = np.round(value, 3)  # many ties
        if trial % 4 == 0:
            value = value.astype(np.float16)  # bug 1: fp16 weights, threshold still computed in float32
        sparsity = float(rng.choice([0.01, 0.3, 0.5, 0.672, 0.9, 1.0]))
        before = value.copy()
        magnitudes = np.abs(value.astype(np.float32))
        cut = np.percentile(magnitudes, sparsity * 100)
        assert float32_threshold(value, sparsity) == magnitudes[magnitudes <= cut].max()
        np.testing.assert_array_equal(value, before)  # the caller's weight is left as it was
    assert float32_threshold(np.ones(5, np.float32), 0.0) == 0.0


@pytest.mark.parametrize("direct, sample, spread", [(1 << 16, 1 << 14, 4.0), (64, 256, 4.0), (64, 256, 0.05)])
def test_kth_smallest_equals_a_full_sort(monkeypatch, direct, sample, spread):
    """A small `direct` makes the sampled bracket decide most cases; a narrow `spread`, its misses (the fallback)."""
    monkeypatch.setattr(compress, "_SELECT_DIRECT", direct)
    monkeypatch.setattr(compress, "_SELECT_SAMPLE", sample)
    monkeypatch.setattr(compress, "_SELECT_SPREAD", spread)
    rng = np.random.default_rng(4)
    for trial in range(300):
        size = int(rng.integers(1, 5000))
        shape = trial % 5
        if shape == 0:
            values = rng.standard_normal(size)
        elif shape == 1:
            values = np.round(rng.standard_normal(size), 1)  # many ties at the bracket's edges
        elif shape == 2:
            values = np.full(size, 0.25)
        elif shape == 3:  # bimodal, far apart: the k-th value can sit in the gap's edge
            values = np.where(rng.random(size) < 0.5, rng.standard_normal(size), 1e6 + rng.standard_normal(size))
        else:
            values = np.abs(rng.standard_cauchy(size))  # heavy tail
        values = values.astype(np.float32)
        k = int(rng.integers(0, size))
        assert kth_smallest(values.copy(), k) == np.sort(values)[k], (trial, size, k)
        pair = [k, min(k + 1, size - 1)]  # the percentile's two neighbours (float32_threshold)
        assert compress.order_statistics(values.copy(), pair) == [np.sort(values)[i] for i in pair], (trial, size, k)


def _sparse_cases():
    rng = np.random.default_rng(5)
    for trial in range(60):
        shape = tuple(int(d) for d in rng.integers(1, 40, size=int(rng.integers(1, 4))))
        value = (rng.standard_normal(shape) * 0.02).astype(np.float16 if trial % 3 == 0 else np.float32)
        value[rng.random(shape) < 0.2] = 0  # zeros before pruning are not stored either
        if trial % 7 == 0:
            value.reshape(-1)[0] = np.nan  # kept, as coremltools keeps it
        threshold = float(np.quantile(np.abs(value[~np.isnan(value)]), rng.random())) if trial % 5 else 0.0
        yield value, threshold, float(rng.choice([0.0, 0.5, 0.99]))


def test_sparse_packing_stores_what_coremltools_stores():
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    compress.patch_sparse_param_packing()
    original = prune_weights.__dict__["_coremltools_compress_by_threshold"].__func__
    assert prune_weights.compress_by_threshold is compress._compress_by_threshold
    outcomes = set()
    for value, threshold, minimum in _sparse_cases():
        expected, got = original(value, threshold, minimum), compress._compress_by_threshold(value, threshold, minimum)
        outcomes.add(expected is None)
        if expected is None:
            assert got is None
            continue
        np.testing.assert_array_equal(got.nonzero_data, expected.nonzero_data)
        assert got.nonzero_data.dtype == expected.nonzero_data.dtype
        np.testing.assert_array_equal(got.mask, expected.mask)
        assert tuple(got.shape) == tuple(expected.shape)
    assert outcomes == {True, False}  # pruned, and skipped below the minimum sparsity


def test_sparse_param_of_magnitude_pruning_equals_coremltools():
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    compress.patch_sparse_param_packing()
    original = prune_weights.__dict__["_coremltools_produce_sparse_param"].__func__
    for value, _, _ in _sparse_cases():
        expected, got = original(value), compress.sparse_param(value)
        np.testing.assert_array_equal(got.nonzero_data, expected.nonzero_data)
        np.testing.assert_array_equal(got.mask, expected.mask)
        assert tuple(got.shape) == tuple(expected.shape)


def _ops_reading(constant):
    """The ops of a small MIL program that read `constant` (an fp32 array): coremltools' own Operation objects."""
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=constant.shape)])
    def program(x):
        return mb.mul(x=mb.add(x=x, y=constant), y=np.float32(2.0))

    return list(program.functions["main"].operations)


def test_patched_fp16_overflow_check_answers_like_the_original(monkeypatch):
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    compress.patch_fp16_overflow_check()
    original = FP16ComputePrecision._coremltools_fp16_overflow
    assert FP16ComputePrecision.fp16_overflow is compress._fp16_overflow
    monkeypatch.setattr(compress, "_OVERFLOW_BLOCK", 7)  # many blocks, the offending element in any of them
    rng = np.random.default_rng(3)
    answers = set()
    for trial in range(200):
        values = rng.standard_normal(int(rng.integers(1, 60))).astype(np.float32) * 100
        for _ in range(int(rng.integers(0, 3))):
            values[rng.integers(values.size)] = rng.choice([7e4, -7e4, 65504, np.inf, -np.inf, np.nan, 3e38])
        for op in _ops_reading(values):
            expected = original(op)
            assert compress._fp16_overflow(op) == expected, (values, op.op_type)
            answers.add(expected)
    assert answers == {True, False}


def test_threshold_pruning_stores_what_coremltools_magnitude_pruner_stores_for_fp32(selection):
    """For fp32 weights bug 1 does not arise, so the threshold must prune exactly the elements coremltools' own
    `compress_by_magnitude` prunes: numpy's percentile computed in the weight's dtype (float32 index and
    interpolation), e.g. 1,361 elements at 0.7 keep 408, not 409 (a float64 index floor(0.7 * 1360) = 951 is one
    short of float32's 952)."""
    from coremltools.optimize.coreml._quantization_passes import prune_weights

    rng = np.random.default_rng(6)
    cases = [(1361, 0.7), (1401, 0.57), (1501, 0.29), (101, 0.29)]
    cases += [(int(rng.integers(2, 3000)), float(rng.choice([0.07, 0.29, 0.3, 0.57, 0.672, 0.7, 0.9, 1.0])))
              for _ in range(150)]
    for trial, (size, sparsity) in enumerate(cases):
        value = (rng.standard_normal(size) * 0.02).astype(np.float32)
        if trial % 4 == 1:
            value = np.round(value, 3)  # ties
        if trial % 4 == 2:  # neighbouring float32 magnitudes: the interpolation rounds onto the next one
            value = (np.float32(0.5) + np.arange(size, dtype=np.float32) * np.float32(2 ** -24)) * rng.choice([-1, 1], size)
            value = rng.permutation(value.astype(np.float32))
        expected = prune_weights.compress_by_magnitude(value, sparsity)
        threshold = float32_threshold(value, sparsity)
        got = compress._compress_by_threshold(value, threshold, 0.0)
        assert got.nonzero_data.size == expected.nonzero_data.size, (trial, size, sparsity)
        np.testing.assert_array_equal(got.mask, expected.mask)
