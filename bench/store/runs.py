"""Read (and derive the tables of) one benchmark run: `results/<run_id>/` (docs/contracts.md §6).

The report and compare code read runs only through `load_run`:

    from bench.store.runs import load_run
    run = load_run("results/20261129-031500-ab12")
    run.manifest            # dict: the bench.run record (run_id, seed, plan, environment, jobs{job_key: state…})
    run.samples             # pandas DataFrame, one row per sample (warm-ups included, is_warmup=True)
    run.jobs                # pandas DataFrame, one row per job (one job = one (variant, target, compute unit, round))
    run.compute_plans       # pandas DataFrame, one row per op of a compute plan (may be empty)
    run.series()            # DataFrame per (variant_id, target_id, compute_unit): n, median_ns, ci95 of the median,
                            # stop_reason, unstable, throttled_fraction — statistics derived from the raw samples

Column sets (stable; new columns may be appended, none renamed):
- samples: SAMPLE_COLUMNS below. `latency_ns` = encoder + all decoder steps for one image; `throttled` is True when
  the sample's thermal state was not nominal. Host targets without a thermal sensor have thermal_state None.
- jobs: JOB_COLUMNS below. `target_label` says "host emulation (not Core ML)" for host-torch rows: print it.
  `stop_reason` is set on the last round of a series (ci_width | max_samples | max_time | fixed), else None.
- compute_plans: PLAN_COLUMNS below; `cost` is Core ML's estimate, never a measurement.

The parquet files are written when a run finishes (`write_tables`); for an unfinished or interrupted run `load_run`
builds the same tables from the job records in jobs/*.json, so partial runs can be inspected too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import atomic
from bench.errors import RecordError
from bench.store import records

RUN_KIND, RUN_VERSION = "bench.run", 4
JOB_KIND, JOB_VERSION = "bench.jobresult", 2
DECODINGS = ("recompute", "kv_cache")


@records.migration(RUN_KIND, 1)
def _run_v1_to_v2(run: dict[str, Any]) -> dict[str, Any]:
    """v2 binds the run to the eval records its report shows (`evals`: variant_id → {record, sha256}) and keeps
    every quarantine with its reason (`targets.<id>.quarantines`). A v1 run never recorded which evals it used:
    `evals: null` says so (the report then falls back to the workspace's records and says that it did)."""
    run.setdefault("evals", None)
    return run


@records.migration(RUN_KIND, 2)
def _run_v2_to_v3(run: dict[str, Any]) -> dict[str, Any]:
    """v3 binds the captions decoded on each device (`device_quality`: series_key → {record, sha256} or {error};
    bench/store/device_quality.py). A v2 run never asked a device for its captions: `device_quality: null`."""
    run.setdefault("device_quality", None)
    return run


@records.migration(RUN_KIND, 3)
def _run_v3_to_v4(run: dict[str, Any]) -> dict[str, Any]:
    """v4 lists the (variant, device) pairs left out before anything ran because the device's OS is older than the
    variant's packages need (`skipped`: [{variant_id, target_id, spec, needs, runs, reason…}]; bench/run/os_support.py).
    A v3 run never checked: `skipped: null` (such pairs were attempted, and failed on the phone)."""
    run.setdefault("skipped", None)
    return run


@records.migration(JOB_KIND, 1)
def _job_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    """v2 says how the variant decoded (`decoding`: recompute | kv_cache, issue 14) and its samples may carry
    `state_ns` (making the caption's Core ML state). Every v1 job ran a recomputing decoder: there was no other."""
    record.setdefault("decoding", "recompute")
    return record


MANIFEST_NAME = "run.json"
JOBS_DIR = "jobs"
SAMPLES_FILE, JOBS_FILE, PLANS_FILE = "samples.parquet", "jobs.parquet", "compute_plans.parquet"

SAMPLE_COLUMNS = (
    "run_id", "job_key", "variant_id", "variant_hash", "target_kind", "target_id", "device_model", "os_build",
    "compute_unit", "round", "image_id", "repeat", "is_warmup", "latency_ns", "encoder_ns", "decoder_ns",
    "decoder_steps", "thermal_state", "throttled", "t_ns", "decoding", "state_ns", "first_token_ns", "token_ns",
)
# Appended by issue 14 (decoder: recompute | kv_cache); a table written before lacks them and is rebuilt from the job
# records, which hold every per-token time (samples[].decoder_ns), when a reader needs them.
SAMPLE_COLUMNS_SINCE_DECODING = ("decoding", "state_ns", "first_token_ns", "token_ns")
JOB_COLUMNS = (
    "run_id", "job_key", "series_key", "round", "variant_id", "variant_name", "variant_hash", "target_kind",
    "target_id", "target_name", "target_label", "device_model", "os_build", "compute_unit", "n_samples", "n_warmup",
    "median_ns", "series_n", "series_median_ns", "series_ci_low_ns", "series_ci_high_ns", "series_ci_rel",
    "stop_reason", "unstable", "throttled_fraction", "compile_encoder_ns", "compile_decoder_ns",
    "cold_load_encoder_ns", "cold_load_decoder_ns", "warm_load_encoder_ns", "warm_load_decoder_ns",
    "first_prediction_ns", "charging", "battery_level", "battery_temperature_c", "low_power_mode",
    "thermal_state_start", "gate_wait_s", "gate_outcome", "coremltools", "torch", "bench_version", "git_commit",
    "started_at", "finished_at", "elapsed_s", "compiles", "decoding",
)
PLAN_COLUMNS = ("run_id", "variant_id", "target_id", "compute_unit", "package", "op_name", "op_type", "preferred",
                "supported", "cost")


@dataclass
class RunData:
    """One run, loaded: the manifest plus pandas tables. Statistics are derived, never stored as truth."""

    run_dir: Path
    manifest: dict[str, Any]
    samples: Any  # pandas.DataFrame
    jobs: Any  # pandas.DataFrame
    compute_plans: Any  # pandas.DataFrame
    job_records: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    def series(self):
        """Per (variant_id, target_id, compute_unit): sample count, median and its 95 % CI (order statistics)."""
        import pandas as pd

        from bench.run.stats import median_ci

        measured = self.samples[~self.samples["is_warmup"]] if len(self.samples) else self.samples
        rows = []
        keys = ["variant_id", "target_id", "compute_unit"]
        for key, group in (measured.groupby(keys, sort=True) if len(measured) else []):
            ci = median_ci(group["latency_ns"].to_numpy())
            jobs = self.jobs[(self.jobs["variant_id"] == key[0]) & (self.jobs["target_id"] == key[1])
                             & (self.jobs["compute_unit"] == key[2])]
            last = jobs.sort_values("round").iloc[-1] if len(jobs) else None
            rows.append({
                **dict(zip(keys, key)),
                "variant_name": last["variant_name"] if last is not None else key[0],
                "target_kind": group["target_kind"].iloc[0],
                "target_label": last["target_label"] if last is not None else None,
                "variant_hash": group["variant_hash"].iloc[0],
                "device_model": group["device_model"].iloc[0],
                "os_build": group["os_build"].iloc[0],
                "rounds": int(jobs["round"].nunique()) if len(jobs) else 0,
                "n": ci.n, "median_ns": ci.median, "ci_low_ns": ci.low, "ci_high_ns": ci.high,
                "ci_rel": ci.relative_halfwidth, "ci_coverage": ci.coverage,
                "throttled_fraction": float(group["throttled"].mean()),
                # Latency includes one decoder call per generated token: a variant that writes shorter (or broken)
                # captions looks faster. Compare per-token latency too.
                "median_decoder_steps": float(group["decoder_steps"].median()),
                "median_ns_per_step": float((group["latency_ns"] / group["decoder_steps"].clip(lower=1)).median()),
                "unstable": bool(jobs["unstable"].any()) if len(jobs) else False,
                "stop_reason": last["stop_reason"] if last is not None else None,
            })
        return pd.DataFrame(rows, columns=[*keys, "variant_name", "target_kind", "target_label", "variant_hash", "device_model",
                                           "os_build", "rounds", "n", "median_ns", "ci_low_ns", "ci_high_ns", "ci_rel",
                                           "ci_coverage", "throttled_fraction", "median_decoder_steps",
                                           "median_ns_per_step", "unstable", "stop_reason"])


def read_manifest(run_dir: Path | str) -> dict[str, Any]:
    """The run manifest; a corrupt one is a clear RecordError and nothing else in the run is touched."""
    path = Path(run_dir) / MANIFEST_NAME
    if not Path(run_dir).is_dir():
        raise RecordError(f"{run_dir}: no such run directory")
    try:
        return records.read(path, RUN_KIND)  # checked by _checked_manifest
    except RecordError as err:
        raise RecordError(f"{err} — the run manifest is damaged; job records in {Path(run_dir) / JOBS_DIR} are "
                          "untouched (restore run.json or start a new run)") from None


def _checked_manifest(manifest: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """What every reader of run.json relies on: a run id and each job's state (valid JSON can still lack them), and
    the optional fields with the types the tables, listings and reports use them as."""
    if not isinstance(manifest.get("run_id"), str):
        raise RecordError(f"{path}: run_id is missing or not a string")
    jobs = manifest.get("jobs", {})
    if not isinstance(jobs, dict) or not all(isinstance(e, dict) and isinstance(e.get("state"), str)
                                             for e in jobs.values()):
        raise RecordError(f"{path}: jobs must map each job key to an entry with a state")
    for key, kinds, expected in _MANIFEST_FIELDS:
        value = manifest.get(key)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and kinds is not bool):
            raise RecordError(f"{path}: {key} must be {expected}, found {type(value).__name__}")
    return manifest


_MANIFEST_FIELDS = (("created_at", str, "a string"), ("finished_at", str, "a string"), ("status", str, "a string"),
                    ("seed", int, "an integer"), ("plan", dict, "an object"), ("environment", dict, "an object"),
                    ("targets", dict, "an object"), ("attempts", list, "a list"), ("tables_written", bool, "true or false"),
                    ("table_sha256", dict, "an object"), ("device_quality", dict, "an object"),
                    ("skipped", list, "a list"))


def _check_job_record(record: dict[str, Any], path: str) -> None:
    """The fields of a job record the tables, resume and the report read without a default, with their types; and
    every sample's. Cheap isinstance checks: a run holds millions of samples."""
    def damaged(what: str) -> RecordError:
        return RecordError(f"{path}: damaged job record ({what}); move it aside and resume the run to measure that "
                           "job again")

    for key in ("job_key", "variant_id", "compute_unit"):
        if not isinstance(record.get(key), str):
            raise damaged(f"{key} is missing or not a string")
    if not _is_int(record.get("round")):
        raise damaged("round is missing or not an integer")
    target = record.get("target")
    if not isinstance(target, dict) or not all(isinstance(target.get(k), str) for k in ("kind", "id")):
        raise damaged("target.kind/id missing or not strings")
    for group in ("warmup", "samples"):
        samples = record.get(group) or []
        if not isinstance(samples, list):
            raise damaged(f"{group} is not a list")
        for index, sample in enumerate(samples):
            problem = _sample_problem(sample)
            if problem:
                raise damaged(f"{group}[{index}]: {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _sample_problem(sample: Any) -> str | None:
    if not isinstance(sample, dict):
        return "not an object"
    if not isinstance(sample.get("image_id"), str):
        return "image_id is missing or not a string"
    if not _is_int(sample.get("total_ns")) or sample["total_ns"] < 0:
        return "total_ns is missing or not a non-negative integer"
    decoder = sample.get("decoder_ns")
    if decoder is not None and (not isinstance(decoder, list) or not all(_is_int(d) for d in decoder)):
        return "decoder_ns is not a list of integers"
    for key in ("encoder_ns", "t_ns", "repeat"):
        if sample.get(key) is not None and not _is_int(sample[key]):
            return f"{key} is not an integer"
    if sample.get("thermal_state") is not None and not isinstance(sample["thermal_state"], str):
        return "thermal_state is not a string"
    return None


records.register_kind(RUN_KIND, RUN_VERSION, _checked_manifest)
records.register_kind(JOB_KIND, JOB_VERSION, _check_job_record)


def read_job_records(run_dir: Path | str) -> dict[str, dict]:
    """Every complete job record of a run, by job_key (temporary files of an interrupted write are ignored)."""
    found: dict[str, dict] = {}
    for path in sorted((Path(run_dir) / JOBS_DIR).glob("*.json")):
        record = records.read(path, JOB_KIND)  # checked by _check_job_record
        found[record["job_key"]] = record
    return found


def load_run(run_dir: Path | str) -> RunData:
    """Load a run directory: parquet tables when the run finished, else derived from its job records."""
    import pandas as pd

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    job_records = read_job_records(run_dir)
    tables = [run_dir / name for name in (SAMPLES_FILE, JOBS_FILE, PLANS_FILE)]
    if all(path.exists() for path in tables) and manifest.get("tables_written"):
        verify_tables(run_dir, manifest)
        samples, jobs, plans = (read_table(path) for path in tables)
        if any(column not in samples.columns for column in SAMPLE_COLUMNS_SINCE_DECODING):
            samples = build_tables(manifest, job_records)[0]  # written before issue 14: derive from the records
    else:
        samples, jobs, plans = build_tables(manifest, job_records)
    return RunData(run_dir, manifest, samples, jobs, plans, job_records)


# Columns whose type the readers compute with; every other column only has to be present.
_TYPED_COLUMNS = {"is_warmup": "bool", "throttled": "bool", "unstable": "bool", "latency_ns": "integer",
                  "round": "integer", "decoder_steps": "integer"}
# The columns readers cannot do without. Later columns (appended, never renamed) may be absent from older tables.
_REQUIRED_JOB_COLUMNS = tuple(c for c in JOB_COLUMNS if c not in (
    "median_ns", "series_n", "series_median_ns", "series_ci_low_ns", "series_ci_high_ns", "series_ci_rel",
    "battery_temperature_c", "gate_wait_s", "gate_outcome", "started_at", "finished_at", "elapsed_s", "compiles",
    "decoding"))
_REQUIRED_SAMPLE_COLUMNS = tuple(c for c in SAMPLE_COLUMNS if c not in SAMPLE_COLUMNS_SINCE_DECODING)
_TABLE_COLUMNS = {SAMPLES_FILE: _REQUIRED_SAMPLE_COLUMNS, JOBS_FILE: _REQUIRED_JOB_COLUMNS, PLANS_FILE: PLAN_COLUMNS}


def check_table(path: Path, columns: tuple[str, ...] | list[str] | None = None):
    """The arrow schema of one of a run's parquet tables, after checking it is readable, has `columns` (default: the
    ones its readers need) and the types readers compute with. A damaged table is refused naming the file and column: the
    job records are the truth, so deleting the table makes every reader rebuild it from them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    advice = f"the job records in {path.parent / JOBS_DIR} are untouched; delete {path.name} to rebuild it from them"
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise RecordError(f"{path}: unreadable {path.stem.replace('_', ' ')} table ({' '.join(str(err).split())}); "
                          f"{advice}") from None
    wanted = _TABLE_COLUMNS.get(path.name, ()) if columns is None else columns
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise RecordError(f"{path}: damaged table, column {missing[0]} is missing"
                          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; {advice}")
    for column in (c for c in schema.names if c in wanted or c in _TYPED_COLUMNS):
        kind = _TYPED_COLUMNS.get(column)
        found = schema.field(column).type
        if kind and not pa.types.is_null(found) and not (pa.types.is_boolean(found) if kind == "bool"
                                                          else pa.types.is_integer(found)):
            raise RecordError(f"{path}: damaged table, column {column} is {found}, expected {kind}; {advice}")
    return schema


def table_digests(run_dir: Path | str) -> dict[str, str]:
    """sha256 of each table as written, recorded in run.json (`table_sha256`): parquet has no page checksums by
    default, so a flipped bit can read back as other numbers without any error (found by a hostile review)."""
    run_dir = Path(run_dir)
    return {name: _sha256(run_dir / name) for name in (SAMPLES_FILE, JOBS_FILE, PLANS_FILE)}


def verify_tables(run_dir: Path | str, manifest: dict[str, Any], names: tuple[str, ...] | None = None) -> None:
    """Refuse a table whose bytes differ from the digest run.json recorded when it was written. Runs stored before
    digests were recorded have none and are read as before."""
    run_dir = Path(run_dir)
    recorded = manifest.get("table_sha256") or {}
    for name in names or tuple(recorded):
        expected = recorded.get(name)
        path = run_dir / name
        if expected is None or not path.is_file():
            continue
        if _sha256(path) != expected:
            raise RecordError(f"{path}: damaged table, its bytes differ from the sha256 run.json recorded when it was "
                              f"written; the job records in {run_dir / JOBS_DIR} are untouched; delete {name} to "
                              f"rebuild it from them")


def _sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_table(path: Path, columns: list[str] | None = None, **options):
    """A run table as pandas, checked first (check_table); unreadable data past the footer is refused the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_table(path, columns)
    try:
        return pq.read_table(path, columns=columns, **options).to_pandas()
    except (OSError, pa.ArrowException) as err:
        raise RecordError(f"{path}: unreadable {path.stem.replace('_', ' ')} table ({' '.join(str(err).split())}); "
                          f"the job records in "
                          f"{path.parent / JOBS_DIR} are untouched; delete {path.name} to rebuild it from them") from None


def build_tables(manifest: dict, job_records: dict[str, dict]):
    """The three tables of a run from its job records (the records are the truth; tables are derived)."""
    import pandas as pd

    run_id = manifest["run_id"]
    sample_rows, job_rows, plan_rows = [], [], []
    for key in sorted(job_records):
        record = job_records[key]
        sample_rows.extend(_sample_rows(run_id, record))
        job_rows.append(_job_row(run_id, record))
        plan_rows.extend(_plan_rows(run_id, record))
    samples = pd.DataFrame(sample_rows, columns=list(SAMPLE_COLUMNS))
    if len(samples):
        samples = samples.astype({"is_warmup": bool, "throttled": bool, "latency_ns": "int64", "round": "int64"})
    return samples, pd.DataFrame(job_rows, columns=list(JOB_COLUMNS)), pd.DataFrame(plan_rows,
                                                                                   columns=list(PLAN_COLUMNS))


def write_tables(run_dir: Path | str) -> RunData:
    """Write samples/jobs/compute_plans.parquet of a run atomically and return the loaded run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    job_records = read_job_records(run_dir)
    samples, jobs, plans = build_tables(manifest, job_records)
    for frame, name in ((samples, SAMPLES_FILE), (jobs, JOBS_FILE), (plans, PLANS_FILE)):
        with atomic.temporary_path(run_dir / name) as tmp:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    return RunData(run_dir, manifest, samples, jobs, plans, job_records)


def _sample_rows(run_id: str, record: dict) -> list[dict]:
    target, conditions = record["target"], record.get("conditions") or {}
    base = {
        "run_id": run_id, "job_key": record["job_key"], "variant_id": record["variant_id"],
        "variant_hash": record.get("variant_hash"), "target_kind": target["kind"], "target_id": target["id"],
        "device_model": target.get("model") or conditions.get("device_model"),
        "os_build": target.get("os_build") or conditions.get("os_build"), "compute_unit": record["compute_unit"],
        "round": record["round"],
    }
    rows = []
    decoding = record.get("decoding") or "recompute"
    for is_warmup, samples in ((True, record.get("warmup") or []), (False, record.get("samples") or [])):
        for sample in samples:
            decoder = sample.get("decoder_ns") or []
            rows.append({
                **base, "image_id": sample["image_id"], "repeat": sample.get("repeat", 0), "is_warmup": is_warmup,
                "latency_ns": int(sample["total_ns"]), "encoder_ns": sample.get("encoder_ns"),
                "decoder_ns": int(sum(decoder)), "decoder_steps": len(decoder),
                "thermal_state": sample.get("thermal_state"),
                "throttled": sample.get("thermal_state") not in (None, "nominal"), "t_ns": sample.get("t_ns"),
                "decoding": decoding, **token_timings(sample),
            })
    return rows


def token_timings(sample: dict) -> dict[str, int | float | None]:
    """A caption's decode timings from its per-token times (`decoder_ns`, one per generated token):
    state_ns (kv_cache: making the Core ML state), first_token_ns = time to first token (encoder + state + the first
    decoder step), token_ns = mean time of the steps after the first (per-token decode time; None with one step).
    None where the sample lacks the parts (a target that does not time the encoder)."""
    decoder = sample.get("decoder_ns") or []
    encoder, state = sample.get("encoder_ns"), sample.get("state_ns")
    first = encoder + (state or 0) + decoder[0] if decoder and encoder is not None else None
    rest = decoder[1:]
    return {"state_ns": state, "first_token_ns": first, "token_ns": sum(rest) / len(rest) if rest else None}


def _job_row(run_id: str, record: dict) -> dict:
    target, conditions = record["target"], record.get("conditions") or {}
    load, series, gate = record.get("load") or {}, record.get("series") or {}, conditions.get("gate") or {}
    versions = conditions.get("versions") or {}

    def part(name: str, package: str):
        value = load.get(name)
        return value.get(package) if isinstance(value, dict) else value

    return {
        "run_id": run_id, "job_key": record["job_key"], "series_key": record.get("series_key"),
        "round": record["round"], "variant_id": record["variant_id"], "variant_name": record.get("variant_name"),
        "variant_hash": record.get("variant_hash"), "target_kind": target["kind"], "target_id": target["id"],
        "target_name": target.get("name"), "target_label": target.get("label"),
        "device_model": target.get("model"), "os_build": target.get("os_build"),
        "compute_unit": record["compute_unit"], "n_samples": len(record.get("samples") or []),
        "n_warmup": len(record.get("warmup") or []), "median_ns": record.get("median_ns"),
        "series_n": series.get("n"), "series_median_ns": series.get("median_ns"),
        "series_ci_low_ns": series.get("ci_low_ns"), "series_ci_high_ns": series.get("ci_high_ns"),
        "series_ci_rel": series.get("ci_rel"), "stop_reason": record.get("stop_reason"),
        "unstable": bool(record.get("unstable")), "throttled_fraction": record.get("throttled_fraction"),
        "compile_encoder_ns": part("compile_ns", "encoder"), "compile_decoder_ns": part("compile_ns", "decoder"),
        "cold_load_encoder_ns": part("cold_load_ns", "encoder"), "cold_load_decoder_ns": part("cold_load_ns", "decoder"),
        "warm_load_encoder_ns": part("warm_load_ns", "encoder"), "warm_load_decoder_ns": part("warm_load_ns", "decoder"),
        "first_prediction_ns": load.get("first_prediction_ns"), "charging": conditions.get("charging"),
        "battery_level": conditions.get("battery_level"),
        "battery_temperature_c": conditions.get("battery_temperature_c"),
        "low_power_mode": conditions.get("low_power_mode"), "thermal_state_start": conditions.get("thermal_state_start"),
        "gate_wait_s": gate.get("waited_s"), "gate_outcome": gate.get("outcome"),
        "coremltools": versions.get("coremltools"), "torch": versions.get("torch"),
        "bench_version": conditions.get("bench_version"), "git_commit": conditions.get("git_commit"),
        "started_at": record.get("started_at"), "finished_at": record.get("finished_at"),
        "elapsed_s": record.get("elapsed_s"),
        # packages compiled on the device for this job (iPhone: each once per device per run), None when not told
        "compiles": load.get("compiles"),
        "decoding": record.get("decoding") or "recompute",
    }


def _plan_rows(run_id: str, record: dict) -> list[dict]:
    plan = record.get("compute_plan") or {}
    rows = []
    for package, ops in plan.items():
        if not isinstance(ops, list):
            continue  # the runner's plan also says `cost_kind: "estimate"` (docs/runner.md): not a package
        for op in ops:
            rows.append({
                "run_id": run_id, "variant_id": record["variant_id"], "target_id": record["target"]["id"],
                "compute_unit": record["compute_unit"], "package": package, "op_name": op.get("name"),
                "op_type": op.get("type"), "preferred": op.get("preferred"),
                "supported": json.dumps(op.get("supported") or []), "cost": op.get("cost"),
            })
    return rows


def list_runs(results_dir: Path | str) -> list[dict[str, Any]]:
    """Every run under results/ (oldest first) with its status and job counts; damaged manifests are listed as such."""
    rows = []
    for manifest_path in sorted(Path(results_dir).glob(f"*/{MANIFEST_NAME}")):
        run_dir = manifest_path.parent
        try:
            manifest = read_manifest(run_dir)
        except RecordError:
            rows.append({"run_id": run_dir.name, "created_at": "", "status": "damaged run.json", "done": 0,
                         "failed": 0})
            continue
        states = [entry["state"] for entry in manifest.get("jobs", {}).values()]
        rows.append({"run_id": manifest["run_id"], "created_at": manifest.get("created_at", ""),
                     "status": manifest.get("status", "?"), "done": states.count("done"),
                     "failed": len(states) - states.count("done")})
    return sorted(rows, key=lambda row: (row["created_at"], row["run_id"]))
