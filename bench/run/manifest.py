"""run.json: the one mutable file of a run — every job's state, rewritten atomically on every change.

Job states: pending → running → done | failed | quarantined. A job is `done` only after its record was written
(jobs/<job_key>.json), so a killed run never claims a result it does not have; `running` jobs found at resume time
were interrupted and are measured again (their partial data was never stored).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from bench import atomic
from bench.store import records
from bench.store.environment import now_iso
from bench.store.runs import MANIFEST_NAME, RUN_KIND, read_manifest

JOB_STATES = ("pending", "running", "done", "failed", "quarantined")
REDO_STATES = ("pending", "running", "failed", "quarantined")


class RunManifest:
    def __init__(self, run_dir: Path, payload: dict[str, Any]):
        self.run_dir = Path(run_dir)
        self._payload = payload
        self._lock = threading.Lock()

    @classmethod
    def create(cls, run_dir: Path, payload: dict[str, Any]) -> "RunManifest":
        body = {"jobs": {}, "targets": {}, "status": "running", "attempts": [], **payload}
        manifest = cls(run_dir, body)
        records.write(Path(run_dir) / MANIFEST_NAME, RUN_KIND, body)
        return manifest

    @classmethod
    def open(cls, run_dir: Path) -> "RunManifest":
        return cls(run_dir, read_manifest(run_dir))

    # --- reading ------------------------------------------------------------------------------------------------
    @property
    def data(self) -> dict[str, Any]:
        return self._payload

    @property
    def run_id(self) -> str:
        return self._payload["run_id"]

    def state(self, job_key: str) -> str | None:
        entry = self._payload["jobs"].get(job_key)
        return entry["state"] if entry else None

    def jobs(self) -> dict[str, dict]:
        with self._lock:
            return {key: dict(value) for key, value in self._payload["jobs"].items()}

    # --- changing (each change rewrites run.json atomically) -------------------------------------------------------
    def set_job(self, job_key: str, state: str, *, error: str | None = None, target_id: str | None = None,
                count_attempt: bool = False) -> None:
        with self._lock:
            self._set_entry(job_key, state, error, target_id, count_attempt)
            self._save()

    def set_target(self, target_id: str, **fields: Any) -> None:
        with self._lock:
            self._payload["targets"].setdefault(target_id, {}).update(fields)
            self._save()

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._payload.update(fields)
            self._save()

    def add_attempt(self, attempt: dict[str, Any]) -> None:
        """Append to the retry log; under the lock, so two device workers retrying at once both get recorded."""
        with self._lock:
            self._payload.setdefault("attempts", []).append(attempt)
            self._save()

    def interrupted_to_pending(self) -> None:
        """After Ctrl-C: jobs that were running hold no stored data; they are pending again."""
        with self._lock:
            for entry in self._payload["jobs"].values():
                if entry["state"] == "running":
                    entry["state"], entry["error"] = "pending", "interrupted"
            self._save()

    def set_jobs(self, job_keys: list[str], state: str, *, target_id: str | None = None,
                 count_attempt: bool = False) -> None:
        """Several jobs to one state in one rewrite (a round starting: all its jobs become running together)."""
        with self._lock:
            for job_key in job_keys:
                self._set_entry(job_key, state, None, target_id, count_attempt)
            self._save()

    def _set_entry(self, job_key: str, state: str, error: str | None, target_id: str | None,
                   count_attempt: bool) -> None:
        entry = self._payload["jobs"].setdefault(job_key, {"state": "pending", "attempts": 0, "error": None})
        entry["state"], entry["error"] = state, error
        if target_id:
            entry["target_id"] = target_id
        if count_attempt:
            entry["attempts"] += 1
        entry["updated_at"] = now_iso()

    def _save(self) -> None:
        """Atomic rename, without fsync: run.json is rewritten several times per job, and everything it says about
        finished jobs is re-derived from the durable job records on resume, so losing the last rewrite to a power
        cut costs nothing — while an fsync per rewrite costs ~10 ms on a busy disk (benchmarks/test_run.py)."""
        text = json.dumps(records.stamp(RUN_KIND, self._payload), indent=2, default=str) + "\n"
        atomic.write_text(self.run_dir / MANIFEST_NAME, text, durable=False)
