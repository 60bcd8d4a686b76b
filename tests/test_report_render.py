"""Rendering of report data: golden Markdown / terminal tables from the fixed fixture, escaping, exports, JUnit, CLI.

Regenerate the golden files after an intended change with BENCH_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from rich.console import Console

from bench.cli import main
from bench.report import markdown, terminal, write_report
from bench.report.data import HOST_EMULATION, build_report
from bench.report.escape import json_for_script, markdown as md_escape
from bench.report.html import render_html
from bench.report.junit import junit_xml
from report_fixtures import BASELINE, CURRENT, EVIL_OP, check_golden, copy_fixture, make_evil


@pytest.fixture(scope="module")
def report():
    return build_report(CURRENT, baseline=BASELINE)


def terminal_text(render) -> str:
    console = Console(record=True, width=220, file=io.StringIO(), color_system=None, force_terminal=False)
    render(console)
    return console.export_text()


def test_markdown_golden(report):
    check_golden("report_nightly.md", markdown.render_report(report))


def test_terminal_golden(report):
    check_golden("report_nightly.txt", terminal_text(lambda c: terminal.render_report(report, c)))


def test_explain_golden(report):
    explanation = next(e for e in report.explanations if e["a"]["name"] == "prune-0.20" and e["compute_unit"] == "all")
    check_golden("report_explain_prune-0.20_fp32.txt", terminal_text(lambda c: terminal.render_explanation(explanation, c)))


def test_markdown_escapes_device_strings(report):
    text = markdown.render_report(report)
    assert "lab iPhone\\|13 Pro" in text  # the fixture's device name carries a pipe
    assert md_escape("a|b`c<script>") == "a\\|b\\`c&lt;script&gt;"


def test_host_emulation_label_everywhere(report):
    assert HOST_EMULATION in markdown.render_report(report)
    assert HOST_EMULATION in terminal_text(lambda c: terminal.render_report(report, c))
    assert render_html(report).count(HOST_EMULATION) >= 3


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    root = copy_fixture(tmp_path_factory.mktemp("evil"))
    return build_report(make_evil(root), baseline=root / "results" / BASELINE.name)


def test_evil_device_and_op_names_are_escaped_everywhere(evil_report):
    md = markdown.render_report(evil_report)
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    text = terminal_text(lambda c: terminal.render_report(evil_report, c))
    assert "[bold]x[/bold]" in text  # printed literally, not interpreted as style markup
    explained = terminal_text(lambda c: terminal.render_explanation(evil_report.explanations[0], c))
    assert EVIL_OP in explained
    html = render_html(evil_report)
    assert "<img src=x" not in html and EVIL_OP not in html
    assert html.count("</script>") == html.count("<script")  # nothing closes a script element early


def test_json_embedding_cannot_break_out():
    text = json_for_script({"name": "</script><!-- \u2028 &"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text


def test_html_is_self_contained(report):
    import plotly.offline

    html = render_html(report)
    assert "<script src" not in html and "<link" not in html
    ours = html.replace(plotly.offline.get_plotlyjs().replace("</script", "<\\/script"), "")
    assert len(ours) < len(html) - 1_000_000  # plotly.js is inline …
    assert "http://" not in ours and "https://" not in ours  # … and nothing else points outside
    assert '"id":"pareto"' in ours


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_exports_hold_the_merged_table(report, tmp_path, fmt):
    path = write_report(report, fmt, tmp_path / f"table.{fmt}")
    table = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    assert len(table) == len(report.table) and {"median_ms", "bleu", "sparsity", "run_id", "emulated"} <= set(table.columns)
    assert table.loc[table.target_kind == "host-torch", "target"].str.contains("host emulation").all()


def test_junit_marks_regressions_as_failures(report):
    root = ET.fromstring(junit_xml(report))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    unknown = sum(v.outcome == "UNKNOWN" for v in report.verdicts)
    assert len(cases) == len(report.verdicts) and suite.get("failures") == "1" and suite.get("skipped") == str(unknown)
    failed = [c for c in cases if c.find("failure") is not None]
    assert failed[0].get("name") == "prune-0.20 · iPhone14,2 · all"


def test_junit_escapes(evil_report):
    ET.fromstring(junit_xml(evil_report))  # parses: device strings did not break the XML


def test_cli_fail_on_regression_exit_code_and_junit(tmp_path, capsys):
    junit = tmp_path / "verdicts.xml"
    code = main(["report", str(CURRENT), "--baseline", str(BASELINE), "--format", "markdown",
                 "--fail-on", "regression", "--junit", str(junit)])
    assert code == 1
    assert "regression" in capsys.readouterr().err
    assert junit.is_file()
    assert main(["report", str(CURRENT), "--baseline", str(BASELINE), "--format", "markdown"]) == 0


def test_cli_without_regressions_passes(capsys):
    code = main(["report", str(CURRENT), "--baseline", str(CURRENT.parent / "nightly-2026-11-26"),
                 "--fail-on", "regression"])
    out = capsys.readouterr()
    assert code == 1  # 26 → 28 also regressed prune-0.20
    assert "prune-0.20" in out.err


def test_cli_writes_html_and_requires_out(tmp_path, capsys):
    assert main(["report", str(CURRENT), "--format", "html", "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000
    assert main(["report", str(CURRENT), "--format", "csv"]) == 2
    assert "--out" in capsys.readouterr().err


def test_cli_bad_inputs_are_one_line(capsys):
    assert main(["report", str(CURRENT), "--format", "pdf"]) == 2
    assert main(["report", str(CURRENT), "--fail-on", "regression"]) == 2
    assert main(["explain", "prune-0.2", "fp32", "--run", str(CURRENT)]) == 2
    err = capsys.readouterr().err
    assert "unknown report format" in err and "did you mean 'prune-0.20'" in err and "Traceback" not in err


def test_cli_unwritable_output_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["report", str(CURRENT), "--format", "markdown", "--out", str(tmp_path)]) == 2  # a directory
    assert main(["report", str(CURRENT), "--baseline", str(BASELINE), "--junit", str(blocker / "v.xml")]) == 2
    err = capsys.readouterr().err
    assert err.count("cannot write") == 2 and "Traceback" not in err


def test_cli_explain_prints_the_answer(capsys):
    assert main(["explain", "prune-0.20", "fp32", "--run", str(CURRENT), "--device", "iPhone14,2",
                 "--compute-unit", "cpuAndNeuralEngine"]) == 0
    out = capsys.readouterr().out
    assert "left the Neural Engine" in out and "estimate" in out


def test_cli_explain_markdown_and_terminal_file(tmp_path, capsys):
    assert main(["explain", "prune-0.36", "fp32", "--run", str(CURRENT), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### prune-0.36 vs fp32") and "| Neural Engine" not in out.split("\n")[0]
    assert "(estimate)" in out and "lab iPhone\\|13 Pro" in out
    assert main(["report", str(CURRENT), "--out", str(tmp_path / "report.txt")]) == 0
    assert "host emulation (not Core ML)" in (tmp_path / "report.txt").read_text()
