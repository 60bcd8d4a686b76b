"""results/history.duckdb: every run appended, for nightly trends. Versioned schema with step-wise migrations.

Tables: `runs` (one row per run), `jobs` (one row per job, the jobs.parquet columns), `samples` (one row per
sample, the samples.parquet columns), and `schema_version(version)`. Opening an older database migrates it in
place, one step at a time, inside a transaction; a database newer than this code is refused.
Appending the same run again replaces its rows (idempotent), so re-publishing a resumed run is safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import InputError, RecordError

SCHEMA_VERSION = 2

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


MIGRATIONS: dict[int, Callable] = {1: _v1, 2: _v2}


def connect(path: Path | str, *, read_only: bool = False):
    """Open (creating and migrating as needed) the history database."""
    import duckdb

    path = Path(path)
    if read_only and not path.exists():
        raise InputError(f"{path}: no run history yet (run `bench run` first)")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as err:
        raise RecordError(f"{path}: cannot open the history database ({err})") from None
    if not read_only:
        migrate(con, path)
    else:
        _check_version(con, path)
    return con


def schema_version(con) -> int:
    tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "schema_version" not in tables:
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
        con.execute("BEGIN TRANSACTION")
        try:
            for table in ("runs", "jobs", "samples"):
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
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    except duckdb.Error as err:  # the run itself is stored; say why the history is not, in one line
        raise RecordError(f"{db_path}: run {run.run_id} not added to the history ({err})") from None
    finally:
        con.close()


def trend(db_path: Path | str, *, variant: str | None = None, target: str | None = None,
          compute_unit: str | None = None, device_model: str | None = None, last: int | None = None) -> Any:
    """Per run (oldest first) and series: median latency, p90, sample count — the nightly trend. Warm-ups excluded.

    `variant` matches a variant id or its name prefix (ids are "<name>-<hash12>").
    """
    con = connect(db_path, read_only=True)
    try:
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
        frame = con.execute(query, params).df()
    finally:
        con.close()
    if last:
        keep = list(dict.fromkeys(frame["run_id"]))[-last:]
        frame = frame[frame["run_id"].isin(keep)].reset_index(drop=True)
    return frame


def list_runs(db_path: Path | str) -> Any:
    con = connect(db_path, read_only=True)
    try:
        return con.execute("SELECT run_id, created_at, status, seed, git_commit FROM runs ORDER BY created_at").df()
    finally:
        con.close()
