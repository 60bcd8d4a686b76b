"""The live view of a run (rich): one row per device/target with its current job, thermal state, samples so far
and an ETA; then the end-of-run summary with every failure and why. Library code never prints: the CLI builds this
observer and hands it to the scheduler.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from bench.run.scheduler import RunObserver
from bench.run.stats import StopRule


class LiveProgress(RunObserver):
    def __init__(self, console, rule: StopRule, images: int, repeats: int = 1):
        self.console, self.rule = console, rule
        self.per_round = max(1, images * repeats)
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._states: dict[str, list] = {}
        self._live = None
        self.run_id: str | None = None
        self.events: list[str] = []

    # --- life cycle ---------------------------------------------------------------------------------------------
    def __enter__(self):
        return self  # the live table starts with the first run (building and planning print plain lines)

    def _start_live(self) -> None:
        from rich.live import Live

        if self._live is None:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def log(self, message: str, *, mark: str = "", style: str = "") -> None:
        """`message` shown as plain text (it carries paths and errors: escaped), after `mark` in `style`."""
        from rich.text import Text

        from bench.report.escape import rich as esc

        with self._lock:
            self.events.append(f"{mark} {message}" if mark else message)
        line = Text(f"{mark} ", style=style) if mark else Text()
        line.append_text(Text.from_markup(esc(message)))
        self.console.print(line, highlight=False)  # above the live table while it runs

    # --- RunObserver ----------------------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        self.log(message)

    def run_started(self, run_id, targets, states) -> None:
        self.run_id = run_id
        self.log(f"run {run_id} — interrupt any time with Ctrl-C; finish it later with `bench run --resume {run_id}`")
        with self._lock:
            self._states = states
            for target in targets:
                self._rows[target.id] = {"name": target.name, "label": target.label, "state": "waiting",
                                         "job": "", "thermal": "—", "samples": 0, "done": 0, "failed": 0,
                                         "job_seconds": [], "started": None}
        self._start_live()

    def gate(self, target_id, conditions, waiting, waited_s) -> None:
        with self._lock:
            row = self._rows[target_id]
            thermal = conditions.thermal_state if conditions and conditions.thermal_state else "no sensor"
            battery = f", {conditions.battery_temperature_c:.1f} °C" if conditions and \
                conditions.battery_temperature_c is not None else ""
            row["thermal"] = thermal + battery
            row["state"] = f"cooling ({waited_s:.0f}s)" if waiting else "measuring"

    def round_started(self, target_id, round_index, steps) -> None:
        with self._lock:
            self._rows[target_id]["round"] = round_index

    def job_started(self, target_id, step, attempt) -> None:
        with self._lock:
            row = self._rows[target_id]
            row["job"] = f"{step.variant.name} · {step.compute_unit} · round {step.round + 1}" + \
                (f" (try {attempt + 1})" if attempt else "")
            row["started"] = row["started"] or time.monotonic()
            row["job_started"] = time.monotonic()

    def job_finished(self, target_id, step, record, error) -> None:
        with self._lock:
            row = self._rows[target_id]
            if record is not None:
                row["done"] += 1
                row["samples"] += len(record["samples"])
                row["job_seconds"].append(float(record.get("elapsed_s") or 0.0))
            else:
                row["failed"] += 1
        if error:
            self.log(f"{target_id} {step.job_key}: {error}", mark="✗", style="red")

    def retrying(self, target_id, error, delay_s) -> None:
        self.log(f"{target_id}: {error} — retrying in {delay_s:.0f}s", mark="↻", style="yellow")

    def target_finished(self, target_id, state, reason) -> None:
        with self._lock:
            self._rows[target_id]["state"] = state
            self._rows[target_id]["job"] = reason or ""
        if state == "quarantined":
            self.log(f"[red]⚠[/] {target_id} quarantined for this run: {reason}")

    # --- rendering ------------------------------------------------------------------------------------------------
    def _eta(self, target_id: str, row: dict) -> str:
        states = [s for s in self._states.get(target_id, []) if s.active]
        if not states:
            return "—"
        if not row["job_seconds"]:
            return "…"
        per_job = sum(row["job_seconds"]) / len(row["job_seconds"])
        cap_rounds = max(self.rule.min_rounds, math.ceil(self.rule.max_samples / self.per_round)) \
            if self.rule.adaptive else self.rule.min_rounds
        remaining = 0.0
        for state in states:
            rounds_left = max(0, cap_rounds - len(state.rounds_done))
            seconds_left = rounds_left * per_job
            if self.rule.adaptive:
                seconds_left = min(seconds_left, max(0.0, self.rule.max_seconds - state.seconds) + per_job)
            remaining += seconds_left
        return ("≤ " if self.rule.adaptive else "") + _duration(remaining)

    def __rich__(self):
        from rich.table import Table

        from bench.report.escape import rich as esc  # device names and job keys come from outside

        table = Table(title="bench run", expand=False)
        for column in ("target", "state", "current job", "thermal", "samples", "jobs", "ETA"):
            table.add_column(column)
        with self._lock:
            for target_id, row in self._rows.items():
                jobs = f"{row['done']}" + (f" ([red]{row['failed']} failed[/])" if row["failed"] else "")
                table.add_row(f"{esc(row['name'])}\n[dim]{esc(row['label'])}[/]", esc(row["state"]), esc(row["job"]),
                              esc(row["thermal"]),
                              str(row["samples"]), jobs, self._eta(target_id, row))
        return table


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def print_summary(console, outcome) -> None:
    """The end of a run: per series the median and its CI, why sampling stopped, then failures and why."""
    from rich.table import Table

    from bench.report.escape import rich as esc

    series = outcome.data.series()
    table = Table(title=f"run {outcome.run_id} — {outcome.status}")
    for column in ("variant", "target", "unit", "n", "median ms", "95% CI", "tokens", "stopped by", "flags"):
        table.add_column(column, justify="right" if column in ("n", "median ms", "95% CI", "tokens") else "left",
                         overflow="fold")
    labels = {}
    for row in series.itertuples():
        ci = f"±{row.ci_rel * 100:.1f}%" if row.ci_rel == row.ci_rel and row.ci_rel is not None else "n/a"
        flags = ", ".join(f for f, on in (("unstable", row.unstable),
                                          (f"throttled {row.throttled_fraction:.0%}", row.throttled_fraction > 0)) if on)
        labels[row.target_id] = row.target_label
        table.add_row(esc(row.variant_name or row.variant_id),
                      esc(row.target_id) + (" ¹" if row.target_kind == "host-torch" else ""), esc(row.compute_unit),
                      str(row.n), f"{row.median_ns / 1e6:.2f}", ci,
                      f"{row.median_decoder_steps:.0f}", str(row.stop_reason or "—"), flags)
    console.print(table)
    console.print("variants by name; ids (name-hash) are in jobs.parquet", style="dim")
    if any(kind == "host-torch" for kind in series["target_kind"]):
        console.print("¹ host-torch = host emulation (not Core ML): the variant's decompressed weights in PyTorch on "
                      "this CPU; says nothing about the Neural Engine or GPU.")
    console.print("tokens = median decoder calls per image: latency grows with caption length, so a variant that "
                  "writes shorter or broken captions looks faster (per-token latency: RunData.series()).")
    if outcome.evals:
        quality = Table(title="caption quality, host reference (the stored weights in PyTorch on this CPU; synthetic "
                              "test subset, greedy) — captions decoded on each device: the report")
        for column in ("variant", "BLEU", "CIDEr-D", "images"):
            quality.add_column(column)
        for variant_id, record in sorted(outcome.evals.items()):
            metrics = record.metrics
            quality.add_row(esc(variant_id), f"{metrics.bleu.score:.2f}", f"{metrics.cider.score:.3f}",
                            str(record.dataset.n))
        console.print(quality)
    for target_id, why in outcome.quarantined.items():
        console.print(f"[red]quarantined[/] {esc(target_id)}: {esc(why)}", highlight=False)
    for job_key, why in outcome.failures:
        console.print(f"[red]failed[/] {esc(job_key)}: {esc(why)}", highlight=False)
    for line in outcome.skipped:  # left out by the plan (device OS too old): said, never a failure
        console.print(f"[yellow]skipped[/] {esc(line)}", highlight=False, soft_wrap=True)
    for note in outcome.notes:
        console.print(f"[yellow]note[/] {esc(note)}", highlight=False)
    console.print(f"results: {esc(outcome.run_dir)} (samples.parquet, jobs.parquet, compute_plans.parquet, jobs/*.json)",
                  highlight=False)
    if outcome.report:
        console.print(f"report: {esc(outcome.report)}", highlight=False)
    if outcome.status != "complete":
        console.print(f"resume with: bench run --resume {outcome.run_id}")
