"""Which (variant, device) pairs can run at all: a package's Core ML specification version against the device's OS.

A Core ML package declares the specification version it was written for (its minimum deployment target: the matrix's
`target: iOS18`, a kv_cache decoder's Core ML state, an imported package's own converter setting). A device whose
OS is older cannot even compile it, so the pair would only fail late, on the phone, after the push. The run plan
asks here first: each variant's requirement is read from its **stored packages** (never from the recipe), each
device's OS from what the device reported over lockdown (else devices.yaml `ios:`), and every pair that cannot run
is left out of the plan with one line saying why (`bench run --strict-os` refuses the whole run instead).

Targets without a known OS (host-torch emulation, a phone whose version is unknown) are never judged: they run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Core ML specification version -> the first iOS and macOS that read it. From coremltools 9:
# `coremltools/__init__.py` _SPECIFICATION_VERSION_IOS_13..26 (= 4..10) and, for macOS,
# `converters/mil/_deployment_compatibility.py` AvailableTarget.macOS10_15..macOS26 (aliases of the same numbers);
# 1-3 from the same file's comments (iOS 11, 11.2, 12). tests/test_os_support.py checks it against coremltools.
MIN_OS_BY_SPEC: dict[int, dict[str, tuple[int, ...]]] = {
    1: {"iOS": (11,), "macOS": (10, 13)},
    2: {"iOS": (11, 2), "macOS": (10, 13, 2)},
    3: {"iOS": (12,), "macOS": (10, 14)},
    4: {"iOS": (13,), "macOS": (10, 15)},
    5: {"iOS": (14,), "macOS": (11,)},
    6: {"iOS": (15,), "macOS": (12,)},
    7: {"iOS": (16,), "macOS": (13,)},
    8: {"iOS": (17,), "macOS": (14,)},
    9: {"iOS": (18,), "macOS": (15,)},
    10: {"iOS": (26,), "macOS": (26,)},
}
# The stored packages a variant may hold: a built captioner's pair, an imported model (package or .mlmodel file)
PACKAGE_NAMES = ("encoder.mlpackage", "decoder.mlpackage", "model.mlpackage", "model.mlmodel")


@dataclass(frozen=True)
class Requirement:
    """The newest specification version among a variant's stored packages, and which package declares it."""

    spec: int
    package: str  # e.g. "decoder.mlpackage"

    def minimum(self, platform: str) -> tuple[int, ...] | None:
        """The first `platform` ("iOS" / "macOS") version that reads it; None for a version newer than we know."""
        return (MIN_OS_BY_SPEC.get(self.spec) or {}).get(platform)


@dataclass(frozen=True)
class DeviceOS:
    platform: str  # "iOS" | "macOS"
    version: str  # as reported, e.g. "17.5.1"
    source: str  # where it was learnt: "the device" (it said so: lockdown, the Mac itself) | "devices.yaml"


@dataclass(frozen=True)
class Unsupported:
    """One (variant, target) pair that cannot run: the device's OS is older than the variant's packages need."""

    variant_id: str
    variant_name: str
    target_id: str
    target_name: str
    spec: int
    package: str
    platform: str  # "iOS" | "macOS"
    needs: str  # the first version that reads the spec, "18"
    runs: str  # what the device runs, "17.5.1"
    source: str

    @property
    def line(self) -> str:
        told = "" if self.source == "the device" else f" (per {self.source})"
        return (f"{self.variant_name} needs {self.platform} {self.needs} (Core ML spec {self.spec}, {self.package}), "
                f"{self.target_name} runs {self.platform} {self.runs}{told}: not run")

    def as_record(self) -> dict[str, Any]:
        return {"variant_id": self.variant_id, "variant_name": self.variant_name, "target_id": self.target_id,
                "target_name": self.target_name, "spec": self.spec, "package": self.package,
                "needs": f"{self.platform} {self.needs}", "runs": self.runs, "os_source": self.source,
                "reason": self.line}


def version_tuple(text: str | None) -> tuple[int, ...] | None:
    """"17.5.1" -> (17, 5, 1); None when the text does not start with a version."""
    match = re.match(r"\d+(\.\d+)*", str(text or "").strip())
    return tuple(int(part) for part in match.group(0).split(".")) if match else None


def at_least(version: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """Version comparison that treats missing parts as 0 ("17" == "17.0")."""
    width = max(len(version), len(minimum))
    return version + (0,) * (width - len(version)) >= minimum + (0,) * (width - len(minimum))


def spec_version(path: Path) -> int | None:
    """The specification version a stored package declares; None when it cannot be read (a damaged package is
    refused by the integrity check before it is ever deployed, with its own message: not judged here)."""
    from bench.build.imported import read_spec
    from bench.errors import BenchError

    try:
        return int(read_spec(path, "mlmodel" if path.suffix == ".mlmodel" else "mlpackage").specificationVersion)
    except (BenchError, OSError, ValueError):
        return None


def requirement(variant_dir: Path | None) -> Requirement | None:
    """The newest specification version among the variant's stored packages (a built pair may differ: the kv_cache
    decoder needs Core ML state); None when no package can be read."""
    if variant_dir is None:
        return None
    found = []
    for name in PACKAGE_NAMES:
        path = Path(variant_dir) / name
        if path.exists():
            spec = spec_version(path)
            if spec is not None:
                found.append(Requirement(spec, name))
    return max(found, key=lambda r: r.spec, default=None)


def target_os(target: Any) -> DeviceOS | None:
    """What a target runs, when it is a Core ML device whose OS is known; host-torch and unknown OSes: None."""
    kind = getattr(target, "kind", None)
    version = getattr(target, "os_version", None)
    if kind not in ("iphone", "macos-coreml") or not version_tuple(version):
        return None
    return DeviceOS("iOS" if kind == "iphone" else "macOS", str(version),
                    getattr(target, "os_source", None) or "the device")


def unsupported_pairs(series: list, targets: list) -> list[Unsupported]:
    """Every (variant, target) pair among the planned series whose device runs an OS older than the variant's
    packages need, in plan order; each variant's packages are read once."""
    systems = {t.id: (t, target_os(t)) for t in targets}
    needs: dict[str, Requirement | None] = {}
    found: dict[tuple[str, str], Unsupported] = {}
    for one in series:
        target, system = systems.get(one.target_id, (None, None))
        if system is None or (one.variant.variant_id, one.target_id) in found:
            continue
        if one.variant.variant_id not in needs:
            needs[one.variant.variant_id] = requirement(one.variant.path)
        need = needs[one.variant.variant_id]
        minimum = need.minimum(system.platform) if need else None
        if minimum is None or at_least(version_tuple(system.version), minimum):
            continue
        found[(one.variant.variant_id, one.target_id)] = Unsupported(
            one.variant.variant_id, one.variant.name, one.target_id, target.name, need.spec, need.package,
            system.platform, ".".join(map(str, minimum)), system.version, system.source)
    return list(found.values())


def refusal(pairs: list[Unsupported]) -> str:
    """The one line `--strict-os` refuses a run with."""
    more = f" (and {len(pairs) - 1} more pair{'s' if len(pairs) > 2 else ''})" if len(pairs) > 1 else ""
    return (f"refused (--strict-os): {pairs[0].line.removesuffix(': not run')}{more}; nothing was pushed or run — "
            "update the phone, drop those variants, or run without --strict-os to skip such pairs")
