"""Plotly figure specs (plain dicts: data + layout) built from report data, for the HTML report.

Every label is HTML-escaped because Plotly renders a subset of HTML in text and decodes entities: a device name like
`<img src=x onerror=...>` is shown as text, never interpreted. Host-torch points are labelled host emulation.
"""

from __future__ import annotations

from typing import Any

from bench.report.data import HOST_EMULATION, ReportData, table_records
from bench.report.escape import html_text as esc
from bench.report.study import Study, is_dense, most_common, ok as _ok, primary_source as _primary, seed_study

UNIT_COLORS = {"all": "#1f77b4", "cpuAndNeuralEngine": "#2ca02c", "cpuAndGPU": "#9467bd", "cpuOnly": "#ff7f0e",
               "host": "#7f7f7f"}


def _layout(title: str, x: str, y: str, **extra) -> dict[str, Any]:
    right = 60 if "yaxis2" in extra else 20  # room for the second axis' tick labels
    return {"title": {"text": esc(title), "x": 0.02, "xanchor": "left"}, "xaxis": {"title": {"text": esc(x)}},
            "yaxis": {"title": {"text": esc(y)}}, "margin": {"l": 60, "r": right, "t": 50, "b": 50}, "height": 380,
            "legend": {"orientation": "h", "y": -0.24, "yanchor": "top"}, **extra}  # rows grow downwards


def _figure(fig_id: str, title: str, data: list, layout: dict, note: str = "") -> dict[str, Any]:
    return {"id": fig_id, "title": title, "note": note, "data": data, "layout": layout}


def _study_figure(study: Study, fig_id: str, title: str, data: list, layout: dict) -> dict[str, Any]:
    """A seed-study figure that shows latency: its title and note say where latency was measured (host-torch is host
    emulation, and says so on the plot itself)."""
    if study.emulated:
        layout["title"]["text"] += esc(" · host emulation")
    note = (f"Latency: {study.latency_label} — {HOST_EMULATION}: the variants' weights decompressed into PyTorch on "
            "the host CPU." if study.emulated else f"Latency: {study.latency_label}." if study.latency_label else "")
    return _figure(fig_id, study.titled(title), data, layout, note)


def _records(report: ReportData) -> list[dict]:
    return table_records(report.table)


def _err(lo, hi, value) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "array": [None if h is None else h - v for h, v in zip(hi, value)],
            "arrayminus": [None if lo_ is None else v - lo_ for lo_, v in zip(lo, value)]}


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
        where = f"host-torch {primary[1]}, {HOST_EMULATION}" if items and items[0]["emulated"] else primary[1]
        data.append({"type": "scatter", "mode": "lines", "name": esc(f"Pareto frontier ({where})"),
                     "x": [r["median_ms"] for r in front], "y": [r["bleu"] for r in front],
                     "line": {"dash": "dash", "color": "#d62728"}})
    return _figure("pareto", "Latency vs BLEU (Pareto frontier: nothing is both faster and better)", data,
                   _layout("Latency vs BLEU", "median latency (ms)", "BLEU"))


def _latency_trace(items: list[dict], **trace) -> dict[str, Any]:
    y = [v["median_ms"] for v in items]
    return {**trace, "y": y, "error_y": _err([v["ci_lo_ms"] for v in items], [v["ci_hi_ms"] for v in items], y)}


def _bleu_error(items: list[dict]) -> dict[str, Any]:
    return _err([v["bleu_lo"] for v in items], [v["bleu_hi"] for v in items], [v["bleu"] for v in items])


def sparsity_study(report: ReportData) -> list[dict[str, Any]]:
    """Size, latency and BLEU vs measured sparsity: every variant pruned in all layers, one line per precision, each
    starting at its dense twin (same captioner, input size and resize mode)."""
    study = seed_study(report)
    if study is None:
        return []
    native = study.at_native_axes()
    sweeps = {}
    for precision in dict.fromkeys(v["precision"] for v in native if v["prune_layers"] == "all"):
        items = [v for v in native if v["precision"] == precision and _ok(v["sparsity"])
                 and (v["prune_layers"] == "all" or is_dense(v))]
        sweeps[precision] = sorted(items, key=lambda v: v["sparsity"])
    if not sweeps:
        return []
    panels = (("sparsity-size", "size_mb", "size on disk (MB)"), ("sparsity-latency", "median_ms", "median latency (ms)"),
              ("sparsity-bleu", "bleu", "BLEU"))
    figures = []
    for fig_id, column, label in panels:
        data = []
        for precision, items in sweeps.items():
            trace = {"type": "scatter", "mode": "lines+markers+text", "name": esc(f"{precision} pruned"),
                     "x": [100 * v["sparsity"] for v in items], "text": [esc(v["variant"]) for v in items],
                     "textposition": "top center"}
            if column == "median_ms":
                data.append(_latency_trace(items, **trace))
            else:
                data.append({**trace, "y": [v[column] for v in items],
                             **({"error_y": _bleu_error(items)} if column == "bleu" else {})})
        title = f"Pruning sweep: {label} vs measured sparsity"
        layout = _layout(f"{label} vs sparsity", "measured sparsity (%)", label, showlegend=len(sweeps) > 1)
        figures.append(_study_figure(study, fig_id, title, data, layout) if column == "median_ms"
                       else _figure(fig_id, title, data, layout))
    return figures


def precision_study(report: ReportData) -> dict[str, Any] | None:
    """fp32 / fp16 / int8 (and every other unpruned format): latency and size side by side, BLEU as the label."""
    study = seed_study(report)
    dense = [v for v in study.at_native_axes() if is_dense(v)] if study else []
    if not dense:
        return None
    labels = [esc(f"{v['variant']} ({v['precision']})") for v in dense]
    data = [_latency_trace(dense, type="bar", name=esc(f"median latency (ms) — {study.latency_label}"), x=labels,
                           offsetgroup="latency"),
            {"type": "bar", "name": "size (MB)", "x": labels, "y": [v["size_mb"] for v in dense], "yaxis": "y2",
             "offsetgroup": "size", "text": [esc(f"BLEU {v['bleu']:.1f}") if _ok(v["bleu"]) else "" for v in dense]}]
    layout = _layout("fp32 / fp16 / int8: latency and size", "variant", "median latency (ms)", barmode="group",
                     yaxis2={"title": {"text": "size (MB)"}, "overlaying": "y", "side": "right"})
    return _study_figure(study, "precision", "Quantization: fp32 / fp16 / int8", data, layout)


def layer_study(report: ReportData) -> dict[str, Any] | None:
    """Pruning only some layers (conv, embedding) at each target sparsity: latency bars, BLEU and size as labels."""
    study = seed_study(report)
    native = study.at_native_axes() if study else []
    pruned = [v for v in native if v["prune_layers"] and v["prune_layers"] != "all" and ":" not in v["prune_layers"]]
    if not pruned:
        return None
    data = []
    for layers in sorted({v["prune_layers"] for v in pruned}):
        items = sorted([v for v in pruned if v["prune_layers"] == layers], key=lambda v: v["target_sparsity"] or 0)
        data.append(_latency_trace(
            items, type="bar", name=esc(f"{layers} pruned"),
            x=[f"{100 * (v['target_sparsity'] or 0):.0f}% target" for v in items],
            text=[esc(" · ".join(part for part in (f"BLEU {v['bleu']:.1f}" if _ok(v["bleu"]) else "",
                                                   f"{v['size_mb']:.2f} MB" if _ok(v["size_mb"]) else "") if part))
                  for v in items]))
    references = [v for v in native if is_dense(v) and v["precision"] == pruned[0]["precision"]
                  and _ok(v["median_ms"])]
    layout = _layout("Conv vs embedding pruning", "pruning (bars: latency; labels: BLEU, size)", "median latency (ms)",
                     barmode="group")
    if references:
        reference = references[0]
        layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": reference["median_ms"],
                             "y1": reference["median_ms"], "line": {"dash": "dot", "color": "#555"}}]
        layout["annotations"] = [{"xref": "paper", "x": 1, "y": reference["median_ms"], "showarrow": False,
                                  "xanchor": "right", "yanchor": "bottom", "text": esc(f"dense {reference['variant']}")}]
    return _study_figure(study, "layers", "Conv vs embedding pruning", data, layout)


def input_size_study(report: ReportData) -> dict[str, Any] | None:
    """BLEU (and latency, dotted) vs input size: one line per captioner × precision × resize mode (crop vs resize)
    of unpruned variants with at least two sizes."""
    study = seed_study(report)
    if study is None:
        return None
    dense = [v for v in study.variants if is_dense(v) and v["image_size"]]
    groups: dict[tuple, list[dict]] = {}
    for v in dense:
        groups.setdefault((v["model"], v["precision"], v["resize"]), []).append(v)
    several_models = len({key[0] for key in groups}) > 1
    data = []
    for (model, precision, resize), items in groups.items():
        items = sorted(items, key=lambda v: v["image_size"])
        if len({v["image_size"] for v in items}) < 2:
            continue
        name = " ".join(str(part) for part in ((model,) if several_models else ()) + (precision, resize))
        x = [v["image_size"] for v in items]
        data.append({"type": "scatter", "mode": "lines+markers", "name": esc(f"{name}: BLEU"), "x": x,
                     "y": [v["bleu"] for v in items], "error_y": _bleu_error(items)})
        if any(_ok(v["median_ms"]) for v in items):
            data.append(_latency_trace(items, type="scatter", mode="lines+markers", name=esc(f"{name}: latency (ms)"),
                                       x=x, yaxis="y2", line={"dash": "dot"}))
    if not data:
        return None
    layout = _layout("BLEU vs input size, crop vs resize", "input size (pixels); solid: BLEU, dotted: latency", "BLEU",
                     yaxis2={"title": {"text": "median latency (ms)"}, "overlaying": "y", "side": "right"})
    return _study_figure(study, "input-size", "Input size, crop vs resize: BLEU and latency", data, layout)


def model_size_study(report: ReportData) -> dict[str, Any] | None:
    """Base vs large: for each captioner, its unpruned variants at its most common input size, BLEU bars per
    precision (size and latency as labels)."""
    study = seed_study(report)
    models = list(dict.fromkeys(v["model"] for v in study.variants)) if study else []
    if len(models) < 2:
        return None
    data = []
    for model in models:
        mine = [v for v in study.variants if v["model"] == model and is_dense(v)]
        if not mine:
            continue
        native = most_common([(v["image_size"], v["resize"]) for v in mine])
        items = [v for v in mine if (v["image_size"], v["resize"]) == native]
        params = items[0]["model_params"]
        name = f"{model} ({params / 1e6:.2f} M params)" if _ok(params) else str(model)
        data.append({"type": "bar", "name": esc(name), "x": [esc(v["precision"]) for v in items],
                     "y": [v["bleu"] for v in items], "error_y": _bleu_error(items),
                     "text": [esc(" · ".join(p for p in (f"{v['size_mb']:.1f} MB" if _ok(v["size_mb"]) else "",
                                                          f"{v['median_ms']:.0f} ms" if _ok(v["median_ms"]) else "")
                                             if p)) for v in items]})
    if len(data) < 2:
        return None
    return _study_figure(study, "model-size", "Captioner size: BLEU per precision, labels size and latency", data,
                         _layout("Base vs large captioner", "precision (labels: size, latency)", "BLEU",
                                 barmode="group"))


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


def drift_figure(report: ReportData) -> dict[str, Any] | None:
    """Imported models: relative L2 drift of each output per compute unit, against the family's reference on cpuOnly
    (bench.report.drift)."""
    shown = [r for r in report.drift if r.get("rel_l2") is not None]
    if not shown:
        return None
    labels = list(dict.fromkeys(f"{r['variant']} · {r['output']}" for r in shown))
    data = []
    for unit in dict.fromkeys(r["compute_unit"] for r in shown):
        by_label = {f"{r['variant']} · {r['output']}": r["rel_l2"] for r in shown if r["compute_unit"] == unit}
        data.append({"type": "bar", "name": esc(unit), "x": [esc(label) for label in labels],
                     "y": [by_label.get(label) for label in labels],
                     "marker": {"color": UNIT_COLORS.get(unit, "#17becf")}})
    return _figure("drift", "Output drift per compute unit", data,
                   _layout("Output drift vs the family reference on cpuOnly", "variant · output", "relative L2",
                           barmode="group"))


def all_figures(report: ReportData) -> list[dict[str, Any]]:
    figures = [latency_vs_bleu(report), *sparsity_study(report), precision_study(report), layer_study(report),
               input_size_study(report), model_size_study(report), compute_unit_comparison(report), trends(report),
               drift_figure(report)]
    return [f for f in figures if f]
