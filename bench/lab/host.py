"""What runs on a lab host, inside a Ray task: take the phone, fetch the packages the host lacks, deploy, run.

These functions are plain Python (the executor wraps them with `ray.remote`), use today's deployment layer
(bench/deploy: content-addressed pushes, the runner contract) and never touch the run directory: they return the
runner's validated result and where the time went; the driver stores it. Device errors come back as data
({"error": …}), so the driver's scheduler retries or fails the job exactly as it does for a local phone.
"""

from __future__ import annotations

import socket
import time
from contextlib import contextmanager

from bench.errors import BenchError, DeviceError
from bench.lab.cluster import KV_NAMESPACE, LabPhone, phones_here
from bench.lab.packages import HostCache

RUNNING_PREFIX = "running/"


def host_name() -> str:
    """The lab's name for this host (its node label from `bench lab join`), else the machine's host name."""
    try:
        import ray

        if not ray.is_initialized():  # outside a task: asking for the context would start a local Ray
            return socket.gethostname()
        label = ray.get_runtime_context().get_node_labels().get("bench.host")
        if label:
            return label[0] if isinstance(label, list) else str(label)
    except Exception:  # noqa: BLE001 — only a name for messages
        pass
    return socket.gethostname()
PICK_POLL_S = 0.2


class PhoneNotHere(DeviceError):
    """The phone a job was sent for is not one this host advertised (it moved, or the host restarted)."""

    transient = True


@contextmanager
def hold_phone(udid: str | None, model: str | None, cache: HostCache):
    """Exclusive use of one phone on this host: the named one, or the first free one of `model`. The lock is a file
    lock, so a named job and an "any model" job never share a phone, and a killed task releases it."""
    here = phones_here()
    if udid is not None:
        phone = next((p for p in here if p.udid == udid), None)
        if phone is None:
            raise PhoneNotHere(f"phone {udid} is not attached to lab host {host_name()} any more",
                               action="run `bench lab join` on the host it is plugged into now")
        with cache.lock(f"phone-{udid}"):
            yield phone
        return
    candidates = [p for p in here if p.model == model]
    if not candidates:
        raise PhoneNotHere(f"lab host {host_name()} holds no {model}", action="check `bench lab status`")
    while True:
        for phone in candidates:
            with cache.lock(f"phone-{phone.udid}", blocking=False) as held:
                if held:
                    yield phone
                    return
        time.sleep(PICK_POLL_S)


def run_job(udid: str | None, model: str | None, spec, packages: list, inputs: dict, timeout_s: float,
            poll_s: float) -> dict:
    """One round on one phone of this host. `packages`: [(variant_id, key, [ObjectRef of the packed variant])] —
    the reference is wrapped in a list so Ray does not fetch it before we know the host lacks it."""
    import ray

    from bench.deploy import api as deploy_api
    from bench.deploy.logs import JobLog

    clock = time.perf_counter
    started = clock()
    cache = HostCache()
    timing: dict[str, float] = {}
    log = None  # the runner's log lines, bounded as a local run keeps them; the driver stores them with the run
    try:
        with hold_phone(udid, model, cache) as phone:
            locked = clock()
            _mark_running(phone.udid, spec.job_id or "a job")
            try:
                dirs, fetched = {}, 0
                for variant_id, key, holder in packages:
                    dirs[variant_id], size = cache.ensure(variant_id, key, lambda holder=holder: ray.get(holder[0]))
                    fetched += size
                fetched_at = clock()
                report = deploy_api.deploy(phone.udid, spec, dirs, inputs)
                deployed = clock()
                log = JobLog(report.job_id)
                result = deploy_api.run_job(phone.udid, report.job_id, timeout_s=timeout_s, on_log=log.add,
                                            poll_s=poll_s)
                ran = clock()
            finally:
                _clear_running(phone.udid)
    except DeviceError as err:
        return {"error": error_data(err), "host": host_name(), "log": log}
    timing = {"lock_wait_s": locked - started, "transfer_s": fetched_at - locked, "deploy_s": deployed - fetched_at,
              "runner_s": ran - deployed, "task_s": clock() - started}
    return {"result": result, "phone": phone.as_dict(), "host": host_name(),
            "node_id": ray.get_runtime_context().get_node_id(), "fetched_bytes": fetched, "timing": timing,
            "deploy": {"model_bytes_sent": report.model_bytes_sent, "input_bytes_sent": report.input_bytes_sent,
                       "models_skipped": report.models_skipped}, "log": log}


def mac_runtime():
    """Core ML on this Mac (coremltools); PlatformUnavailable elsewhere. Tests on Linux replace this one function in
    the host's workers with a stand-in for the Core ML runtime, the only thing that cannot exist there."""
    from bench.run.targets.macos_coreml import CoreMLTools, require_macos

    require_macos()
    return CoreMLTools()


def mac_conditions() -> dict:
    """What the driver's gate reads of a Mac (no thermal sensor reachable from Python: the gate says so)."""
    import platform

    from bench.run.targets.macos_coreml import MacCoreMLTarget

    try:
        conditions = MacCoreMLTarget(core_ml=mac_runtime()).conditions()
    except BenchError as err:
        return {"error": {"kind": type(err).__name__, "message": str(err), "transient": False},
                "host": host_name()}
    return {"status": conditions.as_dict(), "host": host_name(), "machine": platform.machine()}


def run_mac_round(request, packages: list, inputs: dict) -> dict:
    """One round of the Mac Core ML target on this host: packages from the host cache (fetched once), pixels as the
    driver prepared them (`inputs`: {(variant_id, image_id): float32 array}), measured by MacCoreMLTarget."""
    import dataclasses

    import ray

    from bench.run.targets.macos_coreml import MacCoreMLTarget

    clock = time.perf_counter
    started = clock()
    cache = HostCache()
    try:
        with cache.lock("mac-coreml"):  # one round at a time on this Mac's compute units
            locked = clock()
            dirs, fetched = {}, 0
            for variant_id, key, holder in packages:
                dirs[variant_id], size = cache.ensure(variant_id, key, lambda holder=holder: ray.get(holder[0]))
                fetched += size
            fetched_at = clock()
            steps = [dataclasses.replace(step, variant=dataclasses.replace(step.variant, path=dirs[step.variant.variant_id]))
                     for step in request.steps]
            target = MacCoreMLTarget(core_ml=mac_runtime(),
                                     pixels=lambda variant, item: inputs[(variant.variant_id, item.image_id)])
            results = list(target.run_round(dataclasses.replace(request, steps=steps), lambda: False))
            ran = clock()
    except BenchError as err:
        return {"error": {"kind": type(err).__name__, "message": str(err), "transient": isinstance(err, DeviceError)
                          and bool(getattr(err, "transient", False))}, "host": host_name()}
    return {"results": results, "host": host_name(), "node_id": ray.get_runtime_context().get_node_id(),
            "fetched_bytes": fetched, "timing": {"lock_wait_s": locked - started, "transfer_s": fetched_at - locked,
                                                 "deploy_s": 0.0, "runner_s": ran - fetched_at,
                                                 "task_s": clock() - started}}


def warm_up() -> str:
    """Import the deployment layer in this worker (pymobiledevice3 takes seconds to import on a busy host), so the
    first job does not pay for it; Ray keeps the worker for the following jobs."""
    import importlib

    for module in ("bench.deploy.api", "bench.deploy.launch", "bench.deploy.container", "bench.deploy.battery",
                   "pymobiledevice3.lockdown", "pymobiledevice3.services.house_arrest",
                   "pymobiledevice3.services.diagnostics", "pymobiledevice3.services.mobile_image_mounter",
                   "pymobiledevice3.services.dvt.instruments.dvt_provider",
                   "pymobiledevice3.services.dvt.instruments.process_control"):
        importlib.import_module(module)  # what the first job would otherwise import (lazily) on its clock
    return host_name()


def phone_status(udid: str | None, model: str | None, timeout_s: float, poll_s: float) -> dict:
    """The phone's conditions (a status job of the runner), for the driver's thermal gate."""
    from bench.deploy import api as deploy_api

    try:
        with hold_phone(udid, model, HostCache()) as phone:
            status = deploy_api.device_status(phone.udid, timeout_s=timeout_s, poll_s=poll_s)
    except DeviceError as err:
        return {"error": error_data(err), "host": host_name()}
    return {"status": dict(status.__dict__), "phone": phone.as_dict(), "host": host_name()}


def phone_health(udids: list[str]) -> dict[str, str]:
    """`bench devices`' health of this host's phones: "ready" or the problems, one line each."""
    from bench.deploy import api as deploy_api

    found = {}
    for udid in udids:
        report = deploy_api.health(udid)
        found[udid] = "ready" if report.ready else "; ".join(report.problems) or "not ready"
    return found


def error_data(err: DeviceError) -> dict:
    from bench.run.targets.iphone import is_transient

    return {"kind": type(err).__name__, "message": str(err), "transient": is_transient(err)}


def _mark_running(udid: str, what: str) -> None:
    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(RUNNING_PREFIX + udid, what, overwrite=True, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001 — status display only; never fail a job over it
        pass


def _clear_running(udid: str) -> None:
    try:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(RUNNING_PREFIX + udid, namespace=KV_NAMESPACE)
    except Exception:  # noqa: BLE001
        pass


__all__ = ["LabPhone", "hold_phone", "run_job", "phone_status", "phone_health"]
