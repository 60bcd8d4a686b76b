"""Everything pulled from a device is untrusted: each bad job/result is refused with one clear line.

Real validator and schemas; the "device files" are golden files broken on purpose.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench.deploy import contract
from bench.errors import BenchError, ContractError

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture()
def job() -> dict:
    return json.loads((GOLDEN / "job.v1.json").read_text(encoding="utf-8"))


@pytest.fixture()
def result() -> dict:
    return json.loads((GOLDEN / "result.v1.json").read_text(encoding="utf-8"))


def refused(call, *args, **kwargs) -> str:
    with pytest.raises(ContractError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message, "a contract error is one line"
    assert isinstance(caught.value, BenchError)
    return message


# ----------------------------------------------------------------------------------------------- results


def test_missing_field_names_file_and_field(result):
    del result["steps"][1]["samples"][0]["total_ns"]
    message = refused(contract.validate_result, result, source="iphone-a/result.json")
    assert message == "iphone-a/result.json: steps[1].samples[0]: 'total_ns' is a required property"


def test_wrong_type(result):
    result["device"]["low_power_mode"] = "no"
    assert refused(contract.validate_result, result) == "result.json: device.low_power_mode: 'no' is not of type 'boolean'"


def test_negative_nanoseconds(result):
    result["steps"][0]["samples"][2]["decoder_ns"][1] = -3
    assert "steps[0].samples[2].decoder_ns[1]: -3 is less than the minimum of 0" in refused(contract.validate_result, result)


def test_float_nanoseconds_and_tokens_are_not_integers(result):
    result["steps"][0]["cold_load_ns"]["encoder"] = 1.5e9
    assert "steps[0].cold_load_ns.encoder" in refused(contract.validate_result, result)
    result = json.loads((GOLDEN / "result.v1.json").read_text())
    result["steps"][0]["samples"][0]["tokens"][0] = 7.0
    assert "steps[0].samples[0].tokens[0]: 7.0 is not of type 'integer'" in refused(contract.validate_result, result)


def test_boolean_is_not_an_integer(result):
    result["steps"][0]["samples"][0]["repeat"] = True
    assert "steps[0].samples[0].repeat" in refused(contract.validate_result, result)


def test_unknown_thermal_state(result):
    result["steps"][0]["samples"][0]["thermal_state"] = "hot"
    assert "steps[0].samples[0].thermal_state: 'hot' is not one of" in refused(contract.validate_result, result)


def test_unknown_key_is_refused(result):
    result["steps"][0]["median_ns"] = 5
    assert "steps[0]: Additional properties are not allowed ('median_ns'" in refused(contract.validate_result, result)


def test_oversized_result_refused_before_parsing(tmp_path):
    big = tmp_path / "result.json"
    big.write_bytes(b"{" + b" " * 2000)  # not even JSON: size is checked first
    assert refused(contract.validate_result, big, max_bytes=1000) == (
        f"{big}: 2001 bytes is over the 1000-byte limit; refused without parsing"
    )
    assert "over the 1000-byte limit" in refused(contract.validate_result, b"x" * 1001, max_bytes=1000)


def test_default_limit_is_64_mib():
    assert contract.MAX_RESULT_BYTES == 64 * 1024 * 1024
    assert "over the 67108864-byte limit" in refused(contract.validate_result, b" " * (64 * 1024 * 1024 + 1))


def test_corrupt_and_non_object_json(tmp_path):
    assert "not valid JSON (line 1" in refused(contract.validate_result, b'{"schema": ')
    assert "expected a JSON object, found list" in refused(contract.validate_result, b"[]")
    assert "not UTF-8 text" in refused(contract.validate_result, b'{"a": "\xff"}')
    assert "not found" in refused(contract.validate_result, tmp_path / "missing.json")


def test_newer_schema_version_says_upgrade_bench(result):
    result["schema_version"] = 2
    assert refused(contract.validate_result, result) == (
        "result.json: schema version 2 is newer than this bench (1); upgrade bench"
    )


def test_wrong_kind_and_bad_version(result):
    result["schema"] = "bench.job"
    assert "schema: expected 'bench.result', found 'bench.job'" in refused(contract.validate_result, result)
    result["schema"] = "bench.result"
    result["schema_version"] = "1"
    assert "schema_version: expected a positive integer, found '1'" in refused(contract.validate_result, result)


def test_job_id_mismatch(result, job):
    other = copy.deepcopy(job) | {"job_id": "someone-else"}
    assert refused(contract.validate_result, result, job=other) == (
        "result.json: job_id: '20261129T031500Z-iphone15-r0' does not match the job sent ('someone-else')"
    )
    assert "does not match the job sent ('x')" in refused(contract.validate_result, result, job_id="x")


def test_steps_out_of_the_jobs_order(result, job):
    result["steps"][0], result["steps"][1] = result["steps"][1], result["steps"][0]
    assert "steps[0]: ('fp32-a1b2c3d4e5f6', 'cpuOnly') does not follow the job's order" in refused(
        contract.validate_result, result, job=job)


def test_sample_of_an_image_the_job_never_sent(result, job):
    result["steps"][0]["samples"][0]["image_id"] = "not-sent"
    assert "steps[0].samples[0].image_id: 'not-sent' is not an input of the job" in refused(
        contract.validate_result, result, job=job)


def test_missing_samples_in_a_successful_step(result, job):
    result["steps"][0]["samples"].pop()
    assert "steps[0].samples: 3 samples, the job asked for 4 (2 repeats × 2 inputs)" in refused(
        contract.validate_result, result, job=job)


def test_tokens_and_decoder_steps_must_agree(result):
    result["steps"][0]["samples"][0]["tokens"].append(5)
    assert "steps[0].samples[0].tokens: 5 tokens but 4 decoder steps" in refused(contract.validate_result, result)


def test_total_shorter_than_its_parts(result):
    sample = result["steps"][0]["samples"][0]
    sample["total_ns"] = sample["encoder_ns"]
    assert "steps[0].samples[0].total_ns:" in refused(contract.validate_result, result)


def test_sample_clock_going_backwards(result):
    samples = result["steps"][1]["samples"]
    samples[2]["t_ns"] = samples[1]["t_ns"] - 1
    assert refused(contract.validate_result, result) == (
        "result.json: steps[1].samples[2].t_ns: earlier than the sample before it (the clock is monotonic)")


def test_failed_result_must_say_why(result):
    result["status"] = "failed"
    assert refused(contract.validate_result, result) == "result.json: error: a failed result must say why"


def test_successful_step_without_load_times(result):
    result["steps"][0]["warm_load_ns"]["decoder"] = None
    assert "steps[0].warm_load_ns.decoder: missing although the step has no error" in refused(
        contract.validate_result, result)


# ----------------------------------------------------------------------------------------------- jobs


@pytest.mark.parametrize(
    ("bad_path", "reason"),
    [
        ("../x", "has a '..' component"),
        ("models/../../etc/passwd", "has a '..' component"),
        ("/etc/passwd", "is absolute"),
        ("models\\a\\encoder.mlpackage", "contains a backslash"),
        ("models/a\x00/encoder.mlpackage", "contains NUL or control characters"),
        ("models//encoder.mlpackage", "has a 'empty' component"),
        ("models/" + "a" * 300 + "/encoder.mlpackage", "component longer than 255"),
        ("m/" * 600, "is too long"),  # the schema's maxLength answers first
    ],
)
def test_path_escaping_job_paths_are_refused(job, bad_path, reason):
    job["models"][0]["encoder"] = bad_path
    message = refused(contract.validate_job, job)
    assert message.startswith("job.json: models[0].encoder: ")
    assert reason in message


def test_input_path_escape(job):
    job["models"][1]["inputs"][0]["path"] = "/etc/passwd"
    assert refused(contract.validate_job, job) == (
        "job.json: models[1].inputs[0].path: container path '/etc/passwd' is absolute; "
        "it must be relative to Documents/bench"
    )


def test_paths_outside_the_layout(job):
    job["models"][0]["decoder"] = "jobs/x/decoder.mlpackage"
    assert "models[0].decoder: 'jobs/x/decoder.mlpackage' must be models/<sha256>/<name>.mlpackage" in refused(
        contract.validate_job, job)


def test_safe_container_path_accepts_plain_paths():
    assert contract.safe_container_path("models/abc/encoder.mlpackage") == "models/abc/encoder.mlpackage"
    for bad in ("", "~/x", "./x", "a/./b", "a/"):
        refused(contract.safe_container_path, bad)


def test_job_id_that_is_not_a_folder_name(job):
    job["job_id"] = "../../evil"
    assert "job.json: job_id: '../../evil' does not match" in refused(contract.validate_job, job)
    refused(contract.job_file, "../evil")


def test_step_naming_an_unknown_model(job):
    job["steps"][2]["variant_id"] = "int8-3f2a9c1d7e4c"
    message = refused(contract.validate_job, job)
    assert message == (
        "job.json: steps[2].variant_id: 'int8-3f2a9c1d7e4c' is not one of the job's models "
        "(fp32-a1b2c3d4e5f6, int8-3f2a9c1d7e4b)"
    )


def test_unknown_compute_unit(job):
    job["steps"][0]["compute_unit"] = "neuralEngine"
    assert "steps[0].compute_unit: 'neuralEngine' is not one of" in refused(contract.validate_job, job)
    with pytest.raises(ContractError, match="is not one of"):
        contract.build_job(job_id="j", models=job["models"], steps=[("int8-3f2a9c1d7e4b", "ane")], created_at="t")


def test_input_shape_must_match_image_size(job):
    job["models"][0]["inputs"][1]["shape"] = [1, 3, 64, 64]
    assert "models[0].inputs[1].shape: expected [1, 3, 96, 96], found [1, 3, 64, 64]" in refused(
        contract.validate_job, job)


def test_duplicates_and_empty_measure_jobs(job):
    duplicate = copy.deepcopy(job)
    duplicate["models"].append(copy.deepcopy(duplicate["models"][0]))
    assert "models[2].variant_id: 'int8-3f2a9c1d7e4b' appears twice" in refused(contract.validate_job, duplicate)
    job["steps"] = []
    assert "steps: a measure job needs at least one step" in refused(contract.validate_job, job)


def test_negative_warmup(job):
    job["warmup"] = -1
    assert "job.json: warmup: -1 is less than the minimum of 0" == refused(contract.validate_job, job)


def test_newer_job_version(job):
    job["schema_version"] = 3
    assert "newer than this bench (1); upgrade bench" in refused(contract.validate_job, job)


# ----------------------------------------------------------------------------------------------- compile once


def test_reused_compiled_model_has_no_compile_time(result):
    result["compiles"][2]["compile_ns"] = 5
    assert "compiles[2]: a reused compiled model has no compile time" in refused(contract.validate_result, result)


def test_cold_load_may_be_missing_only_for_a_reused_package(result):
    result["steps"][0]["cold_load_ns"]["decoder"] = None  # int8 was compiled by this job: its cold load is owed
    assert "steps[0].cold_load_ns.decoder: missing" in refused(contract.validate_result, result)


def test_reused_needs_a_compiled_path_in_the_job(result, job):
    contract.validate_result(result, job=job)
    del job["models"][1]["compiled"]
    assert "fp32-a1b2c3d4e5f6/encoder says reused, but the job gave no compiled path" in refused(
        contract.validate_result, result, job=job)


@pytest.mark.parametrize("path", ["compiled/run/abc/decoder.mlmodelc", "models/run/abc/encoder.mlmodelc",
                                  "compiled/run/encoder.mlmodelc", "compiled/run/../x/encoder.mlmodelc"])
def test_compiled_paths_outside_the_layout(job, path):
    job["models"][0]["compiled"]["encoder"] = path
    assert "models[0].compiled.encoder" in refused(contract.validate_job, job)


# ----------------------------------------------------------------------------------------------- kv_cache (issue 14)


def test_kv_cache_model_without_its_cache_length_is_refused(job):
    job["models"][0]["decoding"] = "kv_cache"
    job["models"][0].pop("decoder_length", None)
    assert "models[0].decoder_length: kv_cache decoding needs it" in refused(contract.validate_job, job)
    job["models"][0]["decoder_length"] = job["models"][0]["decode"]["max_length"]
    assert contract.validate_job(job)["models"][0]["decoding"] == "kv_cache"
    job["models"][0]["decoding"] = "kv-cache"
    assert "models[0].decoding" in refused(contract.validate_job, job)


def test_state_time_counts_toward_the_caption_total(result):
    sample = result["steps"][0]["samples"][0]
    parts = sample["encoder_ns"] + sum(sample["decoder_ns"])
    sample["state_ns"] = sample["total_ns"] - parts  # exactly fits
    contract.validate_result(result)
    sample["state_ns"] += 1
    assert "steps[0].samples[0].total_ns" in refused(contract.validate_result, result)
    assert "encoder_ns + state_ns + sum(decoder_ns)" in refused(contract.validate_result, result)


def test_results_of_older_runners_without_state_ns_still_validate(result):
    for step in result["steps"]:
        for sample in step["warmup"] + step["samples"]:
            sample.pop("state_ns")
    contract.validate_result(result)
