"""Plotly figure specs (plain dicts: data + layout) built from report data, for the HTML report.

Every label is HTML-escaped because Plotly renders a subset of HTML in text and decodes entities: a device name like
`<img src=x onerror=...>` is shown as text, never interpreted. Host-torch points are labelled host emulation.
"""

from __future__ import annotations

from typing import Any

from bench.report.data import HOST_EMULATION, ReportData, table_records
from bench.report.escape import html_text as esc

UNIT_COLORS = {"all": "#1f77b4", "cpuAndNeuralEngine": "#2ca02c", "cpuAndGPU": "#9467bd", "cpuOnly": "#ff7f0e",
               "host": "#7f7f7f"}


def _layout(title: str, x: str, y: str, **extra) -> dict[str, Any]:
    return {"title": {"text": esc(title)}, "xaxis": {"title": {"text": esc(x)}}, "yaxis": {"title": {"text": esc(y)}},
            "margin": {"l": 60, "r": 20, "t": 50, "b": 50}, "height": 380, "legend": {"orientation": "h", "y": -0.2},
            **extra}


def _figure(fig_id: str, title: str, data: list, layout: dict, note: str = "") -> dict[str, Any]:
    return {"id": fig_id, "title": title, "note": note, "data": data, "layout": layout}


def _records(report: ReportData) -> list[dict]:
    return table_records(report.table)


def _primary(rows: list[dict]) -> tuple[Any, str] | None:
    """The first Core ML target and its preferred unit (`all` if measured): where the seed's studies are drawn."""
    coreml = [r for r in rows if not r["emulated"]]
    if not coreml:
        return None
    target = coreml[0]["target_id"]
    units = [r["compute_unit"] for r in coreml if r["target_id"] == target]
    return target, "all" if "all" in units else units[0]


def _err(lo, hi, value) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "array": [None if h is None else h - v for h, v in zip(hi, value)],
            "arrayminus": [None if lo_ is None else v - lo_ for lo_, v in zip(lo, value)]}


def _ok(value) -> bool:
    return value is not None and value == value  # not NaN


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated in (lower latency, higher quality), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def latency_vs_bleu(report: ReportData) -> dict[str, Any] | None:
    rows = [r for r in _records(report) if _ok(r["median_ms"]) and _ok(r["bleu"])]
    if not rows:
        return None
    data = []
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = f"host-torch ({HOST_EMULATION})" if r["emulated"] else f"{r['device_model']} · {r['compute_unit']}"
        groups.setdefault(label, []).append(r)
    for label, items in groups.items():
        data.append({"type": "scatter", "mode": "markers+text", "name": esc(label),
                     "x": [r["median_ms"] for r in items], "y": [r["bleu"] for r in items],
                     "text": [esc(r["variant"]) for r in items], "textposition": "top center",
                     "error_x": _err([r["ci_lo_ms"] for r in items], [r["ci_hi_ms"] for r in items],
                                     [r["median_ms"] for r in items]),
                     "marker": {"size": 9, "symbol": "x" if items[0]["emulated"] else "circle"}})
    primary = _primary(rows)
    if primary:
        items = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1]]
        front = [items[i] for i in pareto_front([(r["median_ms"], r["bleu"]) for r in items])]
        data.append({"type": "scatter", "mode": "lines", "name": esc(f"Pareto frontier ({primary[1]})"),
                     "x": [r["median_ms"] for r in front], "y": [r["bleu"] for r in front],
                     "line": {"dash": "dash", "color": "#d62728"}})
    return _figure("pareto", "Latency vs BLEU (Pareto frontier: nothing is both faster and better)", data,
                   _layout("Latency vs BLEU", "median latency (ms)", "BLEU"))


def sparsity_study(report: ReportData) -> list[dict[str, Any]]:
    rows = _records(report)
    primary = _primary(rows)
    if not primary:
        return []
    sweep = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1]
             and r["prune_layers"] in (None, "all") and _ok(r["sparsity"])]
    pruned_precisions = {r["precision"] for r in sweep if r["prune_layers"] == "all"}
    if not pruned_precisions:
        return []
    sizes = {r["image_size"] for r in sweep if r["prune_layers"] == "all"}
    sweep = sorted([r for r in sweep if r["precision"] in pruned_precisions and r["image_size"] in sizes],
                   key=lambda r: r["sparsity"])
    x = [100 * r["sparsity"] for r in sweep]
    text = [esc(r["variant"]) for r in sweep]
    figures = []
    for fig_id, column, label in (("sparsity-size", "size_mb", "size on disk (MB)"),
                                  ("sparsity-latency", "median_ms", "median latency (ms)"),
                                  ("sparsity-bleu", "bleu", "BLEU")):
        trace = {"type": "scatter", "mode": "lines+markers+text", "x": x, "y": [r[column] for r in sweep],
                 "text": text, "textposition": "top center", "name": esc(label)}
        if column == "median_ms":
            trace["error_y"] = _err([r["ci_lo_ms"] for r in sweep], [r["ci_hi_ms"] for r in sweep], trace["y"])
        if column == "bleu":
            trace["error_y"] = _err([r["bleu_lo"] for r in sweep], [r["bleu_hi"] for r in sweep], trace["y"])
        figures.append(_figure(fig_id, f"Pruning sweep: {label} vs measured sparsity", [trace],
                               _layout(f"{label} vs sparsity", "measured sparsity (%)", label, showlegend=False)))
    return figures


def precision_study(report: ReportData) -> dict[str, Any] | None:
    rows = _records(report)
    primary = _primary(rows)
    if not primary:
        return None
    dense = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1]
             and not r["prune_layers"] and not r["target_sparsity"]]
    if not dense:
        return None
    size = max((r["image_size"] or 0) for r in dense)
    dense = [r for r in dense if (r["image_size"] or 0) == size]
    labels = [esc(f"{r['variant']} ({r['precision']})") for r in dense]
    data = [{"type": "bar", "name": "median latency (ms)", "x": labels, "y": [r["median_ms"] for r in dense],
             "offsetgroup": "latency",
             "error_y": _err([r["ci_lo_ms"] for r in dense], [r["ci_hi_ms"] for r in dense], [r["median_ms"] for r in dense])},
            {"type": "bar", "name": "size (MB)", "x": labels, "y": [r["size_mb"] for r in dense], "yaxis": "y2",
             "offsetgroup": "size"}]
    layout = _layout("fp32 / fp16 / int8: latency and size", "variant", "median latency (ms)", barmode="group",
                     yaxis2={"title": {"text": "size (MB)"}, "overlaying": "y", "side": "right"})
    return _figure("precision", "Quantization: fp32 / fp16 / int8", data, layout)


def layer_study(report: ReportData) -> dict[str, Any] | None:
    rows = _records(report)
    primary = _primary(rows)
    if not primary:
        return None
    pruned = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1] and r["prune_layers"]
              and r["prune_layers"] != "all"]
    if not pruned:
        return None
    data = []
    for layers in sorted({r["prune_layers"] for r in pruned}):
        items = sorted([r for r in pruned if r["prune_layers"] == layers], key=lambda r: r["target_sparsity"] or 0)
        data.append({"type": "bar", "name": esc(f"{layers} pruned"),
                     "x": [f"{100 * (r['target_sparsity'] or 0):.0f}% target" for r in items],
                     "y": [r["median_ms"] for r in items], "text": [esc(f"BLEU {r['bleu']:.1f}") if _ok(r["bleu"]) else ""
                                                                     for r in items],
                     "error_y": _err([r["ci_lo_ms"] for r in items], [r["ci_hi_ms"] for r in items],
                                     [r["median_ms"] for r in items])})
    references = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1]
                  and not r["target_sparsity"] and r["precision"] == pruned[0]["precision"]
                  and r["image_size"] == pruned[0]["image_size"]]
    layout = _layout("Conv vs embedding pruning (bars: latency; label: BLEU)", "pruning", "median latency (ms)",
                     barmode="group")
    if references:
        layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": references[0]["median_ms"],
                             "y1": references[0]["median_ms"], "line": {"dash": "dot", "color": "#555"}}]
        layout["annotations"] = [{"xref": "paper", "x": 1, "y": references[0]["median_ms"], "showarrow": False,
                                  "xanchor": "right", "yanchor": "bottom",
                                  "text": esc(f"dense {references[0]['variant']}")}]
    return _figure("layers", "Conv vs embedding pruning", data, layout)


def input_size_study(report: ReportData) -> dict[str, Any] | None:
    rows = _records(report)
    primary = _primary(rows)
    if not primary:
        return None
    dense = [r for r in rows if r["target_id"] == primary[0] and r["compute_unit"] == primary[1]
             and not r["target_sparsity"] and r["image_size"]]
    data = []
    for precision in sorted({r["precision"] for r in dense}):
        items = sorted([r for r in dense if r["precision"] == precision], key=lambda r: r["image_size"])
        if len({r["image_size"] for r in items}) < 2:
            continue
        data.append({"type": "scatter", "mode": "lines+markers", "name": esc(f"{precision} BLEU"),
                     "x": [r["image_size"] for r in items], "y": [r["bleu"] for r in items],
                     "error_y": _err([r["bleu_lo"] for r in items], [r["bleu_hi"] for r in items],
                                     [r["bleu"] for r in items])})
        data.append({"type": "scatter", "mode": "lines+markers", "name": esc(f"{precision} latency (ms)"),
                     "x": [r["image_size"] for r in items], "y": [r["median_ms"] for r in items], "yaxis": "y2",
                     "line": {"dash": "dot"}})
    if not data:
        return None
    layout = _layout("BLEU vs input size", "input size (pixels)", "BLEU",
                     yaxis2={"title": {"text": "median latency (ms)"}, "overlaying": "y", "side": "right"})
    return _figure("input-size", "Input size: BLEU and latency", data, layout)


def compute_unit_comparison(report: ReportData) -> dict[str, Any] | None:
    rows = [r for r in _records(report) if _ok(r["median_ms"])]
    multi = {r["variant"] for r in rows if sum(1 for o in rows if o["variant"] == r["variant"]) > 1}
    rows = [r for r in rows if r["variant"] in multi]
    if not rows:
        return None
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    data = []
    series: dict[str, dict[str, dict]] = {}
    for r in rows:
        label = f"host-torch cpuOnly — {HOST_EMULATION}" if r["emulated"] else f"{r['device_model']} {r['compute_unit']}"
        series.setdefault(label, {})[r["variant"]] = r
    for label, by_variant in series.items():
        items = [by_variant.get(v) for v in variants]
        first = next(i for i in items if i)
        data.append({"type": "bar", "name": esc(label), "x": [esc(v) for v in variants],
                     "y": [i["median_ms"] if i else None for i in items],
                     "marker": {"color": UNIT_COLORS["host"] if first["emulated"]
                                else UNIT_COLORS.get(first["compute_unit"], "#17becf")},
                     "error_y": _err([i["ci_lo_ms"] if i else None for i in items],
                                     [i["ci_hi_ms"] if i else None for i in items],
                                     [i["median_ms"] if i else None for i in items])})
    return _figure("compute-units", "Compute units: the same variant on each unit", data,
                   _layout("Compute-unit comparison", "variant", "median latency (ms)", barmode="group"))


def trends(report: ReportData) -> dict[str, Any] | None:
    if report.trends is None or report.trends.empty or report.trends["run_id"].nunique() < 2:
        return None
    data = []
    frame = report.trends.sort_values(["created_at", "run_id"])
    for (variant, target, unit), group in frame.groupby(["variant", "target", "compute_unit"], sort=False):
        data.append({"type": "scatter", "mode": "lines+markers", "name": esc(f"{variant} · {target} · {unit}"),
                     "x": [esc(str(v)) for v in group["created_at"]], "y": group["median_ms"].tolist(),
                     "error_y": _err(group["ci_lo_ms"].tolist(), group["ci_hi_ms"].tolist(), group["median_ms"].tolist())})
    return _figure("trends", "Nightly trend: median latency per run", data,
                   _layout("Nightly trend", "run", "median latency (ms)", height=460))


def explanation_figure(index: int, explanation: dict[str, Any]) -> dict[str, Any] | None:
    plan = explanation.get("compute_plan")
    if not plan:
        return None
    a, b = explanation["a"]["name"], explanation["b"]["name"]
    data = []
    units = sorted({s["unit"] for s in plan["unit_shares"]})
    packages = sorted({s["package"] for s in plan["unit_shares"]})
    for unit in units:
        x, y = [], []
        for package in packages:
            for side, name in (("b", b), ("a", a)):
                share = next((s[f"{side}_est_ms"] for s in plan["unit_shares"]
                              if s["package"] == package and s["unit"] == unit), None)
                x.append(esc(f"{package}: {name}"))
                y.append(share)
        data.append({"type": "bar", "name": esc(unit), "x": x, "y": y})
    return _figure(f"explain-{index}", f"{a} vs {b}: estimated time by compute unit", data,
                   _layout("Where the time goes (ESTIMATE: measured package time × Core ML estimated cost share)",
                           "package: variant", "estimated ms", barmode="stack"))


def all_figures(report: ReportData) -> list[dict[str, Any]]:
    figures = [latency_vs_bleu(report), *sparsity_study(report), precision_study(report), layer_study(report),
               input_size_study(report), compute_unit_comparison(report), trends(report)]
    return [f for f in figures if f]
