"""One interface for every place a variant can be measured (iPhone, macOS Core ML, host PyTorch emulation).

A target measures *rounds*: one round is one pass over the images for an ordered list of steps
(variant, compute unit), exactly like one runner job on an iPhone (docs/contracts.md §5). It yields one StepResult per
step as soon as that step is measured, so the scheduler can store it at once. Samples use the runner's sample shape:
{image_id, repeat, encoder_ns, decoder_ns: [per step], total_ns, thermal_state, t_ns, tokens}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

COMPUTE_UNITS = ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all")
THERMAL_STATES = ("nominal", "fair", "serious", "critical")
HOST_EMULATION_LABEL = "host emulation (not Core ML)"


@dataclass(frozen=True)
class Conditions:
    """What a target reports about itself right now; None where it cannot know (e.g. a Linux host's thermal state)."""

    device_model: str | None = None
    os_version: str | None = None
    os_build: str | None = None
    charging: bool | None = None
    battery_level: float | None = None
    battery_temperature_c: float | None = None
    low_power_mode: bool | None = None
    thermal_state: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VariantRef:
    """What a target needs to know about a variant; `source` is the loaded VariantManifest when there is one."""

    variant_id: str
    name: str
    variant_hash: str
    path: Path | None = None
    image_size: int | None = None
    decode: dict[str, int] = field(default_factory=dict)
    source: Any = field(default=None, compare=False, repr=False)
    decoding: str = "recompute"  # or "kv_cache": the decoder's self-attention cache in Core ML state (issue 14)


@dataclass(frozen=True)
class ImageItem:
    image_id: str
    load: Callable[[], Any]  # -> PIL.Image (RGB); images are loaded lazily, once per target
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    job_key: str
    series_key: str
    variant: VariantRef
    compute_unit: str
    round: int


@dataclass(frozen=True)
class RoundRequest:
    round: int
    steps: list[Step]
    images: list[ImageItem]
    warmup: int = 1
    repeats: int = 1
    compute_plan: bool = True
    run_id: str | None = None  # the run measuring: devices keep what they compile for its later rounds
    generic: Any = None  # bench.run.generic.GenericSettings: how imported models are fed (None: defaults)


@dataclass
class StepResult:
    job_key: str
    samples: list[dict] = field(default_factory=list)
    warmup: list[dict] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)  # compile_ns, cold_load_ns, warm_load_ns, first_prediction_ns
    compute_plan: dict | None = None
    quality: dict | None = None
    error: str | None = None  # the step failed on the target (the others in the round may still be fine)
    started_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float = 0.0
    extra_conditions: dict[str, Any] = field(default_factory=dict)
    # Imported models: {(input_id, output name): numpy array} of the fixed input set (stored by the scheduler under
    # outputs/<job_key>/), or why they were not kept (over the cap).
    outputs: dict | None = None
    outputs_error: str | None = None


class Interrupted(Exception):
    """Raised inside a target when the run was asked to stop (Ctrl-C): the running step is abandoned, not stored."""


@runtime_checkable
class Target(Protocol):
    kind: str  # "iphone" | "macos-coreml" | "host-torch"
    id: str  # stable, filename-safe id (e.g. "host-torch", "iphone-00008110-…")
    name: str
    label: str  # how tables and plots must name it ("host emulation (not Core ML)" for host-torch)
    compute_units: tuple[str, ...]
    parallel_safe: bool  # may run at the same time as other targets (iPhones: yes; host CPU targets: no)

    def conditions(self) -> Conditions: ...

    def run_round(self, request: RoundRequest, should_stop: Callable[[], bool]) -> Iterator[StepResult]: ...

    def close(self) -> None: ...


def describe(target: Target) -> dict[str, Any]:
    """The target as stored in run.json and job records."""
    described = {"kind": target.kind, "id": target.id, "name": target.name, "label": target.label,
                 "compute_units": list(target.compute_units)}
    selector = getattr(target, "selector", None)  # how to find it again on resume (lab phones: iphone:…, model:…)
    return {**described, "selector": selector} if selector else described


def variant_decoding(variant) -> str:
    """"kv_cache" when the variant's decoder keeps its cache in Core ML state (manifest io.decoding), else
    "recompute" (also for manifests written before the decoder axis existed)."""
    if variant is None:
        return "recompute"
    io = getattr(variant.source, "io", None) or {}
    return str(io.get("decoding") or getattr(variant, "decoding", None) or "recompute")
