"""The driver's side of a lab run: the scheduler (bench/run/scheduler.py) plans, orders, gates, retries and stores as
for a local run; this executor sends each round to the host holding the phone as a Ray task pinned to the phone's
resource (`iphone:<udid>`, or `iphone-model:<model>` for "any phone of that model") and hands the results back.

The driver prepares the job exactly as for a local phone (bench/run/targets/iphone.py: preprocessed inputs, the
runner job spec), ships packages by content hash (bench/lab/packages.py) and stays the single writer of the run
directory. What it adds per job, under `conditions.lab`: the host and phone that ran it, and where the time went —
queue wait, package transfer to the host, deployment to the phone, the runner, and the measuring itself.

Failure: a host that dies mid-job, or a phone no live host holds any more, is a transient device error (the
scheduler retries with backoff, then fails the round; `--resume` measures it again). A phone two hosts claim is an
error that needs a person. Ctrl-C cancels the remote task and leaves a resumable run.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

from bench.errors import DeviceError, InputError, did_you_mean
from bench.lab.cluster import (PHONE_RESOURCE, LabError, LabMac, LabPhone, lab_macs, model_resource, phone_holders,
                               registered_phones)
from bench.run.plan import safe_name
from bench.run.targets.base import Conditions, Interrupted, RoundRequest, StepResult
from bench.run.targets.iphone import IPhoneTarget, _default_preprocess
from bench.store.environment import now_iso


class HostLost(DeviceError):
    """No live host holds the phone any more, or the host died during the job: worth retrying (it may rejoin)."""

    transient = True


class PhoneClaimedTwice(DeviceError):
    """Two live hosts advertise the same phone: one of them is wrong, and a person must say which."""

    transient = False


class LabHostError(DeviceError):
    """A device error raised on the lab host, carried back as data (kind, message, transient)."""

    def __init__(self, kind: str, message: str, transient: bool):
        self.kind, self.transient = kind, transient
        super().__init__(message)


# --- targets -------------------------------------------------------------------------------------------------------

class LabIPhone(IPhoneTarget):
    """An iPhone somewhere in the lab: a named phone (`iphone:<udid>`) or any phone of a model (`model:<model>`)."""

    def __init__(self, phone: LabPhone | None = None, *, model: str | None = None, preprocess=_default_preprocess,
                 os_version: str | None = None):
        """`os_version` of a model pool: the oldest iOS among its phones (any of them may take a round), so the plan
        never gives the pool a variant one of its phones cannot run."""
        from bench.deploy import api as deploy_api

        if phone is not None:
            super().__init__(phone.udid, name=phone.name, model=phone.model, os_build=phone.os_build, api=deploy_api,
                             preprocess=preprocess, os_version=phone.os_version)
            self.resource, self.pool_model, self.selector = PHONE_RESOURCE + phone.udid, None, f"iphone:{phone.udid}"
        else:
            super().__init__(f"model-{model}", name=f"any {model}", model=model, api=deploy_api, preprocess=preprocess,
                             os_version=os_version)
            self.udid, self.id = None, f"iphone-model-{safe_name(model)}"
            self.resource, self.pool_model, self.selector = model_resource(model), model, f"model:{model}"

    def conditions(self) -> Conditions:  # pragma: no cover - the executor asks the host; never called directly
        raise LabError(f"{self.id} is a lab phone: its conditions come from its host (LabExecutor)")

    def run_round(self, request, should_stop):  # pragma: no cover - see conditions()
        raise LabError(f"{self.id} is a lab phone: its rounds run on its host (LabExecutor)")


class LabMacTarget:
    """Core ML on a Mac of the lab (`macos-coreml`, `macos-coreml:<host>`): its rounds run on that host, one at a
    time (resource `mac-coreml:<host>`), on packages from the host's cache and pixels prepared by the driver."""

    kind = "macos-coreml"
    label = "Core ML on macOS host"
    compute_units = ("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all")
    parallel_safe = True  # each Mac measures on its own host: Macs (and phones) run side by side

    def __init__(self, mac: LabMac, *, preprocess=_default_preprocess):
        self.mac, self.host, self.resource = mac, mac.host, mac.resource
        self.id = f"macos-coreml-{safe_name(mac.host)}"
        self.name = f"{mac.host} (Core ML, macOS {mac.os_version or '?'})"
        self.selector, self.udid, self.pool_model = f"macos-coreml:{mac.host}", None, None
        self.model, self.os_build = mac.machine, mac.os_version
        self.os_version, self.os_source = mac.os_version, "the device"  # as the Mac said
        self._preprocess = preprocess

    def pixels(self, request: RoundRequest) -> dict:
        """{(variant_id, image_id): float32 [1, 3, S, S]}: each variant's own preprocessing, done on the driver."""
        out = {}
        for step in request.steps:
            variant = step.variant
            size = int(variant.image_size or 384)
            mode = getattr(variant.source, "resize", None) or "resize"
            for item in request.images:
                if (variant.variant_id, item.image_id) not in out:
                    array = self._preprocess([item.load()], size, mode, variant)
                    array = array.numpy() if hasattr(array, "numpy") else array
                    out[(variant.variant_id, item.image_id)] = array.astype("float32")
        return out

    def conditions(self) -> Conditions:  # pragma: no cover - the executor asks the host
        raise LabError(f"{self.id} is a lab Mac: its conditions come from its host (LabExecutor)")

    def run_round(self, request, should_stop):  # pragma: no cover - see conditions()
        raise LabError(f"{self.id} is a lab Mac: its rounds run on its host (LabExecutor)")

    def close(self) -> None:
        pass


LAB_TARGET_NAMES = ("iphone", "iphone:<name or udid>", "model:<ProductType>", "macos-coreml",
                    "macos-coreml:<host>", "auto")


def lab_targets(names: list[str], *, preprocess=_default_preprocess) -> list[LabIPhone]:
    """Targets from run.yaml / --targets names against the phones the lab's hosts advertise now."""
    holders = phone_holders()
    known = registered_phones()
    twice = {udid: hosts for udid, hosts in holders.items() if len(hosts) > 1}
    if twice:
        udid, hosts = next(iter(sorted(twice.items())))
        raise PhoneClaimedTwice(f"phone {udid} is claimed by lab hosts {' and '.join(hosts)}",
                                action="stop Ray (`ray stop`) on the host it was unplugged from, then run again")
    phones = sorted((known.get(udid) or LabPhone(udid, udid, None) for udid in holders), key=lambda p: p.name)
    chosen: dict[str, LabIPhone | LabMacTarget] = {}
    for raw in names:
        kind, _, which = raw.strip().partition(":")
        if kind == "host-torch":
            raise InputError(f"target {raw!r} measures the host it runs on, not a lab device; run it without --lab")
        if kind == "macos-coreml":
            for target in _lab_mac_targets(raw, which, preprocess):
                chosen.setdefault(target.id, target)
            continue
        if kind not in ("iphone", "auto", "model"):
            raise did_you_mean("lab target", raw, LAB_TARGET_NAMES)
        if not phones:
            raise LabError("no host of this lab advertises a phone; run `bench lab join HEAD` on each host that has "
                           "iPhones attached (`bench lab status` shows the hosts)")
        if kind == "model":
            models = sorted({p.model for p in phones if p.model})
            # `model:iPhone15_2` is the same as `model:iPhone15,2` (on the command line a comma separates targets)
            model = next((m for m in models if m.replace(",", "_") == which.replace(",", "_")), None)
            if model is None:
                raise did_you_mean("phone model in this lab", which, models)
            target = LabIPhone(model=model, preprocess=preprocess,
                               os_version=_oldest_ios(p.os_version for p in phones if p.model == model))
            chosen.setdefault(target.id, target)
            continue
        for phone in phones:
            if not which or which in (phone.udid, phone.name):
                chosen.setdefault(f"iphone-{phone.udid}", LabIPhone(phone, preprocess=preprocess))
        if which and not any(which in (p.udid, p.name) for p in phones):
            raise did_you_mean("lab phone", which, [p.name for p in phones] + [p.udid for p in phones])
    return list(chosen.values())


def _oldest_ios(versions) -> str | None:
    """The oldest of the phones' iOS versions; None when any is unknown (the pool is then not judged)."""
    from bench.run.os_support import version_tuple

    known = list(versions)
    if not known or any(version_tuple(v) is None for v in known):
        return None
    return min(known, key=version_tuple)


def _lab_mac_targets(raw: str, which: str, preprocess) -> list[LabMacTarget]:
    macs = lab_macs()
    if not macs:
        raise LabError("no host of this lab offers Core ML on a Mac; run `bench lab join HEAD` on a Mac with bench "
                       "installed (`bench lab status` shows the hosts)")
    chosen = [mac for mac in macs if not which or which == mac.host]
    if not chosen:
        raise did_you_mean("lab Mac", which, [mac.host for mac in macs])
    return [LabMacTarget(mac, preprocess=preprocess) for mac in chosen]


# --- the executor -------------------------------------------------------------------------------------------------

class LabExecutor:
    """Runs rounds as Ray tasks on the hosts holding the phones. `fetched_by_host`: package bytes each host pulled."""

    def __init__(self, *, timeout_s: float | None = None, poll_s: float = 1.0, status_timeout_s: float = 120.0,
                 wait_poll_s: float = 0.2, holder_check_s: float = 1.0, cancel_grace_s: float = 5.0):
        import ray

        from bench.lab import host

        self._ray = ray
        self._timeout_s, self._poll_s, self._status_timeout_s = timeout_s, poll_s, status_timeout_s
        self._wait_poll_s, self._holder_check_s, self._cancel_grace_s = wait_poll_s, holder_check_s, cancel_grace_s
        self._run = ray.remote(num_cpus=0, max_retries=0)(host.run_job)
        self._status = ray.remote(num_cpus=0, max_retries=0)(host.phone_status)
        self._lock = threading.Lock()
        self._packages: dict[str, tuple[str, list]] = {}  # variant path -> (key, [ref])
        self._inputs: dict[tuple, object] = {}
        self.fetched_by_host: dict[str, int] = defaultdict(int)
        self.jobs_by_host: dict[str, int] = defaultdict(int)
        self._holders: tuple[float, dict[str, list[str]], dict[str, float]] = (float("-inf"), {}, {})
        # "any phone of a model" targets: the phone whose conditions the thermal gate read last, so the round
        # runs on that very phone (target id -> udid)
        self._gated: dict[str, str] = {}

    def warm_up(self, targets: list[LabIPhone], timeout_s: float = 300.0) -> None:
        """Start (and import the deployment layer in) one worker per phone on its host, all at once, before the run's
        first job: a cold worker costs seconds per host. A host that cannot answer is left to the run's own errors."""
        warm = self._ray.remote(num_cpus=0, max_retries=0)(_warm_up)
        refs = [warm.options(resources={target.resource: 1}).remote() for target in targets]
        ready, pending = self._ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for ref in pending:
            self._ray.cancel(ref, force=True)

    # the scheduler's two calls ---------------------------------------------------------------------------------
    def conditions(self, target: LabIPhone, should_stop: Callable[[], bool] = lambda: False) -> Conditions:
        if isinstance(target, LabMacTarget):
            return self._mac_conditions(target, should_stop)
        self._check_holders(target)
        ref = self._status.options(resources={target.resource: 1}).remote(
            target.udid, target.pool_model, self._status_timeout_s, self._poll_s)
        answer = self._wait(ref, target, should_stop, self._status_timeout_s + 60)
        if "error" in answer:
            raise _host_error(answer)
        if target.pool_model is not None:
            with self._lock:
                self._gated[target.id] = answer["phone"]["udid"]
        return target.conditions_from(answer["status"])

    def run_round(self, target: LabIPhone, request: RoundRequest,
                  should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        if should_stop():
            raise Interrupted()
        if isinstance(target, LabMacTarget):
            yield from self._run_mac_round(target, request, should_stop)
            return
        spec, variant_dirs, inputs, keys = target.job_for(request)
        packages = [(variant_id, *self._package(path)) for variant_id, path in variant_dirs.items()]
        inputs_ref = self._inputs_ref(inputs)
        udid, model, resource = self._placement(target)
        self._check_holders(target, udid)
        started, clock = now_iso(), time.perf_counter()
        # The runner timeout: fixed (run.yaml runner_timeout_s / --runner-timeout), else derived from the job.
        timeout_s = self._timeout_s or target.timeout_for(request)
        ref = self._run.options(resources={resource: 1}).remote(
            udid, model, spec, packages, inputs_ref, timeout_s, self._poll_s)
        answer = self._wait(ref, target, should_stop, timeout_s + 120, udid)
        roundtrip = time.perf_counter() - clock
        # The runner's log comes back whole (bounded as a local run's) and is kept in the run as a local one is.
        log = answer.get("log")
        target.last_log = log
        if "error" in answer:  # never launched, or silent: no log to point at
            raise _host_error(answer, target.save_log(log) if log is not None and log.lines else None)
        where = target.save_log(log) if log is not None else None
        with self._lock:
            self.fetched_by_host[answer["node_id"]] += answer["fetched_bytes"]
            self.jobs_by_host[answer["node_id"]] += 1
        timing = answer["timing"]
        lab = {"host": answer["host"], "node_id": answer["node_id"], "udid": answer["phone"]["udid"],
               "gate_udid": udid,  # the phone whose thermal state and battery the gate read
               "phone": answer["phone"]["name"], "steps_in_round": len(keys), "package_bytes_fetched":
               answer["fetched_bytes"], "model_bytes_pushed": answer["deploy"]["model_bytes_sent"],
               # shared by the round's steps: each job carries its share, the round's totals are the sums
               "queue_wait_s": (roundtrip - timing["task_s"] + timing["lock_wait_s"]) / len(keys),
               "transfer_s": timing["transfer_s"] / len(keys), "deploy_s": timing["deploy_s"] / len(keys),
               "runner_s": timing["runner_s"] / len(keys)}
        for result in target.step_results(answer["result"], keys, started, now_iso(), roundtrip, log_note=where):
            measured = sum(int(s.get("total_ns") or 0) for s in result.samples) / 1e9
            result.extra_conditions["lab"] = {**lab, "measure_s": measured}
            yield result

    # Macs ---------------------------------------------------------------------------------------------------------
    def _mac_conditions(self, target: LabMacTarget, should_stop: Callable[[], bool]) -> Conditions:
        from bench.lab import host

        self._check_holders(target)
        remote = self._ray.remote(num_cpus=0, max_retries=0)(host.mac_conditions)
        answer = self._wait(remote.options(resources={target.resource: 1}).remote(), target, should_stop,
                            self._status_timeout_s)
        if "error" in answer:
            raise _host_error(answer)
        return Conditions(**answer["status"])

    def _run_mac_round(self, target: LabMacTarget, request: RoundRequest,
                       should_stop: Callable[[], bool]) -> Iterator[StepResult]:
        import dataclasses

        from bench.lab import host
        from bench.run.targets.base import ImageItem

        pixels = target.pixels(request)
        variant_dirs = {step.variant.variant_id: step.variant.path for step in request.steps}
        packages = [(variant_id, *self._package(path)) for variant_id, path in variant_dirs.items()]
        shipped = dataclasses.replace(request, images=[ImageItem(i.image_id, _not_on_this_host) for i in request.images])
        self._check_holders(target)
        started, clock = now_iso(), time.perf_counter()
        remote = self._ray.remote(num_cpus=0, max_retries=0)(host.run_mac_round)
        ref = remote.options(resources={target.resource: 1}).remote(shipped, packages, self._ray.put(pixels))
        answer = self._wait(ref, target, should_stop, self._timeout_s or 3600.0)
        roundtrip = time.perf_counter() - clock
        if "error" in answer:
            raise _host_error(answer)
        with self._lock:
            self.fetched_by_host[answer["node_id"]] += answer["fetched_bytes"]
            self.jobs_by_host[answer["node_id"]] += 1
        timing, steps = answer["timing"], max(1, len(request.steps))
        lab = {"host": answer["host"], "node_id": answer["node_id"], "mac": target.host, "steps_in_round": steps,
               "package_bytes_fetched": answer["fetched_bytes"],
               "queue_wait_s": (roundtrip - timing["task_s"] + timing["lock_wait_s"]) / steps,
               "transfer_s": timing["transfer_s"] / steps, "deploy_s": 0.0, "runner_s": timing["runner_s"] / steps}
        for result in answer["results"]:
            result.started_at = result.started_at or started
            measured = sum(int(s.get("total_ns") or 0) for s in result.samples) / 1e9
            result.extra_conditions["lab"] = {**lab, "measure_s": measured}
            yield result

    def _placement(self, target: LabIPhone) -> tuple[str | None, str | None, str]:
        """(udid, model, resource) a round asks for: its phone; for "any phone of a model", the phone the thermal
        gate just read (so the gate and the measurement concern the same device), else any free one of the model."""
        with self._lock:
            gated = self._gated.pop(target.id, None) if target.pool_model is not None else None
        if gated is not None:
            return gated, None, PHONE_RESOURCE + gated
        return target.udid, target.pool_model, target.resource

    # shipping ---------------------------------------------------------------------------------------------------
    def _package(self, path) -> tuple[str, list]:
        """(content key, [object ref]) of a variant: packed and put into the object store once per run."""
        from bench.lab.packages import pack, package_key

        with self._lock:
            if str(path) not in self._packages:
                self._packages[str(path)] = (package_key(path), [self._ray.put(pack(path))])
            return self._packages[str(path)]

    def _inputs_ref(self, inputs: dict):
        signature = tuple(sorted((key, tensor.shape, len(tensor.data)) for key, tensor in inputs.items()))
        with self._lock:
            if signature not in self._inputs:
                self._inputs[signature] = self._ray.put(inputs)
            return self._inputs[signature]

    # waiting --------------------------------------------------------------------------------------------------------
    def _wait(self, ref, target: LabIPhone, should_stop: Callable[[], bool], limit_s: float,
              udid: str | None = None) -> dict:
        """The task's answer; cancels it on Ctrl-C, when its phone's host leaves, or after `limit_s`. `udid`: the
        phone a pool target's round was pinned to."""
        ray = self._ray
        started = checked = time.monotonic()
        while True:
            ready, _ = ray.wait([ref], timeout=self._wait_poll_s)
            if ready:
                return self._get(ref, target)
            now = time.monotonic()
            if should_stop():
                self._cancel(ref)
                raise Interrupted()
            if now - started > limit_s:
                ray.cancel(ref, force=True)
                raise HostLost(f"no answer from the lab host of {target.name} in {limit_s:.0f} s; the task was "
                               "cancelled", udid=target.udid)
            if now - checked >= self._holder_check_s:
                checked = now
                try:
                    self._check_holders(target, udid)
                except DeviceError:
                    ray.cancel(ref, force=True)
                    raise

    def _cancel(self, ref) -> None:
        """Ctrl-C: interrupt the task (KeyboardInterrupt on the host, so it lets go of its phone and says it is no
        longer running there), and kill its worker only if it has not ended after a grace period."""
        self._ray.cancel(ref, force=False)
        ended, _ = self._ray.wait([ref], timeout=self._cancel_grace_s)
        if not ended:
            self._ray.cancel(ref, force=True)

    def _get(self, ref, target: LabIPhone) -> dict:
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        try:
            return self._ray.get(ref)
        except TaskCancelledError:
            raise Interrupted() from None
        except RayTaskError as err:  # a bug on the host: not retried, the message says where it came from
            cause = err.cause if err.cause is not None else err
            raise DeviceError(f"the lab host failed unexpectedly: {type(cause).__name__}: {cause}",
                              udid=target.udid, action="see the host's Ray logs; please report") from None
        except RayError as err:  # the worker or the whole host died under the job
            raise HostLost(f"the lab host running {target.name}'s job went away ({type(err).__name__})",
                           udid=target.udid, action="the job is retried; `bench lab status` shows the hosts") from None

    def _cluster_view(self) -> tuple[dict[str, list[str]], dict[str, float]]:
        """Who holds which phone, and the lab's resources: one snapshot a second shared by every phone's thread
        (asking the head once per waiting phone per second is load for nothing)."""
        with self._lock:
            taken, holders, resources = self._holders
            if time.monotonic() - taken >= self._holder_check_s:
                holders, resources = _cluster_view_of(self._ray)
                self._holders = (time.monotonic(), holders, resources)
            return holders, resources

    def _check_holders(self, target: LabIPhone, udid: str | None = None) -> None:
        """The phone (or model) must be held by exactly one live host (a pool by at least one). `udid`: the phone
        of the pool the round was pinned to (it must still be held; else the round is retried, gated afresh)."""
        holders, resources = self._cluster_view()
        if isinstance(target, LabMacTarget):
            if not resources.get(target.resource, 0):
                raise HostLost(f"no live lab host offers Core ML on {target.host} any more (it left the lab)",
                               action=f"run `bench lab join HEAD` on {target.host}, then `bench run --resume RUN`")
            return
        if target.pool_model is not None and udid is not None:
            if not holders.get(udid):
                raise HostLost(f"no live lab host holds the {target.pool_model} the thermal gate chose ({udid}) any "
                               "more", udid=udid, action="the round is retried on another phone of the model")
            return
        if target.pool_model is not None:
            if not resources.get(target.resource, 0):
                raise HostLost(f"no live lab host holds a {target.pool_model} any more",
                               action="run `bench lab join` on a host with one; then `bench run --resume`")
            return
        hosts = holders.get(target.udid, [])
        if not hosts:
            raise HostLost(f"no live lab host holds {target.name} any more (its host left the lab)", udid=target.udid,
                           action="run `bench lab join HEAD` on the host it is plugged into, then "
                                  "`bench run --resume RUN`")
        if len(hosts) > 1:
            raise PhoneClaimedTwice(f"{target.name} is claimed by lab hosts {' and '.join(hosts)} (it moved?)",
                                    udid=target.udid, action="stop Ray (`ray stop`) on the host it was unplugged "
                                                             "from, then `bench run --resume RUN`")


def _cluster_view_of(ray) -> tuple[dict[str, list[str]], dict[str, float]]:
    return phone_holders(), ray.cluster_resources()


def _host_error(answer: dict, log_note: str | None = None) -> LabHostError:
    error = answer["error"]
    where = answer.get("host") or "a lab host"
    message = f"on {where}: {error['message']}" + (f"; {log_note}" if log_note else "")
    return LabHostError(error["kind"], message, bool(error["transient"]))


def _not_on_this_host():
    raise LabError("images are preprocessed on the driver; a lab host gets their pixels, not the images")


def _warm_up() -> str:
    from bench.lab.host import warm_up

    return warm_up()


def open_lab(address: str, names: list[str], *, token_file=None, preprocess=_default_preprocess,
             runner_timeout_s: float | None = None):
    """Connect to the lab, resolve the targets there and make the executor (hosts warmed up): what
    `bench run --lab` needs. `runner_timeout_s`: per job, None derives it from the job (IPhoneTarget)."""
    from bench.lab.cluster import connect

    connect(address, token_file)
    targets, executor = lab_targets(names, preprocess=preprocess), LabExecutor(timeout_s=runner_timeout_s)
    executor.warm_up(targets)
    return targets, executor
