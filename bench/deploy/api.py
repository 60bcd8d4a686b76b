"""The narrow, synchronous API the run stage uses to drive iPhones (everything else in bench/deploy is detail).

    from bench.deploy import api

    devices = api.discover(inventory)            # list[DeviceInfo]: connected ∪ inventory (.connected, .known)
    report  = api.health(udid)                   # HealthReport: paired, developer_mode, disk image, tunnel, battery…
    checks  = api.prepare(udid)                  # PrepareReport: mount the disk image, Developer Mode, launch check…
    api.install_runner(udid, "Runner.ipa")       # install or upgrade (.ipa or .app directory)
    job_id  = api.deploy_job(udid, job_spec, variant_dirs, inputs)   # or api.deploy(...) -> DeployReport (bytes sent)
    result  = api.run_job(udid, job_id, timeout_s=1800, on_log=print)   # validated bench.result dict
    status  = api.device_status(udid)            # DeviceStatus: thermal_state (runner "status" job) + battery
    api.survey(inventory)                        # what `bench devices` shows (never raises for a missing usbmuxd)
    api.held(udid); api.prune(udid, keep_models) # what the container holds (models by hash, inputs, jobs, leftovers)
    api.resolve_device("lab1", inventory)        # inventory name / UDID / the only attached device -> UDID

Arguments:
- `inventory`: `bench.deploy.inventory.Inventory` (from `load_inventory(path)`; devices.yaml) or None.
- `job_spec`: `JobSpec(warmup, repeats, compute_plan, steps=[(variant_id, compute_unit), ...],
  models=[ModelSpec(variant_id, image_size, decode={bos_id, eos_id, pad_id, max_length}, inputs=[image_id, ...])])`.
  Paths are filled in by deploy_job from what it pushed (contracts §5).
- `variant_dirs`: {variant_id: Path to the variant directory holding encoder.mlpackage and decoder.mlpackage}.
  Each package goes to models/<its tree sha256>/<role>.mlpackage; the hash is measured from the bytes on disk
  (the builder's tree hash, memoised) and must equal the manifest's packages.<role>.sha256 when recorded.
- `inputs`: {image_id: InputTensor(data: bytes (little-endian float32), shape: [1,3,S,S])}; stored as
  inputs/<sha256 of the bytes>.f32.
- The runner is launched with arguments ["--job", job_id, "--exit-when-done"] and environment
  {"BENCH_JOB_ID": job_id}; it reads Documents/bench/jobs/<job_id>/job.json and writes
  Documents/bench/results/<job_id>/ (contracts §5).

Guarantees:
- Nothing already on the device (same content hash) is pushed again; pushes land under a temporary name, are size
  checked, then renamed; jobs/<job_id>/job.json is written last.
- run_job launches the runner by DVT process control, streams its syslog lines to `on_log`, waits for
  results/<job_id>/DONE (never trusts result.partial.json or a result.json without DONE), kills the runner on timeout,
  pulls result.json (refusing > 64 MiB) and validates it against the deployed job.json
  (bench.deploy.contract.validate_result). A result with status "failed" is returned, not raised: it is a record.
- Every failure is a `bench.errors.DeviceError` subclass from `bench.deploy.errors` (NotPaired, DeviceNotFound,
  DeveloperModeOff, TunnelUnavailable, DiskImageMissing, DiskImageUnavailable, RunnerNotInstalled, PushFailed,
  LaunchFailed and its reasons PhoneLocked / ProfileUntrusted / LaunchBusy / LaunchDenied, AppLeftForeground,
  RunnerTimeout, RunnerCrashed, ResultInvalid, UsbmuxUnavailable, InstallFailed) whose one-line message says what a
  person must do; `err.kind` is the class name to record in run.json.
  Each function is synchronous (it runs its own asyncio loop); call it from a worker thread per device.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.deploy import container
from bench.deploy.errors import DeployError, DeviceError, DeviceNotFound, NotPaired, ResultInvalid
from bench.deploy.install import RUNNER_BUNDLE_ID
from bench.deploy.session import DeviceSession, HealthReport, parse_json, problem_line

__all__ = [
    "DeviceInfo", "DeviceStatus", "DeployReport", "HealthReport", "InputTensor", "JobSpec", "ModelSpec",
    "discover", "health", "install_runner", "deploy", "deploy_job", "run_job", "device_status", "held", "prune",
]


# ---- what callers pass in -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputTensor:
    data: bytes  # little-endian float32, C order
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    variant_id: str
    image_size: int
    decode: dict  # {bos_id, eos_id, pad_id, max_length}
    inputs: tuple[str, ...]  # image ids, keys of the `inputs` mapping given to deploy()
    decoder_length: int | None = None
    io: dict | None = None  # Core ML feature names when they differ from the defaults (job schema "io")
    decoding: str = "recompute"  # or "kv_cache": the decoder's self-attention cache in Core ML state (iOS 18)


@dataclass(frozen=True)
class JobSpec:
    models: tuple[ModelSpec, ...] = ()
    steps: tuple[tuple[str, str], ...] = ()  # (variant_id, compute_unit) in measuring order
    warmup: int = 3
    repeats: int = 5
    compute_plan: bool = False
    mode: str = "measure"  # or "status"
    job_id: str | None = None  # default: a fresh time-stamped id
    # Compile once per device per run: the runner keeps each compiled package under compiled/<scope>/ and later
    # jobs with the same scope (the run id) reuse it. None: compile in every job (and delete afterwards).
    compile_scope: str | None = None


# ---- what callers get back ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    udid: str
    connected: bool
    known: bool  # listed in the inventory
    name: str | None = None  # inventory name, else the device's own name
    enabled: bool = True
    tags: tuple[str, ...] = ()
    connection_type: str | None = None
    paired: bool | None = None
    model_identifier: str | None = None  # ProductType as the device reports it (None unless paired)
    os_version: str | None = None
    os_build: str | None = None
    expected_model: str | None = None
    expected_os: str | None = None
    mismatch: str | None = None  # inventory says one thing, the device another

    @property
    def model(self) -> str | None:
        """The device's ProductType, else the inventory's expected one."""
        return self.model_identifier or self.expected_model


@dataclass(frozen=True)
class DeployReport:
    job_id: str
    model_bytes_sent: int
    input_bytes_sent: int
    models_skipped: int  # packages already on the device (content hash match)
    inputs_skipped: int
    job: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceStatus:
    udid: str
    thermal_state: str  # nominal | fair | serious | critical (the runner's ProcessInfo.thermalState)
    low_power_mode: bool
    battery_level: float | None  # 0..1 from the runner
    battery_state: str
    battery_temperature_c: float | None  # diagnostics_relay
    charging: bool | None
    model_identifier: str
    os_version: str
    os_build: str


def _run(coroutine, udid: str | None = None):
    """Each public call owns one event loop: call them from one worker thread per device.

    The modules turn the library errors they expect into messages that say what to do; anything from the library
    that still gets here becomes one DeviceError line too, never a traceback.
    """
    from pymobiledevice3.exceptions import (
        BadDevError,
        ConnectionFailedError,
        ConnectionFailedToUsbmuxdError,
        ConnectionTerminatedError,
        DeviceNotFoundError,
        NoDeviceConnectedError,
        PyMobileDevice3Exception,
    )

    _quiet_library_logs()
    try:
        return asyncio.run(coroutine)
    except ConnectionFailedToUsbmuxdError as err:
        from bench.deploy.errors import UsbmuxUnavailable

        raise UsbmuxUnavailable(f"usbmuxd stopped answering ({err})", udid=udid,
                                action="check that usbmuxd runs (`systemctl status usbmuxd`), then try again") from None
    except (ConnectionTerminatedError, ConnectionError, asyncio.IncompleteReadError, DeviceNotFoundError,
            NoDeviceConnectedError, BadDevError, ConnectionFailedError) as err:
        raise DeviceNotFound(f"lost contact with the device ({type(err).__name__}: {err})", udid=udid,
                             action="reconnect the cable, unlock the phone and try again") from None
    except PyMobileDevice3Exception as err:
        raise DeployError(f"the device refused a request ({type(err).__name__}: {err})", udid=udid,
                          action="check the phone with `bench devices`, then try again") from None


def _quiet_library_logs() -> None:
    """pymobiledevice3 logs the errors it raises (some with a traceback, e.g. a DTX channel lost mid-open); with no
    logging configured Python would print those to stderr after our one line. A NullHandler keeps them off the
    terminal while a configured root logger (a verbose mode) still receives them."""
    import logging

    library = logging.getLogger("pymobiledevice3")
    if not any(isinstance(handler, logging.NullHandler) for handler in library.handlers):
        library.addHandler(logging.NullHandler())


# ---- discovery and health -----------------------------------------------------------------------------------------
def discover(inventory=None) -> list[DeviceInfo]:
    """Connected devices and inventory devices, merged (inventory order first, then unknown connected ones)."""
    return _run(_discover(inventory))


async def _discover(inventory) -> list[DeviceInfo]:
    from bench.deploy import lockdown
    from bench.deploy.usbmux import list_attached

    attached = {device.udid: device for device in await list_attached()}
    entries = {entry.udid: entry for entry in (inventory.devices if inventory is not None else [])}
    found: list[DeviceInfo] = []
    for udid in list(entries) + [u for u in attached if u not in entries]:
        entry, device = entries.get(udid), attached.get(udid)
        info = dict(udid=udid, connected=device is not None, known=entry is not None,
                    name=entry.name if entry else None, enabled=entry.enabled if entry else True,
                    tags=tuple(entry.tags) if entry else (), connection_type=device.connection_type if device else None,
                    expected_model=entry.model if entry else None, expected_os=entry.ios if entry else None)
        if device is not None:
            try:
                client = await lockdown.connect(udid)
            except NotPaired:
                info["paired"] = False
            except DeviceError:
                info["connected"] = False
            else:
                async with client:
                    ident = lockdown.identity(client)
                info.update(paired=True, model_identifier=ident["model_identifier"], os_version=ident["os_version"],
                            os_build=ident["os_build"])
                info["name"] = info["name"] or ident["name"]
                info["mismatch"] = (entry.mismatch(ident["model_identifier"], ident["os_version"], ident["os_build"])
                                    if entry else None)
        found.append(DeviceInfo(**info))
    return found


def health(udid: str, *, bundle_id: str = RUNNER_BUNDLE_ID) -> HealthReport:
    """Paired, Developer Mode, DDI (iOS < 17) or tunnel (iOS >= 17), battery, runner installed + version.

    A device that is not attached or not paired yields a report with `problems`, not an exception.
    """
    try:
        return _run(_health(udid, bundle_id), udid)
    except DeviceError as err:  # lost or refused half way through the checks: still a report, not an exception
        return HealthReport(udid, attached=True, paired=True, problems=[problem_line(err)])


async def _health(udid: str, bundle_id: str) -> HealthReport:
    try:
        async with DeviceSession(udid, bundle_id=bundle_id) as device:
            return await device.health()
    except NotPaired as err:
        return HealthReport(udid, attached=True, paired=False, problems=[err.action or str(err)])
    except DeviceError as err:
        return HealthReport(udid, attached=False, problems=[str(err)])


def prepare(udid: str, *, enable_developer_mode: bool = False, launch_check: bool = True, timeout_s: float = 60.0,
            poll_s: float = 1.0, bundle_id: str = RUNNER_BUNDLE_ID):
    """Make one phone ready as far as a host can (bench/deploy/prepare.py) and say what remains for a person."""
    from bench.deploy.prepare import prepare as prepare_phone

    return prepare_phone(udid, bundle_id=bundle_id, enable_developer_mode=enable_developer_mode,
                         launch_check=launch_check, timeout_s=timeout_s, poll_s=poll_s)


def phones_to_prepare(selector: str | None, inventory=None) -> list[DeviceInfo]:
    """The named phone, else every attached phone that devices.yaml does not switch off."""
    if selector:
        udid = resolve_device(selector, inventory)
        found = [info for info in discover(inventory) if info.udid == udid]
        return found or [DeviceInfo(udid=udid, connected=False, known=False)]
    return [info for info in discover(inventory) if info.connected and info.enabled]


def install_runner(udid: str, package: Path | str, *, bundle_id: str = RUNNER_BUNDLE_ID):
    """Install or upgrade the runner from an .ipa or .app; returns the installed AppInfo."""
    async def go():
        async with DeviceSession(udid, bundle_id=bundle_id) as device:
            return await device.install(Path(package))
    return _run(go(), udid)


# ---- deployment ---------------------------------------------------------------------------------------------------
def new_job_id(prefix: str = "job") -> str:
    return f"{prefix}-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def package_hashes(variant_dir: Path) -> dict[str, str]:
    """{"encoder": sha, "decoder": sha}: the tree hashes the builder recorded, after bench.build.integrity checked
    that the bytes on disk are still exactly those (a damaged variant is refused with DamagedError naming the file:
    results must describe the bytes the manifest and the quality evaluation describe).

    A folder without a manifest (loose packages, not built by bench) is named by the tree hash measured now.
    """
    variant_dir = Path(variant_dir)
    for role in ("encoder", "decoder"):
        if not (variant_dir / f"{role}.mlpackage").is_dir():
            raise DeviceError(f"{variant_dir} has no {role}.mlpackage",
                              action="build the variant with `bench models build`")
    if os.path.lexists(variant_dir / "manifest.json"):
        from bench.build.imported import FOLDER, check_imported
        from bench.build.integrity import check_variant, recorded_package_hashes

        if variant_dir.parent.name == FOLDER:  # an imported encoder/decoder pair (bench.build.imported)
            check_imported(variant_dir)
            return _recorded_hashes(variant_dir / "manifest.json")
        check_variant(variant_dir)
        return recorded_package_hashes(variant_dir)
    from bench.deploy.hashing import tree_sha256

    return {role: tree_sha256(variant_dir / f"{role}.mlpackage") for role in ("encoder", "decoder")}


def build_job(spec: JobSpec, job_id: str, packages: dict[str, dict[str, str]], input_hashes: dict[str, str],
              inputs: dict[str, InputTensor] | None = None) -> dict:
    """The bench.job v1 document for `spec`, made and checked by bench.deploy.contract (the one place a job is
    built). `packages`: {variant_id: {"encoder": sha, "decoder": sha}}; `input_hashes`: {image_id: sha of the .f32}.
    With `inputs`, each tensor must be the float32 [1, 3, S, S] its model's image size asks for."""
    from bench.deploy import contract
    from bench.errors import ContractError

    models = []
    for model in spec.models:
        for image_id in model.inputs:
            tensor = (inputs or {}).get(image_id)
            size = model.image_size
            if tensor is not None and (tuple(tensor.shape) != (1, 3, size, size) or len(tensor.data) != 12 * size * size):
                raise ContractError(f"input {image_id!r} of {model.variant_id}: shape {tuple(tensor.shape)}, "
                                    f"{len(tensor.data)} bytes; the model needs float32 [1, 3, {size}, {size}]")
        models.append(contract.model_entry(
            variant_id=model.variant_id, encoder_sha256=packages[model.variant_id]["encoder"],
            decoder_sha256=packages[model.variant_id]["decoder"], image_size=model.image_size, decode=model.decode,
            inputs=[(image_id, input_hashes[image_id]) for image_id in model.inputs], io=model.io,
            decoder_length=model.decoder_length, compile_scope=spec.compile_scope,
            decoding=model.decoding))
    return contract.build_job(job_id=job_id, models=models, steps=spec.steps, mode=spec.mode, warmup=spec.warmup,
                              repeats=spec.repeats, compute_plan=spec.compute_plan)


def deploy(udid: str, spec: JobSpec, variant_dirs: dict[str, Path] | None = None,
           inputs: dict[str, InputTensor] | None = None, *, bundle_id: str = RUNNER_BUNDLE_ID) -> DeployReport:
    """Push what the job needs (content-addressed, atomic; nothing already there is resent), then job.json last."""
    return _run(_deploy(udid, spec, variant_dirs or {}, inputs or {}, bundle_id), udid)


def deploy_job(udid: str, job_spec: JobSpec, variant_dirs: dict[str, Path] | None = None,
               inputs: dict[str, InputTensor] | None = None, *, bundle_id: str = RUNNER_BUNDLE_ID) -> str:
    """Like deploy(), returning only the job id."""
    return deploy(udid, job_spec, variant_dirs, inputs, bundle_id=bundle_id).job_id


async def _deploy(udid, spec: JobSpec, variant_dirs, inputs, bundle_id) -> DeployReport:
    import json

    from bench.deploy.hashing import bytes_sha256

    # Everything that can be checked here is, before a connection is opened or a byte is sent.
    job_id = spec.job_id or new_job_id()
    missing = [m.variant_id for m in spec.models if m.variant_id not in variant_dirs]
    if missing:
        raise DeviceError(f"no directory given for variant {missing[0]}", udid=udid)
    absent = sorted({i for m in spec.models for i in m.inputs if i not in inputs})
    if absent:
        raise DeviceError(f"no input tensor given for image {absent[0]}"
                          f"{f' (and {len(absent) - 1} more)' if len(absent) > 1 else ''}", udid=udid)
    packages = {m.variant_id: package_hashes(Path(variant_dirs[m.variant_id])) for m in spec.models}
    input_hashes = {i: bytes_sha256(inputs[i].data) for m in spec.models for i in m.inputs}
    job = build_job(spec, job_id, packages, input_hashes, inputs)
    payload = (json.dumps(job, indent=1) + "\n").encode()

    model_bytes = input_bytes = models_skipped = inputs_skipped = 0
    async with DeviceSession(udid, bundle_id=bundle_id) as device, device.container() as afc:
        for model in spec.models:
            variant_dir = Path(variant_dirs[model.variant_id])
            for role, sha in packages[model.variant_id].items():
                stats = await container.push_tree(afc, variant_dir / f"{role}.mlpackage",
                                                  f"{container.MODELS}/{sha}", udid, inner=f"{role}.mlpackage")
                model_bytes += stats.bytes_sent
                models_skipped += stats.skipped
        for image_id, sha in input_hashes.items():
            stats = await container.push_bytes(afc, inputs[image_id].data, f"{container.INPUTS}/{sha}.f32", udid)
            input_bytes += stats.bytes_sent
            inputs_skipped += stats.skipped
        if spec.compile_scope is not None:  # one run's compiled models at a time: earlier runs' are dropped
            await container.drop_compiled_except(afc, spec.compile_scope)
        # Written last, after every push above was size-checked and renamed into place.
        await container.push_bytes(afc, payload, f"{container.JOBS}/{job_id}/job.json", udid, overwrite=True)
    return DeployReport(job_id, model_bytes, input_bytes, models_skipped, inputs_skipped, job)


# ---- running ------------------------------------------------------------------------------------------------------
def run_job(udid: str, job_id: str, timeout_s: float = 1800.0, on_log: Callable[[str], None] | None = None, *,
            poll_s: float = 1.0, bundle_id: str = RUNNER_BUNDLE_ID) -> dict:
    """Launch the runner on a deployed job and return its validated bench.result (status may be "failed").

    How it ended is remembered for `bench devices` (bench/deploy/outcomes.py): a failure's line, or nothing."""
    from bench.deploy import outcomes

    try:
        result = _run(_run_job(udid, job_id, timeout_s, on_log, poll_s, bundle_id), udid)
    except DeviceError as err:
        outcomes.record(udid, err)
        raise
    outcomes.record(udid, None)
    return result


async def _run_job(udid, job_id, timeout_s, on_log, poll_s, bundle_id) -> dict:
    from bench.deploy.validate import validate_result

    async with DeviceSession(udid, bundle_id=bundle_id) as device:
        raw, raw_job = await device.run(job_id, timeout_s, on_log, poll_s=poll_s)
    job = parse_json(raw_job, udid, "job.json")
    result = validate_result(raw, udid=udid, job=job, job_id=job_id)
    if result.get("job_id") != job_id:
        raise ResultInvalid(f"result.json answers job {result.get('job_id')!r}, not {job_id!r}", udid=udid)
    _raise_if_left_foreground(result, udid, measuring=job.get("mode", "measure") == "measure")
    return result


def _left_after_active(states: list[str]) -> bool:
    """Whether the app was out of the foreground at some point after it first became active (the states before
    that are the launch itself)."""
    return "active" in states and any(state != "active" for state in states[states.index("active"):])


def _raise_if_left_foreground(result: dict, udid: str, *, measuring: bool = True) -> None:
    """A runner that left the foreground stopped measuring: its job is a device failure, not a result.

    The runner checks its state around every prediction, so a trip out of the foreground that is over before the
    next check (Control Center, a banner tapped, an alert dismissed) leaves a complete-looking result: the state
    history it records (app_states) still shows it, and such a measuring job is refused the same way."""
    from bench.deploy.contract import APP_LEFT_FOREGROUND
    from bench.deploy.errors import AppLeftForeground

    error = result.get("error") or ""
    states = [change["state"] for change in result.get("app_states") or []]
    stopped = result.get("status") == "failed" and error.startswith(APP_LEFT_FOREGROUND)
    if not stopped and not (measuring and _left_after_active(states)):
        return
    seen = " → ".join(states) or "?"
    where = error.split(" during ", 1)[1].split(":", 1)[0] if " during " in error else "the job"
    how = "stopped measuring" if stopped else "came back between its checks, so samples may be disturbed"
    raise AppLeftForeground(f"phone locked or app left the foreground during {where} (the runner saw {seen} and "
                            f"{how}); nothing from this job is used", udid=udid,
                            action="unlock it; for unattended runs remove the passcode, set Auto-Lock to Never and "
                                   "silence notifications (a Focus)")


def device_status(udid: str, timeout_s: float = 120.0, *, poll_s: float = 1.0,
                  bundle_id: str = RUNNER_BUNDLE_ID) -> DeviceStatus:
    """Thermal state and power as the runner sees them (a "status" job) plus battery temperature from diagnostics."""
    spec = JobSpec(mode="status", warmup=0, repeats=0, job_id=new_job_id("status"))
    job_id = deploy_job(udid, spec, bundle_id=bundle_id)
    result = run_job(udid, job_id, timeout_s, poll_s=poll_s, bundle_id=bundle_id)

    async def battery():
        async with DeviceSession(udid, bundle_id=bundle_id) as device:
            level = await device.battery()
            async with device.container() as afc:  # status jobs leave nothing behind
                await afc.rm(f"{container.JOBS}/{job_id}", force=True)
                await afc.rm(f"{container.RESULTS}/{job_id}", force=True)
            return level
    level = _run(battery(), udid)
    conditions = result["device"]
    return DeviceStatus(udid, conditions["thermal_state"], conditions["low_power_mode"], conditions["battery_level"],
                        conditions["battery_state"], level.temperature_c, level.charging,
                        conditions["model_identifier"], conditions["os_version"], conditions["os_build"])


# ---- what the device holds ----------------------------------------------------------------------------------------
def held(udid: str, *, bundle_id: str = RUNNER_BUNDLE_ID) -> container.Held:
    """Models (by hash), inputs, jobs, results and interrupted pushes in the runner's container."""
    async def go():
        async with DeviceSession(udid, bundle_id=bundle_id) as device, device.container() as afc:
            return await container.list_held(afc)
    return _run(go(), udid)


def workspace_package_hashes(workspace) -> set[str]:
    """Package hashes of every variant in `workspace` (a bench.paths.Workspace; what a prune keeps by default): the
    built variants' (one per encoder/decoder package) and the imported ones' (the content hash they are pushed under),
    so a prune does not make the next run push them again."""
    from bench.build.imported import imported_root

    hashes: set[str] = set()
    for manifest in sorted(workspace.variants_dir.glob("*/manifest.json")):
        try:
            hashes |= set(_recorded_hashes(manifest).values())
        except (OSError, ValueError):
            continue  # an unreadable manifest keeps nothing; `bench models` reports it
    for manifest in sorted(imported_root(workspace).glob("*/manifest.json")):
        try:
            hashes |= _imported_hashes(manifest)
        except (OSError, ValueError):
            continue
    return hashes


def _imported_hashes(manifest_path: Path) -> set[str]:
    """The hashes an imported variant's packages are pushed under (models/<content sha256>/ on the device)."""
    import json

    document = json.loads(manifest_path.read_text())
    sha = document.get("content_sha256") if isinstance(document, dict) else None
    pair = set(_recorded_hashes(manifest_path).values())  # an encoder/decoder pair: pushed like a built variant's
    return pair | ({sha} if isinstance(sha, str) and sha else set())


def _recorded_hashes(manifest_path: Path) -> dict[str, str]:
    """{role: sha256} as the builder recorded them in a variant's manifest.json (ValueError when it is not JSON)."""
    import json

    document = json.loads(manifest_path.read_text())
    packages = (document.get("packages") if isinstance(document, dict) else None) or {}
    if not isinstance(packages, dict):
        raise ValueError("packages is not a mapping")
    return {role: p["sha256"] for role, p in packages.items() if isinstance(p, dict) and p.get("sha256")}


def prune(udid: str, keep_models: set[str] = frozenset(), keep_inputs: set[str] = frozenset(), *,
          jobs: bool = True, bundle_id: str = RUNNER_BUNDLE_ID) -> list[str]:
    """Delete what is not kept (and interrupted pushes, and by default old jobs/results); returns removed paths."""
    async def go():
        async with DeviceSession(udid, bundle_id=bundle_id) as device, device.container() as afc:
            return await container.prune(afc, set(keep_models), set(keep_inputs), jobs=jobs)
    return _run(go(), udid)


# ---- the `bench devices` overview ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SurveyRow:
    info: DeviceInfo
    health: HealthReport | None  # None when not attached

    @property
    def state(self) -> str:
        if not self.info.connected:
            if self.info.known and not self.info.enabled:
                return "disabled"  # listed but switched off in devices.yaml: its absence is not a problem
            return "missing" if self.info.known else "gone"
        if not self.info.known:
            return "unknown"
        if self.health is not None and self.health.ready and not self.info.mismatch:
            return "ready"
        return "attention"


@dataclass(frozen=True)
class Survey:
    rows: tuple[SurveyRow, ...]
    usbmux_problem: str | None = None  # e.g. "no usbmuxd at /var/run/usbmuxd — …"


def survey(inventory=None, *, bundle_id: str = RUNNER_BUNDLE_ID) -> Survey:
    """Inventory against what is attached, with health for every attached device. Never raises for a missing
    usbmuxd: the inventory is then listed as missing and `usbmux_problem` says what to do."""
    from bench.deploy.errors import UsbmuxUnavailable

    try:
        infos = discover(inventory)
    except UsbmuxUnavailable as err:
        rows = tuple(SurveyRow(DeviceInfo(udid=d.udid, connected=False, known=True, name=d.name, enabled=d.enabled,
                                          tags=tuple(d.tags), expected_model=d.model, expected_os=d.ios), None)
                     for d in (inventory.devices if inventory is not None else []))
        return Survey(rows, str(err))
    rows = []
    for info in infos:
        report = health(info.udid, bundle_id=bundle_id) if info.connected else None
        rows.append(SurveyRow(info, report))
    return Survey(tuple(rows))


def resolve_device(selector: str | None, inventory=None) -> str:
    """A UDID from an inventory name, a UDID, or (when None) the only attached device."""
    from bench.deploy.usbmux import list_attached
    from bench.errors import InputError, did_you_mean

    if selector:
        if inventory is not None and (entry := inventory.by_name(selector)):
            return entry.udid
        attached = [d.udid for d in _run(list_attached())]
        known = [d.udid for d in inventory.devices] if inventory is not None else []
        if selector in attached or selector in known:
            return selector
        names = [d.name for d in inventory.devices] if inventory is not None else []
        raise did_you_mean("device", selector, names + attached)
    attached = [d.udid for d in _run(list_attached())]
    if len(attached) == 1:
        return attached[0]
    if not attached:
        raise DeviceError("no device attached", action="plug an iPhone in by USB and unlock it")
    raise InputError(f"{len(attached)} devices attached; name one with --device ({', '.join(attached)})")
