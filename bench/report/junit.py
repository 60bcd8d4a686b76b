"""JUnit XML of the verdicts: each metric comparison is a test case; a regression is a failure, UNKNOWN is skipped;
a (variant, device) pair the run left out because the device's OS is too old is a skipped case with its line."""

from __future__ import annotations

import re
from pathlib import Path
from xml.etree import ElementTree as ET

from bench import atomic
from bench.report import cells
from bench.report.data import ReportData

_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: object) -> str:
    """ElementTree escapes markup; characters XML 1.0 cannot hold at all are dropped."""
    return _XML_INVALID.sub("", str(text))


def junit_xml(report: ReportData) -> str:
    baseline = ", ".join((report.baseline or {}).get("run_ids") or []) or "none"
    suite = ET.Element("testsuite", name=_clean(f"bench report {report.run_id} vs {baseline}"))
    failures = skipped = 0
    for verdict in report.verdicts:
        row = cells.verdict_cells(verdict)
        case = ET.SubElement(suite, "testcase", classname=_clean(f"bench.{verdict.metric.replace(' ', '_')}"),
                             name=_clean(verdict.key), time="0")
        summary = _clean(f"{verdict.outcome}: baseline {row[2]}, current {row[3]}, change {row[4]}, CI {row[5]}, "
                         f"p {row[6]} — {verdict.detail}")
        if verdict.regression:
            failures += 1
            failure = ET.SubElement(case, "failure", message=summary, type="regression")
            failure.text = summary
        elif verdict.outcome == "UNKNOWN":
            skipped += 1
            ET.SubElement(case, "skipped", message=summary)
        else:
            ET.SubElement(case, "system-out").text = summary
    for line in report.not_run:  # pairs the plan left out (device OS too old): skipped, never a failure
        skipped += 1
        case = ET.SubElement(suite, "testcase", classname="bench.not_run",
                             name=_clean(line.removesuffix(": not run")), time="0")
        ET.SubElement(case, "skipped", message=_clean(line), type="device OS older than the packages need")
    tests = len(report.verdicts) + len(report.not_run)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites", name="bench", tests=str(tests), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: ReportData, path: Path | str) -> Path:
    from bench.report import output_path

    text = junit_xml(report)
    with output_path(path):
        return atomic.write_text(path, text)
