"""Rich terminal rendering of report data and of `bench explain` (every string escaped with rich.markup.escape)."""

from __future__ import annotations

from typing import Any

from bench.report import cells
from bench.report.data import ReportData
from bench.report.escape import rich as esc


TEXT_COLUMNS = {"variant", "unit", "decoder", "device", "captions changed", "flags", "metric", "what", "verdict", "note", "op", "type", "unit(s)", "package",
                "preferred unit(s)", "seed row", "our variant", "agreement", "why"}


def _table(title: str, columns: list[str], rows: list[list[str]], *, caption: str | None = None):
    from rich import box
    from rich.table import Table

    table = Table(title=esc(title), caption=esc(caption) if caption else None, box=box.SIMPLE_HEAD,
                  title_justify="left", caption_justify="left", header_style="bold")
    for column in columns:
        numeric = column not in TEXT_COLUMNS
        # names stay whole; numbers and notes may wrap on a narrow terminal rather than be cut off
        table.add_column(esc(column), justify="right" if numeric else "left", overflow="fold",
                         no_wrap=column in ("variant", "unit", "op"), min_width=8 if column == "flags" else None)
    for row in rows:
        styled = [esc(cell) for cell in row]
        table.add_row(*styled)
    return table


def render_report(report: ReportData, console) -> None:
    console.print(f"[bold]bench report[/] run {esc(report.run_id)} ({esc(report.created_at)})")
    for group in cells.result_groups(report):
        caption = "host emulation (not Core ML): decompressed weights in PyTorch on the host CPU" if group["emulated"] else None
        console.print(_table(group["title"], cells.RESULT_COLUMNS, group["rows"], caption=caption))
    if report.not_run:
        from bench.report.data import NOT_RUN_TITLE

        console.print(f"[bold]{esc(NOT_RUN_TITLE)}[/]")
        for line in report.not_run:
            console.print(f"  {esc(line)}", highlight=False)
    if report.drift:
        from bench.report.drift import DRIFT_COLUMNS, drift_cells

        console.print(_table("Output drift vs the family reference on cpuOnly (imported models)", DRIFT_COLUMNS,
                             [drift_cells(row) for row in report.drift]))
    if report.device_quality:
        from bench.report import device_quality

        console.print(_table(device_quality.TITLE, device_quality.COLUMNS,
                             device_quality.table_cells(report.device_quality), caption=device_quality.NOTES[0]))
    if report.seed:
        render_seed(report.seed, console)
    if report.decoders:
        from bench.report import decoders

        rows = [r for pair in report.decoders for r in decoders.pair_cells(pair)]
        console.print(_table("Decoder: recompute vs kv_cache (same weights, paired by image)", decoders.COLUMNS, rows))
        for pair in report.decoders:
            console.print(esc(decoders.verdict_line(pair)))
    if report.baseline:
        title = f"Verdicts vs {report.baseline['kind']} {', '.join(report.baseline['run_ids'])}"
        rows = [cells.verdict_cells(v) for v in cells.shown_verdicts(report)]
        console.print(_table(title, cells.VERDICT_COLUMNS, rows))
        regressions = report.regressions
        console.print(f"[bold red]{len(regressions)} regression(s)[/]" if regressions else "[green]no regressions[/]")
    for line in cells.signatures(report):
        console.print(f"[dim]{esc(line)}[/]")
    for note in report.notes:
        console.print(f"[yellow]note:[/] {esc(note)}")


def render_seed(seed: dict[str, Any], console) -> None:
    """The side-by-side with the seed study (bench.report.seed): its table, then the numbered conditions it cites."""
    console.print(_table(seed["title"], seed["columns"], seed["rows"], caption=seed["summary"]))
    for line in seed["conditions"]:
        console.print(f"  {esc(line)}")


def render_explanation(explanation: dict[str, Any], console) -> None:
    console.print(f"[bold]{esc(_question(explanation))}[/] {esc(explanation['target'])} / "
                  f"{esc(explanation['compute_unit'])} (run {esc(explanation['run_id'])})")
    for line in explanation["answer"]:
        console.print(f"  • {esc(line)}")
    for title, columns, rows in explanation_tables(explanation):
        console.print(_table(title, columns, rows))


def _question(explanation: dict) -> str:
    """"Why is A slower than B?" only when the verdict says it is; otherwise the neutral question."""
    a, b = explanation["a"]["name"], explanation["b"]["name"]
    latency = explanation["measured"]["latency"]
    if latency.get("outcome") == "DIFFERENT":
        return f"Why is {a} {'slower' if latency['relative'] > 0 else 'faster'} than {b}?"
    return f"Is {a} faster or slower than {b}?"


def explanation_tables(explanation: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The evidence tables under the answer; shared with Markdown and HTML."""
    a, b = explanation["a"]["name"], explanation["b"]["name"]
    measured = explanation["measured"]
    tables = []
    load_rows = [[row["what"], cells.num(row["b_ms"]), cells.num(row["a_ms"]),
                  "–" if row["delta_ms"] is None else f"{row['delta_ms']:+.1f}"] for row in measured["loads"]]
    load_rows += [[f"{p['package']} (median per prediction)", cells.num(p["b_ms"]), cells.num(p["a_ms"]),
                   "–" if p["delta_ms"] is None else f"{p['delta_ms']:+.1f}"] for p in measured["packages"]]
    tables.append(("Measured times (ms; load times are single measurements)", ["what", f"{b} ms", f"{a} ms", "Δ ms"],
                   load_rows))
    static = explanation.get("static")
    if static:
        rows = [[f"{d['op']} ops", str(d["b"]), str(d["a"]), f"{d['delta']:+d}"]
                for d in static["decompression_ops"] + [d for d in static["op_counts"]
                                                        if d["op"] not in {x["op"] for x in static["decompression_ops"]}]]
        rows.append(["bytes on disk", cells.num(static["bytes"]["total_bytes"]["b"], 0),
                     cells.num(static["bytes"]["total_bytes"]["a"], 0), _delta(static["bytes"]["total_bytes"], 0)])
        rows.append(["measured sparsity", cells.percent(static["sparsity"]["b"]), cells.percent(static["sparsity"]["a"]), ""])
        rows.append(["bits per weight", cells.num(static["bits_per_weight"]["b"], 2),
                     cells.num(static["bits_per_weight"]["a"], 2), _delta(static["bits_per_weight"], 2)])
        rows.append(["weight formats", _formats(static["weight_formats"]["b"]), _formats(static["weight_formats"]["a"]), ""])
        rows.append(["duplicated tensors", _dups(static["duplicated_tensors"]["b"]), _dups(static["duplicated_tensors"]["a"]), ""])
        tables.append(("Static difference (from the stored packages)", ["what", b, a, "Δ"], rows))
    plan = explanation.get("compute_plan")
    if plan:
        share_rows = [[s["package"], s["unit"], cells.percent(s["b_share"], 0), cells.percent(s["a_share"], 0),
                       cells.num(s["b_est_ms"]), cells.num(s["a_est_ms"])] for s in plan["unit_shares"]]
        tables.append(("Estimated cost by compute unit (Core ML estimate, not measured)",
                       ["package", "unit", f"{b} share", f"{a} share", f"{b} est. ms", f"{a} est. ms"], share_rows))
        moved = sorted(plan["moved"], key=lambda m: -(m["a_cost"] or 0))
        moved_rows = [[m["package"], m["op"], str(m["type"]), f"{m['b_unit']} → {m['a_unit']}",
                       cells.num(m["b_est_ms"]), cells.num(m["a_est_ms"])] for m in moved[:12]]
        if len(moved) > 12:
            moved_rows.append(["…", f"{len(moved) - 12} more", "", "", "", ""])
        tables.append((f"Ops that changed compute unit ({len(moved)}; times are estimates)",
                       ["package", "op", "type", "unit(s)", f"{b} est. ms", f"{a} est. ms"], moved_rows))
        added_rows = [[g["type"], str(g["count"]), ", ".join(f"{u} {n}" for u, n in g["units"].items()),
                       cells.num(g["est_ms"]), cells.percent(g["time_share"], 0)] for g in plan["added"]]
        if added_rows:
            tables.append((f"Ops only in {a} (times are estimates)",
                           ["type", "count", "preferred unit(s)", "est. ms", f"est. share of {a} time"], added_rows))
    return tables


def _delta(pair: dict, digits: int) -> str:
    if pair["a"] is None or pair["b"] is None:
        return ""
    return f"{pair['a'] - pair['b']:+,.{digits}f}"


def _formats(formats: dict) -> str:
    return ", ".join(f"{n} {k}" for k, n in formats.items()) or "–"


def _dups(items: list) -> str:
    return ", ".join(f"{d.get('name')} ({cells.num((d.get('bytes') or 0) / 1e6)} MB)" for d in items) or "none"
