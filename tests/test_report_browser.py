"""The HTML report opened in real headless Chromium (Debian's `chromium` package), offline.

Checks: every Plotly figure rendered (`.main-svg` elements; the page sets data-report-ready to the number of plots
once Plotly.newPlot resolved), no JavaScript error (window.onerror counter and no CONSOLE lines in Chromium's log —
the page logs nothing when all is well), device-supplied strings shown as text (an `<img onerror>` device name never
becomes an element). A screenshot is kept in artifacts/report.png. Skips when /usr/bin/chromium is absent
(CI installs it: `apt-get install -y chromium`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.report.data import build_report
from bench.report.html import render_html, view_model
from report_fixtures import BASELINE, EVIL_NAME, copy_fixture, make_evil

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (/usr/bin/chromium): "
                                "apt-get install -y chromium")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars", "--virtual-time-budget=20000"]


def chromium(user_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={user_dir}", *args], capture_output=True,
                          text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    root = copy_fixture(tmp)
    report = build_report(make_evil(root), baseline=root / "results" / BASELINE.name)
    html = tmp / "report.html"
    html.write_text(render_html(report), encoding="utf-8")
    n_figures = sum(len(s.get("figures") or []) for s in view_model(report)["sections"])
    dump = chromium(tmp / "profile-dom", "--enable-logging=stderr", "--v=0", "--dump-dom", html.as_uri())
    return {"html": html, "dom": dump.stdout, "log": dump.stderr, "code": dump.returncode, "figures": n_figures,
            "tmp": tmp}


def test_every_plot_rendered(page):
    assert page["code"] == 0, page["log"][-2000:]
    ready = re.search(r'data-report-ready="(\d+)"', page["dom"])
    assert ready and int(ready.group(1)) == page["figures"] >= 10
    assert page["dom"].count('class="main-svg"') >= page["figures"]  # Plotly draws ≥ 1 svg per figure


def test_no_javascript_errors(page):
    assert 'data-report-errors="0"' in page["dom"]
    console = [line for line in page["log"].splitlines() if ":CONSOLE" in line]
    assert console == [], console


def test_device_strings_render_as_text(page):
    dom = page["dom"]
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom  # shown …
    assert "<img src=" not in dom  # … never an element
    assert "[bold]x[/bold]" in dom
    assert json.dumps(EVIL_NAME)[1:-1] not in page["html"].read_text(encoding="utf-8")


def test_screenshot_is_kept(page):
    shot = page["tmp"] / "report.png"
    result = chromium(page["tmp"] / "profile-shot", "--window-size=1400,5200", f"--screenshot={shot}",
                      page["html"].as_uri())
    assert result.returncode == 0 and shot.stat().st_size > 50_000, result.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")


# ----------------------------------------------------------------------------------------------- the default run
# The seed study's figures the default run's report must draw (bench.report.figures; the issue 13 must-hold), and the
# side-by-side section with the seed's published figures.
DEFAULT_RUN_FIGURES = ["pareto", "sparsity-size", "sparsity-latency", "sparsity-bleu", "precision", "layers",
                       "input-size"]
# Base vs large is drawn when the run holds two captioners: required as soon as the default matrix names a second one.
MODEL_SIZE_FIGURE = "model-size"


def default_matrix_captioners() -> set[str]:
    from bench.build.matrix import load_matrix
    from bench.paths import DEFAULT_MATRIX

    matrix = load_matrix(DEFAULT_MATRIX)
    return {matrix.source_of(entry) for entry in matrix.variants}


def drawn_figures(dom: str) -> dict[str, bool]:
    """Each figure box of the page (id fig-NAME) and whether Plotly drew an svg into it."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'<div class="figure[^"]*" id="fig-([\w-]+)"', dom)]
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return {name: 'class="main-svg"' in dom[start:end] for (start, name), end in zip(starts, ends)}


@pytest.fixture(scope="module")
def default_page(default_run, tmp_path_factory):
    """The report.html the default run wrote (not re-rendered), opened in Chromium; a screenshot kept in
    artifacts/default-run-report.png."""
    tmp = tmp_path_factory.mktemp("browser-default")
    html = default_run.run_dir / "report.html"
    assert html.is_file(), f"the default run wrote no report.html: {default_run.notes}"
    dump = chromium(tmp / "profile-dom", "--enable-logging=stderr", "--v=0", "--dump-dom", html.as_uri())
    shot = tmp / "default-run-report.png"
    screenshot = chromium(tmp / "profile-shot", "--window-size=1400,7000", f"--screenshot={shot}", html.as_uri())
    return {"dom": dump.stdout, "log": dump.stderr, "code": dump.returncode, "shot": shot, "screenshot": screenshot}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the session's default run builds the whole matrix once
def test_default_run_report_draws_every_seed_figure(default_page):
    dom = default_page["dom"]
    assert default_page["code"] == 0 and "</html>" in dom, default_page["log"][-2000:]
    boxes = drawn_figures(dom)
    wanted = DEFAULT_RUN_FIGURES + ([MODEL_SIZE_FIGURE] if len(default_matrix_captioners()) > 1 else [])
    missing = [fig_id for fig_id in wanted if not boxes.get(fig_id)]
    assert missing == [], f"figures not drawn: {missing} (drawn: {sorted(k for k, v in boxes.items() if v)})"
    ready = re.search(r'data-report-ready="(\d+)"', dom)
    assert ready and int(ready.group(1)) == len(boxes) and all(boxes.values())
    assert 'data-report-errors="0"' in dom
    assert [line for line in default_page["log"].splitlines() if ":CONSOLE" in line] == []
    assert '<section id="seed">' in dom and "host emulation (not Core ML)" in dom


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_default_run_report_screenshot_is_kept(default_page):
    result, shot = default_page["screenshot"], default_page["shot"]
    assert result.returncode == 0 and shot.stat().st_size > 50_000, result.stderr[-2000:]
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "default-run-report.png")
