"""The runner stand-in: what the Swift app does, with a stand-in for Core ML, honouring docs/contracts.md §5.

Launched through DVT, it reads Documents/bench/jobs/<job_id>/job.json, checks every model and input it names is
present, and for each step produces raw samples. Where the pushed packages are real ML programs, Core ML's part is
played by fake_iphone/coreml_model.py: it reads each package's protobuf, places every op on a device for the step's
compute unit, and the samples' latencies follow from that placement (sum of per-op times, hand-overs between devices,
seeded noise); with `compute_plan: true` on iOS 17.4+ the step carries that plan (op name, type, preferred and
supported devices, estimated cost), as MLComputePlan would. Packages that are not readable ML programs (the deploy
tests push a few random bytes) get size-based latencies and, when a plan is asked, `compute_plan_error`.
Compile once per run, as the Swift runner does: a package is "compiled" (counted in device.compiled_packages) unless
the job's models[].compiled path already holds it; a compiled package is kept there for the run's later jobs, and a
reused one has no compile time and no cold loads (docs/runner.md).
Everything is deterministic: seeded by device, variant, compute unit, image and repeat. What it *decodes* (the
sample's tokens) is the phone's caption scenario when the test sets one (captions.py), else seeded stand-in ids. It writes
results/<job_id>/result.partial.json after each model, result.json atomically, then DONE. Faults come from
device.faults.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import random
from pathlib import Path

from .coreml_model import CoreMLRules, ModelUnreadable, Placement, place, read_interface, read_program

UNIT_FACTOR = {"cpuOnly": 1.0, "cpuAndGPU": 0.55, "cpuAndNeuralEngine": 0.3, "all": 0.28}  # unreadable packages only
RUNNER_PROCESS = "BenchRunner"
COMPUTE_PLAN_MIN_IOS = (17, 4)
RUNNER_OVERHEAD_NS = 40_000  # the runner's own work per caption (argmax, building inputs) outside the predictions
STATE_MIN_IOS = (18, 0)  # MLState (kv_cache decoding)
MAKE_STATE_NS = 15_000  # makeState(): allocating and zeroing the state buffers, plus this per byte
MAKE_STATE_NS_PER_BYTE = 0.05


def launch(device, bundle_id: str, arguments: list[str], environment: dict, options: dict):
    from .dvt import launch_refused

    device.launches.append({"bundle_id": bundle_id, "arguments": arguments, "environment": environment})
    if device.faults.unplug_at_launch:
        device.unplug()
        return 0  # never arrives: the connection is gone
    if bundle_id not in device.apps:
        return launch_refused(bundle_id, "NotFound")
    if device.locked:
        return launch_refused(bundle_id, "Locked")
    if not device.developer_profile_trusted:
        return launch_refused(bundle_id, "Security")
    if options.get("KillExisting"):
        for pid, bundle in list(device.processes.items()):
            if bundle == bundle_id:
                kill(device, pid)
    pid = device.new_pid()
    device.processes[pid] = bundle_id
    job_id = environment.get("BENCH_JOB_ID")
    if job_id is None and "--job" in arguments:
        job_id = arguments[arguments.index("--job") + 1]
    task = asyncio.get_running_loop().create_task(_run(device, bundle_id, pid, job_id))
    device.runner_tasks[pid] = task
    return pid


def kill(device, pid: int) -> None:
    device.processes.pop(pid, None)
    task = device.runner_tasks.pop(pid, None)
    if task is not None:
        task.cancel()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _seeded(*parts) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little"))


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def _run(device, bundle_id: str, pid: int, job_id: str | None) -> None:
    log = lambda message: device.log(RUNNER_PROCESS, pid, message)  # noqa: E731
    bench = device.container(bundle_id) / "Documents" / "bench"
    faults = device.faults
    try:
        log(f"runner started, job {job_id}")
        if job_id is None:
            log("no job given; exiting")
            return
        job_path = bench / "jobs" / job_id / "job.json"
        results = bench / "results" / job_id
        try:
            job = json.loads(job_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log(f"cannot read job: {err}")
            _finish(results, _result(device, job_id, "failed", f"cannot read job.json: {err}", [], []))
            return
        if job.get("schema") == "bench.generic-job":
            from .generic_runner import measure_generic

            device.measure_jobs += 1
            await measure_generic(device, job, bench, results, log, _result, _finish, _seeded)
            return
        if job.get("mode") == "status":
            device.status_probes += 1
            log("status probe")
            _finish(results, _result(device, job_id, "complete", None, [], [], thermal=_thermal_now(device)))
            return
        device.measure_jobs += 1
        try:
            await _measure(device, job, bench, results, log)
        except _Crash:
            return  # the process dies: no result.json, no DONE
    except asyncio.CancelledError:
        log("killed")
        raise
    finally:
        device.processes.pop(pid, None)


def _thermal_now(device) -> str:
    if device.status_probes <= device.faults.thermal_serious_probes:
        return "serious"
    return "nominal"


async def _measure(device, job: dict, bench: Path, results: Path, log) -> None:
    faults = device.faults
    steps_out, compiles = [], []
    started = _now()
    clock = 0
    models = {m["variant_id"]: m for m in job["models"]}
    done_models: set[str] = set()
    for number, step in enumerate(job["steps"], 1):
        if faults.background_after_steps is not None and number > faults.background_after_steps:
            # The phone locked: iOS moves the app to the background; the runner stops measuring and says so.
            states = [{"state": "active", "t_ns": 0}, {"state": "inactive", "t_ns": clock * 50_000_000 + 1},
                      {"state": "background", "t_ns": clock * 50_000_000 + 2}]
            log("app state: inactive, background")
            error = (f"app left the foreground (background) during step {number}/{len(job['steps'])}: phone locked "
                     "or another app in front; measuring stopped")
            _finish(results, _result(device, job["job_id"], "failed", error, compiles, steps_out, started=started,
                                     app_states=states))
            return
        model = models[step["variant_id"]]
        unit = step["compute_unit"]
        encoder, decoder = bench / model["encoder"], bench / model["decoder"]
        missing = [p for p in (encoder, decoder) if not p.is_dir()]
        missing += [bench / i["path"] for i in model["inputs"] if not (bench / i["path"]).is_file()]
        if model["variant_id"] not in done_models:
            for package, path in (("encoder", encoder), ("decoder", decoder)):
                compiles.append(_compile(device, bench, model, package, path, missing))
        reused = {c["package"] for c in compiles if c["variant_id"] == model["variant_id"] and c.get("reused")}
        log(f"step {model['variant_id']} {unit}")
        await asyncio.sleep(faults.runner_seconds)
        if faults.unplug_while_running:
            faults.unplug_while_running = False
            device.unplug()
        stateful, state_error = (None, None) if missing else _stateful(device, model, encoder, decoder)
        if missing:
            steps_out.append(_step(model, unit, f"missing on device: {', '.join(p.name for p in missing)}", [], []))
        elif state_error is not None:
            steps_out.append(_step(model, unit, state_error, [], []))
        else:
            size = _tree_bytes(encoder) + _tree_bytes(decoder)
            placements, unreadable = _placements(encoder, decoder, unit, device.coreml)
            timing = (size, placements, stateful)
            warm = [_sample(device, model, unit, i, r, timing, clock + r) for r in range(job["warmup"])
                    for i in model["inputs"][:1]]
            samples = []
            for repeat in range(job["repeats"]):
                for image in model["inputs"]:
                    clock += 1
                    samples.append(_sample(device, model, unit, image, repeat, timing, clock))
            step_out = _step(model, unit, None, warm, samples, reused=reused)
            if job.get("compute_plan"):
                plan, why = _compute_plan(device, placements, unreadable)
                step_out["compute_plan"] = plan
                if why is not None:
                    step_out["compute_plan_error"] = why
            steps_out.append(step_out)
        done_models.add(model["variant_id"])
        last_of_model = all(s["variant_id"] != model["variant_id"] for s in job["steps"][len(steps_out):])
        if last_of_model:
            partial = _result(device, job["job_id"], "partial", None, compiles, steps_out, started=started)
            _write_atomic(results / "result.partial.json", json.dumps(partial).encode())
            if faults.runner_crash or device.measure_jobs <= faults.runner_crash_first_jobs:
                log("*** Terminating app due to uncaught exception (fake crash)")
                raise _Crash()
    if faults.runner_hang:
        log("hanging")
        await asyncio.Event().wait()
    for number in range(faults.log_flood):
        log(f"flood {number} \x1b[2J\x1b[31m" + "x" * 300)
    if faults.result_unwritable:  # JobRunner.finish: encoding failed, so a failed result says why, then DONE
        log("could not write result.json: the data couldn't be written")
        _finish(results, _result(device, job["job_id"], "failed", "could not write result.json: the data "
                                 "couldn't be written", [], [], started=started))
        return
    if faults.done_without_result:
        results.mkdir(parents=True, exist_ok=True)
        (results / "DONE").write_bytes(b"failed\n")
        return
    blip = [{"state": "active", "t_ns": 0}, {"state": "inactive", "t_ns": 1}, {"state": "active", "t_ns": 2}]
    final = _result(device, job["job_id"], "complete", None, compiles, steps_out, started=started,
                    app_states=blip if faults.inactive_blip else None)
    if faults.malformed_result:
        _write_atomic(results / "result.json", b'{"schema": "bench.result", "schema_version": 1, "job_id": ')
    elif faults.oversized_result:
        results.mkdir(parents=True, exist_ok=True)
        with open(results / "result.json", "wb") as handle:
            handle.truncate(65 * 1024 * 1024)  # sparse: 65 MiB without writing them
    else:
        _write_atomic(results / "result.json", json.dumps(final).encode())
    if faults.crash_before_done:
        log("*** killed by the watchdog before DONE (fake crash)")
        raise _Crash()
    (results / "DONE").write_bytes(b"")
    log("done")
    if faults.unplug_after_done:
        faults.unplug_after_done = False
        device.unplug()


class _Crash(Exception):
    pass


def _placements(encoder: Path, decoder: Path, unit: str,
                rules: CoreMLRules) -> tuple[dict[str, Placement] | None, str | None]:
    """Core ML's placement of both packages for `unit` under the phone's scenario `rules` (the stand-in's), or None
    and why it cannot be read."""
    try:
        return {"encoder": place(read_program(encoder), unit, rules),
                "decoder": place(read_program(decoder), unit, rules)}, None
    except ModelUnreadable as err:
        return None, str(err)


def _stateful(device, model: dict, encoder: Path, decoder: Path):
    """For a kv_cache model (job `decoding`), what the Swift runner's cachedCaption meets: iOS 18 or the step fails;
    the decoder's state description (read from its protobuf, what makeState allocates) must exist; the encoder must
    output, and the decoder take, the job's feature names. Returns (decoder interface or None, step error or None)."""
    if model.get("decoding") != "kv_cache":
        return None, None
    if _ios_version(device.ios) < STATE_MIN_IOS:
        return None, f"model {model['variant_id']} decodes with a kv_cache in Core ML state, which needs iOS 18 or later"
    try:
        outputs, step = read_interface(encoder).outputs, read_interface(decoder)
    except ModelUnreadable as err:
        return None, f"cannot load the model: {err}"
    if not step.states:
        return None, "MLModel.makeState: the decoder declares no state (not a kv_cache package)"
    io = model.get("io") or {}
    cross = [io.get("encoder_cross_keys", "cross_keys"), io.get("encoder_cross_values", "cross_values")]
    for name in cross:
        if name not in outputs:
            return None, f"the model has no output named {name} (set the job's io names to match the exported model)"
    for name in [io.get("decoder_input_ids", "input_ids"), io.get("decoder_position", "position"), *cross]:
        if name not in step.inputs:
            return None, f"the decoder has no input named {name}"
    return step, None


def _compute_plan(device, placements, unreadable) -> tuple[dict | None, str | None]:
    """What the Swift runner's readComputePlan writes: the plan, or null and why (old iOS, unreadable model)."""
    if _ios_version(device.ios) < COMPUTE_PLAN_MIN_IOS:
        return None, "MLComputePlan needs iOS 17.4 or later"
    if placements is None:
        return None, f"MLComputePlan failed: {unreadable}"
    return {"cost_kind": "estimate", "encoder": placements["encoder"].plan(),
            "decoder": placements["decoder"].plan()}, None


def _ios_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(".")[:2] if part.isdigit())


def _sample(device, model: dict, unit: str, image: dict, repeat: int, timing, clock: int) -> dict:
    size, placements, stateful = timing
    rng = _seeded(device.udid, model["variant_id"], unit, image["image_id"], repeat)
    # The caption is a property of the model and the image, not of the repeat or compute unit: its length (decoder
    # calls) depends on the image only, so latency differences between variants come from their placement.
    caption = _seeded(image["image_id"], "caption")
    steps = caption.randint(4, max(4, min(12, model["decode"]["max_length"] - 1)))
    words = _seeded(model["variant_id"], image["image_id"], "tokens")
    decoded = device.captions.tokens_for(image["image_id"], unit) if device.captions is not None else None
    if decoded:  # the test's scenario says what Core ML decodes here: one decoder call per token
        steps = len(decoded)
    if placements is None:
        base = (2_000_000 + size * 40) * UNIT_FACTOR[unit]
        encoder_ns = int(base * rng.uniform(0.95, 1.08))
        decoder_ns = [int(base * 0.2 * rng.uniform(0.9, 1.1)) for _ in range(steps)]
    else:
        encoder_ns = int(placements["encoder"].time_ns * _noise(rng))
        decoder_ns = [int(placements["decoder"].time_ns * _noise(rng)) for _ in range(steps)]
    # Generated ids without bos, eos included: one per decoder step (docs/runner.md).
    tokens = decoded or [words.randint(1000, 30000) for _ in range(steps - 1)] + [model["decode"]["eos_id"]]
    overhead = 0 if placements is None else RUNNER_OVERHEAD_NS * steps
    # kv_cache: one makeState() per caption (Swift: cachedCaption), timed apart and part of the total; else null.
    state_ns = None if stateful is None else \
        int((MAKE_STATE_NS + stateful.state_bytes * MAKE_STATE_NS_PER_BYTE) * _noise(rng))
    return {"image_id": image["image_id"], "repeat": repeat, "encoder_ns": encoder_ns, "decoder_ns": decoder_ns,
            "total_ns": encoder_ns + (state_ns or 0) + sum(decoder_ns) + overhead,
            "thermal_state": "fair" if clock % 7 == 6 else "nominal", "t_ns": clock * 50_000_000, "tokens": tokens,
            "state_ns": state_ns}


def _noise(rng: random.Random) -> float:
    """Run-to-run jitter of one prediction: about ±2 %, with a rare slow outlier (scheduling, memory pressure)."""
    jitter = min(max(rng.gauss(1.0, 0.02), 0.94), 1.06)
    return jitter * (1.15 if rng.random() < 0.02 else 1.0)


def _compile(device, bench: Path, model: dict, package: str, path: Path, missing: list) -> dict:
    """One compile record; reuses (and does not count) a package an earlier job of the run kept compiled."""
    record = {"variant_id": model["variant_id"], "package": package, "compile_ns": None, "reused": False}
    kept = (model.get("compiled") or {}).get(package)
    if kept and (bench / kept).is_dir():
        return {**record, "reused": True}
    if missing:
        return record
    device.compiled_packages.append(model[package])
    if kept:  # Core ML's compiled model stands in as a folder with one file, moved into place in one step
        staging = (bench / kept).with_name(f".{package}.tmp")
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "compiled-from").write_text(model[package])
        os.replace(staging, bench / kept)
    return {**record, "compile_ns": 40_000_000 + _tree_bytes(path) * 3}


def _step(model: dict, unit: str, error, warmup: list, samples: list, *, reused: set[str] = frozenset()) -> dict:
    rng = _seeded(model["variant_id"], unit, "load")
    load = lambda scale: None if error else int(scale * rng.uniform(0.9, 1.1))  # noqa: E731
    cold = {"encoder": load(300e6), "decoder": load(200e6)}  # drawn either way: the other loads stay the same
    return {"variant_id": model["variant_id"], "compute_unit": unit, "error": error,
            "cold_load_ns": {package: None if package in reused else ns for package, ns in cold.items()},
            "warm_load_ns": {"encoder": load(30e6), "decoder": load(20e6)},
            "first_prediction_ns": load(50e6), "warmup": warmup, "samples": samples, "compute_plan": None}


def _result(device, job_id: str, status: str, error, compiles: list, steps: list, *, started: str | None = None,
            thermal: str = "nominal", app_states: list | None = None) -> dict:
    app = device.apps.get(device.runner_bundle_id)
    return {"schema": "bench.result", "schema_version": 1, "job_id": job_id, "status": status, "error": error,
            "runner_version": f"{app.version} ({app.build})" if app else "unknown",
            "started_at": started or _now(), "finished_at": _now() if status != "partial" else None,
            "device": {"model_identifier": device.product_type, "os_version": device.ios, "os_build": device.build,
                       "low_power_mode": device.low_power_mode, "battery_level": device.battery_percent / 100,
                       "battery_state": "charging" if device.charging else "unplugged", "thermal_state": thermal},
            "compiles": compiles, "steps": steps,
            "app_states": app_states or [{"state": "active", "t_ns": 0}]}


def _finish(results: Path, result: dict) -> None:
    _write_atomic(results / "result.json", json.dumps(result).encode())
    (results / "DONE").write_bytes(b"")
