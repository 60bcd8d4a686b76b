"""The run store: parquet tables, the DuckDB history (versioned schema, migrations, trend), and the refusal to compare
incomparable runs. Runs are produced by the real scheduler against in-test fake devices (tests/run_fixtures.py)."""

from __future__ import annotations

import pytest

from bench.errors import IncomparableError, RecordError
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from bench.store import history
from bench.store.compare import compare_runs
from bench.store.runs import JOB_COLUMNS, PLAN_COLUMNS, SAMPLE_COLUMNS, load_run
from run_fixtures import FakeTarget, images, variants

CONFIG = RunConfig.model_validate({"seed": 2, "rounds": 2, "evaluate": False, "report": False,
                                   "compute_units": ["cpuOnly"], "adaptive": {"ci_width": None}})


def make_run(root, *, scale=1.0, model="iPhone15,2", os_build="22A3354", names=("fp16", "int8"), run_id=None):
    def latency(variant_id, unit, rng):
        return scale * 1e7 * rng.lognormvariate(0, 0.05)

    target = FakeTarget(latency=latency, model=model, os_build=os_build)
    return start_run(CONFIG, Workspace(root), targets=[target], variants=variants(*names), images=images(5),
                     run_id=run_id)


def test_parquet_tables_have_the_documented_columns_and_reload_identically(tmp_path):
    outcome = make_run(tmp_path)
    run = load_run(outcome.run_dir)
    assert list(run.samples.columns) == list(SAMPLE_COLUMNS) and list(run.jobs.columns) == list(JOB_COLUMNS)
    assert list(run.compute_plans.columns) == list(PLAN_COLUMNS) and len(run.compute_plans) == 4
    assert len(run.samples) == 2 * 2 * (5 + 1)  # variants × rounds × (samples + one warm-up)
    assert run.samples["is_warmup"].sum() == 4
    for name in ("samples.parquet", "jobs.parquet", "compute_plans.parquet"):
        assert (outcome.run_dir / name).exists()
    assert run.samples.equals(outcome.data.samples)
    series = run.series()
    assert list(series["n"]) == [10, 10] and (series["stop_reason"] == "fixed").all()


def test_history_appends_runs_and_answers_a_trend_query(tmp_path):
    first = make_run(tmp_path, run_id="r1")
    second = make_run(tmp_path, scale=1.2, run_id="r2")
    trend = history.trend(Workspace(tmp_path).history_db, variant="int8")
    assert list(trend["run_id"]) == ["r1", "r2"] and list(trend["n"]) == [10, 10]
    assert trend["median_ns"].iloc[1] / trend["median_ns"].iloc[0] == pytest.approx(1.2, rel=0.05)
    history.append_run(Workspace(tmp_path).history_db, load_run(second.run_dir))  # re-publishing is idempotent
    con = history.connect(Workspace(tmp_path).history_db, read_only=True)
    counts = con.execute("SELECT run_id, count(*) FROM samples GROUP BY run_id ORDER BY run_id").fetchall()
    con.close()
    assert counts == [("r1", 24), ("r2", 24)]
    assert first.run_id == "r1"


def test_an_old_history_is_migrated_and_a_newer_one_refused(tmp_path):
    import duckdb

    path = tmp_path / "history.duckdb"
    con = duckdb.connect(str(path))
    history.migrate(con, path, target=1)  # a database written by the first schema
    con.execute("INSERT INTO samples (run_id, latency_ns, is_warmup) VALUES ('old', 5, false)")
    con.close()
    con = history.connect(path)
    assert history.schema_version(con) == history.SCHEMA_VERSION == 4
    columns = {row[0] for row in con.execute("DESCRIBE samples").fetchall()}
    assert {"decoder_steps", "decoding", "state_ns", "first_token_ns", "token_ns"} <= columns
    assert con.execute("SELECT latency_ns, decoding FROM samples WHERE run_id = 'old'").fetchone() == (5, "recompute")
    con.execute("INSERT INTO schema_version (version) VALUES (99)")
    con.close()
    with pytest.raises(RecordError, match="schema v99 is newer than this bench"):
        history.connect(path)


def test_a_reader_upgrades_an_older_history_instead_of_calling_it_damaged(tmp_path):
    # `bench report --history` after upgrading bench: the lab's past nights must survive, not be "moved aside".
    import duckdb

    path = tmp_path / "history.duckdb"
    con = duckdb.connect(str(path))
    history.migrate(con, path, target=2)
    con.execute("INSERT INTO samples (run_id, latency_ns, is_warmup) VALUES ('old', 5, false)")
    con.close()
    con = history.connect(path, read_only=True)
    try:
        assert history.schema_version(con) == history.SCHEMA_VERSION
        assert con.execute("SELECT latency_ns FROM samples WHERE run_id = 'old'").fetchone() == (5,)
    finally:
        con.close()
    path.write_bytes(b"not a database")
    with pytest.raises(RecordError, match="history database"):
        history.connect(path, read_only=True)


def test_comparing_runs_from_different_devices_or_builds_is_refused_unless_forced(tmp_path):
    base = load_run(make_run(tmp_path, run_id="base").run_dir)
    same = load_run(make_run(tmp_path, scale=1.1, run_id="same").run_dir)
    result = compare_runs(base, same)
    assert len(result.table) == 2 and result.table["ratio"].between(1.05, 1.15).all()
    assert not result.differences

    other_os = load_run(make_run(tmp_path, os_build="22B83", run_id="os").run_dir)
    with pytest.raises(IncomparableError, match="os_build '22A3354' vs '22B83'.*--force"):
        compare_runs(base, other_os)
    other_phone = load_run(make_run(tmp_path, model="iPhone16,1", run_id="phone").run_dir)
    with pytest.raises(IncomparableError, match="device_model"):
        compare_runs(base, other_phone)
    forced = compare_runs(base, other_phone, force=True)
    assert forced.forced and len(forced.differences) == 2 and len(forced.table) == 2


def test_a_rebuilt_variant_with_another_hash_is_incomparable(tmp_path):
    from dataclasses import replace

    from bench.run.api import start_run as run_again

    base = load_run(make_run(tmp_path, names=("int8",), run_id="a").run_dir)
    rebuilt = [replace(v, variant_id="int8-ffffffffffff", variant_hash="ffffffffffff") for v in variants("int8")]
    other = run_again(CONFIG, Workspace(tmp_path), targets=[FakeTarget()], variants=rebuilt, images=images(5),
                      run_id="b")
    with pytest.raises(IncomparableError, match="variant_hash"):
        compare_runs(base, load_run(other.run_dir))


def test_load_run_reads_an_unfinished_run_from_its_job_records(tmp_path):
    outcome = make_run(tmp_path)
    for name in ("samples.parquet", "jobs.parquet", "compute_plans.parquet"):
        (outcome.run_dir / name).unlink()
    run = load_run(outcome.run_dir)
    assert len(run.samples) == 24 and len(run.jobs) == 4
