"""Golden job/result files pin the runner contract on the host side (tests/test_runner_swift.py pins the Swift side).

Nothing is faked here: the real validator, the real packaged JSON Schemas, the real golden files.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from bench.deploy import contract
from bench.store import records

GOLDEN = Path(__file__).parent / "golden"


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", ["job", "result"])
def test_packaged_schemas_are_valid_draft_2020_12(kind):
    schema = contract.schema(kind)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_kinds_are_registered_as_versioned_records():
    assert records.CURRENT_VERSIONS[contract.JOB_KIND] == 1
    assert records.CURRENT_VERSIONS[contract.RESULT_KIND] == 1


@pytest.mark.parametrize("name", ["job.v1.json", "status-job.v1.json"])
def test_golden_jobs_validate_from_path_bytes_and_dict(name):
    path = GOLDEN / name
    from_path = contract.validate_job(path)
    assert contract.validate_job(path.read_bytes()) == from_path
    assert contract.validate_job(golden(name)) == from_path


@pytest.mark.parametrize(
    ("result_name", "job_name"),
    [("result.v1.json", "job.v1.json"), ("result.partial.v1.json", "job.v1.json"),
     ("status-result.v1.json", "status-job.v1.json")],
)
def test_golden_results_answer_their_jobs(result_name, job_name):
    job = contract.validate_job(GOLDEN / job_name)
    result = contract.validate_result(GOLDEN / result_name, job=job)
    assert result["job_id"] == job["job_id"]


def test_golden_complete_result_covers_every_part_of_the_contract():
    """The golden complete result must exercise compute plans, a step error and nullable fields, or it pins little."""
    result = golden("result.v1.json")
    steps = result["steps"]
    assert result["status"] == "complete"
    assert any(step["compute_plan"] and step["compute_plan"]["encoder"] for step in steps)
    assert any(op["cost"] is None for step in steps if step["compute_plan"] for op in step["compute_plan"]["decoder"])
    assert any(step["error"] for step in steps) and any(step["error"] is None for step in steps)
    assert {step["compute_unit"] for step in steps} >= {"cpuOnly", "cpuAndNeuralEngine"}
    assert all(len(s["decoder_ns"]) == len(s["tokens"]) for step in steps for s in step["samples"])


def test_build_job_reproduces_the_golden_job():
    """The host's constructor writes exactly the golden file (so the golden file is what the host sends)."""
    expected = golden("job.v1.json")
    built = contract.build_job(
        job_id=expected["job_id"], models=copy.deepcopy(expected["models"]),
        steps=[(step["variant_id"], step["compute_unit"]) for step in expected["steps"]],
        warmup=expected["warmup"], repeats=expected["repeats"], compute_plan=True, created_at=expected["created_at"],
    )
    assert built == expected
    assert list(built)[:2] == ["schema", "schema_version"]


def test_model_entry_builds_content_addressed_paths():
    sha = "a" * 64
    entry = contract.model_entry(
        variant_id="int8-0123456789ab", encoder_sha256=sha, decoder_sha256="b" * 64, image_size=64,
        decode={"bos_id": 1, "eos_id": 2, "pad_id": 0, "max_length": 8}, inputs=[("img-1", "c" * 64)],
    )
    assert entry["encoder"] == f"models/{sha}/encoder.mlpackage"
    assert entry["inputs"][0] == {"image_id": "img-1", "path": f"inputs/{'c' * 64}.f32", "shape": [1, 3, 64, 64]}
    job = contract.build_job(job_id="j1", models=[entry], steps=[("int8-0123456789ab", "all")], created_at="t")
    assert contract.model_io(job["models"][0]) == contract.DEFAULT_IO


def test_io_defaults_in_schema_match_the_contract_constants():
    io = contract.schema("job")["$defs"]["model"]["properties"]["io"]["properties"]
    assert {key: value["default"] for key, value in io.items()} == contract.DEFAULT_IO


def test_constants_match_the_schemas():
    job, result = contract.schema("job"), contract.schema("result")
    assert tuple(job["$defs"]["compute_unit"]["enum"]) == contract.COMPUTE_UNITS
    assert tuple(result["$defs"]["step"]["properties"]["compute_unit"]["enum"]) == contract.COMPUTE_UNITS
    assert tuple(result["$defs"]["thermal_state"]["enum"]) == contract.THERMAL_STATES
    assert tuple(result["$defs"]["device"]["properties"]["battery_state"]["enum"]) == contract.BATTERY_STATES
    assert tuple(result["properties"]["status"]["enum"]) == contract.RESULT_STATUSES
    assert tuple(job["properties"]["mode"]["enum"]) == contract.MODES


def test_container_file_names():
    assert contract.in_container(contract.result_file("j1")) == "Documents/bench/results/j1/result.json"
    assert contract.partial_result_file("j1") == "results/j1/result.partial.json"
    assert contract.done_file("j1") == "results/j1/DONE"
    assert contract.job_file("j1") == "jobs/j1/job.json"


def test_status_job_and_throttling_helpers():
    job = contract.status_job("status-1", created_at="t")
    assert job["mode"] == "status" and job["steps"] == [] and job["models"] == []
    assert contract.is_throttled("serious") and not contract.is_throttled("fair")


def test_partial_result_may_stop_early_but_complete_must_not():
    job = golden("job.v1.json")
    partial = golden("result.partial.v1.json")
    complete_but_short = copy.deepcopy(partial) | {"status": "complete", "finished_at": "2026-11-29T03:19:41Z"}
    contract.validate_result(partial, job=job)
    with pytest.raises(contract.ContractError, match=r"steps: complete result has 1 of the job's 4 steps"):
        contract.validate_result(complete_but_short, job=job)


# -- generic jobs (imported models) ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["generic-job", "generic-result"])
def test_generic_schemas_are_valid_and_versioned(kind):
    jsonschema.Draft202012Validator.check_schema(contract.schema(kind))
    assert records.CURRENT_VERSIONS[contract.GENERIC_JOB_KIND] == records.CURRENT_VERSIONS[
        contract.GENERIC_RESULT_KIND] == 1


def test_golden_generic_result_answers_its_job_and_the_builder_writes_the_job():
    expected = golden("generic-job.v1.json")
    built = contract.build_generic_job(
        job_id=expected["job_id"], models=copy.deepcopy(expected["models"]),
        steps=[(s["variant_id"], s["compute_unit"]) for s in expected["steps"]], warmup=expected["warmup"],
        repeats=expected["repeats"], compute_plan=True, output_cap_bytes=expected["output_cap_bytes"],
        created_at=expected["created_at"])
    assert built == expected
    result = contract.validate_generic_result(GOLDEN / "generic-result.v1.json", job=built)
    assert [bool(step["outputs"]) for step in result["steps"]] == [True, False]


@pytest.mark.parametrize("damage, message", [
    (lambda r, j: r["steps"][0]["outputs"][0].update(path="results/other-job/outputs/0/x.bin"), "not an output"),
    (lambda r, j: r["steps"][0]["outputs"][0].update(path="results/../../x.bin"), "component"),
    (lambda r, j: r["steps"][0]["outputs"][0].update(bytes=41), "bytes: 41"),
    (lambda r, j: j.update(output_cap_bytes=60), "over the job's cap of 60"),
    (lambda r, j: r["steps"][0]["samples"].pop(), "samples: 1 samples"),
    (lambda r, j: r["steps"][0]["samples"][0].update(input_id="input-009"), "not an input of the job"),
    (lambda r, j: r.update(job_id="another-job"), "does not match the job sent"),
])
def test_generic_results_that_do_not_answer_the_job_are_refused(damage, message):
    from bench.errors import ContractError

    result, job = golden("generic-result.v1.json"), golden("generic-job.v1.json")
    damage(result, job)
    with pytest.raises(ContractError, match=message):
        contract.validate_generic_result(json.dumps(result), job=job)
