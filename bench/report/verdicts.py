"""Every statistic the report uses, in one place (asv's statistics.py): latency summaries, regression verdicts.

Latency (per-sample, two runs or two variants): Mann–Whitney U and Kolmogorov–Smirnov from scipy.stats, combined like
Chromium Pinpoint (the smaller p-value) but Bonferroni-corrected so the stated false-alarm rate `alpha` holds, plus a
minimum effect size on the median (3 % by default). Outcomes:
  DIFFERENT  a test rejects at alpha and the median moved by at least the minimum effect;
  SAME       the median shift's 95 % CI lies inside ±minimum effect (equivalence shown), or a test rejects but the
             shift is smaller than the minimum effect (real but too small to matter);
  UNKNOWN    neither: `more_samples` estimates how many more samples per side would decide, from the observed
             effect and the samples' spread (normal-approximation power calculation for medians).
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
    """Distribution-free CI of the median from order statistics (normal approximation of the binomial ranks)."""
    n = len(sorted_values)
    if n == 0:
        return (math.nan, math.nan)
    z = _z(0.5 + confidence / 2)
    half = z * math.sqrt(n) / 2
    lower = max(int(math.floor(n / 2 - half)), 0)
    upper = min(int(math.ceil(n / 2 + half)), n - 1)
    return float(sorted_values[lower]), float(sorted_values[upper])


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
def _robust_sigma_log(values) -> float:
    """Spread of log-latency (IQR / 1.349): a relative spread that ignores a few throttled outliers."""
    import numpy as np

    logs = np.log(values)
    q25, q75 = np.percentile(logs, [25, 75])
    return float((q75 - q25) / 1.349)


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
    significant = p_value < alpha
    base = dict(metric=metric, key=key, baseline=med_a / 1e6, current=med_b / 1e6, delta=(med_b - med_a) / 1e6,
                relative=relative, ci95=ci, p_value=p_value, unit="ms",
                extra={"p_mannwhitney": p_mw, "p_ks": p_ks, "n_baseline": int(a.size), "n_current": int(b.size),
                       "min_effect": min_effect, "alpha": alpha})
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
    more = _more_samples_needed(relative, sigma, a.size, b.size, min_effect, alpha)
    return Verdict(outcome=UNKNOWN, regression=False, more_samples=more,
                   detail=f"shift {relative:+.1%} undecided; ~{more} more samples per side would decide", **base)


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


# ----------------------------------------------------------------------------------------------- quality verdict
def _bleu_statistics(record: dict, ids: list[str]):
    """Per-image sacrebleu sufficient statistics (matches/totals per n-gram, lengths), in `ids` order."""
    import numpy as np
    import sacrebleu

    by_id = {item["image_id"]: item for item in record["per_image"]}
    hyps = [by_id[i]["caption"] for i in ids]
    n_refs = max(len(by_id[i]["references"]) for i in ids)
    refs = [[(by_id[i]["references"] + [""] * n_refs)[k] for i in ids] for k in range(n_refs)]
    bleu = sacrebleu.metrics.BLEU()
    stats = np.asarray(bleu._extract_corpus_statistics(hyps, refs), dtype=np.float64)  # sacrebleu's own resampling input
    return bleu, stats


def _cider_per_image(record: dict, ids: list[str]):
    import numpy as np
    from pycocoevalcap.cider.cider import Cider

    by_id = {item["image_id"]: item for item in record["per_image"]}
    gts = {i: [r.lower() for r in by_id[i]["references"]] for i in ids}
    res = {i: [by_id[i]["caption"].lower()] for i in ids}
    _, scores = Cider().compute_score(gts, res)
    return np.asarray(scores, dtype=np.float64)


def paired_bootstrap(a_record: dict, b_record: dict, metric: str, n: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap of metric(A) − metric(B) over the images both records captioned: {delta, ci95, p_value}.

    Same contract as bench.eval.paired_bootstrap; kept here so every statistic the report prints lives in one module.
    """
    import numpy as np

    ids_b = {item["image_id"] for item in b_record["per_image"]}
    ids = sorted(item["image_id"] for item in a_record["per_image"] if item["image_id"] in ids_b)
    if len(ids) < 2:
        return {"delta": math.nan, "ci95": (math.nan, math.nan), "p_value": math.nan, "n_images": len(ids)}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n, len(ids)))
    if metric == "bleu":
        bleu, stats_a = _bleu_statistics(a_record, ids)
        _, stats_b = _bleu_statistics(b_record, ids)
        score = lambda stats: bleu._compute_score_from_stats(list(stats.sum(axis=0))).score  # noqa: E731
        delta = score(stats_a) - score(stats_b)
        deltas = np.array([score(stats_a[d]) - score(stats_b[d]) for d in draws])
    elif metric == "cider":
        per_a, per_b = _cider_per_image(a_record, ids), _cider_per_image(b_record, ids)
        diff = per_a - per_b
        delta = float(diff.mean())
        deltas = diff[draws].mean(axis=1)
    else:
        raise ValueError(f"paired bootstrap knows bleu and cider, not {metric!r}")
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    # two-sided p under the null (bootstrap distribution shifted to zero): how often |Δ*| reaches the observed |Δ|
    p_value = float(np.mean(np.abs(deltas - delta) >= abs(delta))) if delta else 1.0
    return {"delta": float(delta), "ci95": (float(lo), float(hi)), "p_value": p_value, "n_images": len(ids)}


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
