"""One self-contained HTML file: bench/report/templates/report.html filled with the report's JSON and plotly.js inline.

No network: plotly.js is embedded from the installed plotly package (`plotly.offline.get_plotlyjs()`), the data as JSON
inside <script type="application/json"> escaped so no string can close the script element; the page builds its tables
with textContent, so device-supplied strings are never parsed as HTML.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.report import cells, figures
from bench.report.data import HOST_EMULATION, ReportData
from bench.report.escape import json_for_script
from bench.report.terminal import explanation_tables

# The seed study's figures (bench.report.figures), drawn from any run that holds their axes.
SEED_FIGURES = ("sparsity-size", "sparsity-latency", "sparsity-bleu", "precision", "layers", "input-size", "model-size")
TEMPLATE = Path(__file__).resolve().parent / "templates" / "report.html"


def view_model(report: ReportData) -> dict[str, Any]:
    """Everything the page shows, as strings and figure specs (the template only places them)."""
    figs = {f["id"]: f for f in figures.all_figures(report)}
    sections = [{"id": "results", "title": "Results per variant × target × compute unit",
                 "notes": ["Latency: median with the 95 % CI of the median (order statistics); warm-ups excluded.",
                           *("Signature — " + s for s in cells.signatures(report))],
                 "tables": [{"title": g["title"], "emulated": g["emulated"], "columns": cells.RESULT_COLUMNS,
                             "rows": g["rows"]} for g in cells.result_groups(report)]}]
    if report.not_run:
        from bench.report.data import NOT_RUN_TITLE

        sections.append({"id": "not-run", "title": NOT_RUN_TITLE,
                         "notes": ["Left out before anything was pushed; not failures, never regressions.",
                                   *report.not_run]})
    if report.device_quality:
        from bench.report import device_quality

        sections.append({"id": "device-quality", "title": device_quality.TITLE, "notes": device_quality.NOTES,
                         "tables": [{"title": device_quality.TITLE, "columns": device_quality.COLUMNS,
                                     "rows": device_quality.table_cells(report.device_quality)}]})
    if report.utilisation:
        from bench.run.timing import UTILISATION_COLUMNS

        sections.append({"id": "utilisation", "title": "Device utilisation",
                         "notes": ["Share of the run's wall time each device spent measuring (sum of its samples); "
                                   "in a lab, the seconds its jobs spent queued, moving packages to the host, "
                                   "deploying to the phone and in the runner: where a lab's bottleneck is."],
                         "tables": [{"title": "Device utilisation", "columns": UTILISATION_COLUMNS,
                                     "rows": report.utilisation}]})
    if report.drift:
        from bench.report.drift import DRIFT_COLUMNS, drift_cells

        sections.append({"id": "drift", "title": "Output drift (imported models)",
                         "notes": ["Each output over the fixed seeded input set, against the family's reference on "
                                   "cpuOnly on the same device: max abs error, relative L2, cosine similarity, and "
                                   "top-1 agreement where the output looks like class scores."],
                         "tables": [{"title": "Output drift vs the family reference on cpuOnly",
                                     "columns": DRIFT_COLUMNS, "rows": [drift_cells(r) for r in report.drift]}],
                         "figures": ["drift"] if "drift" in figs else []})
    if report.decoders:
        from bench.report import decoders

        sections.append({"id": "decoders", "title": "Decoder: recompute vs kv_cache",
                         "notes": ["The same compressed weights decoded two ways: recomputing every position per "
                                   "token vs the self-attention cache in Core ML state (iOS 18). Paired by image; "
                                   "the recomputing decoder is the baseline.",
                                   *(decoders.verdict_line(pair) for pair in report.decoders)],
                         "tables": [{"title": "recompute vs kv_cache", "columns": decoders.COLUMNS,
                                     "rows": [r for pair in report.decoders for r in decoders.pair_cells(pair)]}]})
    if report.baseline:
        regressions = report.regressions
        sections.append({"id": "verdicts", "title": f"Verdicts vs {report.baseline['kind']} "
                                                     f"{', '.join(report.baseline['run_ids'])}",
                         "notes": [f"{len(regressions)} regression(s)." if regressions else "No regressions.",
                                   "Latency: SAME when the 95 % CI of the median ratio (Price–Bonett) lies inside "
                                   "±3 %; DIFFERENT when significant (median-ratio z test and Mann–Whitney U, "
                                   "α = 0.01) and at least 3 %; else UNKNOWN. Quality: paired bootstrap; size and "
                                   "sparsity: exact. The report's error control is stated in the notes."],
                         "tables": [{"title": "Verdicts (latency, and every change found)",
                                     "columns": cells.VERDICT_COLUMNS,
                                     "rows": [cells.verdict_cells(v) for v in cells.shown_verdicts(report)]}]})
    def add(section_id: str, title: str, ids: list[str], notes: list[str] | None = None) -> None:
        present = [i for i in ids if i in figs]
        if present:
            sections.append({"id": section_id, "title": title, "figures": present, "notes": notes or []})

    add("quality-speed", "Latency vs BLEU", ["pareto"],
        [f"Crosses are host-torch points: {HOST_EMULATION}."])
    add("studies", "The seed's studies", list(SEED_FIGURES),
        ["Sizes, sparsity and BLEU belong to the variant and are exact on any target; latency panels name where they "
         f"were measured (host-torch: {HOST_EMULATION})."])
    if report.seed:
        seed = report.seed
        sections.append({"id": "seed", "title": seed["title"], "notes": [seed["source"], seed["summary"], seed["legend"]],
                         "tables": [{"title": "The seed's figures and ours, as ratios to each side's fp32",
                                     "columns": seed["columns"], "rows": seed["rows"]}],
                         "footnotes": seed["conditions"]})
    add("compute-units", "Compute-unit comparison", ["compute-units"])
    add("trends", "Nightly trend", ["trends"])
    if report.explanations:
        sections.append({"id": "explain", "title": "Pruned variants vs their dense twins (bench explain)",
                         "notes": ["Per-op times are ESTIMATES: the package's measured median time × Core ML's "
                                   "estimated cost share of the op (MLComputePlan), never a measurement."]})
        for index, explanation in enumerate(report.explanations):
            figure = figures.explanation_figure(index, explanation)
            if figure:
                figs[figure["id"]] = figure
            sections.append({"id": f"explain-{index}", "level": 3, "title": cells.explanation_summary(explanation),
                             "answer": explanation["answer"],
                             "tables": [{"title": t, "columns": c, "rows": r} for t, c, r in explanation_tables(explanation)],
                             "figures": [figure["id"]] if figure else []})
    return {"title": f"bench report — {report.run_id}",
            "subtitle": f"run {report.run_id}, created {report.created_at}",
            "banner": list(report.notes), "sections": sections, "figures": figs}


def render_html(report: ReportData) -> str:
    import plotly.offline

    from bench.report.data import _jsonable
    from bench.report.escape import html_text

    model = _jsonable(view_model(report))
    plotly_js = plotly.offline.get_plotlyjs().replace("</script", "<\\/script")
    values = {"TITLE": html_text(model["title"]), "REPORT_JSON": json_for_script(model), "PLOTLY_JS": plotly_js}
    template = TEMPLATE.read_text(encoding="utf-8")
    # one pass, so text inserted for one placeholder is never searched for another
    return re.sub(r"\{\{(TITLE|REPORT_JSON|PLOTLY_JS)\}\}", lambda m: values[m.group(1)], template)
