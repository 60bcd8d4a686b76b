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


# --- the rule: equivalence shown, not absence of evidence ----------------------------------------------------------
def test_same_needs_the_whole_ci_inside_the_margin():
    """A significant 2 % shift whose CI reaches past 3 % is UNKNOWN, not SAME (the old rule called it SAME)."""
    rng = np.random.default_rng(7)
    verdict = v.compare_latency(lognormal(rng, 150, sigma=0.08), lognormal(rng, 150, 204.0, sigma=0.08))
    assert verdict.ci95[1] > v.MIN_EFFECT and verdict.outcome == v.UNKNOWN and verdict.more_samples


def test_different_says_whether_the_whole_ci_is_past_the_margin():
    rng = np.random.default_rng(8)
    clear = v.compare_latency(lognormal(rng, 300), lognormal(rng, 300, 220.0))
    assert clear.outcome == v.DIFFERENT and "whole CI past 3%" in clear.detail


def test_the_report_control_demotes_a_lone_significance_among_many():
    """Benjamini–Hochberg over 200 comparisons: p = 0.004 alone is not a discovery, p = 1e-9 is."""
    def verdict(p):
        return v.Verdict("latency median", "k", v.DIFFERENT if p < v.ALPHA else v.SAME, p < v.ALPHA, 1.0, 1.1, 0.1,
                         0.1, (0.05, 0.15), p_value=p, extra={})
    verdicts = [verdict(p) for p in (0.004, 1e-9)] + [verdict(0.2 + 0.004 * i) for i in range(198)]
    note = v.control_report(verdicts)
    assert verdicts[0].outcome == v.UNKNOWN and not verdicts[0].regression and "Benjamini" in verdicts[0].detail
    assert verdicts[1].outcome == v.DIFFERENT and verdicts[1].regression
    assert "200 comparisons" in note and "1 significant alone" in note


def test_nights_with_one_baseline_run_say_what_they_cannot_cover():
    rng = np.random.default_rng(9)
    verdict = v.compare_latency_nights([lognormal(rng, 50)], lognormal(rng, 50))
    assert "between-run variation cannot be estimated" in verdict.detail and verdict.extra["nights"] == 1


# --- tokens per caption --------------------------------------------------------------------------------------------
def _series(rng, images: int, tokens: int, step_ms: float = 10.0, encoder_ms: float = 40.0, repeats: int = 4):
    ids = np.repeat(np.arange(images), repeats)
    steps = np.full(ids.size, tokens, dtype=float)
    encoder = encoder_ms * 1e6 * np.exp(rng.normal(0, 0.03, ids.size))
    decoder = steps * step_ms * 1e6 * np.exp(rng.normal(0, 0.03, ids.size))
    return {"latency": encoder + decoder, "encoder": encoder, "decoder": decoder, "steps": steps,
            "image": ids.astype(str), "throttled": np.zeros(ids.size, bool)}


def test_shorter_captions_are_never_faster_without_the_token_flag():
    """Captions 30 % shorter (10 → 7 tokens) at the same cost per step: the whole caption is faster, but only with the
    token flag; the caption of fixed length is not faster, and nothing is called a regression."""
    from bench.report.verdicts import latency_verdicts

    for seed in range(20):
        rng = np.random.default_rng(seed)
        verdicts = latency_verdicts([_series(rng, 25, 10)], _series(rng, 25, 7), key="short")
        by_metric = {verdict.metric: verdict for verdict in verdicts}
        whole, tokens = by_metric["latency median"], by_metric["tokens per caption"]
        assert tokens.outcome == v.DIFFERENT and tokens.relative == pytest.approx(-0.3)
        if whole.outcome == v.DIFFERENT and whole.relative < 0:
            assert whole.extra.get("tokens_differ") and "TOKEN COUNTS DIFFER" in whole.detail
        fixed = by_metric["latency at fixed length"]
        assert not (fixed.outcome == v.DIFFERENT and fixed.relative < 0)
        assert not any(verdict.regression for verdict in verdicts)


def test_slower_steps_behind_shorter_captions_are_the_regression():
    """Captions 30 % shorter hide decoder steps 20 % slower in the whole-caption time: the fixed-length latency
    carries the regression, and the decoder-per-step verdict says where."""
    from bench.report.verdicts import latency_verdicts

    rng = np.random.default_rng(1)
    verdicts = latency_verdicts([_series(rng, 25, 10)], _series(rng, 25, 7, step_ms=12.0), key="k")
    by_metric = {verdict.metric: verdict for verdict in verdicts}
    assert by_metric["latency at fixed length"].regression
    assert by_metric["latency: decoder per step"].outcome == v.DIFFERENT
    assert by_metric["latency: encoder"].outcome != v.DIFFERENT
    assert not by_metric["latency median"].regression
