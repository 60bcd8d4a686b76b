"""The seed study's figures (bench/report/figures.py) are drawn from any run, host-only included.

Scenarios of the committed report fixture (tests/fixtures/report_run): as stored (an iPhone and host-torch), and its
variants as if measured by host-torch alone — the default `make run` on a machine without phones — with and without a
second, larger captioner. The real end-to-end check (the default run in Chromium) is tests/test_report_browser.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from bench.report import figures
from bench.report.data import HOST_EMULATION, build_report
from bench.report.facts import variant_facts
from bench.report.html import SEED_FIGURES
from report_fixtures import CURRENT

LATENCY_FIGURES = {"sparsity-latency", "precision", "layers", "input-size"}


@pytest.fixture(scope="module")
def phone_report():
    return build_report(CURRENT, explain=False)


def host_only(report, *, second_model: bool = False):
    """The fixture's iPhone rows relabelled as host-torch rows; optionally its dense variants again as a larger model."""
    table = report.table[report.table["target_kind"] == "iphone"].copy()
    table["target_kind"], table["emulated"], table["target_id"], table["device_model"] = "host-torch", True, "host", None
    table["model"], table["model_params"] = "small", 1_000_000
    if second_model:
        large = table[table["target_sparsity"].fillna(0) == 0].copy()
        large["variant"] = "large-" + large["variant"]
        large["variant_id"] = "large-" + large["variant_id"]
        large["model"], large["model_params"], large["bleu"] = "large", 4_000_000, large["bleu"] + 5
        table = pd.concat([table, large], ignore_index=True)
    report.table = table.reset_index(drop=True)
    return report


def drawn(report) -> dict[str, dict]:
    return {f["id"]: f for f in figures.all_figures(report)}


def test_every_seed_figure_is_drawn_from_a_host_only_run():
    figs = drawn(host_only(build_report(CURRENT, explain=False), second_model=True))
    assert set(SEED_FIGURES) <= set(figs)
    for fig_id in LATENCY_FIGURES | {"model-size"}:
        assert HOST_EMULATION in figs[fig_id]["note"], fig_id
        assert figs[fig_id]["layout"]["title"]["text"].endswith("host emulation"), fig_id
    assert "host emulation" not in figs["sparsity-size"]["layout"]["title"]["text"]  # sizes are exact anywhere


def test_model_size_figure_needs_two_captioners(phone_report):
    assert "model-size" not in drawn(host_only(build_report(CURRENT, explain=False)))
    figure = drawn(host_only(build_report(CURRENT, explain=False), second_model=True))["model-size"]
    assert [trace["name"] for trace in figure["data"]] == ["small (1.00 M params)", "large (4.00 M params)"]


def test_a_phone_run_draws_latency_from_the_phone(phone_report):
    figs = drawn(phone_report)
    assert figs["precision"]["note"] == "Latency: iPhone14,2 · all."
    assert "host emulation" not in figs["sparsity-latency"]["layout"]["title"]["text"]


def test_sweeps_hold_the_other_axes_fixed(phone_report):
    """The pruning sweep runs at the most common input size: fp16-s224 / fp16-s348 are input-size points, not
    precision points, and the layer-pruned variants are not on the all-layer sweep."""
    figs = drawn(phone_report)
    sweep = {name for trace in figs["sparsity-size"]["data"] for name in trace["text"]}
    assert sweep == {"fp32", "prune-0.20", "prune-0.36", "prune-0.488"}
    assert {t["name"] for t in figs["layers"]["data"]} == {"conv pruned", "embedding pruned"}
    sizes = figs["input-size"]["data"][0]["x"]
    assert sizes == [224, 348, 384]


def test_layer_selection_of_real_builds_is_read_from_the_recipe():
    """bench.build's recipes keep the layer selection beside `prune` (recipe.layers.select), not inside it."""
    recipe = {"precision": "fp32", "prune": {"sparsity": 0.2, "n_m": None}, "layers": {"select": "conv", "pattern": None}}
    manifest = {"recipe": recipe, "image_size": 64, "resize": "center_crop",
                "source": {"name": "builtin-captioner"}, "measured": {"params": 1447784}}
    facts = variant_facts(manifest)
    assert (facts["prune_layers"], facts["target_sparsity"], facts["resize"], facts["model"]) == \
        ("conv", 0.2, "center_crop", "builtin-captioner")
    assert variant_facts({"recipe": {"prune": {"sparsity": None, "n_m": [2, 4]}}})["prune_layers"] == "2:4"
    assert variant_facts({"recipe": {"prune": {"sparsity": 0.5}, "layers": None}})["prune_layers"] == "all"


def test_legends_below_a_plot_grow_downwards(phone_report):
    """The input-size panel's legend has three rows (six traces): anchored by its bottom (Plotly's default below the
    plot) it grew upwards over the x-axis title in the default run's report; anchored by its top it grows away."""
    figs = drawn(host_only(build_report(CURRENT, explain=False), second_model=True)) | drawn(phone_report)
    below = {fig_id: f["layout"]["legend"] for fig_id, f in figs.items() if f["layout"].get("legend", {}).get("y", 1) < 0}
    assert below and all(legend.get("yanchor") == "top" for legend in below.values()), below


def test_kv_cache_twins_stay_out_of_the_seed_study():
    # The seed decoded by recomputing; a kv twin of the same precision drew a second, overlapping "int4" bar.
    report = host_only(build_report(CURRENT, explain=False), second_model=True)
    twin = report.table[report.table["variant"] == "fp16"].copy()
    twin["variant"], twin["variant_id"], twin["decoding"] = "fp16+kv", "fp16+kv-id", "kv_cache"
    report.table = pd.concat([report.table, twin], ignore_index=True)
    for figure in drawn(report).values():
        if figure["id"] in ("precision", "model-size"):
            for trace in figure["data"]:
                assert len(trace["x"]) == len(set(trace["x"])), (figure["id"], trace["x"])
    from bench.report.study import seed_study

    assert "fp16+kv" not in {v["variant"] for v in seed_study(report).variants}
