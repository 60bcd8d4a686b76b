"""Where a round runs: the seam between the scheduler (order, gating, retries, quarantine, storing, resume) and the
place a target's work actually happens.

`LocalExecutor` calls the target in the scheduler's own worker thread (one thread per iPhone): `bench run` as it has
always been. `bench.lab.executor.LabExecutor` sends the same round to the lab host that holds the phone (a Ray task)
and hands the results back to the same scheduler, so retry/resume/record logic exists once. An executor only runs
what it is given; it never writes the run directory (the driver's scheduler stays its single writer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from bench.run.targets.base import Conditions, RoundRequest, StepResult


class Executor(Protocol):
    def conditions(self, target, should_stop: Callable[[], bool] = lambda: False) -> Conditions:
        """The target's conditions right now (thermal gate before each round); may raise `Interrupted` once
        `should_stop()` is true."""

    def run_round(self, target, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        """One round of steps on the target; raise `Interrupted` once `should_stop()` is true."""


class LocalExecutor:
    """The target runs in the calling thread, on this host."""

    def conditions(self, target, should_stop: Callable[[], bool] = lambda: False) -> Conditions:
        return target.conditions()

    def run_round(self, target, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        return target.run_round(request, should_stop)
