"""Statistical verdicts with known distributions (bench/report/verdicts.py): false-alarm rate, power, UNKNOWN advice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.report import verdicts as v
from report_fixtures import FIXTURE


def lognormal(rng, n, median_ms=200.0, sigma=0.03):
    return median_ms * 1e6 * np.exp(rng.normal(0.0, sigma, n))


def test_aa_gives_same_at_the_stated_false_alarm_rate():
    """400 A/A comparisons: DIFFERENT no more often than alpha (+ binomial slack), SAME nearly always."""
    outcomes = []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        outcomes.append(v.compare_latency(lognormal(rng, 100), lognormal(rng, 100)).outcome)
    false_alarms = outcomes.count(v.DIFFERENT) / len(outcomes)
    assert false_alarms <= v.ALPHA + 3 * np.sqrt(v.ALPHA * (1 - v.ALPHA) / len(outcomes))
    assert outcomes.count(v.SAME) / len(outcomes) >= 0.9  # the rest UNKNOWN (CI not yet inside ±3 %), never DIFFERENT


def test_combined_test_alone_keeps_alpha_without_the_effect_threshold():
    """With the minimum effect set to 0 the decision is the Bonferroni-combined MWU/KS test: its rate must be ≤ alpha."""
    rejections = 0
    trials = 400
    for seed in range(trials):
        rng = np.random.default_rng(10_000 + seed)
        verdict = v.compare_latency(lognormal(rng, 25, sigma=0.1), lognormal(rng, 25, sigma=0.1), min_effect=0.0)
        rejections += verdict.outcome == v.DIFFERENT
    assert rejections / trials <= v.ALPHA + 3 * np.sqrt(v.ALPHA * (1 - v.ALPHA) / trials)


def test_five_percent_shift_with_enough_samples_is_different():
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        verdict = v.compare_latency(lognormal(rng, 200, sigma=0.05), lognormal(rng, 200, 210.0, sigma=0.05))
        hits += verdict.outcome == v.DIFFERENT and verdict.regression
    assert hits >= 95


def test_faster_is_different_but_not_a_regression():
    rng = np.random.default_rng(1)
    verdict = v.compare_latency(lognormal(rng, 200), lognormal(rng, 200, 180.0))
    assert verdict.outcome == v.DIFFERENT and not verdict.regression
    assert verdict.relative == pytest.approx(-0.1, abs=0.01)


def test_small_real_shift_is_same():
    """1 % slower, detected with thousands of samples, is below the 3 % minimum effect: SAME."""
    rng = np.random.default_rng(2)
    verdict = v.compare_latency(lognormal(rng, 5000, sigma=0.02), lognormal(rng, 5000, 202.0, sigma=0.02))
    assert verdict.p_value < v.ALPHA
    assert verdict.outcome == v.SAME


def test_unknown_says_how_many_more_samples_and_that_many_decide():
    """A 5 % shift seen in 8 noisy samples is undecided; collecting the advised number decides it in most seeds."""
    decided, unknown = 0, 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        verdict = v.compare_latency(lognormal(rng, 8, sigma=0.08), lognormal(rng, 8, 210.0, sigma=0.08))
        if verdict.outcome != v.UNKNOWN:
            continue
        unknown += 1
        assert verdict.more_samples and verdict.more_samples > 0
        assert str(verdict.more_samples) in verdict.detail
        n = 8 + verdict.more_samples
        again = v.compare_latency(lognormal(rng, n, sigma=0.08), lognormal(rng, n, 210.0, sigma=0.08))
        decided += again.outcome != v.UNKNOWN
    assert unknown >= 10
    assert decided / unknown >= 0.6


def test_too_few_samples_is_unknown():
    verdict = v.compare_latency([1e8], [1.1e8])
    assert verdict.outcome == v.UNKNOWN and verdict.more_samples > 0


def test_median_ci_covers_the_true_median():
    covered = 0
    for seed in range(300):
        sample = np.sort(np.random.default_rng(seed).exponential(1.0, 51))
        lo, hi = v.median_ci(sample)
        covered += lo <= np.log(2) <= hi
    assert 0.92 <= covered / 300 <= 0.995


def per_image_samples(rng, image_ms, factor=1.0, repeats=5, sigma=0.03):
    """Latency per sample when each image has its own decode length (image_ms): what pairing by image removes."""
    ids = np.repeat(np.arange(len(image_ms)), repeats)
    return image_ms[ids] * factor * 1e6 * np.exp(rng.normal(0.0, sigma, ids.size)), ids.astype(str)


def test_paired_by_image_decides_a_shift_the_pooled_test_cannot():
    """Decode length spreads images over 150–450 ms: pooled, a 5 % shift is lost in it; paired, it is DIFFERENT."""
    rng = np.random.default_rng(3)
    image_ms = rng.uniform(150, 450, 20)
    (a, ids_a), (b, ids_b) = per_image_samples(rng, image_ms), per_image_samples(rng, image_ms, 1.05)
    assert v.compare_latency(a, b).outcome == v.UNKNOWN
    paired = v.compare_latency_paired(a, b, ids_a, ids_b)
    assert paired.outcome == v.DIFFERENT and paired.regression
    assert paired.ci95[0] < 0.05 < paired.ci95[1] and paired.extra["n_images"] == 20


def test_paired_aa_keeps_the_false_alarm_rate():
    different = 0
    for seed in range(200):
        rng = np.random.default_rng(20_000 + seed)
        image_ms = rng.uniform(150, 450, 12)
        (a, ids_a), (b, ids_b) = per_image_samples(rng, image_ms), per_image_samples(rng, image_ms)
        different += v.compare_latency_paired(a, b, ids_a, ids_b, min_effect=0.0).outcome == v.DIFFERENT
    assert different / 200 <= v.ALPHA + 3 * np.sqrt(v.ALPHA * (1 - v.ALPHA) / 200)


def test_paired_falls_back_to_pooled_without_enough_shared_images():
    rng = np.random.default_rng(4)
    image_ms = rng.uniform(150, 450, 6)
    (a, ids_a), (b, ids_b) = per_image_samples(rng, image_ms), per_image_samples(rng, image_ms)
    for verdict in (v.compare_latency_paired(a, b, ids_a, ids_b), v.compare_latency_paired(a, b, None, ids_b)):
        assert "paired_by" not in verdict.extra and verdict.to_dict() == v.compare_latency(a, b).to_dict()


def _eval(name: str) -> dict:
    return json.loads(next((FIXTURE / "results" / "evals").glob(f"{name}-*/*.json")).read_text())


def test_quality_identical_records_are_same():
    record = _eval("fp32")
    assert v.compare_quality(record, record, "bleu").outcome == v.SAME


def test_quality_paired_bootstrap_finds_a_real_drop():
    """prune-0.488 captions lose most words: BLEU and CIDEr drops are DIFFERENT regressions (real sacrebleu/CIDEr-D)."""
    dense, pruned = _eval("fp32"), _eval("prune-0.488")
    for metric in ("bleu", "cider"):
        verdict = v.compare_quality(dense, pruned, metric)
        assert verdict.outcome == v.DIFFERENT and verdict.regression, verdict
        assert verdict.ci95[1] < 0


def test_paired_bootstrap_delta_matches_the_corpus_scores():
    dense, pruned = _eval("fp32"), _eval("prune-0.36")
    result = v.paired_bootstrap(pruned, dense, "bleu", n=200)
    expected = pruned["metrics"]["bleu"]["score"] - dense["metrics"]["bleu"]["score"]
    assert result["delta"] == pytest.approx(expected, abs=0.01)
    assert result["ci95"][0] <= result["delta"] <= result["ci95"][1]


def test_exact_size_and_sparsity():
    assert v.compare_exact("size", 100.0, 100.0).outcome == v.SAME
    grew = v.compare_exact("size", 100.0, 101.0, unit="bytes")
    assert grew.outcome == v.DIFFERENT and grew.regression
    changed = v.compare_exact("sparsity", 0.2, 0.19, worse_when="change")
    assert changed.outcome == v.DIFFERENT and changed.regression
