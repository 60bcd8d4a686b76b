"""The run stage's library entry points (the CLI only parses flags and calls these).

    start_run(config, workspace)        plan + measure + store a new run; returns a RunOutcome
    resume_run(run_id, workspace)       redo only missing / failed / interrupted jobs of a run
    run_pipeline(config, workspace)     `bench run` with no argument: build the default matrix of the built-in
                                        captioner if nothing is built, measure on the host (emulation) or the
                                        connected iPhones, evaluate caption quality, write the report

Every seam a test needs is a keyword argument: targets, variants, images, observer, sleep.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, InputError, RecordError, did_you_mean
from bench.paths import Workspace
from bench.run.config import RunConfig
from bench.run.lock import RunLock
from bench.run.manifest import REDO_STATES, RunManifest
from bench.run.plan import Series, plan_series, select_variants, variant_ref
from bench.run.scheduler import MeasureSettings, RunObserver, Scheduler
from bench.run.stats import StopRule
from bench.run.targets.base import ImageItem, VariantRef, describe
from bench.store import runs as run_store
from bench.store.environment import git_commit, host_environment, now_iso, package_versions


@dataclass
class RunOutcome:
    run_id: str
    run_dir: Path
    status: str  # complete | incomplete
    data: Any  # bench.store.runs.RunData
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job_key, why)
    quarantined: dict[str, str] = field(default_factory=dict)  # target_id -> why
    evals: dict[str, Any] = field(default_factory=dict)  # variant_id -> eval record (default pipeline)
    report: Path | None = None
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line per (variant, device) pair its OS cannot run
    lock: Any = field(default=None, repr=False)  # the run's RunLock while the pipeline still evaluates and reports

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


# --- inputs of a run -------------------------------------------------------------------------------------------

def built_variants(workspace: Workspace) -> list[VariantRef]:
    """Every variant built in the workspace (models/variants/*/manifest.json)."""
    if not workspace.variants_dir.is_dir():
        return []
    from bench.build.variants import list_variants

    refs = []
    for manifest in list_variants(workspace):
        directory = workspace.variants_dir / manifest.variant_id
        refs.append(variant_ref(manifest, directory))
    return refs


def imported_variants(workspace: Workspace, names: list[str]) -> list[VariantRef]:
    """The imported models (bench.build.imported) among `names`, as variants a run can measure."""
    from bench.build.imported import find_imported

    refs = {}
    for name in names:
        manifest = find_imported(name, workspace)
        if manifest is not None:
            if manifest.get("captioner"):  # read like a built variant's manifest by the targets and device quality
                from bench.run.generic import CaptionerSource

                manifest = CaptionerSource(manifest)
            refs[manifest["variant_id"]] = variant_ref(manifest, Path(manifest["directory"]))
    return list(refs.values())


def _with_family_references(variants: list[VariantRef], workspace: Workspace) -> tuple[list[VariantRef], list[str]]:
    """The run's variants plus the reference of every imported family in it (drift is measured against the
    reference on cpuOnly, so it must be measured too), and a note for each one added."""
    from bench.build.imported import families, find_imported
    from bench.run.generic import is_imported

    chosen = {v.variant_id for v in variants}
    references = {family: info["reference"] for family, info in families(workspace).items()}
    added, notes = [], []
    for variant in variants:
        if not is_imported(variant):
            continue
        reference = references.get(variant.source["family"])
        if reference and reference not in chosen:
            manifest = find_imported(reference, workspace)
            added.append(variant_ref(manifest, Path(manifest["directory"])))
            chosen.add(reference)
            notes.append(f"added {reference}, the reference of family {variant.source['family']}: drift is measured "
                         "against it on cpuOnly")
    return [*variants, *added], notes


def _is_pair(variant: VariantRef) -> bool:
    from bench.run.generic import is_imported_captioner

    return is_imported_captioner(variant)


def _imported_plan(variants: list[VariantRef], workspace: Workspace) -> dict[str, Any]:
    """For run.json: each imported variant's family and the reference its drift is measured against, fixed now."""
    from bench.build.imported import families
    from bench.run.generic import is_imported

    chosen = [v for v in variants if is_imported(v)]
    if not chosen:
        return {}
    references = {family: info["reference"] for family, info in families(workspace).items()}
    return {v.variant_id: {"name": v.name, "family": v.source["family"], "reference": references[v.source["family"]],
                           "content_sha256": v.source["content_sha256"]} for v in chosen}


def _leave_out_unreadable(wanted: list[str], available: list[VariantRef],
                          workspace: Workspace) -> tuple[list[str], list[str]]:
    """(names still wanted, notes): built variants whose manifest cannot be read are left out and said, never taking
    the healthy ones down; a run that named only such variants is refused with the first one's error."""
    import re

    from bench.build.variants import list_variants
    from bench.errors import DamagedError

    unreadable: dict[str, str] = {}
    list_variants(workspace, unreadable=unreadable)
    known = {v.name for v in available} | {v.variant_id for v in available}
    kept, notes = [], []
    for name in wanted:
        hits = [] if name in known else [vid for vid in unreadable
                                         if vid == name or re.fullmatch(re.escape(name) + r"-[0-9a-f]{12}", vid)]
        if hits:
            notes.append(f"variant {hits[0]} left out: {unreadable[hits[0]]}")
        else:
            kept.append(name)
    if wanted and not kept:
        raise DamagedError(notes[0].split(": ", 1)[1])
    if not wanted:
        notes = [f"variant {vid} left out: {error}" for vid, error in sorted(unreadable.items())]
    return kept, notes


def build_default_matrix(workspace: Workspace, matrix: str | None = None, *, log=print) -> None:
    """Build the matrix (models/matrix.yaml by default) of the built-in captioner; already-built variants are reused."""
    from bench.build.builder import build_matrix
    from bench.build.matrix import load_matrix
    from bench.paths import DEFAULT_MATRIX

    path = Path(matrix) if matrix else DEFAULT_MATRIX
    loaded = load_matrix(path)
    from bench.paths import BUILTIN_SOURCES, builtin_captioner_dir

    for source in sorted({loaded.source, *(entry.source for entry in loaded.variants if entry.source)}):
        size = BUILTIN_SOURCES.get(source)
        if size and not (builtin_captioner_dir(size) / "config.json").exists():
            option = "" if size == "base" else f" --size {size}"
            raise InputError(f"the built-in captioner is not in {builtin_captioner_dir(size)} yet; train it with "
                             f"`bench train-builtin{option}` (see its reproduce.sh), then run again")
    log(f"building the variant matrix {path} (cached variants are reused)…")
    report = build_matrix(loaded, workspace,
                          progress=lambda event: log(f"  {event.name}: {event.detail or event.kind}")
                          if getattr(event, "kind", None) == "done" else None)
    for failed in report.failed:
        log(f"  {failed.name} failed: {failed.error}")


def open_images(config: RunConfig, *, limit: int | None = None) -> tuple[list[ImageItem], dict[str, Any]]:
    """The images every job measures: a deterministic subset (dataset seed 0) so runs are comparable. `limit`: another
    size (the evaluation subset, `eval_images`: the images the host eval record captions)."""
    from bench.data.base import open_dataset

    dataset = open_dataset(config.dataset, split=config.split, limit=limit or config.images, seed=0,
                           skip_missing=False)
    items = [ImageItem(str(sample.image_id), sample.load_image, tuple(sample.captions)) for sample in dataset]
    if not items:
        raise InputError(f"dataset {config.dataset!r} has no images in split {config.split!r}")
    return items, {"spec": config.dataset, "split": config.split, "n": len(items),
                   "signature": getattr(dataset, "signature", None)}


def _settings(config: RunConfig, input_digests: dict[str, str] | None = None) -> MeasureSettings:
    """How jobs measure; `input_digests`: the input-set sha256 per imported variant from the run's plan, which every
    job checks the inputs it makes against (bench.run.generic.planned_inputs)."""
    adaptive = config.adaptive
    rule = StopRule(ci_width=adaptive.ci_width, min_rounds=config.rounds, min_samples=adaptive.min_samples,
                    max_samples=adaptive.max_samples, max_seconds=adaptive.max_seconds, confidence=adaptive.confidence)
    from bench.run.generic import GenericSettings

    generic = config.generic
    return MeasureSettings(rule=rule, thermal=config.thermal, retry=config.retry, warmup=config.warmup,
                           repeats=config.repeats, compute_plan=config.compute_plan,
                           generic=GenericSettings(inputs=generic.inputs, source=generic.inputs_from,
                                                   function=generic.function, shapes=dict(generic.shapes),
                                                   output_cap_bytes=generic.output_cap_bytes,
                                                   input_digests=dict(input_digests or {})))


def _base_conditions() -> dict[str, Any]:
    versions = package_versions(("coremltools", "torch"))
    from bench import __version__

    return {"versions": versions, "bench_version": __version__, "git_commit": git_commit().get("commit"),
            "git_dirty": git_commit().get("dirty")}


# --- a new run ---------------------------------------------------------------------------------------------------

def start_run(config: RunConfig, workspace: Workspace, *, targets: list | None = None,
              variants: list[VariantRef] | None = None, images: list[ImageItem] | None = None,
              observer: RunObserver | None = None, sleep=None, run_id: str | None = None,
              executor=None, hold_lock: bool = False, device_quality: bool = False) -> RunOutcome:
    """Plan, measure and store a run under results/<run_id>/ (results/ is created when missing).

    The run is locked (bench/run/lock.py) from its creation. With `hold_lock` (the pipeline, which evaluates and
    reports next) the outcome keeps the lock and a fully measured run stays `measured` until `settle_run`.
    `device_quality` (the pipeline, when it evaluates): each device also captions the evaluation subset."""

    if variants is None:
        variants = built_variants(workspace)
        if not variants and not imported_variants(workspace, config.variants):
            raise InputError(f"no built variants under {workspace.variants_dir}; run `bench models build` first, "
                             "or `bench run` with no arguments to build the default matrix")
    extra = [v for v in imported_variants(workspace, config.variants) if v.variant_id not in
             {known.variant_id for known in variants}]
    variants = [*variants, *extra]
    wanted, left_out = _leave_out_unreadable(config.variants, variants, workspace)
    variants = select_variants(variants, wanted)
    variants, references_added = _with_family_references(variants, workspace)
    left_out += references_added
    generic_inputs = check_generic_inputs(variants, config)  # before targets are resolved and anything is stored
    if targets is None:
        targets, executor = _targets_and_executor(config, config.targets, workspace)
    series = plan_series(variants, targets, config.compute_units)
    series, skipped = _leave_out_unsupported(series, targets, strict=config.strict_os)
    for pair in skipped:  # said before a night of measuring, and again in the summary
        getattr(observer, "note", lambda message: None)(f"skipped before the run: {pair.line}")
    dataset_info: dict[str, Any] = {"spec": "given", "n": len(images or [])}
    if images is None:
        images, dataset_info = open_images(config)
    seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
    run_id = run_id or new_run_id()
    plan = {
        "config": config.model_dump(mode="json"),
        "variants": [v.variant_id for v in variants],  # ids, in plan order (the report orders by them)
        "variant_details": [{"variant_id": v.variant_id, "name": v.name, "variant_hash": v.variant_hash,
                      "path": str(v.path) if v.path else None, "image_size": v.image_size, "decode": v.decode}
                     for v in variants],
        "targets": [describe(t) for t in targets],
        "compute_units": list(config.compute_units),
        "series": [s.key for s in series],
        "images": {**dataset_info, "image_ids": [item.image_id for item in images]},
        "rounds": config.rounds,
        "adaptive": config.adaptive.model_dump(mode="json"),
        "order": "interleaved, randomised per (seed, target, round)",
        "imported": _imported_plan(variants, workspace),
        # imported encoder/decoder pairs: captioner jobs on Core ML, no torch weights, hence no host reference
        "imported_captioners": [v.variant_id for v in variants if _is_pair(v)],
        "generic_inputs": generic_inputs,  # variant id -> sha256 of its input set: a resume must feed the same
    }
    run_dir = workspace.results_dir / run_id
    workspace.results_dir.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise InputError(f"run {run_id} already exists; use --resume {run_id}") from None
    lock = RunLock.acquire(run_dir)  # before run.json exists: no resume can slip in while it is being measured
    with _holding(lock, hold_lock):
        manifest = RunManifest.create(run_dir, {"run_id": run_id, "created_at": now_iso(), "seed": seed,
                                                "plan": plan, "environment": host_environment(), "evals": {},
                                                # {}: quality jobs asked (bound as they finish); null: not asked
                                                "device_quality": {} if device_quality else None,
                                                # pairs left out before anything ran: the device's OS is too old
                                                "skipped": [pair.as_record() for pair in skipped]})
        outcome = _measure(manifest, config, series, targets, images, observer, sleep, workspace, executor,
                           settle=not hold_lock, device_quality=device_quality)
    outcome.lock = lock if hold_lock else None
    outcome.notes[:0] = left_out
    return outcome


def check_generic_inputs(variants: list[VariantRef], config: RunConfig) -> dict[str, str]:
    """Each imported model's input set (run.yaml `generic:`), made once before a run is stored or a device contacted:
    a wrong .npz, image folder, shape or function is one InputError naming the model — not a failed job in a stored,
    resumable run that would fail again. start_run and resume_run check the variants they measure; run_pipeline
    (`bench run`) checks the named ones before building anything too.

    Returns {variant id: sha256 of its input set} (bench.run.generic.input_set_digest) for the run's plan."""
    import json

    from bench.run.generic import input_set_digest, is_imported, make_inputs

    settings = _settings(config).generic
    digests: dict[str, str] = {}
    by_interface: dict[str, str] = {}  # a family's variants share their interface: one input set each
    for variant in variants:
        if not is_imported(variant):
            continue
        key = json.dumps(variant.source["interface"], sort_keys=True)
        if key not in by_interface:
            try:
                by_interface[key] = input_set_digest(make_inputs(variant.source["interface"], settings))
            except InputError as err:
                raise InputError(f"{variant.name}: {err} (run.yaml `generic:`)") from None
        digests[variant.variant_id] = by_interface[key]
    return digests


def _check_same_generic_inputs(plan: dict, variants: list[VariantRef], config: RunConfig, run_dir: Path) -> None:
    """A resume feeds each imported model the input set its run began with, or is refused: drift compares outputs of
    the same inputs across variants, and an .npz edited (or an image added) between the two would mix two sets."""
    now = check_generic_inputs(variants, config)
    then = plan.get("generic_inputs")
    if then is None:  # planned before input sets were recorded: nothing to compare with
        return
    changed = [v.name for v in variants if v.variant_id in now and then.get(v.variant_id, now[v.variant_id])
               != now[v.variant_id]]
    if changed:
        source = config.generic.inputs_from or "generated from its description"
        raise RecordError(f"{run_dir}: the inputs of {changed[0]} ({source}) are not the ones this run began with "
                          "(sha256 differs); restore them, or start a new run")


def _leave_out_unsupported(series: list[Series], targets: list, *, strict: bool) -> tuple[list[Series], list]:
    """The series whose device can run the variant's packages, and the pairs left out (bench/run/os_support.py).
    Decided before anything is pushed: `strict` refuses the run in one line; a plan left empty is refused too."""
    from bench.run import os_support

    skipped = os_support.unsupported_pairs(series, targets)
    if not skipped:
        return series, []
    if strict:
        raise InputError(os_support.refusal(skipped))
    left_out = {(pair.variant_id, pair.target_id) for pair in skipped}
    kept = [s for s in series if (s.variant.variant_id, s.target_id) not in left_out]
    if not kept:
        raise InputError(f"nothing can run: every chosen variant needs a newer OS than its device "
                         f"({skipped[0].line.removesuffix(': not run')}); update the phone or choose other variants")
    return kept, skipped


@contextlib.contextmanager
def _holding(lock: RunLock, keep: bool):
    """Release the run's lock when the block ends — on success only if the caller did not ask to keep it."""
    try:
        yield
    except BaseException:
        lock.release()
        raise
    if not keep:
        lock.release()


def _targets_and_executor(config: RunConfig, names: list[str], workspace: Workspace) -> tuple[list, Any]:
    """This host's targets (executor None: local threads), or with `lab:` the lab's phones and the Ray executor.
    Ray is imported only here, only for a lab run."""
    if config.lab:
        from bench.lab.executor import open_lab

        return open_lab(config.lab, names, runner_timeout_s=config.runner_timeout_s)
    from bench.run.targets import resolve_targets

    return resolve_targets(names, workspace=workspace, host_threads=config.host_threads,
                           runner_timeout_s=config.runner_timeout_s,
                           host_resident_variants=config.host_resident_variants), None


# --- resuming ----------------------------------------------------------------------------------------------------

def resolve_run_dir(run: str | Path, workspace: Workspace, *, own: bool = False) -> Path:
    """A run directory from a path or a run id. With `own`, a run of another workspace is refused: resuming it
    from here would measure with this workspace's variants, devices and evals and write into that one."""
    path = Path(run)
    if (path / run_store.MANIFEST_NAME).exists():
        if own and path.resolve().parent != workspace.results_dir.resolve():
            raise InputError(f"run {path} is not in this workspace ({workspace.results_dir}); resume it from its own: "
                             f"BENCH_ROOT={path.resolve().parent.parent} bench run --resume {path.resolve().name}")
        return path
    candidate = workspace.results_dir / str(run)
    if candidate.is_dir():
        return candidate
    known = sorted(p.name for p in workspace.results_dir.glob("*/") if (p / run_store.MANIFEST_NAME).exists()) \
        if workspace.results_dir.is_dir() else []

    raise did_you_mean("run", str(run), known) if known else InputError(f"no run {run!r} under {workspace.results_dir}")


def resume_run(run: str | Path, workspace: Workspace, *, targets: list | None = None,
               variants: list[VariantRef] | None = None, images: list[ImageItem] | None = None,
               observer: RunObserver | None = None, sleep=None, force: bool = False, executor=None,
               lab: str | None = None, hold_lock: bool = False,
               runner_timeout_s: float | None = None, device_quality: bool | None = False) -> RunOutcome:
    """Measure only what a run is missing: pending, interrupted, failed and quarantined jobs, and unfinished series.
    `lab`: the lab head's address now (a lab run resumes on the lab it was planned on unless told otherwise).
    `runner_timeout_s` (e.g. `--runner-timeout` after a timeout) replaces the run's own for this resume.
    `device_quality`: also run missing or failed quality jobs (None: if the run asked for them when it started —
    the pipeline's resume).

    Every refusal (a complete run, another workspace's run, a run another process is measuring, a damaged or
    irreproducible plan) happens before anything in the run directory is changed."""
    run_dir = resolve_run_dir(run, workspace, own=True)
    manifest = RunManifest.open(run_dir)  # a corrupt run.json stops here, before anything is touched
    plan, config = _resumable_plan(manifest)
    if device_quality is None:  # as planned: the run asked for quality jobs when it started
        device_quality = manifest.data.get("device_quality") is not None
    _refuse_complete(manifest)
    _check_same_harness(manifest, force)
    lock = RunLock.acquire(run_dir)
    with _holding(lock, hold_lock):
        manifest = RunManifest.open(run_dir)  # again, under the lock: another resume may have just finished it
        _refuse_complete(manifest)
        if variants is None:
            variants = _planned_variants(plan, workspace)
        else:
            wanted = set(plan["variants"])
            variants = [v for v in variants if v.variant_id in wanted]
        _check_same_generic_inputs(plan, variants, config, run_dir)
        if lab:
            config = config.model_copy(update={"lab": lab})
        if runner_timeout_s:  # not a measurement setting: changing it keeps the run comparable
            config = config.model_copy(update={"runner_timeout_s": runner_timeout_s})
        if images is None:
            images, _ = open_images(config)
        planned_ids = plan["images"]["image_ids"]
        if [item.image_id for item in images] != planned_ids:
            raise RecordError(f"{run_dir}: the images of this run ({len(planned_ids)}) cannot be reproduced; "
                              "start a new run")
        if targets is None:
            names = [t.get("selector") or (t["id"].replace("iphone-", "iphone:", 1) if t["kind"] == "iphone"
                                           else t["kind"]) for t in plan["targets"]]
            targets, executor = _targets_and_executor(config, names, workspace)
        series = [s for s in plan_series(variants, targets, plan["compute_units"]) if s.key in set(plan["series"])]
        missing = set(plan["series"]) - {s.key for s in series}
        if missing:
            raise InputError(f"cannot resume {manifest.run_id}: {len(missing)} planned series have no target or "
                             f"variant now (e.g. {sorted(missing)[0]})")
        _remove_stale_temporaries(run_dir)
        manifest.update(status="running", tables_written=False,
                        resumed_at=[*manifest.data.get("resumed_at", []), now_iso()])
        outcome = _measure(manifest, config, series, targets, images, observer, sleep, workspace, executor,
                           settle=not hold_lock, device_quality=device_quality)
    outcome.lock = lock if hold_lock else None
    return outcome


def _refuse_complete(manifest: RunManifest) -> None:
    if manifest.data.get("status") == "complete":
        raise InputError(f"run {manifest.run_id} is complete; its results are immutable, so there is nothing to "
                         "resume (nothing was changed) — start a new run to measure again")


# What resume reads from run.json, checked in this order (valid JSON may still lack any of it).
_RESUME_NEEDS = (
    ("plan", lambda run: isinstance(run.get("plan"), dict)),
    ("seed", lambda run: isinstance(run.get("seed"), int)),
    *((f"plan.{key}", lambda run, key=key, kind=kind: isinstance(run["plan"].get(key), kind))
      for key, kind in (("config", dict), ("variants", list), ("compute_units", list), ("series", list),
                        ("images", dict), ("targets", list), ("variant_details", list))),
    ("plan.images.image_ids", lambda run: isinstance(run["plan"]["images"].get("image_ids"), list)),
    ("plan.targets", lambda run: all(isinstance(t, dict) and {"id", "kind"} <= set(t) for t in run["plan"]["targets"])),
    ("plan.variant_details", lambda run: all(isinstance(v, dict) and "variant_id" in v
                                             for v in run["plan"]["variant_details"])),
)


def _resumable_plan(manifest: RunManifest) -> tuple[dict, RunConfig]:
    """The plan and config of a run to resume, or one RecordError saying why run.json cannot drive a resume."""
    from pydantic import ValidationError

    where = manifest.run_dir / run_store.MANIFEST_NAME
    for name, present in _RESUME_NEEDS:
        if not present(manifest.data):
            raise RecordError(f"{where}: {name} is missing or damaged, so the run cannot be resumed; start a new run")
    plan = manifest.data["plan"]
    try:
        return plan, RunConfig.model_validate(plan["config"])
    except ValidationError as err:
        problem = err.errors()[0]
        key = ".".join(str(part) for part in problem["loc"])
        raise RecordError(f"{where}: plan.config.{key}: {problem['msg']}, so the run cannot be resumed; "
                          "start a new run") from None


def _check_same_harness(manifest: RunManifest, force: bool) -> None:
    """One run must not mix measurements from two harness builds (commit, torch or coremltools version)."""
    from bench.errors import IncomparableError

    then = manifest.data.get("environment") or {}
    now = host_environment()
    differences = []
    if (then.get("git") or {}).get("commit") != now["git"]["commit"]:
        differences.append(f"git commit {(then.get('git') or {}).get('commit')} → {now['git']['commit']}")
    for package in ("torch", "coremltools"):
        before, after = (then.get("packages") or {}).get(package), now["packages"].get(package)
        if before != after:
            differences.append(f"{package} {before} → {after}")
    if differences and not force:
        raise IncomparableError(f"run {manifest.run_id} was measured with another harness ({'; '.join(differences)}); "
                                "resuming would mix incomparable jobs — start a new run, or pass --force")


def _remove_stale_temporaries(run_dir: Path) -> None:
    """A killed writer leaves `.<name>.<random>.tmp` beside its target (bench/atomic.py); never a complete file."""
    for folder in (run_dir, run_dir / run_store.JOBS_DIR):
        for stale in folder.glob(".*.tmp"):
            if stale.is_file():
                stale.unlink()


def _planned_variants(plan: dict, workspace: Workspace) -> list[VariantRef]:
    from bench.build.variants import load_variant

    imported = {*(plan.get("imported") or {}), *(plan.get("imported_captioners") or ())}
    refs = []
    for entry in plan["variant_details"]:
        if entry["variant_id"] in imported:  # a bench.imported manifest, not a built variant's
            found = imported_variants(workspace, [entry["variant_id"]])
            if not found:
                raise InputError(f"imported model {entry['variant_id']} of this run is no longer in the workspace; "
                                 "import it again (`bench models import`) first")
            refs += found
            continue
        path = Path(entry["path"]) if entry.get("path") else workspace.variants_dir / entry["variant_id"]
        if not path.exists():
            raise InputError(f"variant {entry['variant_id']} of this run is no longer at {path}; rebuild it first")
        refs.append(variant_ref(load_variant(path), path))
    return refs


# --- measuring and storing -----------------------------------------------------------------------------------------

def _measure(manifest: RunManifest, config: RunConfig, series: list[Series], targets: list, images, observer,
             sleep, workspace: Workspace, executor=None, *, settle: bool = True,
             device_quality: bool = False) -> RunOutcome:
    for target in targets:  # device targets keep each job's runner log beside its records (jobs/<job id>.log)
        if hasattr(target, "keep_logs_in"):
            target.keep_logs_in(manifest.run_dir / run_store.JOBS_DIR)
    settings = _settings(config, manifest.data["plan"].get("generic_inputs"))
    scheduler = Scheduler(manifest.run_dir, manifest, series, targets, images, settings, manifest.data["seed"],
                          observer=observer, base_conditions=_base_conditions(), sleep=sleep, executor=executor)
    scheduler.execute()  # Ctrl-C propagates after the manifest says "interrupted"
    if device_quality:
        _collect_device_quality(manifest, config, series, targets, executor, observer)
    return finish_run(manifest, scheduler, workspace, settle=settle)


def _collect_device_quality(manifest: RunManifest, config: RunConfig, series: list[Series], targets: list, executor,
                            observer) -> None:
    """The untimed quality jobs on each device (bench/run/device_quality.py), after every timed round."""
    from bench.run import device_quality
    from bench.run.executor import LocalExecutor

    log = getattr(observer, "note", None) or (lambda message: None)
    try:
        device_quality.collect(manifest, series, targets, executor or LocalExecutor(),
                               lambda: open_images(config, limit=config.eval_images), log=log)
    except KeyboardInterrupt:
        manifest.update(status="interrupted")
        raise


def finish_run(manifest: RunManifest, scheduler: Scheduler, workspace: Workspace, *,
               settle: bool = True) -> RunOutcome:
    """Status, parquet tables, history — the derived views, all rebuilt from the job records.

    Without `settle`, a fully measured run is stored as `measured`, not yet `complete`: the pipeline still binds its
    evals and writes its report, and a run killed meanwhile can be resumed to finish those (settle_run)."""
    jobs = manifest.jobs()
    failures = [(key, entry.get("error") or entry["state"]) for key, entry in sorted(jobs.items())
                if entry["state"] in REDO_STATES]
    # A failed quality job leaves the run incomplete, so `--resume` asks the device again (bench/run/device_quality)
    failures += [(f"{key} (quality job)", str(binding["error"]))
                 for key, binding in sorted((manifest.data.get("device_quality") or {}).items())
                 if isinstance(binding, dict) and binding.get("error")]
    unfinished = [s.series.key for states in scheduler.states.values() for s in states if s.stopped is None]
    status = "complete" if not failures and not unfinished else "incomplete"
    quarantined = {tid: info.get("reason") for tid, info in manifest.data.get("targets", {}).items()
                   if info.get("state") == "quarantined"}
    deferred = status == "complete" and not settle
    manifest.update(status="measured" if deferred else status, finished_at=now_iso())
    data = run_store.write_tables(manifest.run_dir)
    manifest.update(tables_written=True, table_sha256=run_store.table_digests(manifest.run_dir))
    data.manifest = manifest.data
    outcome = RunOutcome(manifest.run_id, manifest.run_dir, status, data, failures, quarantined,
                         skipped=[pair["reason"] for pair in manifest.data.get("skipped") or []])
    if not deferred:
        _publish(outcome, workspace)
    return outcome


def settle_run(outcome: RunOutcome, workspace: Workspace) -> None:
    """A measured run whose evals are bound and report written becomes `complete` (immutable from now on)."""
    manifest = RunManifest.open(outcome.run_dir)
    if outcome.status == "complete" and manifest.data.get("status") == "measured":
        manifest.update(status="complete")
        outcome.data.manifest = manifest.data
        _publish(outcome, workspace)


def _publish(outcome: RunOutcome, workspace: Workspace) -> None:
    """Add the run to results/history.duckdb (a history problem is said, never fatal: the run is on disk)."""
    try:
        from bench.store.history import append_run

        append_run(workspace.history_db, outcome.data)
    except BenchError as err:
        outcome.notes.append(f"history not updated: {err}")


# --- `bench run` with no argument ----------------------------------------------------------------------------------

def run_pipeline(config: RunConfig, workspace: Workspace, *, resume: str | None = None, force: bool = False,
                 observer: RunObserver | None = None, log=print) -> RunOutcome:
    """Build (if nothing is built) → measure (or resume) → evaluate → report. `bench run` with no argument."""
    if not resume:
        _refuse_imported_without_core_ml(config, workspace)  # one line, before a lab is contacted or anything built
        check_generic_inputs(imported_variants(workspace, _imported_named(config, workspace)), config)
    if config.lab:  # an unreachable lab or a refused token is said before minutes of building
        from bench.lab.cluster import connect

        connect(config.lab)
    elif not resume:
        from bench.run.targets import resolve_targets

        lab_only = [name for name in config.targets if name.strip().startswith("model:")]
        if lab_only:
            resolve_targets(lab_only)  # refuses them (they need a lab) before anything is built
    if resume:
        outcome = resume_run(resume, workspace, observer=observer, force=force, lab=config.lab, hold_lock=True,
                             runner_timeout_s=config.runner_timeout_s, device_quality=None)
        config = RunConfig.model_validate(outcome.data.manifest["plan"]["config"])
    else:
        variants = built_variants(workspace)
        named_imported = _imported_named(config, workspace)
        if config.variants:
            _check_variant_names([n for n in config.variants if n not in named_imported], variants, config.matrix,
                                 workspace=workspace)
        only_imported = bool(config.variants) and len(named_imported) == len(config.variants)
        if not only_imported and (not variants or config.matrix or not config.variants):
            # The whole matrix is measured unless variants are named; building reuses every cached variant.
            try:
                build_default_matrix(workspace, config.matrix, log=log)
            except InputError as err:
                if not variants:
                    raise
                log(f"matrix not built ({err}); measuring the {len(variants)} variants already built")
            variants = built_variants(workspace)
        outcome = start_run(config, workspace, variants=variants, observer=observer, hold_lock=True,
                            device_quality=config.evaluate and config.device_quality)
        outcome.notes += _imported_not_measured(config, workspace)
    try:
        _evaluate_and_report(outcome, config, workspace, log)
        settle_run(outcome, workspace)
    finally:
        outcome.release()
    return outcome


def _evaluate_and_report(outcome: RunOutcome, config: RunConfig, workspace: Workspace, log) -> None:
    """Still under the run's lock: the eval bindings and the report are the last writes into the run."""
    if config.evaluate:
        outcome.evals = evaluate_variants(outcome, config, workspace, log=log)
        bind_evals(outcome.run_dir, outcome.evals, workspace)
    if config.report:
        try:
            outcome.report = write_report(outcome.run_dir, workspace, outcome.notes)
        except Exception as err:  # noqa: BLE001 — the run is stored; a report problem is said, not fatal
            outcome.notes.append(f"report failed ({type(err).__name__}: {err}); the run is complete on disk — "
                                 f"retry with `bench report {outcome.run_id}`")


def _core_ml_targets(config: RunConfig, workspace: Workspace) -> bool:
    """Whether the run's targets include Core ML (a Mac, an iPhone, a lab's phones): where imported models run."""
    from bench.run.targets import connected_iphones

    if any(t.strip().startswith(("iphone", "macos-coreml")) for t in config.targets):
        return True
    return "auto" in config.targets and bool(connected_iphones(workspace))


def _imported_named(config: RunConfig, workspace: Workspace) -> list[str]:
    """Names of the run's variants that are imported models (not built captioners)."""
    from bench.build.imported import find_imported

    built = {name for v in built_variants(workspace) for name in (v.name, v.variant_id)}
    return [name for name in config.variants if name not in built and find_imported(name, workspace) is not None]


def _refuse_imported_without_core_ml(config: RunConfig, workspace: Workspace) -> None:
    """Imported models run on Core ML (an iPhone or a Mac); without one, one line says so and what works here."""
    import platform

    from bench.build.imported import MEASURE_NEEDS
    from bench.errors import PlatformUnavailable

    named = _imported_named(config, workspace)
    if named and config.lab:
        raise PlatformUnavailable(f"{named[0]} is an imported model: a lab (--lab) measures built captioners only; "
                                  "measure imported models on a phone attached to this host (--targets iphone) or "
                                  "on a Mac (--targets macos-coreml)")
    if not named or _core_ml_targets(config, workspace):
        return
    where = "this run's targets have none" if platform.system() == "Darwin" else "none is connected here"
    from bench.build.imported import find_imported

    what = ("an imported captioner (Core ML packages without torch weights: host-torch cannot run it)"
            if (find_imported(named[0], workspace) or {}).get("captioner") else "an imported model")
    raise PlatformUnavailable(f"{named[0]} is {what}: {MEASURE_NEEDS}, and {where}; static analysis "
                              f"works anywhere: `bench models inspect {named[0]}`, `bench models diff {named[0]} OTHER`")


def _imported_not_measured(config: RunConfig, workspace: Workspace) -> list[str]:
    """A note when the workspace holds imported models that this run (no variants named) left out."""
    from bench.build.imported import MEASURE_NEEDS, list_imported

    imported = list_imported(workspace)
    if not imported or config.variants:
        return []
    how = "name them with --variants" if _core_ml_targets(config, workspace) else MEASURE_NEEDS
    return [f"{len(imported)} imported model{'s' if len(imported) > 1 else ''} not measured by the default run: "
            f"{how} (static analysis: `bench models inspect NAME`, `bench models diff A B`)"]


def _check_variant_names(wanted: list[str], built: list[VariantRef], matrix: str | None, *,
                         workspace: Workspace | None = None) -> None:
    """Unknown variant names are refused with did-you-mean before anything is built: names are the matrix's
    planned names (and, once built, their ids); the imported models' names are suggested too (a typo in one)."""
    from bench.build.matrix import load_matrix
    from bench.paths import DEFAULT_MATRIX

    known = {planned.name for planned in load_matrix(Path(matrix) if matrix else DEFAULT_MATRIX).planned()}
    known |= {v.name for v in built} | {v.variant_id for v in built}
    for name in wanted:
        if name not in known:
            from bench.build.imported import list_imported

            imported = {manifest["name"] for manifest in list_imported(workspace)} if workspace else set()
            raise did_you_mean("variant", name, known | imported)


def evaluate_variants(outcome: RunOutcome, config: RunConfig, workspace: Workspace, *, log=print) -> dict[str, Any]:
    """Caption quality of every measured variant on a small synthetic test subset (bench.eval records).

    An identical evaluation already stored (same variant, images and decoding: the record's key) is reused as is."""
    from bench.data.base import open_dataset
    from bench.eval.evaluation import EvalOptions, evaluate, open_subject, planned_decoding
    from bench.eval.records import read_record, record_path

    dataset = open_dataset(config.dataset, split=config.split, limit=config.eval_images, seed=0, skip_missing=False)
    options = EvalOptions(threads=config.host_threads, batch_size=8)
    records: dict[str, Any] = {}
    imported = outcome.data.manifest["plan"].get("imported") or {}
    pairs = set(outcome.data.manifest["plan"].get("imported_captioners") or ())
    for entry in outcome.data.manifest["plan"]["variant_details"]:
        if entry["variant_id"] in imported:
            continue  # not a captioner: its quality is its output drift (bench.report.drift)
        if entry["variant_id"] in pairs:
            outcome.notes.append(f"{entry['name']} is an imported captioner: no host reference (host-torch cannot run "
                                 "it, no torch weights); its caption quality is the one decoded on the device")
            continue
        directory = entry["path"] or workspace.variants_dir / entry["variant_id"]
        try:
            captioner, subject = open_subject(str(directory), workspace)
            stored = record_path(workspace.evals_dir, subject.id, dataset.signature,
                                 planned_decoding(captioner, options))
            if stored.is_file():
                records[entry["variant_id"]] = read_record(stored)
                continue
            log(f"evaluating caption quality of {entry['variant_id']} on {len(dataset)} images…")
            records[entry["variant_id"]] = evaluate(captioner, dataset, options, subject=subject,
                                                    evals_dir=workspace.evals_dir)
        except BenchError as err:  # one variant's quality failing must not hide the others' (nor the timings)
            outcome.notes.append(f"quality of {entry['variant_id']} not evaluated: {err}")
    return records


def bind_evals(run_dir: Path, evals: dict[str, Any], workspace: Workspace) -> None:
    """Record in run.json exactly which eval records (path and sha256) this run's report shows: a later
    `bench eval` of the same variant, on other images or with other decoding, never changes an old run's report."""
    from bench.eval.records import binding

    manifest = RunManifest.open(run_dir)
    manifest.update(evals={variant_id: binding(record, workspace.evals_dir)
                           for variant_id, record in sorted(evals.items())})


def write_report(run_dir: Path, workspace: Workspace, notes: list[str]) -> Path | None:
    """Hand the run to bench/report (HTML + Markdown beside the run); the CLI prints its own summary either way."""
    try:
        from bench.report import write_report as render
        from bench.report.data import build_report
    except ImportError as err:
        notes.append(f"report skipped: bench.report is not available in this build ({err})")
        return None
    report = build_report(str(run_dir))  # verdicts against earlier runs: `bench report --history N`
    render(report, "markdown", run_dir / "report.md")
    return render(report, "html", run_dir / "report.html")

