"""Calibration of the verdicts by seeded simulation: `python -m bench.report.calibrate [--quick] [--seed N]`.

Every figure goes through the report's own decision code (bench.report.verdicts: latency_decisions, the vectorised
core of compare_latency; compare_latency_nights; the Benjamini–Hochberg control of control_report), on latency drawn
from known distributions, so the rates printed are the rates the report has:

  lognormal   100 ms · e^N(0, 0.10)                           skewed
  bimodal     70 % at 90 ms, 30 % at 130 ms, each · e^N(0, 0.03)   two modes (cache / compute path)
  heavy tail  100 ms · (1 + 0.05 |t₂|)                          Student t with 2 df: infinite variance
  quantised   100 ms · e^N(0, 0.05) rounded to 1 ms ticks       a coarse timer (1 % of the median), many ties
  drift       100 ms · e^N(0, 0.08) · (1 + 0.05 i/n)            +5 % heating over the series

A shift s multiplies the current side's latency (before the timer's rounding). The true shift a CI must cover is the
ratio of the two population medians, taken from the pooled draws of all repetitions (exact on the quantised lattice).

Columns: A/A = DIFFERENT rate with no change (bound: ≤ α = 1 %); power = DIFFERENT-and-slower at +3/5/10 %;
coverage = 95 %-CI coverage of the true shift, over all shifts simulated (bound ≥ 93 %); SAME|4.5 % = SAME at a
real +4.5 % regression (bound ≤ 2 %). Nightly: 7 past nights + tonight, 100 samples each, σ of the run medians 2 % (a per-run
factor adds to the within-run noise of the median until their total is 2 %);
alarm = a regression verdict (bound ≤ 5 %), power at a 10 % regression (bound ≥ 90 %). Report: 200 A/A comparisons
(n = 100) per night under the report's Benjamini–Hochberg control; rate of nights with any alarm (bound ≤ 5 %).
Adaptive stopping (bench.run.stats, the runner's rule at ±2 %): mean samples per series against the fixed N that
reaches ±2 % in 95 % of series (bound: ratio ≤ 0.5), and the coverage of the median CI after optional stopping
(bound ≥ 93 %). Series differ in spread (lognormal σ 2–12 %, bimodal mode share 60–90 % and σ 1–5 %): a fixed
schedule is chosen before anyone knows which variant × device × unit is noisy, adaptive stopping spends what each
needs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SIZES = (20, 50, 100, 200, 500)
SHIFTS = (0.0, 0.03, 0.045, 0.05, 0.10)
CHUNK = 250_000  # samples per side per vectorised batch: bounds memory


def _lognormal(rng, shape, shift):
    return 100.0 * (1 + shift) * rng.lognormal(0.0, 0.10, shape)


def _bimodal(rng, shape, shift):
    mode = rng.random(shape) < 0.7
    return (1 + shift) * (mode * 90.0 + ~mode * 130.0) * rng.lognormal(0.0, 0.03, shape)


def _heavy(rng, shape, shift):
    return 100.0 * (1 + shift) * (1 + 0.05 * abs(rng.standard_t(2, shape)))


def _quantised(rng, shape, shift):
    import numpy as np

    return np.maximum(1.0, np.round(100.0 * (1 + shift) * rng.lognormal(0.0, 0.05, shape)))


def _drift(rng, shape, shift):
    import numpy as np

    position = np.arange(shape[-1]) / shape[-1]
    return 100.0 * (1 + shift) * (1 + 0.05 * position) * rng.lognormal(0.0, 0.08, shape)


DISTRIBUTIONS: dict[str, Callable] = {"lognormal": _lognormal, "bimodal": _bimodal, "heavy tail": _heavy,
                                      "quantised": _quantised, "drift": _drift}


@dataclass
class Settings:
    repetitions: int  # comparisons per distribution × size × shift
    sizes: tuple[int, ...]
    nights: int  # simulated nights for the nightly and per-report rates
    report_nights: int
    stopping_series: int  # simulated series for adaptive stopping
    seed: int = 20261202


FULL = Settings(repetitions=2000, sizes=SIZES, nights=2000, report_nights=400, stopping_series=400)
QUICK = Settings(repetitions=400, sizes=(20, 100, 500), nights=200, report_nights=150, stopping_series=120)


def _pooled_log_median(values) -> float:
    import numpy as np

    return float(np.log(np.median(values)))


def sample_cell(draw: Callable, n: int, repetitions: int, rng) -> dict[str, float]:
    """Rates of one distribution at one sample size (per side), over every shift in SHIFTS."""
    import numpy as np

    from bench.report import verdicts as v

    baseline = np.sort(draw(rng, (repetitions, n), 0.0), axis=-1)
    out: dict[str, float] = {}
    covered = []
    for shift in SHIFTS:
        current = np.sort(draw(rng, (repetitions, n), shift), axis=-1)
        found = _decide_in_chunks(baseline, current)
        truth = math.expm1(_pooled_log_median(current) - _pooled_log_median(baseline))
        covered.append((found["ci_lo"] <= truth) & (truth <= found["ci_hi"]))
        different = found["outcome"] == v.DIFFERENT
        if shift == 0.0:
            out["aa_different"] = float(np.mean(different))
        else:
            out[f"power_{shift:g}"] = float(np.mean(different & (found["relative"] > 0)))
        if shift == 0.045:
            out["same_at_4.5"] = float(np.mean(found["outcome"] == v.SAME))
    out["coverage"] = float(np.mean(np.concatenate(covered)))
    return out


def _decide_in_chunks(baseline, current) -> dict:
    import numpy as np

    from bench.report import verdicts as v

    rows = max(1, CHUNK // baseline.shape[-1])
    parts = [v.latency_decisions(baseline[i:i + rows], current[i:i + rows])
             for i in range(0, baseline.shape[0], rows)]
    return {key: np.concatenate([p[key] for p in parts]) for key in ("ci_lo", "ci_hi", "outcome", "relative")}


def nightly_cell(draw: Callable, nights: int, rng, *, history: int = 7, n: int = 100,
                 run_sd: float = 0.02) -> dict[str, float]:
    """Unchanged nights and +10 % nights against `history` past nights whose run medians vary by `run_sd` (σ of the
    log run median: a per-run factor on top of the within-run noise of the median, which is measured first)."""
    import numpy as np

    from bench.report import verdicts as v

    within = float(np.std(np.log(np.median(draw(rng, (4000, n), 0.0), axis=-1))))
    effect_sd = math.sqrt(max(0.0, run_sd ** 2 - within ** 2))
    rates = {"within_run_sd": within}
    for shift, name in ((0.0, "night_alarm"), (0.10, "night_power_10")):
        hits = 0
        for _ in range(nights):
            effects = np.exp(rng.normal(0.0, effect_sd, history + 1))
            past = [draw(rng, (n,), 0.0) * effects[i] for i in range(history)]
            tonight = draw(rng, (n,), shift) * effects[-1]
            verdict = v.compare_latency_nights(past, tonight)
            hits += verdict.regression
        rates[name] = hits / nights
    return rates


def report_cell(draw: Callable, nights: int, rng, *, comparisons: int = 200, n: int = 100) -> float:
    """Share of A/A nights (every comparison unchanged) on which the controlled report raises any alarm."""
    import numpy as np
    from scipy.stats import false_discovery_control

    from bench.report import verdicts as v

    alarms = 0
    for _ in range(nights):
        baseline = np.sort(draw(rng, (comparisons, n), 0.0), axis=-1)
        current = np.sort(draw(rng, (comparisons, n), 0.0), axis=-1)
        found = v.latency_decisions(baseline, current)
        adjusted = false_discovery_control(found["p_value"], method="bh")
        alarms += bool(np.any((found["outcome"] == v.DIFFERENT) & (adjusted < v.REPORT_FDR)))
    return alarms / nights


# ----------------------------------------------------------------------------------------------- adaptive stopping
STOP_WIDTH = 0.02  # ±2 % of the median
STOP_ROUND = 16  # samples per round, as from one runner job of 16 images
STOP_CAP = 2000


def _stopping_series(kind: str, rng):
    """One series of a nightly matrix: variants, devices and units differ in spread, which a fixed schedule must
    cover before it knows which series is noisy. Returns (draw(rng, n), true median)."""
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import norm

    if kind == "lognormal":
        sigma = math.exp(rng.uniform(math.log(0.02), math.log(0.12)))
        return (lambda r, n: 20.0 * r.lognormal(0.0, sigma, n)), 20.0
    fast_share = rng.uniform(0.6, 0.9)
    sigma = math.exp(rng.uniform(math.log(0.01), math.log(0.05)))

    def draw(r, n):
        return np.where(r.random(n) < fast_share, 18.0, 26.0) * r.lognormal(0.0, sigma, n)

    def below(x):  # population CDF of the two-mode mixture, minus one half
        return (fast_share * norm.cdf(math.log(x / 18.0) / sigma)
                + (1 - fast_share) * norm.cdf(math.log(x / 26.0) / sigma) - 0.5)

    return draw, brentq(below, 10.0, 40.0)


def stopping_cell(kind: str, series_count: int, rng) -> dict[str, float]:
    """Adaptive stopping (the run's own StopRule at ±2 %) against the fixed sample count that reaches ±2 % in 95 % of
    series, and the coverage of the median CI at the moment sampling stopped (optional stopping)."""
    import numpy as np

    from bench.run.stats import StopRule, median_ci, stop_reason

    rule = StopRule(ci_width=STOP_WIDTH, min_rounds=1, max_samples=STOP_CAP, max_seconds=math.inf)
    used, covered, long_samples = [], [], []
    for _ in range(series_count):
        draw, truth = _stopping_series(kind, rng)
        values: list[float] = []
        rounds = 0
        while not stop_reason(rule, values, rounds, 0.0):
            values.extend(draw(rng, STOP_ROUND))
            rounds += 1
        interval = median_ci(values)
        used.append(len(values))
        covered.append(interval.low is not None and interval.low <= truth <= interval.high)
        long_samples.append(draw(rng, STOP_CAP))
    fixed = STOP_CAP
    for n in range(STOP_ROUND, STOP_CAP + 1, STOP_ROUND):
        reached = [(w := median_ci(sample[:n]).relative_halfwidth) is not None and w <= STOP_WIDTH
                   for sample in long_samples]
        if np.mean(reached) >= 0.95:
            fixed = n
            break
    return {"adaptive_mean": float(np.mean(used)), "fixed_n95": float(fixed),
            "ratio": float(np.mean(used)) / fixed, "coverage": float(np.mean(covered))}


def calibrate(settings: Settings) -> dict[str, dict]:
    """{distribution: {"sizes": {n: rates}, "nightly": rates, "report_any_alarm": rate}}, seeded."""
    import numpy as np

    results = {}
    for index, (name, draw) in enumerate(DISTRIBUTIONS.items()):
        rng = np.random.default_rng([settings.seed, index])
        sizes = {n: sample_cell(draw, n, settings.repetitions, rng) for n in settings.sizes}
        results[name] = {"sizes": sizes, "nightly": nightly_cell(draw, settings.nights, rng),
                         "report_any_alarm": report_cell(draw, settings.report_nights, rng)}
    for index, kind in enumerate(("lognormal", "bimodal")):
        rng = np.random.default_rng([settings.seed, 100 + index])
        results[kind]["stopping"] = stopping_cell(kind, settings.stopping_series, rng)
    return results


def render(results: dict[str, dict], settings: Settings) -> str:
    from bench.report import verdicts as v

    lines = [f"# python -m bench.report.calibrate{' --quick' if settings is QUICK else ''} (seed {settings.seed}; "
             f"{settings.repetitions} comparisons per cell, {settings.nights} nights, {settings.report_nights} "
             "report nights)",
             f"# rule: SAME = 95 % CI inside ±{v.MIN_EFFECT:.0%}; DIFFERENT = p < {v.ALPHA:g} and shift ≥ "
             f"{v.MIN_EFFECT:.0%}; CI Price–Bonett; nights: t prediction interval, α = {v.ALPHA_NIGHTS:g}; "
             f"report: {v.CONTROL_METHOD} at {v.REPORT_FDR:.0%}",
             "",
             f"{'distribution':<12} {'n':>4}  {'A/A':>6}  {'pow 3%':>6}  {'pow 5%':>6}  {'pow 10%':>7}  "
             f"{'coverage':>8}  {'SAME|4.5%':>9}"]
    for name, result in results.items():
        for n, rates in result["sizes"].items():
            lines.append(f"{name:<12} {n:>4}  {rates['aa_different']:>6.1%}  {rates['power_0.03']:>6.1%}  "
                         f"{rates['power_0.05']:>6.1%}  {rates['power_0.1']:>7.1%}  {rates['coverage']:>8.1%}  "
                         f"{rates['same_at_4.5']:>9.1%}")
    lines += ["", "nightly (7 past nights + tonight, n = 100 each, run-to-run σ 2 %) and per report (200 A/A "
                  "comparisons, n = 100)",
              f"{'distribution':<12}  {'unchanged night alarms':>22}  {'10 % regression found':>21}  "
              f"{'report nights with any alarm':>28}"]
    for name, result in results.items():
        nightly = result["nightly"]
        lines.append(f"{name:<12}  {nightly['night_alarm']:>22.1%}  {nightly['night_power_10']:>21.1%}  "
                     f"{result['report_any_alarm']:>28.1%}")
    lines += ["", f"adaptive stopping at ±{STOP_WIDTH:.0%} (rounds of {STOP_ROUND}; {settings.stopping_series} series "
                  "whose spread varies as across a nightly matrix) vs the fixed N that reaches it in 95 % of series",
              f"{'distribution':<12}  {'adaptive mean n':>15}  {'fixed N (95 %)':>14}  {'ratio':>5}  "
              f"{'CI coverage after stopping':>26}"]
    for name, result in results.items():
        if "stopping" in result:
            cell = result["stopping"]
            lines.append(f"{name:<12}  {cell['adaptive_mean']:>15.1f}  {cell['fixed_n95']:>14.0f}  "
                         f"{cell['ratio']:>5.2f}  {cell['coverage']:>26.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.report.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (the fast tests use it)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    print(render(calibrate(settings), settings))


if __name__ == "__main__":
    main()
