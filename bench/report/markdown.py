"""Markdown rendering (CI job summaries). Cells are escaped: pipes, backticks, emphasis and raw HTML."""

from __future__ import annotations

from typing import Any

from bench.report import cells
from bench.report.data import NOT_RUN_TITLE, ReportData
from bench.report.escape import markdown as esc
from bench.report.terminal import explanation_tables


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(esc(cell) for cell in row) + " |" for row in rows]
    return lines


def render_report(report: ReportData) -> str:
    lines = [f"## bench report — run {esc(report.run_id)}", "", f"Created {esc(report.created_at)}.", ""]
    for group in cells.result_groups(report):
        lines += [f"### {esc(group['title'])}", ""]
        if group["emulated"]:
            lines += ["*Host emulation (not Core ML): decompressed weights in PyTorch on the host CPU.*", ""]
        lines += _table(cells.RESULT_COLUMNS, group["rows"]) + [""]
    if report.not_run:
        lines += [f"### {NOT_RUN_TITLE}", ""] + [f"- {esc(line)}" for line in report.not_run] + [""]
    if report.device_quality:
        from bench.report import device_quality

        lines += [f"### {esc(device_quality.TITLE)}", ""] + [f"*{esc(n)}*" for n in device_quality.NOTES] + [""]
        lines += _table(device_quality.COLUMNS, device_quality.table_cells(report.device_quality)) + [""]
    if report.utilisation:
        from bench.run.timing import UTILISATION_COLUMNS

        lines += ["### Device utilisation (share of the run's wall time spent measuring)", ""]
        lines += _table(UTILISATION_COLUMNS, report.utilisation) + [""]
    if report.drift:
        from bench.report.drift import DRIFT_COLUMNS, drift_cells

        lines += ["### Output drift vs the family reference on cpuOnly (imported models)", ""]
        lines += _table(DRIFT_COLUMNS, [drift_cells(row) for row in report.drift]) + [""]
    if report.decoders:
        from bench.report import decoders

        lines += ["### Decoder: recompute vs kv_cache (same weights, paired by image)", ""]
        lines += _table(decoders.COLUMNS, [r for pair in report.decoders for r in decoders.pair_cells(pair)]) + [""]
        lines += [f"- {esc(decoders.verdict_line(pair))}" for pair in report.decoders] + [""]
    if report.baseline:
        lines += [f"### Verdicts vs {esc(report.baseline['kind'])} {esc(', '.join(report.baseline['run_ids']))}", ""]
        regressions = report.regressions
        lines += [f"**{len(regressions)} regression(s)**" if regressions else "**No regressions.**", ""]
        shown = [cells.verdict_cells(v) for v in cells.shown_verdicts(report)]
        lines += _table(cells.VERDICT_COLUMNS, shown) + [""]
        hidden = len(report.verdicts) - len(shown)
        lines += [f"{hidden} comparisons not listed: size / sparsity / quality SAME, latency parts and tokens per "
                  "caption not DIFFERENT.", ""]
    if report.explanations:
        lines += ["### Pruned variants vs their dense twins (bench explain)", ""]
        for explanation in report.explanations:
            lines += [f"- **{esc(cells.explanation_summary(explanation))}**: " + esc(explanation["answer"][0])]
        lines += [""]
    if report.seed:
        lines += render_seed(report.seed).splitlines() + [""]
    signatures = cells.signatures(report)
    if signatures:
        lines += ["Signatures: " + "; ".join(f"`{s.replace('`', '')}`" for s in signatures), ""]
    for note in report.notes:
        lines += [f"> note: {esc(note)}", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_explanation(explanation: dict[str, Any]) -> str:
    lines = [f"### {esc(cells.explanation_summary(explanation))}", ""]
    lines += [f"- {esc(line)}" for line in explanation["answer"]] + [""]
    for title, columns, rows in explanation_tables(explanation):
        lines += [f"**{esc(title)}**", ""] + _table(columns, rows) + [""]
    return "\n".join(lines).rstrip() + "\n"


def render_seed(seed: dict[str, Any]) -> str:
    """The side-by-side with the seed study (bench.report.seed): its table and the numbered conditions it cites."""
    lines = [f"### {esc(seed['title'])}", "", esc(seed["source"]), "", f"**{esc(seed['summary'])}** {esc(seed['legend'])}", ""]
    lines += _table(seed["columns"], seed["rows"]) + [""]
    lines += [f"- {esc(condition)}" for condition in seed["conditions"]]
    return "\n".join(lines).rstrip() + "\n"
