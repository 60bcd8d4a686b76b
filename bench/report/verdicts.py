"""Every statistic the report uses, in one place (asv's statistics.py): latency summaries, regression verdicts.

One decision rule for every latency comparison (pooled samples, paired by image, a night against past nights):
  SAME       the 95 % CI of the shift lies inside ±minimum effect: equivalence *shown* (two one-sided tests at 2.5 %,
             Schuirmann 1987). A point estimate under the margin is not enough: a CI reaching past it is UNKNOWN.
  DIFFERENT  the shift is significant at `alpha` AND its estimate is at least the minimum effect; the detail says
             whether the whole CI lies past the minimum effect or only the estimate does.
  UNKNOWN    anything else, with `more_samples` (or more nights) that would decide, from the estimated standard error.

Latency, pooled samples (`compare_latency`): the shift is the ratio of the two medians. Its CI is the Price–Bonett
interval (Price & Bonett 2002, "Distribution-free confidence intervals for difference and ratio of medians",
J. Statist. Comput. Simul. 72:119–124): each side's log-median variance is read off the distance between the order
statistics x_(c), x_(n−c+1), c = round((n+1)/2 − √n), scaled by the exact binomial coverage of that pair (the
McKean–Schrader estimate); the log ratio ± z·√(v₁+v₂) is the interval. Why this and not the alternatives:
  - it targets the median ratio itself (Hodges–Lehmann estimates a shift of the whole distribution, which is not the
    median ratio when one latency mode moves and the other does not — the common case on phones);
  - it needs no resampling: O(n) after a sort, so a 1M-sample report stays ~1 s (a percentile bootstrap of the median
    costs 2,000 medians per comparison and, at n = 20, undercovers just as much on bimodal data);
  - its variance estimate comes from the sample's own order statistics, so skew, two modes and heavy tails widen it
    where they should (the old normal approximation on log-latency used the IQR and covered ~61 % on bimodal data).
  Timer quantisation: with tied values the median is only known to within one tick, so tick²/4 (the worst case of a
  half-tick error, squared) is added to each side's variance when the sample has ties; without this the interval
  undercovers at large n on coarse timers. Coverage per distribution and n is measured, not assumed:
  `python -m bench.report.calibrate` (benchmarks/results/calibration.txt) prints it.
The significance test is an intersection–union test (Berger 1982): the median-ratio z test AND the Mann–Whitney U
test (scipy.stats) must both reject; p = the larger p-value where the median test rejects, the median test's own
elsewhere (Mann–Whitney cannot change a decision there and is skipped: a report has hundreds of comparisons). Under
A/A both samples come from one distribution, where Mann–Whitney is exact, so DIFFERENT never exceeds `alpha` whatever
the variance estimate does at small n.
Latency paired by image (`compare_latency_paired`): per image, the log ratio of its two per-image medians; the shift is
their median, its CI the exact order-statistic (sign-test) interval, its p-value the exact sign test (scipy binomtest)
— distribution-free with no asymptotics, and decode length per image drops out.
A night against history (`compare_latency_nights`): the night is the unit. Tonight's log median is compared with a
t prediction interval of the past runs' log medians (their spread holds run-to-run variation: reboots, OS state,
thermal history, plus their own within-run noise), widened by however much tonight's own CI is wider than the past
runs' typical CI. With one baseline run that spread cannot be estimated: the pooled sample test is used and the
verdict says that it covers within-run noise only. History uses ALPHA_NIGHTS (a t quantile with k−1 degrees of freedom
at α = 0.01 would need a ~15 % regression to fire with a week of history).
Per report (`control_report`): Benjamini–Hochberg over every comparison with a p-value (latency and quality); a
comparison significant alone but not after the control is UNKNOWN. On a clean night (every comparison null) the FDR
is the chance of any alarm. Size and sparsity are exact (deterministic): they cannot false-alarm and are not counted.
Quality (BLEU, CIDEr): paired bootstrap over images (sacrebleu sufficient statistics for BLEU, per-image CIDEr-D).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from bench.errors import BenchError

DIFFERENT, SAME, UNKNOWN = "DIFFERENT", "SAME", "UNKNOWN"
MIN_EFFECT = 0.03  # a latency median must move by ≥ 3 % to count (Perfherder uses 2 %, ExecuTorch flags 5 %)
ALPHA = 0.01  # false-alarm rate of one latency comparison
ALPHA_NIGHTS = 0.05  # of one comparison against past nights (two-sided: a regression alarm at most 2.5 %)
REPORT_FDR = 0.05  # Benjamini–Hochberg level over all comparisons of one report
CONFIDENCE = 0.95  # of every CI shown
POWER = 0.8  # of the sample counts UNKNOWN advises
MEDIAN_EFFICIENCY = 1.2533  # se(median) ≈ 1.2533 σ / √n for near-normal data
BLEU_MARGIN = 1.0  # BLEU points: a CI inside ±margin counts as SAME
CIDER_MARGIN = 0.05
CONTROL_METHOD = "Benjamini–Hochberg"


@dataclass
class Verdict:
    """One metric compared between a baseline (or B) and the current run (or A)."""

    metric: str
    key: str  # what was compared: "fp32 · iPhone14,2 · all"
    outcome: str  # DIFFERENT | SAME | UNKNOWN
    regression: bool
    baseline: float | None
    current: float | None
    delta: float | None  # current − baseline, in the metric's unit
    relative: float | None  # delta / baseline
    ci95: tuple[float, float] | None = None  # of `relative` for latency, of `delta` for quality
    p_value: float | None = None
    more_samples: int | None = None
    unit: str = ""
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------- latency summary
def _z(p: float) -> float:
    """Standard-normal quantile (stdlib: a plain report needs no scipy import)."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


def median_ci(sorted_values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free CI of the median from order statistics: the exact binomial interval the run's stopping rule
    uses (bench.run.stats), so a report never shows another CI than the one sampling stopped on. NaN when too few."""
    from bench.run.stats import median_ci as exact_median_ci

    interval = exact_median_ci(sorted_values, confidence)
    if interval.low is None:
        return (math.nan, math.nan)
    return (interval.low, interval.high)


def summarize_latency(values_ns) -> dict[str, float]:
    """median, p90, p99, IQR and the median's 95 % CI, in milliseconds, of measured (non-warm-up) samples."""
    import numpy as np

    values = np.sort(np.asarray(values_ns, dtype=np.float64)) / 1e6
    if values.size == 0:
        nan = math.nan
        return {"n": 0, "median_ms": nan, "p90_ms": nan, "p99_ms": nan, "iqr_ms": nan, "ci_lo_ms": nan, "ci_hi_ms": nan}
    q25, median, q75, p90, p99 = np.percentile(values, [25, 50, 75, 90, 99])
    lo, hi = median_ci(values)
    return {"n": int(values.size), "median_ms": float(median), "p90_ms": float(p90), "p99_ms": float(p99),
            "iqr_ms": float(q75 - q25), "ci_lo_ms": lo, "ci_hi_ms": hi}


# ----------------------------------------------------------------------------------------------- the median ratio
@lru_cache(maxsize=4096)
def _t_quantile(p: float, df: int) -> float:
    from scipy.stats import t as student_t

    return float(student_t.ppf(p, df))


@lru_cache(maxsize=4096)
def _price_bonett_rank(n: int) -> tuple[int, float]:
    """c and z of the Price–Bonett variance estimate: [x_(c), x_(n−c+1)] covers the median with exact binomial
    probability 1 − α*, and z is the normal quantile of that coverage (the interval spans ±z standard errors)."""
    from scipy.stats import binom

    c = max(1, int(round((n + 1) / 2 - math.sqrt(n))))
    tail = 2 * float(binom.cdf(c - 1, n, 0.5))
    return c, _z(1 - tail / 2) if tail < 1 else 0.0


def sorted_median(sorted_values):
    """Median along the last axis of already sorted values (no second sort or partition)."""
    n = sorted_values.shape[-1]
    middle = sorted_values[..., n // 2]
    return middle if n % 2 else (sorted_values[..., n // 2 - 1] + middle) / 2


def log_median_var(sorted_values):
    """Variance of the log of the sample median, per row of an (…, n) array of sorted positive values (n ≥ 2)."""
    import numpy as np

    values = np.asarray(sorted_values, dtype=np.float64)
    n = values.shape[-1]
    c, z = _price_bonett_rank(n)
    logs_lo, logs_hi = np.log(values[..., c - 1]), np.log(values[..., n - c])
    variance = ((logs_hi - logs_lo) / (2 * z)) ** 2 if z > 0 else np.full(values.shape[:-1], np.inf)
    steps = np.diff(values, axis=-1)
    tied = np.any(steps == 0, axis=-1)
    tick = np.min(np.where(steps > 0, steps, np.inf), axis=-1)
    tick = np.where(np.isfinite(tick), tick, 0.0)
    return variance + np.where(tied, (tick / sorted_median(values)) ** 2 / 4, 0.0)


def median_ratio(baseline_sorted, current_sorted, *, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Shift of `current` vs `baseline` as log median ratio, its standard error, the CI of the ratio − 1 and the
    two-sided z-test p-value — vectorised over leading axes (rows = independent comparisons, for the calibration)."""
    import numpy as np
    from scipy.stats import norm

    log_ratio = np.log(sorted_median(current_sorted)) - np.log(sorted_median(baseline_sorted))
    se = np.sqrt(log_median_var(baseline_sorted) + log_median_var(current_sorted))
    z = _z(0.5 + confidence / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2 * norm.sf(np.abs(log_ratio) / se), np.where(log_ratio == 0, 1.0, 0.0))
    return {"log_ratio": log_ratio, "se": se, "ci_lo": np.expm1(log_ratio - z * se),
            "ci_hi": np.expm1(log_ratio + z * se), "p_median": p}


def classify(relative, ci_lo, ci_hi, p_value, *, alpha: float, min_effect: float):
    """The decision rule, vectorised: array of DIFFERENT / SAME / UNKNOWN (see the module docstring)."""
    import numpy as np

    relative, ci_lo, ci_hi, p_value = (np.asarray(x, dtype=np.float64) for x in (relative, ci_lo, ci_hi, p_value))
    same = (ci_lo > -min_effect) & (ci_hi < min_effect)
    different = (p_value < alpha) & (np.abs(relative) >= min_effect) & ~same
    return np.where(different, DIFFERENT, np.where(same, SAME, UNKNOWN))


def _samples_to_decide(log_ratio: float, se: float, n: float, *, alpha: float, min_effect: float) -> int:
    """How many more samples (of the unit `n` counts) would decide: shrink the standard error (∝ 1/√n) until the
    observed shift is significant (if it is past the minimum effect) or its CI fits inside ±minimum effect, each
    with 80 % power (a standard error just small enough would decide only half the time)."""
    effect = abs(log_ratio)
    margin = math.log1p(min_effect)
    if not math.isfinite(se) or se <= 0:
        return max(1, int(n))
    if effect >= margin:
        target = effect / (_z(1 - alpha / 2) + _z(POWER))
    else:
        room = max(margin - effect, margin / 4)
        target = room / (_z(0.5 + CONFIDENCE / 2) + _z(POWER))
    needed = n * (se / target) ** 2
    return max(1, int(math.ceil(needed - n)))


def _latency_verdict(base: dict[str, Any], outcome: str, more: int, more_of: str) -> Verdict:
    """A Verdict with the words that go with its outcome (one wording for pooled, paired and nightly tests)."""
    relative, (lo, hi), p_value = base["relative"], base["ci95"], base["p_value"]
    min_effect = base["extra"]["min_effect"]
    if outcome == DIFFERENT:
        word = "slower" if relative > 0 else "faster"
        wholly = (lo >= min_effect) if relative > 0 else (hi <= -min_effect)
        where = (f"whole CI past {min_effect:.0%}" if wholly
                 else f"estimate past {min_effect:.0%}, CI reaches {lo:+.1%} … {hi:+.1%}")
        return Verdict(outcome=DIFFERENT, regression=relative > 0,
                       detail=f"{abs(relative):.1%} {word} (p={p_value:.2g}; {where})", **base)
    if outcome == SAME:
        return Verdict(outcome=SAME, regression=False,
                       detail=f"shift {relative:+.1%}, CI {lo:+.1%} … {hi:+.1%} inside ±{min_effect:.0%}", **base)
    return Verdict(outcome=UNKNOWN, regression=False, more_samples=more,
                   detail=f"shift {relative:+.1%} undecided (CI {lo:+.1%} … {hi:+.1%}); ~{more} more {more_of} "
                          "would decide", **base)


def _positive(values):
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    return np.sort(values[values > 0])


def latency_decisions(baseline_sorted, current_sorted, *, alpha: float = ALPHA, min_effect: float = MIN_EFFECT):
    """The pooled latency comparison on sorted positive samples, vectorised over leading axes (each row one
    comparison): median_ratio's fields plus the Mann–Whitney p-value, the combined p-value and the outcome.
    compare_latency and the calibration (bench.report.calibrate) both decide through here."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    shift = median_ratio(baseline_sorted, current_sorted)
    needed = shift["p_median"] < alpha  # Mann–Whitney can only matter where the median test rejects
    if np.ndim(needed) == 0 and not needed:
        p_mw = np.asarray(np.nan)  # one comparison that cannot be DIFFERENT: skip the rank test (a report has hundreds)
    else:
        p_mw = np.asarray(mannwhitneyu(baseline_sorted, current_sorted, alternative="two-sided", axis=-1).pvalue)
    # Intersection–union: both tests must reject; p is the larger p-value where the median test rejects, its own
    # p-value elsewhere (the same numbers whether computed one by one or in a batch).
    p_value = np.where(needed, np.maximum(shift["p_median"], p_mw), shift["p_median"])
    relative = np.expm1(shift["log_ratio"])
    outcome = classify(relative, shift["ci_lo"], shift["ci_hi"], p_value, alpha=alpha, min_effect=min_effect)
    return {**shift, "relative": relative, "p_mannwhitney": p_mw, "p_value": p_value, "outcome": outcome}


def compare_latency(baseline_ns, current_ns, *, key: str = "", metric: str = "latency median",
                    min_effect: float = MIN_EFFECT, alpha: float = ALPHA) -> Verdict:
    """DIFFERENT / SAME / UNKNOWN for the median latency of `current` vs `baseline` (slower = regression)."""
    a, b = _positive(baseline_ns), _positive(current_ns)
    if a.size < 2 or b.size < 2:
        need = max(1, 10 - min(a.size, b.size))
        return Verdict(metric, key, UNKNOWN, False, _ms_median(a), _ms_median(b), None, None, more_samples=need,
                       unit="ms", detail=f"too few samples ({a.size} vs {b.size}); ~{need} more samples per side "
                                         "would decide")
    found = {k: (float(v) if k != "outcome" else str(v)) for k, v in
             latency_decisions(a, b, alpha=alpha, min_effect=min_effect).items()}
    med_a, med_b = _median(a), _median(b)
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=found["relative"], ci95=(found["ci_lo"], found["ci_hi"]), p_value=found["p_value"], unit="ms",
                extra={"p_mannwhitney": None if math.isnan(found["p_mannwhitney"]) else found["p_mannwhitney"],
                       "p_median": found["p_median"], "se_log": found["se"],
                       "n_baseline": int(a.size), "n_current": int(b.size), "min_effect": min_effect, "alpha": alpha,
                       "ci_method": "Price–Bonett median ratio"})
    more = _samples_to_decide(found["log_ratio"], found["se"], min(a.size, b.size), alpha=alpha,
                              min_effect=min_effect)
    return _latency_verdict(base, found["outcome"], more, "samples per side")


def _median(values) -> float:
    import numpy as np

    return float(np.median(values))


def _ms_median(values) -> float | None:
    return _median(values) / 1e6 if len(values) else None


# ----------------------------------------------------------------------------------------------- paired latency
PAIRED_MIN_IMAGES = 8  # below 8 pairs the sign test cannot reach alpha = 0.01 at all


def _per_image_medians(values, image_ids) -> dict[str, float]:
    """Median of the positive values per image id (numpy: a report groups millions of samples)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    ids = np.asarray(image_ids, dtype=object).astype(str)
    keep = values > 0
    values, ids = values[keep], ids[keep]
    if not values.size:
        return {}
    names, group = np.unique(ids, return_inverse=True)
    order = np.lexsort((values, group))
    values, group = values[order], group[order]
    starts = np.searchsorted(group, np.arange(names.size))
    ends = np.append(starts[1:], group.size)
    medians = (values[(starts + ends - 1) // 2] + values[(starts + ends) // 2]) / 2
    return dict(zip(names.tolist(), medians.tolist()))


def compare_latency_paired(baseline_ns, current_ns, baseline_images, current_images, *, key: str = "",
                           metric: str = "latency median", min_effect: float = MIN_EFFECT,
                           alpha: float = ALPHA) -> Verdict:
    """Median latency of `current` vs `baseline` with the samples paired by image (slower = regression).

    Decode length differs per image, so pooled samples mix image-to-image spread into the comparison. Here each image
    contributes the log ratio of its two per-image medians; the shift is their median (as a ratio), its CI the exact
    order-statistic interval and its p-value the exact sign test — distribution-free. Same outcome rule as
    compare_latency; without image ids on both sides or with fewer than PAIRED_MIN_IMAGES shared images it falls back
    to the pooled compare_latency.
    """
    import numpy as np
    from scipy.stats import binomtest

    from bench.run.stats import median_ci as exact_median_ci

    if baseline_images is None or current_images is None:
        return compare_latency(baseline_ns, current_ns, key=key, metric=metric, min_effect=min_effect, alpha=alpha)
    per_a = _per_image_medians(baseline_ns, baseline_images)
    per_b = _per_image_medians(current_ns, current_images)
    images = sorted(set(per_a) & set(per_b))
    if len(images) < PAIRED_MIN_IMAGES:
        return compare_latency(baseline_ns, current_ns, key=key, metric=metric, min_effect=min_effect, alpha=alpha)
    log_ratios = np.sort(np.log(np.array([per_b[i] for i in images]) / np.array([per_a[i] for i in images])))
    interval = exact_median_ci(log_ratios, CONFIDENCE)
    relative = math.expm1(interval.median)
    ci = (math.expm1(interval.low), math.expm1(interval.high))
    slower, faster = int(np.sum(log_ratios > 0)), int(np.sum(log_ratios < 0))
    p_value = float(binomtest(slower, slower + faster, 0.5).pvalue) if slower + faster else 1.0
    a, b = _positive(baseline_ns), _positive(current_ns)
    med_a, med_b = _median(a), _median(b)
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=relative, ci95=ci, p_value=p_value, unit="ms",
                extra={"paired_by": "image", "n_images": len(images), "p_sign": p_value,
                       "n_baseline": int(a.size), "n_current": int(b.size), "min_effect": min_effect, "alpha": alpha,
                       "ci_method": "exact order-statistic CI of per-image log ratios"})
    outcome = str(classify(relative, *ci, p_value, alpha=alpha, min_effect=min_effect))
    se = (interval.high - interval.low) / (2 * _z(0.5 + interval.coverage / 2))
    more = _samples_to_decide(interval.median, se, len(images), alpha=alpha, min_effect=min_effect)
    verdict = _latency_verdict(base, outcome, more, "images")
    verdict.detail += f" (paired by image, {len(images)} images)"
    return verdict


# ----------------------------------------------------------------------------------------------- tokens
def compare_tokens(baseline_steps, baseline_images, current_steps, current_images, *, key: str = "") -> Verdict:
    """Tokens per caption (decoder calls per image): greedy decoding of one variant is deterministic per image, so on
    the images both sides captioned any change is real — its own finding, not a latency regression. Without image
    ids on both sides the means are compared, and only identical means count as SAME."""
    import numpy as np

    metric = "tokens per caption"
    if baseline_images is not None and current_images is not None:
        per_a = _per_image_medians(baseline_steps, baseline_images)
        per_b = _per_image_medians(current_steps, current_images)
        images = sorted(set(per_a) & set(per_b))
    else:
        images = []
    if images:
        a = np.array([per_a[i] for i in images])
        b = np.array([per_b[i] for i in images])
        changed, where = int(np.sum(a != b)), f"{len(images)} shared images"
    else:
        a, b = np.asarray(baseline_steps, dtype=float), np.asarray(current_steps, dtype=float)
        changed, where = int(a.size and b.size and a.mean() != b.mean()), "all images (no shared image ids)"
    if not a.size or not b.size:
        return Verdict(metric, key, UNKNOWN, False, None, None, None, None, unit="tokens", detail="no token counts")
    mean_a, mean_b = float(a.mean()), float(b.mean())
    relative = mean_b / mean_a - 1 if mean_a else None
    base = dict(metric=metric, key=key, baseline=mean_a, current=mean_b, delta=mean_b - mean_a, relative=relative,
                unit="tokens", extra={"images": len(images), "changed": changed})
    if not changed:
        return Verdict(outcome=SAME, regression=False, detail=f"identical token counts on {where}", **base)
    if not images:
        return Verdict(outcome=UNKNOWN, regression=False,
                       detail=f"mean {mean_a:.1f} → {mean_b:.1f} tokens over different images: not comparable",
                       **base)
    word = "shorter" if mean_b < mean_a else "longer"
    return Verdict(outcome=DIFFERENT, regression=False,
                   detail=f"captions {abs(relative or 0):.0%} {word}: {mean_a:.1f} → {mean_b:.1f} tokens on average, "
                          f"{changed} of {where} changed", **base)


# ----------------------------------------------------------------------------------------------- by part
def _compare(past: list[dict], now: dict, field_of, *, key: str, metric: str) -> Verdict:
    """One latency-like metric: night by night against two or more past runs, by samples against one."""
    import numpy as np

    if len(past) >= 2:
        return compare_latency_nights([field_of(s) for s in past], field_of(now), key=key, metric=metric)
    return compare_latency(np.concatenate([field_of(s) for s in past]), field_of(now), key=key, metric=metric)


def latency_verdicts(past: list[dict], now: dict, *, key: str) -> list[Verdict]:
    """Whole-caption latency, then by part where both sides stored the parts: tokens per caption, encoder time,
    decoder time per step, and the latency of a caption of the baseline's token count (encoder + that many steps).
    Whole-caption time grows with the tokens generated: when token counts differ it is marked as not like for like."""
    import numpy as np

    whole = _compare(past, now, lambda s: s["latency"], key=key, metric="latency median")
    sides = [*past, now]
    if not all({"encoder", "decoder", "steps"} <= set(s) for s in sides):
        return [whole]
    tokens = compare_tokens(np.concatenate([s["steps"] for s in past]), _series_images(past), now["steps"],
                                  now["image"], key=key)
    tokens_differ = tokens.outcome == DIFFERENT
    if tokens_differ:
        whole.extra["tokens_differ"] = True
        whole.regression = False  # not like for like: the fixed-length latency below carries the regression
        whole.detail += (f" — TOKEN COUNTS DIFFER ({tokens.detail}): whole-caption times are not like for like; "
                         "see latency at fixed length")
    length = float(np.median(np.concatenate([s["steps"] for s in past])))

    def per_step(s):
        return s["decoder"] / np.maximum(s["steps"], 1)

    def fixed_length(s):
        return s["encoder"] + length * per_step(s)

    parts = [_compare(past, now, lambda s: s["encoder"], key=key, metric="latency: encoder"),
             _compare(past, now, per_step, key=key, metric="latency: decoder per step"),
             _compare(past, now, fixed_length, key=key, metric="latency at fixed length")]
    parts[-1].detail = f"caption of {length:g} tokens (the baseline's median): {parts[-1].detail}"
    # One regression per problem: encoder and per-step times say where; the fixed-length latency counts only when
    # the token counts differ (otherwise it is the whole-caption verdict again).
    for part in parts[:2] + ([] if tokens_differ else parts[2:]):
        part.regression = False
    if all("first_token" in s for s in sides):  # issue 14: what a user waits for before the caption starts
        first = _compare(past, now, lambda s: s["first_token"], key=key, metric="latency: time to first token")
        first.regression = False  # a part: the encoder and per-step verdicts say where a regression is
        parts.insert(1, first)
    return [whole, tokens, *parts]


def _series_images(series: list[dict]):
    import numpy as np

    if any(s["image"] is None for s in series):
        return None
    return np.concatenate([s["image"] for s in series])


# ----------------------------------------------------------------------------------------------- nights
ONE_NIGHT_NOTE = ("one baseline run: between-run variation cannot be estimated, so this verdict covers within-run "
                  "noise only (its false-alarm rate holds for this pair of runs, not per night)")


def compare_latency_nights(history_ns: list, current_ns, *, key: str = "", metric: str = "latency median",
                           min_effect: float = MIN_EFFECT, alpha: float = ALPHA_NIGHTS) -> Verdict:
    """Tonight's median latency against past runs' medians, the night being the unit (see the module docstring).

    `history_ns`: one array of samples per past run. Fewer than two usable runs: the pooled sample test against the
    one run, saying what it cannot cover.
    """
    import numpy as np
    from scipy.stats import t as student_t

    runs = [r for r in (_positive(x) for x in history_ns) if r.size >= 2]
    b = _positive(current_ns)
    if len(runs) < 2 or b.size < 2:
        verdict = compare_latency(runs[0] if runs else [], b, key=key, metric=metric, min_effect=min_effect)
        verdict.extra["nights"] = len(runs)
        verdict.detail += f"; {ONE_NIGHT_NOTE}"
        return verdict
    k = len(runs)
    past = np.log([sorted_median(r) for r in runs])
    center, spread = float(past.mean()), float(past.std(ddof=1))
    past_var = float(np.mean([log_median_var(r) for r in runs]))
    tonight_var = float(log_median_var(b))
    se = math.sqrt(spread ** 2 * (1 + 1 / k) + max(0.0, tonight_var - past_var))
    x = math.log(sorted_median(b)) - center
    df = k - 1
    p_value = float(2 * student_t.sf(abs(x) / se, df)) if se > 0 else (1.0 if x == 0 else 0.0)
    half = _t_quantile(0.5 + CONFIDENCE / 2, df) * se
    relative, ci = math.expm1(x), (math.expm1(x - half), math.expm1(x + half))
    med_a, med_b = math.exp(center), _median(b)
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=relative, ci95=ci, p_value=p_value, unit="ms",
                extra={"nights": k, "between_run_sd": spread, "se_log": se, "n_current": int(b.size),
                       "min_effect": min_effect, "alpha": alpha,
                       "ci_method": f"t prediction interval of {k} past run medians"})
    outcome = str(classify(relative, *ci, p_value, alpha=alpha, min_effect=min_effect))
    verdict = _latency_verdict(base, outcome, 0, "nights")
    verdict.more_samples = None
    if outcome == UNKNOWN:
        more = _nights_to_decide(x, spread, k, alpha=alpha, min_effect=min_effect)
        verdict.detail = (f"shift {relative:+.1%} undecided (CI {ci[0]:+.1%} … {ci[1]:+.1%}); "
                          + (f"~{more} more nights would decide" if more else
                             f"run-to-run spread ({spread:.1%} per night) is too wide for ±{min_effect:.0%}: "
                             "more nights cannot decide, a steadier device or more samples per run can"))
        verdict.more_samples = more
    verdict.detail += f" (against {k} past nights, run-to-run spread {spread:.1%})"
    return verdict


def _nights_to_decide(x: float, spread: float, k: int, *, alpha: float, min_effect: float,
                      most: int = 60) -> int | None:
    """More past nights that would decide the shift x, if the spread stays what it is (None: no number would)."""
    margin = math.log1p(min_effect)
    for nights in range(k + 1, k + most):
        se = spread * math.sqrt(1 + 1 / nights)
        if abs(x) >= margin and abs(x) > _t_quantile(1 - alpha / 2, nights - 1) * se:
            return nights - k
        if abs(x) < margin and _t_quantile(0.5 + CONFIDENCE / 2, nights - 1) * se < margin - abs(x):
            return nights - k
    return None


# ----------------------------------------------------------------------------------------------- per report
def control_report(verdicts: list[Verdict], fdr: float = REPORT_FDR) -> str:
    """Benjamini–Hochberg over every verdict with a p-value: a DIFFERENT whose adjusted p-value is not under `fdr`
    becomes UNKNOWN (significant alone, not among this many comparisons). Returns the sentence the report states."""
    import numpy as np
    from scipy.stats import false_discovery_control

    tested = [v for v in verdicts if v.p_value is not None and math.isfinite(v.p_value)]
    demoted = 0
    if tested:
        adjusted = false_discovery_control(np.array([v.p_value for v in tested]), method="bh")
        for verdict, p_adjusted in zip(tested, adjusted):
            verdict.extra["p_adjusted"] = float(p_adjusted)
            if verdict.outcome == DIFFERENT and p_adjusted >= fdr:
                demoted += 1
                verdict.outcome, verdict.regression = UNKNOWN, False
                verdict.detail = (f"significant alone (p={verdict.p_value:.2g}) but not after {CONTROL_METHOD} over "
                                  f"{len(tested)} comparisons (adjusted p={p_adjusted:.2g}); was: {verdict.detail}")
    return (f"Error control: {CONTROL_METHOD} over the {len(tested)} comparisons with a p-value (latency, quality), "
            f"false discovery rate {fdr:.0%} — on a night with no real change, the chance of any alarm; "
            f"{demoted} significant alone but not after control (shown as UNKNOWN). Size and sparsity are exact.")


# ----------------------------------------------------------------------------------------------- quality verdict
def paired_bootstrap(a_record: dict, b_record: dict, metric: str, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of metric(A) − metric(B) over the images both records captioned: {delta, ci95, p_value}.

    bench.eval's paired test on the captions of the shared images, so the report and `bench evaluate` agree
    (same sacrebleu statistics, same CIDEr-D tokenisation, same p-value).
    """
    from bench.eval.metrics import paired_bootstrap_scores

    by_a = {item["image_id"]: item for item in a_record["per_image"]}
    by_b = {item["image_id"]: item for item in b_record["per_image"]}
    ids = sorted(set(by_a) & set(by_b))
    if len(ids) < 2:
        return {"delta": math.nan, "ci95": (math.nan, math.nan), "p_value": math.nan, "n_images": len(ids)}
    result = paired_bootstrap_scores([by_b[i]["caption"] for i in ids], [by_a[i]["caption"] for i in ids],
                                     [by_a[i]["references"] for i in ids], metric, n=n, seed=seed)
    lo, hi = result.ci95
    return {"delta": float(result.delta), "ci95": (float(lo), float(hi)), "p_value": float(result.p_value),
            "n_images": len(ids)}


def compare_quality(baseline_record: dict | None, current_record: dict | None, metric: str, *, key: str = "",
                    n: int = 1000, seed: int = 0) -> Verdict:
    """BLEU / CIDEr of current vs baseline by paired bootstrap (lower = regression)."""
    label = {"bleu": "BLEU", "cider": "CIDEr"}[metric]
    margin = BLEU_MARGIN if metric == "bleu" else CIDER_MARGIN
    if not baseline_record or not current_record:
        return Verdict(label, key, UNKNOWN, False, None, None, None, None, detail="no eval record on one side")
    score_a = baseline_record["metrics"][metric]["score"]
    score_b = current_record["metrics"][metric]["score"]
    sig_a = baseline_record["metrics"][metric].get("signature") or baseline_record["metrics"][metric].get("scorer")
    sig_b = current_record["metrics"][metric].get("signature") or current_record["metrics"][metric].get("scorer")
    base = dict(metric=label, key=key, baseline=score_a, current=score_b, delta=score_b - score_a,
                relative=(score_b - score_a) / score_a if score_a else None)
    if sig_a != sig_b or baseline_record["dataset"]["signature"] != current_record["dataset"]["signature"]:
        return Verdict(outcome=UNKNOWN, regression=False, detail="metric or dataset signatures differ", **base)
    if baseline_record["per_image"] == current_record["per_image"]:
        return Verdict(outcome=SAME, regression=False, ci95=(0.0, 0.0), p_value=1.0,
                       detail="identical captions", **base)
    result = paired_bootstrap(current_record, baseline_record, metric, n=n, seed=seed)
    lo, hi = result["ci95"]
    base["delta"] = result["delta"]
    if lo > 0 or hi < 0:
        return Verdict(outcome=DIFFERENT, regression=hi < 0, ci95=(lo, hi), p_value=result["p_value"],
                       detail=f"Δ {result['delta']:+.2f}, CI excludes 0 ({result['n_images']} images)", **base)
    if -margin < lo and hi < margin:
        return Verdict(outcome=SAME, regression=False, ci95=(lo, hi), p_value=result["p_value"],
                       detail=f"Δ CI inside ±{margin:g}", **base)
    return Verdict(outcome=UNKNOWN, regression=False, ci95=(lo, hi), p_value=result["p_value"],
                   detail=f"Δ CI [{lo:+.2f}, {hi:+.2f}] straddles 0: evaluate more images", **base)


# ----------------------------------------------------------------------------------------------- exact verdict
def compare_exact(metric: str, baseline: float | None, current: float | None, *, key: str = "", unit: str = "",
                  worse_when: str = "increase") -> Verdict:
    """Bytes and measured sparsity are deterministic properties of the stored package: any change is DIFFERENT."""
    if baseline is None or current is None:
        return Verdict(metric, key, UNKNOWN, False, baseline, current, None, None, unit=unit, detail="not measured")
    delta = current - baseline
    relative = delta / baseline if baseline else None
    if delta == 0:
        return Verdict(metric, key, SAME, False, baseline, current, 0.0, 0.0, unit=unit, detail="identical")
    worse = delta > 0 if worse_when == "increase" else (delta < 0 if worse_when == "decrease" else True)
    return Verdict(metric, key, DIFFERENT, worse, baseline, current, delta, relative, unit=unit,
                   detail=f"changed by {delta:+g}{(' ' + unit) if unit else ''}")



DRIFT_TOLERANCE = 0.10  # relative: a fixed input set on the same device and bytes reproduces its drift up to this


def compare_drift(baseline: float | None, current: float | None, *, key: str = "") -> Verdict:
    """Output drift (relative L2 vs the family's reference on cpuOnly, over the same seeded inputs): a property of
    the bytes, the device and Core ML, reproduced run to run up to floating-point reordering. SAME within
    DRIFT_TOLERANCE of the baseline (or 1e-6 absolute); beyond it DIFFERENT, a regression when it grew."""
    if baseline is None or current is None:
        return Verdict("drift", key, UNKNOWN, False, baseline, current, None, None, detail="not measured in both")
    delta = current - baseline
    relative = delta / baseline if baseline else None
    if abs(delta) <= max(1e-6, DRIFT_TOLERANCE * abs(baseline)):
        return Verdict("drift", key, SAME, False, baseline, current, delta, relative,
                       detail=f"within {DRIFT_TOLERANCE:.0%} of the baseline drift")
    return Verdict("drift", key, DIFFERENT, delta > 0, baseline, current, delta, relative,
                   detail=f"relative L2 {baseline:.3g} → {current:.3g} (beyond {DRIFT_TOLERANCE:.0%})")


class RegressionFound(BenchError):
    """`bench report --fail-on regression` found at least one regression: exit code 1 for CI."""

    exit_code = 1
