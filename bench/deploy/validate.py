"""Host-side checks of job/result files: bench.deploy.contract does the checking (size limit, schemas, semantics);
this module only turns its ContractError into ResultInvalid (a DeviceError) naming the device."""

from __future__ import annotations

from bench.deploy import contract
from bench.deploy.errors import ResultInvalid
from bench.errors import BenchError

_VERSION_ACTION = "check that the runner and the harness versions match"


def validate_result(raw: bytes, *, udid: str | None = None, job: dict | None = None, job_id: str | None = None) -> dict:
    """The parsed bench.result, or ResultInvalid. With `job` the result must also answer that job."""
    try:
        return contract.validate_result(raw, job=job, job_id=job_id, source="result.json")
    except BenchError as err:
        raise ResultInvalid(str(err), udid=udid, action=_VERSION_ACTION) from None
