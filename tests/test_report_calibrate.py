"""The "must hold" bounds of the verdicts (issue 9), checked on the seeded quick calibration (bench.report.calibrate).

Each bound allows two binomial standard errors of Monte-Carlo slack for the number of simulated comparisons; the
committed full table (benchmarks/results/calibration.txt) has 5× more and shows the same with less noise.
"""

from __future__ import annotations

import math

import pytest

from bench.report import calibrate
from bench.report import verdicts as v


@pytest.fixture(scope="module")
def quick():
    return calibrate.calibrate(calibrate.QUICK)


def _slack(rate: float, trials: int) -> float:
    return 2 * math.sqrt(rate * (1 - rate) / trials)


def _cells(quick):
    for name, result in quick.items():
        for n, rates in result["sizes"].items():
            yield name, n, rates


def test_aa_false_alarms_stay_under_alpha(quick):
    trials = calibrate.QUICK.repetitions
    for name, n, rates in _cells(quick):
        assert rates["aa_different"] <= v.ALPHA + _slack(v.ALPHA, trials), (name, n)


def test_ci_of_the_shift_covers_on_every_distribution_and_size(quick):
    trials = calibrate.QUICK.repetitions * len(calibrate.SHIFTS)
    for name, n, rates in _cells(quick):
        assert rates["coverage"] >= 0.93 - _slack(0.93, trials), (name, n, rates["coverage"])


def test_real_regression_of_4_5_percent_is_almost_never_same(quick):
    trials = calibrate.QUICK.repetitions
    for name, result in quick.items():
        assert result["sizes"][100]["same_at_4.5"] <= 0.02 + _slack(0.02, trials), name
        assert result["sizes"][100]["power_0.1"] >= 0.9, name  # and a 10 % one is found


def test_nights_are_the_unit(quick):
    trials = calibrate.QUICK.nights
    for name, result in quick.items():
        assert result["nightly"]["night_alarm"] <= 0.05 + _slack(0.05, trials), name
        assert result["nightly"]["night_power_10"] >= 0.90 - _slack(0.90, trials), name


def test_a_clean_night_report_rarely_raises_any_alarm(quick):
    trials = calibrate.QUICK.report_nights
    for name, result in quick.items():
        assert result["report_any_alarm"] <= 0.05 + _slack(0.05, trials), name


def test_the_table_prints_every_distribution_and_size(quick):
    text = calibrate.render(quick, calibrate.QUICK)
    for name, result in quick.items():
        rows = len(calibrate.QUICK.sizes) + 1 + ("stopping" in result)  # sizes, nightly/report, adaptive stopping
        assert sum(line.startswith(name) for line in text.splitlines()) == rows


def test_adaptive_stopping_keeps_coverage_and_halves_the_samples(quick):
    """The runner's stopping rule at ±2 %: the median CI still covers after optional stopping, and a series needs on
    average at most half of the fixed N that reaches ±2 % in 95 % of series (lognormal and bimodal)."""
    trials = calibrate.QUICK.stopping_series
    for name in ("lognormal", "bimodal"):
        cell = quick[name]["stopping"]
        assert cell["coverage"] >= 0.93 - _slack(0.93, trials), (name, cell)
        assert cell["ratio"] <= 0.5, (name, cell)
