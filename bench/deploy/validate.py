"""Host-side checks of job/result files, delegating to bench.deploy.contract (owned by the runner/contract work).

While contract.py does not exist yet, the JSON schemas in bench/deploy/schemas/ are applied here directly, with the
same limits (64 MiB, known schema versions). Every failure becomes ResultInvalid (a DeviceError) naming the device.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from bench.deploy.errors import ResultInvalid
from bench.errors import BenchError

MAX_BYTES = 64 * 1024 * 1024
_SCHEMAS = Path(__file__).resolve().parent / "schemas"


def _contract():
    try:
        return importlib.import_module("bench.deploy.contract")
    except ModuleNotFoundError as err:
        if err.name == "bench.deploy.contract":
            return None
        raise


def _schema_check(document: dict, kind: str) -> None:
    import jsonschema

    if document.get("schema") != f"bench.{kind}":
        raise ResultInvalid(f"expected a bench.{kind} document, found {document.get('schema')!r}")
    if document.get("schema_version") != 1:
        raise ResultInvalid(f"bench.{kind} schema_version {document.get('schema_version')!r} is not known here",
                            action="update the harness or the runner so both speak the same version")
    schema = json.loads((_SCHEMAS / f"{kind}.v1.schema.json").read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ResultInvalid(f"bench.{kind} breaks its schema at {where}: {error.message[:300]}")


def _load(raw: bytes, kind: str) -> dict:
    if len(raw) > MAX_BYTES:
        raise ResultInvalid(f"{kind} file is {len(raw)} bytes, over the {MAX_BYTES}-byte limit")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultInvalid(f"{kind} file is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise ResultInvalid(f"{kind} file is not a JSON object")
    return document


def _with_udid(err: BenchError, udid: str | None) -> ResultInvalid:
    if isinstance(err, ResultInvalid) and err.udid is None and udid:
        return ResultInvalid(err.message, udid=udid, action=err.action)
    if isinstance(err, ResultInvalid):
        return err
    return ResultInvalid(str(err), udid=udid, action="check that the runner and the harness versions match")


def validate_result(raw: bytes, *, udid: str | None = None, job: dict | None = None, job_id: str | None = None) -> dict:
    """The parsed bench.result, or ResultInvalid. With `job` the result must also answer that job."""
    contract = _contract()
    try:
        if contract is not None and hasattr(contract, "validate_result"):
            return contract.validate_result(raw, job=job, job_id=job_id, source="result.json")
        document = _load(raw, "result")
        _schema_check(document, "result")
        return document
    except BenchError as err:
        raise _with_udid(err, udid) from None


def validate_job(job: dict, *, udid: str | None = None) -> bytes:
    """The job serialised for the device, after checking it against the contract."""
    payload = (json.dumps(job, indent=1) + "\n").encode()
    contract = _contract()
    try:
        if contract is not None and hasattr(contract, "validate_job"):
            contract.validate_job(payload, source="job.json")
        else:
            _schema_check(job, "job")
    except BenchError as err:
        raise _with_udid(err, udid) from None
    return payload
