"""In-test fakes for the run stage: targets that answer instantly with simulated latencies.

They stand in for what cannot exist here (an iPhone's Core ML runtime and thermal sensor). Everything else — planning,
scheduling, gating, retries, quarantine, records, parquet, DuckDB — runs for real.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bench.errors import DeviceError
from bench.run.targets.base import COMPUTE_UNITS, Conditions, ImageItem, Interrupted, StepResult, VariantRef


class FlakyTransport(DeviceError):
    """A transport failure the scheduler must retry (like a cut USB transfer)."""

    transient = True


class DeviceGone(DeviceError):
    """A failure that needs a person (not retried)."""

    transient = False


def variants(*names: str) -> list[VariantRef]:
    return [VariantRef(variant_id=f"{name}-{i:012x}", name=name, variant_hash=f"{i:012x}", image_size=32,
                       decode={"bos_id": 1, "eos_id": 2, "pad_id": 0, "max_length": 8})
            for i, name in enumerate(names, start=1)]


def images(n: int = 4) -> list[ImageItem]:
    return [ImageItem(f"img{i}", lambda: None) for i in range(n)]


@dataclass
class FakeTarget:
    """A device answering instantly. `latency(variant_id, compute_unit, rng) -> ns` simulates the distribution;
    `thermal` is the sequence of states `conditions()` reports (the last one repeats); `fail_rounds` maps a call
    number (0-based calls of run_round) to the exception that call raises; `kill_after` raises a stand-in for SIGKILL
    after that many stored steps."""

    id: str = "iphone-fake1"
    kind: str = "iphone"
    name: str = "fake phone"
    label: str = "Core ML on iPhone (fake)"
    compute_units: tuple = COMPUTE_UNITS
    parallel_safe: bool = True
    model: str = "iPhone15,2"
    os_build: str = "22A3354"
    latency: object = None
    thermal: list = field(default_factory=lambda: ["nominal"])
    sample_thermal: str = "nominal"
    fail_calls: dict = field(default_factory=dict)
    step_errors: dict = field(default_factory=dict)  # variant name -> error message
    kill_after: int | None = None
    seed: int = 0
    calls: int = 0
    status_calls: int = 0
    measured: list = field(default_factory=list)  # (round, job_key) in measuring order

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def conditions(self) -> Conditions:
        state = self.thermal[min(self.status_calls, len(self.thermal) - 1)]
        self.status_calls += 1
        return Conditions(device_model=self.model, os_version="18.0", os_build=self.os_build, charging=True,
                          battery_level=0.8, battery_temperature_c=30.0, low_power_mode=False, thermal_state=state)

    def close(self) -> None:
        pass

    def run_round(self, request, should_stop):
        call = self.calls
        self.calls += 1
        if call in self.fail_calls:
            raise self.fail_calls[call]
        for step in request.steps:
            if should_stop():
                raise Interrupted()
            if self.kill_after is not None and len(self.measured) >= self.kill_after:
                raise SimulatedKill()
            self.measured.append((request.round, step.job_key))
            if step.variant.name in self.step_errors:
                yield StepResult(step.job_key, error=self.step_errors[step.variant.name])
                continue
            samples = []
            for repeat in range(request.repeats):
                for item in request.images:
                    total = int(self.latency(step.variant.variant_id, step.compute_unit, self.rng)) if self.latency \
                        else int(self.rng.lognormvariate(16, 0.05))
                    samples.append({"image_id": item.image_id, "repeat": repeat, "encoder_ns": total // 2,
                                    "decoder_ns": [total - total // 2], "total_ns": total,
                                    "thermal_state": self.sample_thermal, "t_ns": len(self.measured), "tokens": [5, 2]})
            warmup = [{**samples[0], "repeat": 0}] if request.warmup else []
            yield StepResult(step.job_key, samples=samples, warmup=warmup,
                             load={"compile_ns": {"encoder": 10, "decoder": 20},
                                   "cold_load_ns": {"encoder": 5, "decoder": 6},
                                   "warm_load_ns": {"encoder": 1, "decoder": 2}, "first_prediction_ns": 7},
                             compute_plan={"encoder": [{"name": "conv1", "type": "conv", "preferred": "ane",
                                                        "supported": ["cpu", "ane"], "cost": 0.5}]},
                             elapsed_s=0.001)


class SimulatedKill(BaseException):
    """Stands in for SIGKILL in-process: not an Exception, so nothing in the scheduler may catch and tidy up after it."""
