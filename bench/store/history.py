"""results/history.duckdb: every run appended, for nightly trends. Versioned schema with step-wise migrations.

Tables: `runs` (one row per run), `jobs` (one row per job, the jobs.parquet columns), `samples` (one row per
sample, the samples.parquet columns), `device_captions` (v3: one row per image of each device quality record — the
ids a device decoded and their caption, bench/store/device_quality.py), and `schema_version(version)`. Opening an older database migrates it in
place, one step at a time, inside a transaction; a database newer than this code is refused.
Appending the same run again replaces its rows (idempotent), so re-publishing a resumed run is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import atomic
from bench.errors import InputError, RecordError

SCHEMA_VERSION = 4

_SAMPLES_V1_DDL = """CREATE TABLE IF NOT EXISTS samples (
    run_id VARCHAR, job_key VARCHAR, variant_id VARCHAR, variant_hash VARCHAR, target_kind VARCHAR,
    target_id VARCHAR, device_model VARCHAR, os_build VARCHAR, compute_unit VARCHAR, round INTEGER,
    image_id VARCHAR, repeat INTEGER, is_warmup BOOLEAN, latency_ns BIGINT, encoder_ns BIGINT, decoder_ns BIGINT,
    thermal_state VARCHAR, throttled BOOLEAN, t_ns BIGINT)"""


def _v1(con) -> None:
    """The first schema: runs + jobs + samples (without decoder_steps)."""
    con.execute("""CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY, created_at VARCHAR, seed BIGINT,
                   status VARCHAR, git_commit VARCHAR, bench_version VARCHAR, plan JSON, environment JSON)""")
    con.execute("""CREATE TABLE IF NOT EXISTS jobs (run_id VARCHAR, job_key VARCHAR, record JSON)""")
    con.execute(_SAMPLES_V1_DDL)


def _v2(con) -> None:
    """v2: samples.decoder_steps (decoder calls per image) and flat job columns for trend queries."""
    columns = {row[0] for row in con.execute("SELECT column_name FROM information_schema.columns "
                                             "WHERE table_name = 'samples'").fetchall()}
    if "decoder_steps" not in columns:
        con.execute("ALTER TABLE samples ADD COLUMN decoder_steps INTEGER")
    for column, kind in (("variant_id", "VARCHAR"), ("target_id", "VARCHAR"), ("compute_unit", "VARCHAR"),
                         ("round", "INTEGER"), ("stop_reason", "VARCHAR"), ("unstable", "BOOLEAN"),
                         ("device_model", "VARCHAR"), ("os_build", "VARCHAR"), ("variant_hash", "VARCHAR")):
        con.execute(f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {column} {kind}")


def _v3(con) -> None:
    """v3: the captions each device decoded (raw ids + text) per run, variant, device and compute unit."""
    con.execute("""CREATE TABLE IF NOT EXISTS device_captions (run_id VARCHAR, series_key VARCHAR,
                   variant_id VARCHAR, variant_hash VARCHAR, target_kind VARCHAR, target_id VARCHAR,
                   device_model VARCHAR, os_build VARCHAR, compute_unit VARCHAR, dataset VARCHAR, image_id VARCHAR,
                   tokens JSON, caption VARCHAR)""")


def _v4(con) -> None:
    """v4 (issue 14): how each sample was decoded (recompute | kv_cache), the Core ML state's creation, time to first
    token and per-token decode time. Older rows were all recomputing decoders."""
    for column, kind in (("decoding", "VARCHAR DEFAULT 'recompute'"), ("state_ns", "BIGINT"),
                         ("first_token_ns", "BIGINT"), ("token_ns", "DOUBLE")):
        con.execute(f"ALTER TABLE samples ADD COLUMN IF NOT EXISTS {column} {kind}")


MIGRATIONS: dict[int, Callable] = {1: _v1, 2: _v2, 3: _v3, 4: _v4}


def connect(path: Path | str, *, read_only: bool = False):
    """Open (creating and migrating as needed) the history database."""
    import duckdb

    path = Path(path)
    if read_only and not path.exists():
        raise InputError(f"{path}: no run history yet (run `bench run` first)")
    if not read_only:
        atomic.check_target(path)  # duckdb would follow a link or open a device: bench writes only regular files
    path.parent.mkdir(parents=True, exist_ok=True)
    if read_only:
        _upgrade_if_older(path)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as err:
        raise RecordError(f"{path}: cannot open the history database ({_first_line(err)})") from None
    try:
        if not read_only:
            migrate(con, path)
        elif _check_version(con, path) < SCHEMA_VERSION or not _TABLES <= _tables(con):
            raise RecordError(f"{path}: not a bench history database, or a damaged one (tables: "
                              f"{', '.join(sorted(_tables(con))) or 'none'}); move it aside and the next "
                              "`bench run` starts a new history")
    except duckdb.Error as err:
        con.close()
        raise RecordError(f"{path}: damaged history database ({_first_line(err)}); move it aside and the next "
                          "`bench run` starts a new history") from None
    except BaseException:
        con.close()
        raise
    return con


def _upgrade_if_older(path: Path) -> None:
    """A reader meeting a history written by an older bench migrates it (as the next `bench run` would), rather
    than calling it damaged: its runs are the lab's trend and must survive an upgrade of bench."""
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as probe:
            ours = {"runs", "jobs", "samples", "schema_version"} <= _tables(probe)  # else it is not bench's to touch
            older = ours and 1 <= _check_version(probe, path) < SCHEMA_VERSION
    except duckdb.Error:
        return  # the read-only open below says what is wrong, in one line
    if older:
        atomic.check_target(path)
        with duckdb.connect(str(path)) as con:
            migrate(con, path)


_TABLES = {"runs", "jobs", "samples", "device_captions", "schema_version"}


def _tables(con) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _query(db_path, query: str, params: list | None = None):
    """A read-only query as a DataFrame; a history whose tables lack what the query reads is refused in one line."""
    import duckdb

    con = connect(db_path, read_only=True)
    try:
        return con.execute(query, params or []).df()
    except duckdb.Error as err:
        raise RecordError(f"{db_path}: damaged history database ({_first_line(err)}); move it aside and the next "
                          "`bench run` starts a new history") from None
    finally:
        con.close()


def schema_version(con) -> int:
    if "schema_version" not in _tables(con):
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _check_version(con, path) -> int:
    version = schema_version(con)
    if version > SCHEMA_VERSION:
        raise RecordError(f"{path}: history schema v{version} is newer than this bench (v{SCHEMA_VERSION}); "
                          "upgrade bench")
    return version


def migrate(con, path: Path | str = "history", *, target: int = SCHEMA_VERSION) -> int:
    """Bring the database to `target` one version at a time; each step commits with its version row."""
    version = _check_version(con, path)
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP DEFAULT now())")
    while version < target:
        step = version + 1
        con.execute("BEGIN TRANSACTION")
        try:
            MIGRATIONS[step](con)
            con.execute("INSERT INTO schema_version (version) VALUES (?)", [step])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = step
    return version


def append_run(db_path: Path | str, run) -> None:
    """Append (or replace) one run — a `bench.store.runs.RunData` — in the history."""
    import duckdb

    con = connect(db_path)
    try:
        manifest = run.manifest
        environment = manifest.get("environment") or {}
        git = environment.get("git") or {}
        samples = run.samples
        jobs = run.jobs[["run_id", "job_key", "variant_id", "target_id", "compute_unit", "round", "stop_reason",
                         "unstable", "device_model", "os_build", "variant_hash"]].copy()
        jobs["record"] = [json.dumps(row, default=str) for row in run.jobs.to_dict(orient="records")]
        captions = _device_captions(run)
        con.execute("BEGIN TRANSACTION")
        try:
            for table in ("runs", "jobs", "samples", "device_captions"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run.run_id])
            con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                run.run_id, manifest.get("created_at"), manifest.get("seed"), manifest.get("status"),
                git.get("commit"), environment.get("bench_version"), json.dumps(manifest.get("plan"), default=str),
                json.dumps(environment, default=str)])
            con.register("incoming_jobs", jobs)
            con.execute("INSERT INTO jobs BY NAME SELECT * FROM incoming_jobs")
            con.unregister("incoming_jobs")
            if len(samples):
                con.register("incoming_samples", samples)
                con.execute("INSERT INTO samples BY NAME SELECT * FROM incoming_samples")
                con.unregister("incoming_samples")
            if captions:
                con.executemany("INSERT INTO device_captions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", captions)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    except duckdb.Error as err:  # the run itself is stored; say why the history is not, in one line
        raise RecordError(f"{db_path}: run {run.run_id} not added to the history ({err})") from None
    finally:
        con.close()


def _device_captions(run) -> list[list]:
    """Rows of `device_captions` from the run's bound device quality records (unreadable ones are left out: the
    report says why)."""
    from bench.store.device_quality import load_bound

    found, _ = load_bound(run.run_dir, run.manifest)
    rows = []
    for key, record in found.items():
        target = record["target"]
        signature = (record.get("dataset") or {}).get("signature")
        for item in record["per_image"]:
            rows.append([run.run_id, key, record["variant_id"], record.get("variant_hash"), target["kind"],
                         target["id"], target.get("model"), target.get("os_build"), record["compute_unit"],
                         signature, item["image_id"], json.dumps(item["tokens"]), item["caption"]])
    return rows


def device_captions(db_path: Path | str, *, run_id: str | None = None) -> Any:
    """The captions devices decoded, per run (oldest first), as stored by append_run."""
    where, params = ("WHERE d.run_id = ?", [run_id]) if run_id else ("", [])
    return _query(db_path, f"""SELECT r.created_at, d.* FROM device_captions d JOIN runs r USING (run_id) {where}
                               ORDER BY r.created_at, d.run_id, d.series_key, d.image_id""", params)


def trend(db_path: Path | str, *, variant: str | None = None, target: str | None = None,
          compute_unit: str | None = None, device_model: str | None = None, last: int | None = None) -> Any:
    """Per run (oldest first) and series: median latency, p90, sample count — the nightly trend. Warm-ups excluded.

    `variant` matches a variant id or its name prefix (ids are "<name>-<hash12>"). A filter that matches nothing in
    the history is an InputError naming the values that exist (an empty table would look like "no regressions").
    """
    if last is not None and last < 1:
        raise InputError(f"--last must be at least 1, got {last}")
    where, params = ["NOT s.is_warmup"], []
    if variant:
        where.append("(s.variant_id = ? OR s.variant_id LIKE ?)")
        params += [variant, f"{variant}-%"]
    for column, value in (("target_id", target), ("compute_unit", compute_unit), ("device_model", device_model)):
        if value:
            where.append(f"s.{column} = ?")
            params.append(value)
    query = f"""
        SELECT r.created_at, s.run_id, s.variant_id, s.target_id, s.compute_unit, s.device_model, s.os_build,
               count(*) AS n, median(s.latency_ns) AS median_ns, quantile_cont(s.latency_ns, 0.9) AS p90_ns,
               avg(CAST(s.throttled AS INTEGER)) AS throttled_fraction
        FROM samples s JOIN runs r USING (run_id)
        WHERE {' AND '.join(where)}
        GROUP BY ALL ORDER BY r.created_at, s.run_id, s.variant_id, s.target_id, s.compute_unit"""
    frame = _query(db_path, query, params)
    if not len(frame):
        _no_match(db_path, variant=variant, target_id=target, compute_unit=compute_unit, device_model=device_model)
    if last:
        keep = list(dict.fromkeys(frame["run_id"]))[-last:]
        frame = frame[frame["run_id"].isin(keep)].reset_index(drop=True)
    return frame


_FILTER_NAMES = {"variant": "variant", "target_id": "target", "compute_unit": "compute unit",
                 "device_model": "device model"}


def _no_match(db_path, **filters) -> None:
    """Why a trend is empty: the first filter whose value the history does not hold, or an empty history."""
    from bench.errors import did_you_mean

    known = _query(db_path, "SELECT DISTINCT variant_id, target_id, compute_unit, device_model FROM samples "
                            "WHERE NOT is_warmup")
    if not len(known):
        raise InputError(f"{db_path}: the history holds no measured samples yet (run `bench run` first)")
    given = {column: value for column, value in filters.items() if value}
    for column, value in given.items():
        values = {str(v) for v in known["variant_id" if column == "variant" else column].dropna()}
        if column == "variant":
            values |= {v.rsplit("-", 1)[0] for v in values}  # names as well as ids
        if value not in values:
            raise did_you_mean(_FILTER_NAMES[column], value, values)
    together = " and ".join(f"{_FILTER_NAMES[column]} {value!r}" for column, value in given.items())
    raise InputError(f"no run in the history has {together} together")


def list_runs(db_path: Path | str) -> Any:
    return _query(db_path, "SELECT run_id, created_at, status, seed, git_commit FROM runs ORDER BY created_at")
