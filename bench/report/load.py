"""Read what the report needs, per docs/contracts.md: a run directory (§6), variant manifests (§3), eval records (§4).

Samples come from samples.parquet (fast for millions of rows); job-level facts (load times, conditions, compute plans,
flags) from jobs/*.json. A run without samples.parquet falls back to the samples inside its job files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import InputError
from bench.paths import Workspace
from bench.store import records

KINDS = {"bench.run": 3, "bench.jobresult": 2, "bench.variant": 1, "bench.eval": 1}
SAMPLE_COLUMNS = ["job_key", "variant_id", "variant_hash", "target_kind", "target_id", "device_model", "os_build",
                  "compute_unit", "image_id", "is_warmup", "latency_ns", "encoder_ns", "decoder_ns", "thermal_state",
                  "throttled", "decoder_steps"]
# Per-token timings (issue 14), absent from tables written before it: such runs derive them from their job records.
TOKEN_COLUMNS = ["decoding", "state_ns", "first_token_ns", "token_ns"]


def _ensure_kinds() -> None:
    # The writers register their kinds (with migrations and shape checks) when imported; import the ones present, so a report
    # reads the same validated records `bench eval-compare` or `bench models ls` would.
    import importlib

    for module in ("bench.store.runs", "bench.build.variants", "bench.eval.records"):
        try:
            importlib.import_module(module)
        except ImportError:  # an optional stage: its records are read without its check
            pass
    for kind, version in KINDS.items():
        records.CURRENT_VERSIONS.setdefault(kind, version)


@dataclass
class RunData:
    run_dir: Path
    run: dict[str, Any]
    jobs: list[dict[str, Any]]  # job records without their sample lists
    samples: Any  # pandas.DataFrame, SAMPLE_COLUMNS (measured and warm-up rows, is_warmup tells)
    workspace: Workspace
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant_id -> manifest
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant_id -> eval record
    device_quality: dict[str, dict[str, Any]] = field(default_factory=dict)  # series key -> bench.devicequality record
    notes: list[str] = field(default_factory=list)  # what the report must say about this run's inputs
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # derived tables, computed once per run

    @property
    def run_id(self) -> str:
        return self.run.get("run_id", self.run_dir.name)

    @property
    def created_at(self) -> str:
        return str(self.run.get("created_at", ""))


def resolve_run_dir(run: str | Path, workspace: Workspace | None = None) -> Path:
    """A run directory from a path, a run id under results/, or `latest`."""
    workspace = workspace or Workspace.current()
    path = Path(run)
    if (path / "run.json").is_file():
        return path.resolve()
    if str(run) == "latest":
        runs = list_runs(workspace.results_dir)
        if not runs:
            raise InputError(f"no runs under {workspace.results_dir}; run `bench run` first")
        return runs[-1]
    candidate = workspace.results_dir / str(run)
    if (candidate / "run.json").is_file():
        return candidate.resolve()
    from bench.errors import did_you_mean

    known = [p.name for p in list_runs(workspace.results_dir)]
    raise did_you_mean("run", str(run), known) if known else InputError(
        f"{run}: not a run directory (no run.json) and no such run under {workspace.results_dir}")


def list_runs(results_dir: Path) -> list[Path]:
    """Run directories under results/, oldest first (by created_at, then name)."""
    found = []
    for run_json in Path(results_dir).glob("*/run.json"):
        try:
            created = json.loads(run_json.read_text(encoding="utf-8")).get("created_at", "")
        except (OSError, json.JSONDecodeError):
            continue  # a half-written or foreign folder is not a run
        found.append((str(created), run_json.parent.name, run_json.parent.resolve()))
    return [path for _, _, path in sorted(found)]


def workspace_of(run_dir: Path) -> Workspace:
    """results/<run_id>/ lives in a workspace root two levels up; else the current workspace."""
    if run_dir.parent.name == "results":
        return Workspace(run_dir.parent.parent)
    return Workspace.current()


def _read_record(path: Path, kind: str) -> dict[str, Any]:
    _ensure_kinds()
    return records.read(path, kind)


def load_run(run: str | Path, workspace: Workspace | None = None, *, with_artifacts: bool = True) -> RunData:
    """Load one run: run.json, job records, samples; with_artifacts also loads its variants' manifests and evals."""
    run_dir = resolve_run_dir(run, workspace)
    workspace = workspace or workspace_of(run_dir)
    run_record, jobs, samples = _read_run_dir(run_dir)
    data = RunData(run_dir, run_record, jobs, samples, workspace)
    if with_artifacts:
        ids = {job["variant_id"] for job in jobs}
        data.variants = {vid: m for vid in sorted(ids) if (m := load_manifest(workspace, vid)) is not None}
        data.evals, data.notes = run_evals(run_record, workspace, sorted(ids))
        data.device_quality, notes = _device_quality(run_dir, run_record)
        data.notes.extend(notes)
    return data


def run_evals(run_record: dict[str, Any], workspace: Workspace, variant_ids: list[str]):
    """The eval records bound to the run in run.json (exactly those bytes), and notes on what could not be shown.

    A run recorded before bindings existed (run.json v1, `evals` null) falls back to the workspace's records."""
    from bench.errors import RecordError
    from bench.eval.records import read_bound

    bound = run_record.get("evals")
    if bound is None:
        evals = {vid: e for vid in variant_ids if (e := load_eval(workspace, vid)) is not None}
        note = ("caption quality comes from the workspace's current eval records: this run predates eval binding "
                "(run.json v1), so it may change after a later `bench eval`")
        return evals, [note] if evals else []
    if not isinstance(bound, dict):
        return {}, [f"caption quality not shown: run.json evals is damaged ({type(bound).__name__})"]
    evals, notes = {}, []
    for variant_id in variant_ids:
        if variant_id not in bound:
            continue
        try:
            evals[variant_id] = read_bound(workspace.evals_dir, bound[variant_id])
        except RecordError as err:
            notes.append(f"quality of {variant_id} not shown: {err}")
    return evals, notes


def _device_quality(run_dir: Path, run_record: dict[str, Any]):
    """The captions each device decoded (bench/store/device_quality.py), exactly the records run.json binds."""
    from bench.store.device_quality import load_bound

    return load_bound(run_dir, run_record)


def _read_run_dir(run_dir: Path):
    """The store's reader when it is installed (bench.store.runs.load_run), else a reader of the §6 contract."""
    try:
        from bench.store.runs import load_run as store_load_run
    except ImportError:  # the store stage is optional for reading a run directory
        store_load_run = None
    if store_load_run is None:
        return _read_contract(run_dir)
    from bench.store import runs as store

    manifest = store.read_manifest(run_dir)
    job_records = store.read_job_records(run_dir)
    jobs = [{k: v for k, v in record.items() if k not in ("samples", "warmup")} for record in job_records.values()]
    parquet = run_dir / store.SAMPLES_FILE
    if manifest.get("tables_written") and parquet.is_file():
        store.verify_tables(run_dir, manifest, (store.SAMPLES_FILE,))
        samples = _read_samples_parquet(parquet)  # only the columns the report needs: most of a big run's read time
        if any(column not in samples.columns for column in TOKEN_COLUMNS):
            samples = store.build_tables(manifest, job_records)[0]  # written before issue 14: from the records
    else:
        samples = store.build_tables(manifest, job_records)[0]  # unfinished run: derived from the job records
    return manifest, jobs, samples[[c for c in SAMPLE_COLUMNS + TOKEN_COLUMNS if c in samples.columns]]


def _read_samples_parquet(path: Path):
    from bench.store.runs import check_table, read_table

    keys = ["job_key", "variant_id", "variant_hash", "target_kind", "target_id", "device_model", "os_build",
            "compute_unit", "image_id", "thermal_state"]
    # only the columns the report needs (most of a big run's read time), checked like every reader's
    present = set(check_table(path, SAMPLE_COLUMNS).names)
    frame = read_table(path, SAMPLE_COLUMNS + [c for c in TOKEN_COLUMNS if c in present], read_dictionary=keys)
    for key in keys:  # categoricals group fast; plain strings compare like the job records' values
        if key in frame.columns and hasattr(frame[key], "cat"):
            frame[key] = frame[key].cat.remove_unused_categories()
    return frame


def _read_contract(run_dir: Path):
    run_record = _read_record(run_dir / "run.json", "bench.run")
    jobs, inline_samples = [], []
    for job_file in sorted((run_dir / "jobs").glob("*.json")):
        job = _read_record(job_file, "bench.jobresult")
        samples = job.pop("samples", None) or []
        warmup = job.pop("warmup", None) or []
        jobs.append(job)
        inline_samples.append((job, warmup, samples))
    parquet = run_dir / "samples.parquet"
    samples = _read_samples_parquet(parquet) if parquet.is_file() else None
    if samples is None or any(column not in samples.columns for column in TOKEN_COLUMNS):
        samples = _samples_from_jobs(inline_samples)  # no table, or one written before issue 14
    return run_record, jobs, samples


def _samples_from_jobs(inline: list) -> Any:
    import pandas as pd

    rows = []
    for job, warmup, samples in inline:
        target = job.get("target") or {}
        for is_warmup, group in ((True, warmup), (False, samples)):
            for s in group:
                decoder = s.get("decoder_ns")
                rows.append({"job_key": job["job_key"], "variant_id": job["variant_id"],
                             "variant_hash": job.get("variant_hash"), "target_kind": target.get("kind"),
                             "target_id": target.get("id"), "device_model": target.get("model"),
                             "os_build": target.get("os_build"), "compute_unit": job["compute_unit"],
                             "image_id": s.get("image_id"), "is_warmup": is_warmup, "latency_ns": s.get("total_ns"), "encoder_ns": s.get("encoder_ns"),
                             "decoder_ns": sum(decoder) if isinstance(decoder, list) else decoder,
                             "decoder_steps": len(decoder) if isinstance(decoder, list) else None,
                             "thermal_state": s.get("thermal_state"),
                             "throttled": s.get("thermal_state") in ("serious", "critical"),
                             "decoding": job.get("decoding") or "recompute", **_token_timings(s)})
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS + TOKEN_COLUMNS)


def _token_timings(sample: dict) -> dict[str, Any]:
    """The §6 definitions (docs/contracts.md) of state_ns, first_token_ns and token_ns, from one sample."""
    decoder = sample.get("decoder_ns") if isinstance(sample.get("decoder_ns"), list) else []
    encoder, state = sample.get("encoder_ns"), sample.get("state_ns")
    first = encoder + (state or 0) + decoder[0] if decoder and encoder is not None else None
    rest = decoder[1:]
    return {"state_ns": state, "first_token_ns": first, "token_ns": sum(rest) / len(rest) if rest else None}


def load_manifest(workspace: Workspace, variant_id: str) -> dict[str, Any] | None:
    """A built variant's manifest, else an imported one's (bench.build.imported), else None."""
    path = workspace.variants_dir / variant_id / "manifest.json"
    if path.is_file():
        return _read_record(path, "bench.variant")
    from bench.build import imported

    path = imported.imported_root(workspace) / variant_id / "manifest.json"
    return _read_record(path, imported.KIND) if path.is_file() else None


def load_eval(workspace: Workspace, variant_id: str) -> dict[str, Any] | None:
    """The variant's eval record on the largest dataset it was evaluated on (ties: the last file name)."""
    folder = workspace.evals_dir / variant_id
    best = None
    for path in sorted(folder.glob("*.json")):
        record = _read_record(path, "bench.eval")
        if best is None or record["dataset"]["n"] >= best["dataset"]["n"]:
            best = record
    return best
