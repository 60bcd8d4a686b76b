"""Report data from the committed fixture run (tests/fixtures/report_run): merged table, verdicts, comparability."""

from __future__ import annotations

import json

import pytest

from bench.errors import IncomparableError, InputError, RecordError
from bench.report.data import HOST_EMULATION, build_report
from bench.report.load import load_run, resolve_run_dir
from bench.paths import Workspace
from report_fixtures import BASELINE, CURRENT, FIXTURE, copy_fixture, edit_jobs


@pytest.fixture(scope="module")
def report():
    return build_report(CURRENT, baseline=BASELINE)


def row(report, variant, unit="all", kind="iphone"):
    table = report.table
    found = table[(table.variant == variant) & (table.compute_unit == unit) & (table.target_kind == kind)]
    assert len(found) == 1
    return found.iloc[0]


def test_merged_table_has_one_row_per_variant_target_unit(report):
    assert len(report.table) == 16
    assert not report.table.duplicated(["variant_id", "target_id", "compute_unit"]).any()
    fp32 = row(report, "fp32")
    assert fp32.n == 30 and fp32.ci_lo_ms <= fp32.median_ms <= fp32.ci_hi_ms
    assert fp32.p90_ms <= fp32.p99_ms and fp32.iqr_ms > 0
    assert fp32.size_mb == pytest.approx(989.92) and fp32.bits_per_weight == 32.0
    assert fp32.bleu_signature.startswith("nrefs:3|") and fp32.cider_scorer == "CIDEr-D"
    assert fp32.compile_ms > fp32.cold_load_ms > fp32.warm_load_ms > 0


def test_warmups_are_excluded_from_latency(report):
    run = load_run(CURRENT)
    assert run.samples.is_warmup.sum() > 0
    assert row(report, "fp32").n == int((~run.samples.is_warmup & (run.samples.variant_id.str.startswith("fp32-"))
                                         & (run.samples.compute_unit == "all")
                                         & (run.samples.target_kind == "iphone")).sum())


def test_sparsity_is_measured_not_the_recipe(report):
    pruned = row(report, "prune-0.20")
    assert pruned.target_sparsity == 0.2
    assert 0.15 < pruned.sparsity < 0.2  # the unpruned embedding and conv dilute the measured sparsity


def test_flags(report):
    assert row(report, "int8").unstable and "max_time" in row(report, "int8").stop_reason
    assert row(report, "prune-0.488").throttled_fraction == pytest.approx(0.2)


def test_host_torch_rows_are_labelled_host_emulation(report):
    host = report.table[report.table.target_kind == "host-torch"]
    assert len(host) == 2 and host.emulated.all()
    assert all(HOST_EMULATION in target for target in host.target)


def test_verdicts_against_the_baseline(report):
    latency = {v.key: v for v in report.verdicts if v.metric == "latency median"}
    assert latency["prune-0.20 · iPhone14,2 · all"].outcome == "DIFFERENT"
    assert latency["prune-0.20 · iPhone14,2 · all"].regression
    assert latency["int8 · iPhone14,2 · all"].outcome == "UNKNOWN"
    assert latency["int8 · iPhone14,2 · all"].more_samples > 0
    assert latency["fp32 · iPhone14,2 · all"].outcome == "SAME"
    assert [v.key for v in report.regressions] == ["prune-0.20 · iPhone14,2 · all"]
    sizes = [v for v in report.verdicts if v.metric == "size"]
    assert len(sizes) == 10 and all(v.outcome == "SAME" for v in sizes)


def test_history_takes_the_night_as_the_unit():
    """Two past nights: tonight's median against their spread (1 degree of freedom), not 60 pooled samples as if
    they were one night — the wide prediction interval says so instead of a confident verdict."""
    report = build_report(CURRENT, history=2)
    assert report.baseline == {"kind": "history", "run_ids": ["nightly-2026-11-26", "nightly-2026-11-27"],
                               "forced": False}
    prune = next(v for v in report.verdicts if v.key == "prune-0.20 · iPhone14,2 · all" and v.metric == "latency median")
    assert prune.extra["nights"] == 2 and "n_baseline" not in prune.extra
    assert "past nights" in prune.detail and prune.ci95[1] - prune.ci95[0] > 0.05
    assert any("the night as the unit" in note for note in report.notes)


def test_one_baseline_run_says_between_run_variation_is_not_estimated(report):
    assert any("between-run variation cannot be estimated" in note for note in report.notes)
    assert any(note.startswith("Error control: Benjamini–Hochberg") for note in report.notes)


def test_trends_cover_every_run_up_to_the_current(report):
    assert sorted(report.trends.run_id.unique()) == ["nightly-2026-11-26", "nightly-2026-11-27", "nightly-2026-11-28"]


def test_an_older_run_has_no_later_history():
    report = build_report(BASELINE, history=5)
    assert report.baseline["run_ids"] == ["nightly-2026-11-26"]


@pytest.mark.parametrize("field,value,message", [("os_build", "22A100", "OS build"),
                                                 ("model", "iPhone15,2", "device model")])
def test_incomparable_baseline_is_refused_unless_forced(tmp_path, field, value, message):
    root = copy_fixture(tmp_path)
    baseline = root / "results" / BASELINE.name

    def edit(job):
        if job["target"]["kind"] == "iphone":
            job["target"][field] = value

    edit_jobs(baseline, edit)
    for name in ("samples.parquet", "jobs.parquet", "compute_plans.parquet"):
        (baseline / name).unlink()  # the store rebuilds the tables from the edited job records
    manifest = json.loads((baseline / "run.json").read_text())
    manifest.pop("tables_written")
    (baseline / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(IncomparableError, match=message):
        build_report(root / "results" / CURRENT.name, baseline=baseline)
    forced = build_report(root / "results" / CURRENT.name, baseline=baseline, force=True)
    assert forced.baseline["forced"] and any("forced" in note for note in forced.notes)


def test_variant_hash_change_is_incomparable(tmp_path):
    root = copy_fixture(tmp_path)
    current = root / "results" / CURRENT.name
    edit_jobs(current, lambda job: job.update(variant_hash="0" * 64) if job["variant_id"].startswith("fp16-6") else None)
    for name in ("samples.parquet", "jobs.parquet", "compute_plans.parquet"):
        (current / name).unlink()
    manifest = json.loads((current / "run.json").read_text())
    manifest.pop("tables_written")
    (current / "run.json").write_text(json.dumps(manifest))
    with pytest.raises(IncomparableError, match="variant hash"):
        build_report(current, baseline=BASELINE)


def test_baseline_and_history_together_is_an_input_error():
    with pytest.raises(InputError, match="either"):
        build_report(CURRENT, baseline=BASELINE, history=2)


def test_history_zero_is_an_input_error_not_ignored():
    with pytest.raises(InputError, match="at least 1"):
        build_report(CURRENT, history=0)


def test_corrupt_samples_table_is_a_record_error(tmp_path):
    current = copy_fixture(tmp_path) / "results" / CURRENT.name
    (current / "samples.parquet").write_bytes(b"junk")
    with pytest.raises(RecordError, match="unreadable samples table"):
        load_run(current)


def test_run_lookup_by_id_latest_and_typo():
    workspace = Workspace(FIXTURE)
    assert resolve_run_dir("nightly-2026-11-27", workspace) == BASELINE.resolve()
    assert resolve_run_dir("latest", workspace) == CURRENT.resolve()
    with pytest.raises(InputError, match="did you mean"):
        resolve_run_dir("nightly-2026-11-29", workspace)


def test_fixture_is_reproducible(tmp_path):
    """The committed fixture is exactly what the generator writes (so it can be regenerated and reviewed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_report_fixture", FIXTURE.parent / "make_report_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path / "again")
    committed = sorted(p.relative_to(FIXTURE) for p in FIXTURE.rglob("*") if p.is_file())
    written = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    assert committed == written
    for relative in committed:
        assert (FIXTURE / relative).read_bytes() == (tmp_path / "again" / relative).read_bytes(), relative


def test_trends_from_the_history_database(tmp_path):
    """When results/history.duckdb (bench.store.history) holds the runs, trend lines come from it."""
    history = pytest.importorskip("bench.store.history", reason="the store's history database is not built yet")
    from bench.store.runs import load_run as store_load_run

    root = copy_fixture(tmp_path)
    for name in ("nightly-2026-11-26", "nightly-2026-11-27", "nightly-2026-11-28"):
        history.append_run(root / "results" / "history.duckdb", store_load_run(root / "results" / name))
    report = build_report(root / "results" / CURRENT.name, trend_runs=2)
    assert sorted(report.trends.run_id.unique()) == ["nightly-2026-11-27", "nightly-2026-11-28"]
    from_dirs = build_report(CURRENT, trend_runs=2).trends
    merged = report.trends.merge(from_dirs, on=["run_id", "variant", "compute_unit", "target"])
    assert len(merged) == len(from_dirs)
    assert (merged.median_ms_x - merged.median_ms_y).abs().max() < 1e-6


def test_history_leaves_out_incomparable_runs(tmp_path):
    """An OS update in the history: that run is left out (and said so); with nothing comparable left it is refused."""
    root = copy_fixture(tmp_path)
    oldest = root / "results" / "nightly-2026-11-26"
    edit_jobs(oldest, lambda job: job["target"].update(os_build="20A1") if job["target"]["kind"] == "iphone" else None)
    for name in ("samples.parquet", "jobs.parquet", "compute_plans.parquet"):
        (oldest / name).unlink()
    manifest = json.loads((oldest / "run.json").read_text())
    manifest.pop("tables_written")
    (oldest / "run.json").write_text(json.dumps(manifest))
    report = build_report(root / "results" / CURRENT.name, history=2)
    assert report.baseline["run_ids"] == ["nightly-2026-11-27"]
    assert any("left out nightly-2026-11-26" in note for note in report.notes)
    with pytest.raises(IncomparableError, match="none of the last 1"):
        build_report(root / "results" / "nightly-2026-11-27", history=1)


def test_contract_reader_matches_the_store_reader(monkeypatch):
    """Without bench.store the report reads §6 itself; both readers must give the same merged table."""
    from bench.report import load as report_load
    from bench.report.data import merge_table

    via_store = merge_table(load_run(CURRENT))
    monkeypatch.setattr(report_load, "_read_run_dir", report_load._read_contract)
    via_contract = merge_table(load_run(CURRENT))
    assert via_contract.equals(via_store)


def test_a_run_is_not_its_own_baseline():
    # Comparing a run with itself would print SAME everywhere: a verdict about nothing.
    with pytest.raises(InputError, match="--baseline names the run being reported"):
        build_report(CURRENT, baseline=CURRENT)


def test_variant_axes_reach_the_rows_as_named_columns():
    """The seed's axes (input size, resize vs crop, model size) and the layer selection come from the manifest a
    matrix build writes (bench.build.builder: recipe, image_size, resize, source)."""
    from bench.report.data import COLUMNS
    from bench.report.facts import FACT_COLUMNS, variant_facts

    assert set(FACT_COLUMNS) <= set(COLUMNS)
    manifest = {"recipe": {"precision": "fp32", "prune": {"sparsity": 0.2}, "layers": {"select": "conv"},
                           "resize": "center_crop", "crop_fraction": 0.875},
                "image_size": 80, "resize": "center_crop",
                "source": {"name": "builtin-captioner-large", "model_size": "large", "params": 2698728}}
    assert variant_facts(manifest) == {
        "precision": "fp32", "prune_layers": "conv", "target_sparsity": 0.2, "image_size": 80,
        "resize": "center_crop", "crop_fraction": 0.875, "model": "builtin-captioner-large", "model_size": "large",
        "model_params": 2698728}
    dense = variant_facts({"recipe": {"precision": "fp16"}, "image_size": 64, "resize": "resize", "source": {}})
    assert (dense["prune_layers"], dense["crop_fraction"], dense["model_size"]) == (None, None, None)
    everything = variant_facts({"recipe": {"prune": {"sparsity": 0.5}}, "image_size": 64, "resize": "resize"})
    assert everything["prune_layers"] == "all"  # no `layers` selection: every layer was pruned
