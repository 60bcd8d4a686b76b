"""Execute a planned run: one worker per device (threads), rounds of interleaved steps, thermal gating, adaptive
stopping, retries with exponential backoff, quarantine, and a job record written the moment its result arrives.

Failure isolation: an error on one job marks that job failed (its series stops for this run; `--resume` retries it);
an error on a device fails that round's jobs and, after `quarantine_after` consecutive failed rounds, quarantines the
device for the rest of the run (recorded in run.json with its reason). Nothing one worker does stops the others.
Ctrl-C stops every worker at its next check, puts running jobs back to pending and leaves a resumable run.

Resume measures every round that has no stored record again — pending, interrupted, failed and quarantined ones —
even in a series whose stopping rule was already met by later rounds, so a run whose device is healthy again
becomes complete.

Where a round physically runs is the executor's business (bench/run/executor.py): in this thread (local), or on the
lab host holding the phone (bench/lab). Everything above is the same for both.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, DeviceError
from bench.run.config import RetryConfig, ThermalConfig
from bench.run.executor import Executor, LocalExecutor
from bench.run.manifest import RunManifest
from bench.run.plan import Series, round_order
from bench.run.stats import StopRule, median_ci, stop_reason
from bench.run.targets.base import (
    Conditions, ImageItem, Interrupted, RoundRequest, Step, StepResult, variant_decoding,
)
from bench.run.targets.iphone import is_transient
from bench.store import records
from bench.store.environment import now_iso
from bench.store.runs import JOB_KIND, JOBS_DIR, read_job_records

MAX_ROUNDS = 10_000  # a guard only: every stop rule ends long before


@dataclass(frozen=True)
class MeasureSettings:
    rule: StopRule
    thermal: ThermalConfig
    retry: RetryConfig
    warmup: int = 1
    repeats: int = 1
    compute_plan: bool = True
    generic: Any = None  # bench.run.generic.GenericSettings for imported models


@dataclass
class SeriesState:
    series: Series
    values: list[int] = field(default_factory=list)
    rounds_done: set[int] = field(default_factory=set)
    seconds: float = 0.0
    stopped: str | None = None  # the stop reason once decided
    failed: str | None = None  # error that stopped the series in this run
    redo: set[int] = field(default_factory=set)  # rounds an earlier attempt of the run left without a record

    @property
    def active(self) -> bool:
        return self.stopped is None and self.failed is None


class RecordWriter:
    """Writes job records durably (fsync + rename) on its own thread, so the disk's fsync latency overlaps the next
    measurement instead of adding to it. A job becomes `done` in run.json only after its record is on disk."""

    def __init__(self) -> None:
        import queue

        self._queue: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="bench-records", daemon=True)
        self._thread.start()
        self.errors: list[str] = []

    def submit(self, path: Path, record: dict, on_written: Callable[[], None],
               on_failed: Callable[[str], None]) -> None:
        self._queue.put((path, record, on_written, on_failed))

    def flush(self) -> None:
        self._queue.join()

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                path, record, on_written, on_failed = item
                try:
                    records.write(path, JOB_KIND, record)
                except (BenchError, OSError) as err:  # e.g. disk full: the job is failed, never silently lost
                    self.errors.append(f"{path.name}: {err}")
                    on_failed(f"could not store the job record: {err}")
                else:
                    on_written()
            finally:
                self._queue.task_done()


class RunObserver:
    """Progress callbacks (the CLI's rich Live view implements them); every method may be called from a worker."""

    def run_started(self, run_id: str, targets: list, states: dict[str, list[SeriesState]]) -> None: ...
    def gate(self, target_id: str, conditions: Conditions | None, waiting: bool, waited_s: float) -> None: ...
    def round_started(self, target_id: str, round_index: int, steps: list[Step]) -> None: ...
    def job_started(self, target_id: str, step: Step, attempt: int) -> None: ...
    def job_finished(self, target_id: str, step: Step, record: dict | None, error: str | None) -> None: ...
    def retrying(self, target_id: str, error: str, delay_s: float) -> None: ...
    def target_finished(self, target_id: str, state: str, reason: str | None) -> None: ...
    def note(self, message: str) -> None: ...  # a line of progress outside the timed rounds (quality jobs)


class Scheduler:
    def __init__(self, run_dir: Path, manifest: RunManifest, series: list[Series], targets: list,
                 images: list[ImageItem], settings: MeasureSettings, seed: int, *,
                 observer: RunObserver | None = None, base_conditions: dict[str, Any] | None = None,
                 sleep: Callable[[float], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 executor: Executor | None = None):
        self.run_dir, self.manifest = Path(run_dir), manifest
        self.executor = executor or LocalExecutor()
        self.targets = {target.id: target for target in targets}
        self.images, self.settings, self.seed = images, settings, seed
        self.observer = observer or RunObserver()
        self.base_conditions = base_conditions or {}
        self.stop_event = threading.Event()
        self._quarantine_now: dict[str, str] = {}  # target id -> reason, set when an error says a person must act
        self._done_lock = threading.Lock()
        self.writer = RecordWriter()
        self._sleep = sleep if sleep is not None else (lambda seconds: self.stop_event.wait(seconds))
        self._clock = clock
        self.states: dict[str, list[SeriesState]] = {target_id: [] for target_id in self.targets}
        for item in series:
            self.states[item.target_id].append(SeriesState(item))
        self._restore_from_records()

    # --- resume: what is already stored counts, nothing is measured twice ---------------------------------------
    def _restore_from_records(self) -> None:
        by_key = {state.series.key: state for states in self.states.values() for state in states}
        for record in read_job_records(self.run_dir).values():
            state = by_key.get(record.get("series_key"))
            if state is None:
                continue
            state.values.extend(int(s["total_ns"]) for s in record.get("samples") or [])
            state.rounds_done.add(int(record["round"]))
            state.seconds += float(record.get("elapsed_s") or 0.0)
            if record.get("stop_reason"):
                state.stopped = record["stop_reason"]
            if self.manifest.state(record["job_key"]) != "done":
                self.manifest.set_job(record["job_key"], "done", target_id=record["target"]["id"])
        for job_key, entry in self.manifest.jobs().items():
            series_key, _, round_text = job_key.rpartition("--r")
            state = by_key.get(series_key)
            if state is not None and round_text.isdigit() and entry["state"] != "done":
                if int(round_text) not in state.rounds_done:
                    state.redo.add(int(round_text))

    # --- running ------------------------------------------------------------------------------------------------
    def execute(self) -> None:
        """Run every worker to the end; on Ctrl-C stop them, leave a resumable run and re-raise."""
        self.observer.run_started(self.manifest.run_id, list(self.targets.values()), self.states)
        groups = self._worker_groups()
        self._running = len(groups)
        self._all_done = threading.Event()
        threads = [threading.Thread(target=self._worker, args=(group,), name=f"bench-{group[0]}", daemon=True)
                   for group in groups]
        for thread in threads:
            thread.start()
        try:
            # Wake at once when the last worker ends; the timeout only keeps Ctrl-C responsive.
            while not self._all_done.wait(0.2):
                pass
            for thread in threads:
                thread.join()
            self.writer.close()
        except KeyboardInterrupt:
            self.stop_event.set()
            for thread in threads:
                thread.join(30)
            self.writer.close()  # what was measured completely is kept
            self.manifest.interrupted_to_pending()
            self.manifest.update(status="interrupted")
            raise

    def _worker_groups(self) -> list[list[str]]:
        """iPhones each get a worker; host targets share one (they would compete for the same CPU)."""
        parallel = [[tid] for tid, target in self.targets.items() if getattr(target, "parallel_safe", False)]
        serial = [tid for tid, target in self.targets.items() if not getattr(target, "parallel_safe", False)]
        return parallel + ([serial] if serial else [])

    def _worker(self, target_ids: list[str]) -> None:
        try:
            for target_id in target_ids:
                if self.stop_event.is_set():
                    return
                self._run_target(self.targets[target_id])
        finally:
            with self._done_lock:
                self._running -= 1
                if self._running == 0:
                    self._all_done.set()

    def _run_target(self, target) -> None:
        failures_in_a_row = 0
        self.manifest.set_target(target.id, state="running", reason=None, kind=target.kind, name=target.name,
                                 label=target.label)
        states = self.states[target.id]
        try:
            for round_index in range(MAX_ROUNDS):
                if not any(s.active or s.redo for s in states):
                    break
                pending = [s for s in states if round_index not in s.rounds_done
                           and (s.active or (round_index in s.redo and s.failed is None))]
                if not pending:
                    continue
                ordered = round_order([s.series for s in pending], self.seed, target.id, round_index)
                steps = [Step(s.job_key(round_index), s.key, s.variant, s.compute_unit, round_index) for s in ordered]
                ok = self._run_round(target, round_index, steps)
                for state in pending:
                    state.redo.discard(round_index)  # attempted once in this resume, whatever the outcome
                failures_in_a_row = 0 if ok else failures_in_a_row + 1
                if (reason := self._quarantine_now.pop(target.id, None)) is not None:
                    self._quarantine(target, steps, reason)
                    return
                if failures_in_a_row >= self.settings.retry.quarantine_after:
                    self._quarantine(target, steps, f"{failures_in_a_row} failed jobs in a row")
                    return
            self.manifest.set_target(target.id, state="done")
            self.observer.target_finished(target.id, "done", None)
        except Interrupted:
            self.observer.target_finished(target.id, "interrupted", None)
        finally:
            target.close()

    def _run_round(self, target, round_index: int, steps: list[Step]) -> bool:
        """One round on one target, retried on transient device errors. True unless the device failed."""
        retry = self.settings.retry
        self.observer.round_started(target.id, round_index, steps)
        remaining = {step.job_key: step for step in self._refuse_damaged(target, steps)}
        if not remaining:
            return True  # nothing healthy to measure this round; the device itself did not fail
        for attempt in range(retry.attempts):
            self.manifest.set_jobs(list(remaining), "running", target_id=target.id, count_attempt=True)
            try:
                gate = self._wait_until_cool(target)
                request = RoundRequest(round_index, list(remaining.values()), self.images, self.settings.warmup,
                                       self.settings.repeats, self.settings.compute_plan, self.manifest.run_id,
                                       generic=self.settings.generic)
                self.observer.job_started(target.id, next(iter(remaining.values())), attempt)
                for result in self.executor.run_round(target, request, self.stop_event.is_set):
                    step = remaining.pop(result.job_key, None)
                    if step is not None:
                        self._store(target, step, result, gate)
                    if remaining:  # targets measure in the given order: the next step is the one running now
                        self.observer.job_started(target.id, next(iter(remaining.values())), attempt)
                if remaining:  # a target must answer every step; a silent one is a failed job, not a lost one
                    self._fail(target, remaining.values(), "the target returned no result for this step")
                return True
            except Interrupted:
                raise
            except DeviceError as err:
                message = f"{type(err).__name__}: {err}"
                if not is_transient(err) or attempt + 1 >= retry.attempts:
                    self._fail(target, remaining.values(), message)
                    # A phone that needs a person (locked, untrusted profile) will not fix itself this run.
                    if getattr(err, "quarantine_reason", None):
                        self._quarantine_now[target.id] = err.quarantine_reason
                    return False
                # Some conditions need longer than the backoff to clear (a person unlocking a phone).
                delay = max(min(retry.backoff_s * (2 ** attempt), retry.backoff_max_s),
                            float(getattr(err, "retry_after_s", 0) or 0))
                self.observer.retrying(target.id, message, delay)
                self.manifest.add_attempt({"target_id": target.id, "round": round_index, "error": message,
                                           "retry_in_s": delay})
                self._sleep(delay)
                if self.stop_event.is_set():
                    raise Interrupted() from None
            except BenchError as err:
                self._fail(target, remaining.values(), f"{type(err).__name__}: {err}")
                return False
            except Exception as err:  # noqa: BLE001 — isolate: a bug on one target must not stop the other devices
                self._fail(target, remaining.values(), f"{type(err).__name__}: {err} (unexpected; please report)")
                return False
        return False

    def _refuse_damaged(self, target, steps: list[Step]) -> list[Step]:
        """A variant whose stored bytes changed since its build is never measured: its steps fail (its series stop,
        resume measures them once it is rebuilt) and the round goes on with the healthy ones."""
        damage: dict[str, str | None] = {}
        healthy = []
        for step in steps:
            variant = step.variant
            if variant.variant_id not in damage:
                damage[variant.variant_id] = _damage(variant)
            if damage[variant.variant_id] is None:
                healthy.append(step)
            else:
                self._store(target, step, StepResult(step.job_key, error=damage[variant.variant_id]), gate={})
        return healthy

    def _fail(self, target, steps, message: str) -> None:
        """The device failed this round: its jobs are failed (resume redoes them); the series go on next round."""
        for step in list(steps):
            self.manifest.set_job(step.job_key, "failed", error=message, target_id=target.id)
            self.observer.job_finished(target.id, step, None, message)

    def _quarantine(self, target, last_steps: list[Step], reason: str) -> None:
        """Stop using a device for this run; its last failed jobs say why, and the run keeps every quarantine with
        its reason and the error that caused it. `--resume` measures the jobs again."""
        jobs = self.manifest.jobs()
        last_error = jobs.get(last_steps[0].job_key, {}).get("error") if last_steps else None
        for step in last_steps:
            error = jobs.get(step.job_key, {}).get("error")
            self.manifest.set_job(step.job_key, "quarantined", error=f"device quarantined ({reason}): {error}",
                                  target_id=target.id)
        quarantines = self.manifest.data["targets"].get(target.id, {}).get("quarantines") or []
        self.manifest.set_target(target.id, state="quarantined", reason=reason, quarantines=[
            *quarantines, {"at": now_iso(), "reason": reason, "round": last_steps[0].round if last_steps else None,
                           "last_error": last_error}])
        self.observer.target_finished(target.id, "quarantined", reason)

    # --- thermal gating ----------------------------------------------------------------------------------------------
    def _wait_until_cool(self, target) -> dict[str, Any]:
        """Wait for nominal thermal state and a battery under the limit; give up after wait_limit_s and say so."""
        limits = self.settings.thermal
        started, slept = self._clock(), 0.0
        seen: list[str] = []
        while True:
            conditions = self.executor.conditions(target, self.stop_event.is_set)
            waited = max(self._clock() - started, slept)  # slept: what we asked for (an injected sleep may not)
            seen.append(conditions.thermal_state or "unknown")
            if conditions.thermal_state is None and conditions.battery_temperature_c is None:
                outcome = "no_sensor"
            elif _is_cool(conditions, limits.max_battery_temperature_c):
                outcome = "nominal"
            elif waited >= limits.wait_limit_s:
                outcome = "timeout"
            else:
                self.observer.gate(target.id, conditions, True, waited)
                pause = min(limits.poll_s, max(0.0, limits.wait_limit_s - waited)) or limits.poll_s
                self._sleep(pause)
                slept += pause
                if self.stop_event.is_set():
                    raise Interrupted()
                continue
            self.observer.gate(target.id, conditions, False, waited)
            return {"outcome": outcome, "waited_s": round(waited, 3), "polls": len(seen), "states_seen": seen,
                    "conditions": conditions}

    # --- storing one job ----------------------------------------------------------------------------------------------
    def _store(self, target, step: Step, result: StepResult, gate: dict) -> None:
        state = next(s for s in self.states[target.id] if s.series.key == step.series_key)
        if result.error:
            self.manifest.set_job(step.job_key, "failed", error=result.error, target_id=target.id)
            state.failed = result.error
            self.observer.job_finished(target.id, step, None, result.error)
            return
        values = [int(sample["total_ns"]) for sample in result.samples]
        state.values.extend(values)
        state.rounds_done.add(step.round)
        state.seconds += result.elapsed_s
        series_ci = median_ci(state.values, self.settings.rule.confidence)
        # A redone round of a series that already stopped adds its data; the stop was decided (and recorded) before.
        reason = None if state.stopped else stop_reason(self.settings.rule, state.values, len(state.rounds_done),
                                                        state.seconds, series_ci)
        throttled = [s for s in result.samples if s.get("thermal_state") not in (None, "nominal")]
        fraction = len(throttled) / len(result.samples) if result.samples else 0.0
        conditions: Conditions = gate["conditions"]
        record = {
            "job_key": step.job_key, "series_key": step.series_key, "round": step.round,
            "variant_id": step.variant.variant_id, "variant_name": step.variant.name,
            "variant_hash": step.variant.variant_hash, "decoding": variant_decoding(step.variant),
            "target": {"kind": target.kind, "id": target.id, "name": target.name, "label": target.label,
                       "model": conditions.device_model or getattr(target, "model", None),
                       "os_build": conditions.os_build or getattr(target, "os_build", None)},
            "compute_unit": step.compute_unit,
            "conditions": {
                **self.base_conditions, "device_model": conditions.device_model, "os_version": conditions.os_version,
                "os_build": conditions.os_build, "charging": conditions.charging,
                "battery_level": conditions.battery_level, "battery_temperature_c": conditions.battery_temperature_c,
                "low_power_mode": conditions.low_power_mode, "thermal_state_start": conditions.thermal_state,
                "compute_unit": step.compute_unit, "variant_hash": step.variant.variant_hash,
                "gate": {k: v for k, v in gate.items() if k != "conditions"}, **result.extra_conditions,
            },
            "load": result.load, "warmup": result.warmup, "samples": result.samples,
            "median_ns": float(statistics.median(values)) if values else None, "stop_reason": reason, "unstable": fraction > self.settings.thermal.unstable_fraction,
            "throttled_fraction": fraction,
            "series": {"n": series_ci.n, "median_ns": series_ci.median, "ci_low_ns": series_ci.low,
                       "ci_high_ns": series_ci.high, "ci_rel": series_ci.relative_halfwidth,
                       "coverage": series_ci.coverage, "rounds": len(state.rounds_done),
                       "seconds": round(state.seconds, 3)},
            "compute_plan": result.compute_plan, "quality": result.quality,
            **self._outputs(step, result),
            "started_at": result.started_at, "finished_at": result.finished_at,
            "elapsed_s": round(result.elapsed_s, 6),
        }
        if reason:
            state.stopped = reason

        def written() -> None:
            self.manifest.set_job(step.job_key, "done", target_id=target.id)
            self.observer.job_finished(target.id, step, record, None)

        def failed(message: str) -> None:
            self.manifest.set_job(step.job_key, "failed", error=message, target_id=target.id)
            self.observer.job_finished(target.id, step, None, message)

        self.writer.submit(self.run_dir / JOBS_DIR / f"{step.job_key}.json", record, written, failed)


    def _outputs(self, step: Step, result: StepResult) -> dict:
        """An imported model's outputs of the fixed input set, written under outputs/<job_key>/ (each .npy sized and
        hashed) before the job record that lists them; or why none was kept."""
        if result.outputs_error:
            return {"outputs": {"error": result.outputs_error, "files": []}}
        if not result.outputs:
            return {}
        from bench.run.generic import write_outputs

        files = write_outputs(self.run_dir / "outputs" / step.job_key, result.outputs)
        return {"outputs": {"error": None, "files": files}}


def _is_cool(conditions: Conditions, max_battery_c: float) -> bool:
    thermal_ok = conditions.thermal_state in (None, "nominal")
    battery_ok = conditions.battery_temperature_c is None or conditions.battery_temperature_c <= max_battery_c
    return thermal_ok and battery_ok


def _damage(variant) -> str | None:
    """Why a built variant must not be measured (bench.build.integrity), or None. Loose packages without a manifest
    (`source` None: test stand-ins, hand-made folders) have nothing recorded to check against."""
    if variant.path is None or variant.source is None:
        return None
    from bench.build.integrity import check_variant
    from bench.errors import DamagedError
    from bench.run.generic import is_imported, is_imported_captioner

    try:
        if is_imported(variant) or is_imported_captioner(variant):
            from bench.build.imported import check_imported

            check_imported(variant.path)
        else:
            check_variant(variant.path)
    except DamagedError as err:
        return f"DamagedError: {err}"
    return None
