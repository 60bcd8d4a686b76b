"""Compare two runs series by series — only when they are comparable.

Two runs are comparable for a series (variant, target kind, compute unit) when the device model, OS build and
variant hash are the same on both sides (pyperf refuses to merge runs from different machines for the same reason).
Otherwise IncomparableError names every difference, unless `force=True` — then the differences are returned with the
table so a report can print them next to the numbers. Regression verdicts live in bench/report; this is the guard
plus the plain medians.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.errors import IncomparableError

CHECKED = ("device_model", "os_build", "variant_hash")


@dataclass
class Comparison:
    table: Any  # pandas DataFrame: one row per series present in both runs
    differences: list[str]
    forced: bool


def comparability_problems(a, b) -> list[str]:
    """Every checked field that differs between the runs' common series (by variant name, target kind, unit)."""
    sa, sb = _keyed(a), _keyed(b)
    problems = []
    for key in sorted(set(sa) & set(sb)):
        for field in CHECKED:
            left, right = sa[key][field], sb[key][field]
            if left != right:
                problems.append(f"{'/'.join(map(str, key))}: {field} {left!r} vs {right!r}")
    if not set(sa) & set(sb):
        problems.append("the runs have no series (variant × target × compute unit) in common")
    return problems


def compare_runs(a, b, *, force: bool = False) -> Comparison:
    """Median latency of each common series in run `a` and `b` (RunData), with the ratio b/a and a Mann–Whitney p."""
    import pandas as pd
    from scipy.stats import mannwhitneyu

    problems = comparability_problems(a, b)
    if problems and not force:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise IncomparableError(f"runs {a.run_id} and {b.run_id} are not comparable: {shown} (use --force to "
                                "compare anyway)")
    sa, sb = _keyed(a), _keyed(b)
    rows = []
    for key in sorted(set(sa) & set(sb)):
        left, right = sa[key]["values"], sb[key]["values"]
        p_value = float(mannwhitneyu(left, right).pvalue) if len(left) and len(right) else None
        median_a, median_b = float(pd.Series(left).median()), float(pd.Series(right).median())
        rows.append({"variant": key[0], "target_kind": key[1], "compute_unit": key[2], "n_a": len(left),
                     "n_b": len(right), "median_a_ns": median_a, "median_b_ns": median_b,
                     "ratio": median_b / median_a if median_a else None, "mannwhitney_p": p_value})
    return Comparison(pd.DataFrame(rows), problems, force)


def _keyed(run) -> dict[tuple, dict]:
    """Series of a run keyed by (variant name, target kind, compute unit): names survive a rebuild, ids do not."""
    samples = run.samples
    if not len(samples):
        return {}
    measured = samples[~samples["is_warmup"]]
    names = dict(zip(run.jobs["variant_id"], run.jobs["variant_name"].fillna(run.jobs["variant_id"])))
    keyed = {}
    for (variant_id, kind, unit), group in measured.groupby(["variant_id", "target_kind", "compute_unit"]):
        keyed[(names.get(variant_id, variant_id), kind, unit)] = {
            "device_model": group["device_model"].iloc[0], "os_build": group["os_build"].iloc[0],
            "variant_hash": group["variant_hash"].iloc[0], "values": group["latency_ns"].to_numpy()}
    return keyed
