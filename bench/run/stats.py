"""Statistics the runner decides with: a distribution-free CI of the median and the adaptive stopping rule.

The CI uses order statistics: for n samples the interval [x_(j), x_(n-j+1)] covers the true median with probability
P(j <= B <= n-j) where B ~ Binomial(n, 1/2) — no assumption about the latency distribution (which on phones is
skewed and often bimodal). scipy is imported inside the function: the CLI must stay fast to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

STOP_CI_WIDTH, STOP_MAX_SAMPLES, STOP_MAX_TIME, STOP_FIXED = "ci_width", "max_samples", "max_time", "fixed"


@dataclass(frozen=True)
class MedianCI:
    n: int
    median: float | None
    low: float | None
    high: float | None
    coverage: float  # the interval's exact coverage probability (0 when too few samples for the asked confidence)

    @property
    def relative_halfwidth(self) -> float | None:
        """The larger distance from the median to a CI bound, as a fraction of the median (inf when undefined)."""
        if self.median is None or self.low is None or self.median <= 0:
            return None
        return max(self.median - self.low, self.high - self.median) / self.median


@lru_cache(maxsize=4096)
def order_statistic_rank(n: int, confidence: float) -> tuple[int, float]:
    """The largest j (1-based) whose interval [x_(j), x_(n-j+1)] covers the median with >= confidence, and that
    coverage; (0, 0.0) when n is too small. Cached: the scheduler asks after every job."""
    from scipy.stats import binom

    j = int(binom.ppf((1.0 - confidence) / 2, n, 0.5))
    while j >= 1:
        coverage = float(binom.cdf(n - j, n, 0.5) - binom.cdf(j - 1, n, 0.5))
        if coverage >= confidence:
            return j, coverage
        j -= 1
    return 0, 0.0


def median_ci(values: Sequence[float], confidence: float = 0.95) -> MedianCI:
    """Median and an order-statistic confidence interval with coverage >= `confidence` (None bounds if n too small)."""
    import numpy as np

    data = np.sort(np.asarray(values, dtype=float))
    n = len(data)
    if n == 0:
        return MedianCI(0, None, None, None, 0.0)
    middle = n // 2
    median = float(data[middle]) if n % 2 else float((data[middle - 1] + data[middle]) / 2)
    j, coverage = order_statistic_rank(n, confidence)
    if j == 0:
        return MedianCI(n, median, None, None, 0.0)
    return MedianCI(n, median, float(data[j - 1]), float(data[n - j]), coverage)


@dataclass(frozen=True)
class StopRule:
    """When to stop sampling a series. ci_width=None means a fixed schedule of exactly `min_rounds` rounds."""

    ci_width: float | None = 0.01
    min_rounds: int = 1
    min_samples: int = 8
    max_samples: int = 400
    max_seconds: float = 60.0
    confidence: float = 0.95

    @property
    def adaptive(self) -> bool:
        return self.ci_width is not None


def stop_reason(rule: StopRule, values: Sequence[float], rounds_done: int, seconds_spent: float,
                ci: MedianCI | None = None) -> str | None:
    """Why sampling of a series should stop now, or None to take another round (`ci`: of `values`, if known)."""
    if not rule.adaptive:
        return STOP_FIXED if rounds_done >= rule.min_rounds else None
    if rounds_done < rule.min_rounds:
        return None
    if len(values) >= rule.min_samples:
        width = (ci or median_ci(values, rule.confidence)).relative_halfwidth
        if width is not None and width <= rule.ci_width:
            return STOP_CI_WIDTH
    if len(values) >= rule.max_samples:
        return STOP_MAX_SAMPLES
    if seconds_spent >= rule.max_seconds:
        return STOP_MAX_TIME
    return None
