"""What a run measures, from one YAML file (docs/run.yaml is the annotated example) and/or command-line flags.

Unknown keys and bad values are one line "file:line: key: reason" (bench.yamlconf). Flags override the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bench.errors import MAX_SEED, InputError, did_you_mean
from bench.run.generic import DEFAULT_INPUTS, MAX_INPUTS
from bench.run.targets.base import COMPUTE_UNITS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdaptiveConfig(_Strict):
    """Sample until the 95 % CI of the median is within ±ci_width of it, or a cap is reached (ci_width null: fixed)."""

    ci_width: Optional[float] = Field(0.02, gt=0, lt=1)
    min_samples: int = Field(8, ge=1)
    max_samples: int = Field(160, ge=1)
    max_seconds: float = Field(6.0, gt=0)  # per series (variant × target × compute unit), measured wall time
    confidence: float = Field(0.95, gt=0.5, lt=1)


class ThermalConfig(_Strict):
    """Before each job wait for nominal thermal state and a cool battery, at most `wait_limit_s`."""

    max_battery_temperature_c: float = 35.0
    wait_limit_s: float = Field(900.0, ge=0)
    poll_s: float = Field(15.0, gt=0)
    unstable_fraction: float = Field(0.5, ge=0, le=1)  # a job with more throttled samples than this is unstable


class RetryConfig(_Strict):
    attempts: int = Field(3, ge=1)  # tries per job for transient device errors
    backoff_s: float = Field(2.0, ge=0)  # first wait; doubles each retry
    backoff_max_s: float = Field(120.0, ge=0)
    quarantine_after: int = Field(2, ge=1)  # consecutive failed jobs before a device is quarantined for the run


class GenericConfig(_Strict):
    """How imported models are fed (bench.run.generic): a fixed seeded input set made from each model's description,
    or the user's own (`inputs_from`: an .npz named like the inputs, or an image folder); the outputs of that set are
    kept per compute unit (at most `output_cap_bytes` per job) for drift against the family's reference."""

    inputs: int = Field(DEFAULT_INPUTS, ge=1, le=MAX_INPUTS)
    inputs_from: Optional[str] = None
    function: Optional[str] = None  # multi-function packages: which function (default: the package's default)
    shapes: dict[str, list[int]] = Field(default_factory=dict)  # input name -> an enumerated / in-range shape
    output_cap_bytes: int = Field(1 << 20, ge=0)

    @field_validator("inputs_from")
    @classmethod
    def _absolute(cls, source: Optional[str]) -> Optional[str]:
        """Relative to where the run starts, kept absolute in run.json: a resume from another folder (a nightly
        script's) feeds the same file, where a relative path would find none, or another one."""
        return str(Path(source).expanduser().absolute()) if source else source


class RunConfig(_Strict):
    variants: list[str] = Field(default_factory=list)  # names or ids; empty = every built variant (or the matrix)
    matrix: Optional[str] = None  # a matrix YAML to build first; default: models/matrix.yaml when nothing is built
    targets: list[str] = Field(default_factory=lambda: ["auto"])
    compute_units: list[str] = Field(default_factory=list)  # empty = every unit each target supports
    dataset: str = "synthetic"
    split: str = "test"
    images: int = Field(16, ge=1)
    rounds: int = Field(2, ge=1)  # minimum rounds (fixed schedule: exactly this many); repeats live in rounds
    repeats: int = Field(1, ge=1)  # passes over the images inside one round (one runner job)
    warmup: int = Field(1, ge=0)
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED)  # None: drawn at random and recorded in run.json
    compute_plan: bool = True
    host_threads: int = Field(1, ge=1)
    # host-torch models kept loaded at once (least recently used evicted); null: all of the run's variants when
    # they fit in 10 % of memory together, else one (bench.run.targets.host_torch)
    host_resident_variants: Optional[int] = Field(None, ge=1)
    # Seconds to wait for the iPhone runner per job; None: derived from the job's model sizes and length
    # (bench.run.targets.iphone.runner_timeout). Not a measurement setting: a resume may change it.
    runner_timeout_s: Optional[float] = Field(None, gt=0, le=7 * 24 * 3600, allow_inf_nan=False)
    evaluate: bool = True  # caption quality of every variant (bench.eval) after measuring
    eval_images: int = Field(100, ge=1)  # BLEU on fewer images has CIs too wide to rank variants
    # With `evaluate`: each device (iPhone, Mac) also captions the evaluation subset, untimed, per variant and compute
    # unit; those captions are scored against the host reference (bench/run/device_quality.py)
    device_quality: bool = True
    report: bool = True
    lab: Optional[str] = None  # HOST[:PORT] of a lab head (bench lab up): the phones of every lab host, via Ray
    # A variant whose packages need a newer OS than a device runs (bench/run/os_support.py) is skipped on that device
    # with one line in the summary, report and run.json; strict_os refuses the whole run up front instead
    strict_os: bool = False
    adaptive: AdaptiveConfig = Field(default_factory=AdaptiveConfig)
    thermal: ThermalConfig = Field(default_factory=ThermalConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    generic: GenericConfig = Field(default_factory=GenericConfig)

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, targets: list[str]) -> list[str]:
        """A typo in a target is refused here, before the matrix is built (resolving a target needs the devices)."""
        from bench.run.targets import LAB_ONLY_KINDS, TARGET_KINDS

        for name in targets:
            kind, _, _ = name.strip().partition(":")
            if kind not in TARGET_KINDS + LAB_ONLY_KINDS:
                raise ValueError(did_you_mean("target", name, [*TARGET_KINDS, "iphone:<name or udid>",
                                                               "model:<ProductType> (lab)"]).detail)
        return targets

    @field_validator("compute_units")
    @classmethod
    def _known_units(cls, units: list[str]) -> list[str]:
        for unit in units:
            if unit not in COMPUTE_UNITS:
                raise ValueError(did_you_mean("compute unit", unit, COMPUTE_UNITS).detail)
        return units


def load_config(path: Path | str | None) -> RunConfig:
    if path is None:
        return RunConfig()
    from bench.yamlconf import load_yaml

    return load_yaml(path, RunConfig)


def with_overrides(config: RunConfig, **overrides) -> RunConfig:
    """Apply command-line flags (None = not given). `ci_width`, `max_samples`, `max_seconds` go to `adaptive`."""
    adaptive = dict(config.adaptive.model_dump())
    top = config.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("ci_width", "max_samples", "max_seconds"):
            adaptive[key] = value
        elif key == "fixed":
            if value:
                adaptive["ci_width"] = None
        else:
            top[key] = value
    top["adaptive"] = adaptive
    from pydantic import ValidationError

    try:
        return RunConfig.model_validate(top)
    except ValidationError as err:
        problem = err.errors()[0]
        # The flag the user typed: --ci-width, not the adaptive.ci_width it is stored as.
        flag = str(problem["loc"][-1] if problem["loc"][0] == "adaptive" else problem["loc"][0])
        flag = _FLAGS.get(flag, flag.replace("_", "-"))
        raise InputError(f"--{flag}: {problem['msg'].removeprefix('Value error, ')}") from None


_FLAGS = {"runner_timeout_s": "runner-timeout"}  # settings whose flag is not their key with dashes
