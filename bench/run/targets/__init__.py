"""Target registry: turn names from run.yaml / --targets into Target objects (did-you-mean on unknown names).

Names: `host-torch`, `macos-coreml`, `iphone` (every connected iPhone), `iphone:<name or udid>`, `auto` (connected
iPhones if any, else `host-torch`).
"""

from __future__ import annotations

from typing import Any

from bench.errors import BenchError, InputError, did_you_mean
from bench.run.targets.base import (  # noqa: F401  (re-exported: the one interface)
    COMPUTE_UNITS, HOST_EMULATION_LABEL, Conditions, ImageItem, Interrupted, RoundRequest, Step, StepResult, Target,
    VariantRef,
)

TARGET_KINDS = ("host-torch", "macos-coreml", "iphone", "auto")
LAB_ONLY_KINDS = ("model",)  # `model:iPhone15,2`: any phone of that model in a lab (bench/lab, docs/lab.md)


def connected_iphones(workspace=None, api: Any = None) -> list[dict]:
    """Connected iPhones known to the deploy layer, [] when there is no usbmuxd / no device here.

    A broken devices.yaml is the user's to fix, so it is raised, not taken for "no iPhone" (which would silently
    turn `auto` into host emulation)."""
    inventory = _inventory(workspace)
    try:
        if api is None:
            from bench.deploy import api as deploy_api

            api = deploy_api
        devices = api.discover(inventory)
    except (BenchError, ImportError):
        return []
    # the iOS the phone reported over lockdown, else the one devices.yaml expects (an unpaired phone says none)
    return [{"udid": device.udid, "name": device.name or device.udid, "model": device.model,
             "os_build": device.os_build, "os_version": device.os_version or device.expected_os,
             "os_source": "the device" if device.os_version else "devices.yaml"}
            for device in devices if device.connected]


def _inventory(workspace):
    if workspace is None or not workspace.devices_file.exists():
        return None
    from bench.deploy.inventory import load_inventory

    return load_inventory(workspace.devices_file)


def resolve_targets(names: list[str], *, workspace=None, api: Any = None, host_threads: int = 1,
                    runner_timeout_s: float | None = None, host_resident_variants: int | None = None) -> list:
    """Target objects for the given names, in order, without duplicates. `runner_timeout_s`: iPhone jobs' timeout
    (None: derived per job); `host_resident_variants`: host-torch models kept loaded at once (None: sized to the
    machine's memory)."""
    from bench.run.targets.host_torch import HostTorchTarget
    from bench.run.targets.iphone import IPhoneTarget
    from bench.run.targets.macos_coreml import MacCoreMLTarget

    targets: dict[str, Any] = {}
    host = HostTorchTarget(threads=host_threads, resident_variants=host_resident_variants)
    iphones: list[dict] | None = None
    for raw in names:
        name = raw.strip()
        kind, _, which = name.partition(":")
        if kind in LAB_ONLY_KINDS:
            raise InputError(f"target {name!r} (any phone of a model) needs a lab: add --lab HEAD, or `lab:` in "
                             "run.yaml (docs/lab.md)")
        if kind not in TARGET_KINDS:
            raise did_you_mean("target", name, [*TARGET_KINDS, "iphone:<name or udid>"])
        if kind == "host-torch":
            targets.setdefault("host-torch", host)
        elif kind == "macos-coreml":
            targets.setdefault("macos-coreml", MacCoreMLTarget())
        else:
            iphones = connected_iphones(workspace, api) if iphones is None else iphones
            chosen = _choose_iphones(kind, which, iphones)
            if kind == "auto" and not chosen:
                targets.setdefault("host-torch", host)
            for device in chosen:
                target = IPhoneTarget(device["udid"], name=device["name"], model=device["model"],
                                      os_build=device["os_build"], api=api, timeout_s=runner_timeout_s,
                                      os_version=device.get("os_version"),
                                      os_source=device.get("os_source") or "the device")
                targets.setdefault(target.id, target)
    return list(targets.values())


def _choose_iphones(kind: str, which: str, iphones: list[dict]) -> list[dict]:
    from bench.errors import PlatformUnavailable

    if not iphones and (which or kind == "iphone"):
        raise PlatformUnavailable(f"no iPhone is connected{f' (wanted {which!r})' if which else ''}; check "
                                  "`bench devices`, or use --targets host-torch to measure on this host (emulation)")
    if not which:
        return iphones  # every connected one ([] for `auto`, which then measures on the host)
    for device in iphones:
        if which in (device["udid"], device["name"]):
            return [device]
    raise did_you_mean("iPhone", which, [d["name"] for d in iphones] + [d["udid"] for d in iphones])
