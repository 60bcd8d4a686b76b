"""Every statistic the report uses, in one place (asv's statistics.py): latency summaries, regression verdicts.

Latency (per-sample, two runs or two variants): Mann–Whitney U and Kolmogorov–Smirnov from scipy.stats, combined like
Chromium Pinpoint (the smaller p-value) but Bonferroni-corrected so the stated false-alarm rate `alpha` holds, plus a
minimum effect size on the median (3 % by default). Outcomes:
  DIFFERENT  a test rejects at alpha and the median moved by at least the minimum effect;
  SAME       the median shift's 95 % CI lies inside ±minimum effect (equivalence shown), or a test rejects but the
             shift is smaller than the minimum effect (real but too small to matter);
  UNKNOWN    neither: `more_samples` estimates how many more samples per side would decide, from the observed
             effect and the samples' spread (normal-approximation power calculation for medians).
Latency paired by image (`bench explain`, when both sides carry image ids): per-image median ratios, Wilcoxon
signed-rank test, bootstrap CI over images, same outcomes — decode length varies per image, pairing removes it.
Quality (BLEU, CIDEr): paired bootstrap over images (sacrebleu sufficient statistics for BLEU, per-image CIDEr-D).
Size and measured sparsity: exact comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.errors import BenchError

DIFFERENT, SAME, UNKNOWN = "DIFFERENT", "SAME", "UNKNOWN"
MIN_EFFECT = 0.03  # a latency median must move by ≥ 3 % to count (Perfherder uses 2 %, ExecuTorch flags 5 %)
ALPHA = 0.01  # false-alarm rate of the latency test (both tests together, Bonferroni)
MEDIAN_EFFICIENCY = 1.2533  # se(median) ≈ 1.2533 σ / √n for near-normal data
BLEU_MARGIN = 1.0  # BLEU points: a CI inside ±margin counts as SAME
CIDER_MARGIN = 0.05


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


def median_ci(sorted_values, confidence: float = 0.95) -> tuple[float, float]:
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


# ----------------------------------------------------------------------------------------------- latency verdict
def _robust_sigma(values) -> float:
    """IQR / 1.349: the spread of near-normal values, ignoring a few throttled outliers."""
    import numpy as np

    q25, q75 = np.percentile(values, [25, 75])
    return float((q75 - q25) / 1.349)


def _robust_sigma_log(values) -> float:
    """Spread of log-latency: a relative spread."""
    import numpy as np

    return _robust_sigma(np.log(values))


def compare_latency(baseline_ns, current_ns, *, key: str = "", metric: str = "latency median",
                    min_effect: float = MIN_EFFECT, alpha: float = ALPHA) -> Verdict:
    """DIFFERENT / SAME / UNKNOWN for the median latency of `current` vs `baseline` (slower = regression)."""
    import numpy as np
    from scipy.stats import ks_2samp, mannwhitneyu

    a = np.asarray(baseline_ns, dtype=np.float64)
    b = np.asarray(current_ns, dtype=np.float64)
    a, b = a[a > 0], b[b > 0]
    if a.size < 2 or b.size < 2:
        need = max(0, 10 - min(a.size, b.size))
        return Verdict(metric, key, UNKNOWN, False, _ms_median(a), _ms_median(b), None, None, more_samples=need,
                       unit="ms", detail=f"too few samples ({a.size} vs {b.size})")
    med_a, med_b = float(np.median(a)), float(np.median(b))
    relative = med_b / med_a - 1
    p_mw = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
    p_ks = float(ks_2samp(a, b).pvalue)
    p_value = min(1.0, 2 * min(p_mw, p_ks))  # Bonferroni over the two tests keeps the false-alarm rate at alpha
    sigma = max(math.sqrt((_robust_sigma_log(a) ** 2 + _robust_sigma_log(b) ** 2) / 2), 1e-9)
    se = MEDIAN_EFFICIENCY * sigma * math.sqrt(1 / a.size + 1 / b.size)
    z = _z(0.975)
    log_ratio = math.log(med_b / med_a)
    ci = (math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1)
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=relative, ci95=ci, p_value=p_value, unit="ms",
                extra={"p_mannwhitney": p_mw, "p_ks": p_ks, "n_baseline": int(a.size), "n_current": int(b.size),
                       "min_effect": min_effect, "alpha": alpha})
    more = _more_samples_needed(relative, sigma, a.size, b.size, min_effect, alpha)
    return _latency_verdict(base, more, "samples per side")


def _latency_verdict(base: dict[str, Any], more: int, more_of: str) -> Verdict:
    """DIFFERENT / SAME / UNKNOWN from a latency shift, its CI and p-value (one rule for pooled and paired tests)."""
    relative, ci, p_value = base["relative"], base["ci95"], base["p_value"]
    min_effect, alpha = base["extra"]["min_effect"], base["extra"]["alpha"]
    significant = p_value < alpha
    if significant and abs(relative) >= min_effect:
        word = "slower" if relative > 0 else "faster"
        return Verdict(outcome=DIFFERENT, regression=relative > 0,
                       detail=f"{abs(relative):.1%} {word} (p={p_value:.2g})", **base)
    if -min_effect < ci[0] and ci[1] < min_effect:
        return Verdict(outcome=SAME, regression=False,
                       detail=f"shift {relative:+.1%}, CI inside ±{min_effect:.0%}", **base)
    if significant:
        return Verdict(outcome=SAME, regression=False,
                       detail=f"shift {relative:+.1%} is real (p={p_value:.2g}) but under {min_effect:.0%}", **base)
    return Verdict(outcome=UNKNOWN, regression=False, more_samples=more,
                   detail=f"shift {relative:+.1%} undecided; ~{more} more {more_of} would decide", **base)


def _more_samples_needed(relative: float, sigma: float, n_a: int, n_b: int, min_effect: float, alpha: float,
                         power: float = 0.8) -> int:
    """Samples per side to decide: detect the observed shift (if ≥ min effect) or show it is inside ±min effect."""
    effect = abs(relative)
    spread = MEDIAN_EFFICIENCY * sigma
    if effect >= min_effect:
        # power to reject at alpha for a shift this large
        n = 2 * (spread * (_z(1 - alpha / 4) + _z(power)) / effect) ** 2
    else:
        # CI half-width must fit between the observed shift and the margin (equivalence)
        room = max(min_effect - effect, min_effect / 4)
        n = 2 * (spread * _z(0.975) / room) ** 2
    return max(1, int(math.ceil(n)) - min(n_a, n_b))


def _ms_median(values) -> float | None:
    import numpy as np

    return float(np.median(values)) / 1e6 if len(values) else None


# ----------------------------------------------------------------------------------------------- paired latency
PAIRED_MIN_IMAGES = 8  # below 8 pairs the signed-rank test cannot reach alpha = 0.01 at all


def _per_image_medians(values_ns, image_ids) -> dict[str, float]:
    import pandas as pd

    frame = pd.DataFrame({"image": pd.Series(image_ids, dtype="object").astype(str),
                          "ns": pd.Series(values_ns, dtype="float64")})
    frame = frame[frame["ns"] > 0]
    return frame.groupby("image")["ns"].median().to_dict()


def compare_latency_paired(baseline_ns, current_ns, baseline_images, current_images, *, key: str = "",
                           metric: str = "latency median", min_effect: float = MIN_EFFECT, alpha: float = ALPHA,
                           n_boot: int = 2000, seed: int = 0) -> Verdict:
    """Median latency of `current` vs `baseline` with the samples paired by image (slower = regression).

    Decode length differs per image, so pooled samples mix image-to-image spread into the comparison. Here each image
    contributes the log ratio of its two per-image medians; the shift is their median (as a ratio), tested with the
    Wilcoxon signed-rank test (scipy.stats), its 95 % CI a bootstrap over images. Same outcome rule as
    compare_latency; without image ids on both sides or with fewer than PAIRED_MIN_IMAGES shared images it falls back
    to the pooled compare_latency.
    """
    import numpy as np
    from scipy.stats import wilcoxon

    if baseline_images is None or current_images is None:
        return compare_latency(baseline_ns, current_ns, key=key, metric=metric, min_effect=min_effect, alpha=alpha)
    per_a = _per_image_medians(baseline_ns, baseline_images)
    per_b = _per_image_medians(current_ns, current_images)
    images = sorted(set(per_a) & set(per_b))
    if len(images) < PAIRED_MIN_IMAGES:
        return compare_latency(baseline_ns, current_ns, key=key, metric=metric, min_effect=min_effect, alpha=alpha)
    log_ratios = np.log(np.array([per_b[i] for i in images]) / np.array([per_a[i] for i in images]))
    relative = math.exp(float(np.median(log_ratios))) - 1
    p_value = 1.0 if not np.any(log_ratios) else float(wilcoxon(log_ratios).pvalue)
    draws = np.random.default_rng(seed).integers(0, len(images), size=(n_boot, len(images)))
    lo, hi = np.percentile(np.median(log_ratios[draws], axis=1), [2.5, 97.5])
    a = np.asarray(baseline_ns, dtype=np.float64)
    b = np.asarray(current_ns, dtype=np.float64)
    med_a, med_b = float(np.median(a[a > 0])), float(np.median(b[b > 0]))
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=relative, ci95=(math.exp(lo) - 1, math.exp(hi) - 1), p_value=p_value, unit="ms",
                extra={"paired_by": "image", "n_images": len(images), "p_wilcoxon": p_value,
                       "n_baseline": int(a.size), "n_current": int(b.size), "min_effect": min_effect, "alpha": alpha})
    # Paired: the shift's variance is σ_d² / n (σ_d the spread of the log ratios), the unpaired formula's 2σ² / n
    # with σ = σ_d / √2; the answer counts images.
    sigma_d = max(_robust_sigma(log_ratios), 1e-9)
    more = _more_samples_needed(relative, sigma_d / math.sqrt(2), len(images), len(images), min_effect, alpha)
    verdict = _latency_verdict(base, more, "images")
    verdict.detail += f" (paired by image, {len(images)} images)"
    return verdict


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



class RegressionFound(BenchError):
    """`bench report --fail-on regression` found at least one regression: exit code 1 for CI."""

    exit_code = 1
