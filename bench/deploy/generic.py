"""Generic jobs on an iPhone: any imported Core ML model (bench.build.imported), pushed, run and read back.

    from bench.deploy import generic

    job_id = generic.deploy_job(udid, spec, packages)        # GenericJobSpec; {variant_id: (content sha, package)}
    result, outputs = generic.run_job(udid, job_id, timeout_s=600, on_log=print)

The same guarantees as the captioner API (bench/deploy/api.py): content-addressed pushes (a package is sent once:
models/<content sha256>/model.mlpackage, each input feature's bytes once: inputs/<sha256>.bin), job.json last, the
runner launched by DVT, DONE awaited, result.json validated against the deployed job (bench.deploy.contract,
`bench.generic-result`). Then each output file the result lists is pulled — never more bytes than it declares — and
checked against its recorded size and sha256: `outputs` maps the result's output paths to their bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bench.deploy import container
from bench.deploy.api import _raise_if_left_foreground, _run, new_job_id
from bench.deploy.errors import ResultInvalid
from bench.deploy.install import RUNNER_BUNDLE_ID
from bench.deploy.session import DeviceSession, parse_json


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str  # multiarray | image
    dtype: str  # float32 | float16 | float64 | int32 | uint8 (images: uint8 RGB [H, W, 3])
    shape: tuple[int, ...]
    data: bytes  # little-endian, C order


@dataclass(frozen=True)
class GenericModelSpec:
    variant_id: str
    inputs: tuple[tuple[str, tuple[Feature, ...]], ...]  # (input_id, its features)
    function: str | None = None
    stateful: bool = False
    save_outputs: bool = True


@dataclass(frozen=True)
class GenericJobSpec:
    models: tuple[GenericModelSpec, ...]
    steps: tuple[tuple[str, str], ...]  # (variant_id, compute_unit) in measuring order
    warmup: int = 1
    repeats: int = 1
    compute_plan: bool = True
    output_cap_bytes: int = 1 << 20
    job_id: str | None = None


def build_job(spec: GenericJobSpec, job_id: str, package_shas: dict[str, str],
              suffixes: dict[str, str] | None = None) -> dict:
    """The bench.generic-job document (made and checked by bench.deploy.contract)."""
    from bench.deploy import contract
    from bench.errors import ContractError

    models = []
    for model in spec.models:
        inputs = []
        for input_id, features in model.inputs:
            entries = []
            for feature in features:
                if len(feature.data) != contract.feature_bytes(feature.dtype, feature.shape):
                    raise ContractError(f"input {input_id!r} of {model.variant_id}: {feature.name} holds "
                                        f"{len(feature.data)} bytes, {feature.dtype} {list(feature.shape)} needs "
                                        f"{contract.feature_bytes(feature.dtype, feature.shape)}")
                entries.append({"name": feature.name, "kind": feature.kind, "dtype": feature.dtype,
                                "shape": list(feature.shape),
                                "path": contract.generic_input_path(hashlib.sha256(feature.data).hexdigest())})
            inputs.append({"input_id": input_id, "features": entries})
        models.append({"variant_id": model.variant_id,
                       "package": contract.generic_package_path(package_shas[model.variant_id],
                                                                (suffixes or {}).get(model.variant_id, ".mlpackage")),
                       "function": model.function, "stateful": model.stateful, "save_outputs": model.save_outputs,
                       "inputs": inputs})
    return contract.build_generic_job(job_id=job_id, models=models, steps=spec.steps, warmup=spec.warmup,
                                      repeats=spec.repeats, compute_plan=spec.compute_plan,
                                      output_cap_bytes=spec.output_cap_bytes)


def deploy_job(udid: str, spec: GenericJobSpec, packages: dict[str, tuple[str, Path]], *,
               bundle_id: str = RUNNER_BUNDLE_ID) -> str:
    """Push what the job needs (content-addressed, atomic; nothing already there is resent), job.json last.
    `packages`: {variant_id: (content sha256, path of the stored .mlpackage)}."""
    return _run(_deploy(udid, spec, packages, bundle_id), udid)


async def _deploy(udid: str, spec: GenericJobSpec, packages, bundle_id: str) -> str:
    import json

    job_id = spec.job_id or new_job_id("generic")
    job = build_job(spec, job_id, {variant_id: sha for variant_id, (sha, _) in packages.items()},
                    {variant_id: Path(path).suffix for variant_id, (_, path) in packages.items()})
    features = {hashlib.sha256(f.data).hexdigest(): f.data
                for model in spec.models for _, items in model.inputs for f in items}
    async with DeviceSession(udid, bundle_id=bundle_id) as device, device.container() as afc:
        for variant_id, (sha, package) in packages.items():
            if Path(package).is_dir():
                await container.push_tree(afc, Path(package), f"{container.MODELS}/{sha}", udid,
                                          inner=f"{Path(package).stem}.mlpackage")
            else:  # a single .mlmodel file (Core ML compiles it like a package)
                await container.push_bytes(afc, Path(package).read_bytes(), f"{container.MODELS}/{sha}/model.mlmodel",
                                           udid)
        for sha, data in features.items():
            await container.push_bytes(afc, data, f"{container.INPUTS}/{sha}.bin", udid)
        payload = (json.dumps(job, indent=1) + "\n").encode()
        await container.push_bytes(afc, payload, f"{container.JOBS}/{job_id}/job.json", udid, overwrite=True)
    return job_id


def run_job(udid: str, job_id: str, timeout_s: float = 1800.0, on_log=None, *, poll_s: float = 1.0,
            bundle_id: str = RUNNER_BUNDLE_ID) -> tuple[dict, dict[str, bytes]]:
    """Launch the runner on a deployed generic job; (validated result, {output path: bytes checked by hash})."""
    from bench.deploy import outcomes
    from bench.errors import DeviceError

    try:
        found = _run(_run_job(udid, job_id, timeout_s, on_log, poll_s, bundle_id), udid)
    except DeviceError as err:
        outcomes.record(udid, err)
        raise
    outcomes.record(udid, None)
    return found


async def _run_job(udid, job_id, timeout_s, on_log, poll_s, bundle_id):
    from bench.deploy import contract
    from bench.errors import ContractError

    async with DeviceSession(udid, bundle_id=bundle_id) as device:
        raw, raw_job = await device.run(job_id, timeout_s, on_log, poll_s=poll_s)
        job = parse_json(raw_job, udid, "job.json")
        try:
            result = contract.validate_generic_result(raw, job=job, source=f"{udid}: result.json")
        except ContractError as err:
            raise ResultInvalid(str(err), udid=udid, action="update the runner, or report the runner's log") from None
        _raise_if_left_foreground(result, udid)
        outputs: dict[str, bytes] = {}
        async with device.container() as afc:
            for step in result["steps"]:
                for output in step["outputs"]:
                    data = await container.pull(afc, contract.in_container(output["path"]), udid,
                                                max_bytes=output["bytes"])
                    if len(data) != output["bytes"] or hashlib.sha256(data).hexdigest() != output["sha256"]:
                        raise ResultInvalid(f"output {output['path']} does not match its recorded size and sha256",
                                            udid=udid, action="run the job again")
                    outputs[output["path"]] = data
    return result, outputs
