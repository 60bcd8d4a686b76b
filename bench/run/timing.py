"""Where a run's time went, per target, from its job records: how long each phone spent measuring against the run's
wall time (device utilisation — the share that shows a lab its bottleneck) and, for lab runs, the time each job
spent queued, moving packages to the host, deploying to the phone and in the runner (records' `conditions.lab`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

LAB_PARTS = ("queue_wait_s", "transfer_s", "deploy_s", "runner_s")


def time_by_target(run_dir: Path | str, records: dict[str, dict] | None = None) -> dict[str, dict]:
    """{target id: {jobs, measure_s, wall_s, utilisation, queue_wait_s, transfer_s, deploy_s, runner_s}}.

    measure_s is the sum of the samples' own times (what the phone spent measuring); wall_s spans the run's first
    job start to its last job end, the same for every target, so utilisations compare across phones."""
    from bench.store.runs import read_job_records

    records = read_job_records(run_dir) if records is None else records
    starts = [_when(r.get("started_at")) for r in records.values()]
    ends = [_when(r.get("finished_at")) for r in records.values()]
    starts, ends = [t for t in starts if t], [t for t in ends if t]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    table: dict[str, dict] = {}
    for record in records.values():
        row = table.setdefault(record["target"]["id"], {"jobs": 0, "measure_s": 0.0, **{k: 0.0 for k in LAB_PARTS}})
        row["jobs"] += 1
        row["measure_s"] += sum(int(s.get("total_ns") or 0) for s in record.get("samples") or []) / 1e9
        lab = (record.get("conditions") or {}).get("lab") or {}
        for part in LAB_PARTS:
            row[part] += float(lab.get(part) or 0.0)
    for row in table.values():
        row["wall_s"] = wall
        row["utilisation"] = row["measure_s"] / wall if wall > 0 else None
    return table


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


UTILISATION_COLUMNS = ["target", "jobs", "measuring s", "share of wall time", "queued s", "package transfer s",
                       "deploy s", "runner s"]


def utilisation_rows(run_dir: Path | str, records: dict[str, dict] | None = None) -> list[list[str]]:
    """The report's device-utilisation table (UTILISATION_COLUMNS), busiest target first; lab columns are "–" for
    targets measured on the driver's own host."""
    rows = []
    for target, row in sorted(time_by_target(run_dir, records).items(), key=lambda item: -item[1]["measure_s"]):
        share = f"{row['utilisation']:.0%}" if row["utilisation"] is not None else "n/a"
        lab = [f"{row[part]:.1f}" if any(row[p] for p in LAB_PARTS) else "–" for part in LAB_PARTS]
        rows.append([target, str(row["jobs"]), f"{row['measure_s']:.1f}", share, *lab])
    return rows
