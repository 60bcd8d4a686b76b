"""Device faults of issue 10 ("Integrity"), item 4, against the protocol-level fake iPhone.

The real pymobiledevice3 client talks to tests/fake_iphone over real sockets. Faked, because it cannot exist here: the
phone itself (installd's signature check is the fake's `development_signed` flag; the runner is the fake's stand-in,
whose faults mirror the Swift runner's error paths in runner/BenchRunner/JobRunner.swift). Each test sets a scenario
and checks what a person sees: one line naming what to do, no stray asyncio traceback, nothing partial taken as a
result, and the runner's log lines kept with the run.
"""

from __future__ import annotations

import gc
import logging

import pytest

from bench.deploy import api
from bench.deploy.errors import (
    DeviceNotFound,
    PushFailed,
    ResultInvalid,
    RunnerCrashed,
    RunnerNotDebuggable,
    RunnerTimeout,
)
from bench.errors import InputError
from deploy_fixtures import DECODE, RUNNER, add_phone, job_spec, make_inputs, mux  # noqa: F401


def _variant(folder, variant_id: str, files: int = 4, size: int = 1_000_000, seed: int = 0):
    """A variant whose packages hold several multi-chunk files, so pushes have requests in flight together."""
    import random

    rng = random.Random(seed)
    variant = folder / variant_id
    for role in ("encoder", "decoder"):
        weights = variant / f"{role}.mlpackage" / "Data" / "com.apple.CoreML" / "weights"
        weights.mkdir(parents=True)
        for number in range(files):
            (weights / f"weight{number}.bin").write_bytes(rng.randbytes(size))
        (variant / f"{role}.mlpackage" / "Manifest.json").write_text("{}")
    return variant


@pytest.fixture
def asyncio_noise(caplog):
    """What asyncio would print on its own (never-retrieved errors, writes into a dead socket), after a collection."""
    caplog.set_level(logging.WARNING, logger="asyncio")

    def collected() -> list[str]:
        gc.collect()  # an unretrieved future reports itself when it is collected
        return [record.getMessage() for record in caplog.records if record.name == "asyncio"]

    return collected


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and "report" not in text.lower(), text
    return text


# ---------------------------------------------------------------------------------------------- concurrent pushes


@pytest.mark.parametrize("unplug_after", [200_000, 2_000_000, 5_500_000])  # first files, mid package, second package
def test_unplug_during_concurrent_push_is_one_line_and_every_error_is_awaited(mux, tmp_path, asyncio_noise,
                                                                               unplug_after):
    """Before: up to 4 "Future exception was never retrieved" tracebacks (pymobiledevice3 sets the drop's error on
    every in-flight request) plus "socket.send() raised exception." after the one-line error."""
    phone = add_phone(mux, 1)
    variant = _variant(tmp_path, "fp16-aaaa")
    phone.faults.unplug_after_bytes = unplug_after
    with pytest.raises(PushFailed) as caught:
        api.deploy(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": variant}, make_inputs())
    assert "went away" in _one_line(caught.value)
    assert asyncio_noise() == []
    assert not (phone.bench_dir() / "jobs").exists()  # no job manifest without every push in place


def test_unplug_while_the_runner_runs_is_one_line(mux, tmp_path, asyncio_noise):
    phone = add_phone(mux, 1)
    variant = _variant(tmp_path, "fp16-aaaa", files=1, size=1000)
    job_id = api.deploy_job(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": variant}, make_inputs())
    phone.faults.runner_seconds = 0.5
    phone.faults.unplug_while_running = True  # after the first step, while the host polls for DONE
    with pytest.raises(DeviceNotFound) as caught:
        api.run_job(phone.udid, job_id, 30, poll_s=0.05)
    assert "reconnect" in _one_line(caught.value)
    assert asyncio_noise() == []


def test_unplug_during_the_launch_is_lost_contact_not_a_refused_launch(mux, asyncio_noise):
    """Before: "cannot launch org.bench.runner: The DTX service channel closed … — check `bench devices` (Developer
    Mode, disk image, tunnel)", which sends a person to the wrong place."""
    phone = add_phone(mux, 1)
    job_id = api.deploy_job(phone.udid, job_spec([], mode="status"), {}, {})
    phone.faults.unplug_at_launch = True
    with pytest.raises(DeviceNotFound) as caught:
        api.run_job(phone.udid, job_id, 10, poll_s=0.05)
    assert "lost contact with the device" in _one_line(caught.value) and "reconnect" in _one_line(caught.value)
    assert asyncio_noise() == []


# ---------------------------------------------------------------------------------------------- health


def test_a_distribution_signed_runner_is_not_ready_and_says_how_to_sign(mux, tmp_path):
    """Before: `bench devices` said ready and the first `ls-models` failed with pymobiledevice3's "please report"."""
    phone = add_phone(mux, 1, installed=False)
    phone.install_app(RUNNER, "0.3", "12", development_signed=False)
    report = api.health(phone.udid)
    assert not report.ready and report.runner is not None  # installed, yet unusable
    (problem,) = report.problems
    assert "signed for distribution" in problem and "development profile" in problem and "\n" not in problem
    assert "InstallationLookupFailed" in problem
    with pytest.raises(RunnerNotDebuggable) as caught:
        api.held(phone.udid)
    assert "sign with a development profile" in _one_line(caught.value)
    with pytest.raises(RunnerNotDebuggable):
        api.deploy(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": _variant(tmp_path, "fp16-aaaa", 1, 10)},
                   make_inputs())
    assert phone.bytes_written == {}  # refused before anything was sent


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err and "report" not in err.lower(), err
    return err


def test_bench_devices_shows_the_signing_problem_and_ls_models_is_one_line(mux, monkeypatch, tmp_path, capsys):
    from bench.cli import main

    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    phone = add_phone(mux, 1, installed=False)
    phone.install_app(RUNNER, development_signed=False)
    assert main(["devices"]) == 0
    overview = capsys.readouterr().out
    assert "signed for distribution" in overview and "ready" not in overview, overview
    assert main(["devices", "ls-models"]) != 0
    assert "sign with a development profile" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------- runner timeout


def _request(variant_ref, units=("cpuOnly",), images=2, warmup=1, repeats=1):
    from bench.run.targets.base import ImageItem, RoundRequest, Step

    steps = [Step(f"k-{u}", f"s-{u}", variant_ref, u, 0) for u in units]
    return RoundRequest(0, steps, [ImageItem(f"img-{i}", lambda: None) for i in range(images)], warmup=warmup,
                        repeats=repeats, compute_plan=False)


def _ref(path, variant_id="fp16-aaaaaaaaaaaa"):
    from bench.run.targets.base import VariantRef

    return VariantRef(variant_id, variant_id.split("-")[0], "aaaa", path=path, image_size=32, decode=DECODE)


def test_default_runner_timeout_grows_with_model_size_and_job_length(tmp_path):
    from bench.run.targets.iphone import TIMEOUT_FLOOR_S, runner_timeout

    small, large = _ref(None, "int8-small"), _ref(None, "fp32-large")
    sizes = {"int8-small": 50_000_000, "fp32-large": 990_000_000}
    one_small = runner_timeout(_request(small), sizes)
    assert TIMEOUT_FLOOR_S < one_small < 600  # a hung small job is noticed in minutes, not half an hour
    assert runner_timeout(_request(large), sizes) > one_small
    assert runner_timeout(_request(small, units=("cpuOnly", "all")), sizes) > one_small
    assert runner_timeout(_request(small, images=16, repeats=3), sizes) > one_small
    # fp32 BLIP on four compute units, 16 images: more than the old fixed 1800 s it could not finish in.
    assert runner_timeout(_request(large, units=("cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine", "all"), images=16),
                          sizes) > 1800


def test_runner_timeout_from_run_yaml_and_the_flag(tmp_path, mux):
    from bench.run.config import load_config, with_overrides
    from bench.run.targets import resolve_targets

    config_file = tmp_path / "run.yaml"
    config_file.write_text("runner_timeout_s: 45\n")
    config = load_config(config_file)
    assert config.runner_timeout_s == 45
    assert with_overrides(config, runner_timeout_s=90).runner_timeout_s == 90
    with pytest.raises(InputError, match=r"^--runner-timeout: Input should be greater than 0"):
        with_overrides(config, runner_timeout_s=0)
    with pytest.raises(InputError, match=r"^--runner-timeout: Input should be a finite number"):
        with_overrides(config, runner_timeout_s=float("nan"))
    config_file.write_text("images: 2\nrunner_timeout_s: -3\n")
    with pytest.raises(InputError, match=r"run.yaml:2: runner_timeout_s"):
        load_config(config_file)

    add_phone(mux, 1)
    request = _request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10)))
    (fixed,) = resolve_targets(["iphone"], runner_timeout_s=45)
    (derived,) = resolve_targets(["iphone"])
    assert fixed.timeout_for(request) == 45 and derived.timeout_for(request) > 300


def test_bench_run_rejects_a_bad_runner_timeout_in_one_line(monkeypatch, tmp_path, capsys):
    from bench.cli import main

    monkeypatch.setenv("BENCH_ROOT", str(tmp_path))
    assert main(["run", "--runner-timeout", "-5", "--no-eval", "--no-report"]) == 2
    assert _one_error_line(capsys).endswith("--runner-timeout: Input should be greater than 0")


# ---------------------------------------------------------------------------------------------- runner logs


def _target(phone, tmp_path, timeout_s=30):
    import numpy as np

    from bench.run.targets.iphone import IPhoneTarget

    target = IPhoneTarget(phone.udid, timeout_s=timeout_s, poll_s=0.05,
                          preprocess=lambda images, size, mode, variant=None: np.zeros((1, 3, size, size), "f4"))
    target.keep_logs_in(tmp_path / "run" / "jobs")
    return target


def test_a_hung_runner_fails_at_the_configured_timeout_with_its_log_kept_and_named(mux, tmp_path):
    phone = add_phone(mux, 1)
    phone.faults.runner_hang = True
    target = _target(phone, tmp_path, timeout_s=1)
    request = _request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10)))
    with pytest.raises(RunnerTimeout) as caught:
        list(target.run_round(request, lambda: False))
    message = _one_line(caught.value)
    (log,) = (tmp_path / "run" / "jobs").glob("*.log")
    assert f"runner log: {log}" in message and "last line: " in message and "no DONE after 1 s" in message
    assert "step fp16-aaaaaaaaaaaa cpuOnly" in log.read_text() and "hanging" in log.read_text()


def test_a_crashed_runner_names_its_log_and_last_line(mux, tmp_path):
    phone = add_phone(mux, 1)
    phone.faults.runner_crash = True
    target = _target(phone, tmp_path)
    with pytest.raises(RunnerCrashed) as caught:
        list(target.run_round(_request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10))), lambda: False))
    message = _one_line(caught.value)
    assert "Terminating app due to uncaught exception" in message and ".log" in message
    (log,) = (tmp_path / "run" / "jobs").glob("*.log")
    assert "Terminating app" in log.read_text()


def test_a_job_that_never_launched_points_at_no_log(mux, tmp_path):
    from bench.deploy.errors import DeveloperModeOff

    phone = add_phone(mux, 1, developer_mode=False)
    with pytest.raises(DeveloperModeOff) as caught:
        list(_target(phone, tmp_path).run_round(_request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10))),
                                                lambda: False))
    assert "runner log" not in _one_line(caught.value)
    assert not (tmp_path / "run" / "jobs").exists()


def test_every_round_keeps_its_log_and_a_flood_is_bounded_and_defanged(mux, tmp_path, monkeypatch):
    from bench.deploy.logs import JobLog

    monkeypatch.setattr(JobLog, "MAX_BYTES", 16 * 1024)
    phone = add_phone(mux, 1)
    phone.faults.log_flood = 400  # 400 lines of ~330 bytes with terminal escape sequences
    target = _target(phone, tmp_path)
    results = list(target.run_round(_request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10))),
                                    lambda: False))
    assert [r.error for r in results] == [None]  # a chatty runner is still measured
    (log,) = (tmp_path / "run" / "jobs").glob("*.log")
    text = log.read_text()
    assert len(text.encode()) <= 16 * 1024 + 100 and "more lines not kept" in text
    assert "\x1b" not in text and "flood 0 ?[2J?[31m" in text


def test_a_run_records_the_failure_with_the_log_it_kept(mux, tmp_path):
    """Through the run stage: the failed job in run.json says where the runner's lines are; they are there."""
    from bench.paths import Workspace
    from bench.run.api import start_run
    from bench.run.config import RunConfig
    from bench.run.targets.base import ImageItem

    phone = add_phone(mux, 1)
    phone.faults.runner_crash = True
    config = RunConfig.model_validate({"seed": 1, "rounds": 1, "evaluate": False, "report": False,
                                       "compute_units": ["cpuOnly"], "adaptive": {"ci_width": None},
                                       "retry": {"attempts": 1, "quarantine_after": 1}})
    target = _target(phone, tmp_path)
    outcome = start_run(config, Workspace(tmp_path), targets=[target],
                        variants=[_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10))],
                        images=[ImageItem("img-0", lambda: None)], sleep=lambda _s: None)
    assert outcome.status == "incomplete" and outcome.failures
    logs = {str(path): path for path in (outcome.run_dir / "jobs").glob("*.log")}
    for _, why in outcome.failures:
        assert "RunnerCrashed: " in why and "\n" not in why
        named = why.split("runner log: ", 1)[1].split(", last line: ", 1)[0]
        assert "Terminating app" in logs[named].read_text()


# ---------------------------------------------------------------------------------------------- runner error paths


def test_a_runner_that_cannot_write_its_result_answers_at_once_with_a_failed_result(mux, tmp_path):
    """JobRunner.finish's fallback (runner/BenchRunner/JobRunner.swift): failed result + DONE, no timeout wait."""
    import time

    phone = add_phone(mux, 1)
    phone.faults.result_unwritable = True
    target = _target(phone, tmp_path, timeout_s=60)
    started = time.monotonic()
    results = list(target.run_round(_request(_ref(_variant(tmp_path / "v", "fp16-aaaaaaaaaaaa", 1, 10))),
                                    lambda: False))
    assert time.monotonic() - started < 30
    (result,) = results
    assert result.samples == [] and result.error.startswith("could not write result.json")
    assert "runner log:" in result.error


def test_done_without_a_result_is_one_line_not_a_timeout(mux, tmp_path):
    phone = add_phone(mux, 1)
    phone.faults.done_without_result = True
    variant = _variant(tmp_path, "fp16-aaaa", 1, 10)
    job_id = api.deploy_job(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": variant}, make_inputs())
    with pytest.raises(ResultInvalid, match="result.json is missing on the device") as caught:
        api.run_job(phone.udid, job_id, 60, poll_s=0.05)
    _one_line(caught.value)


def test_inputs_that_do_not_fit_the_job_are_refused_before_any_byte_is_sent(mux, tmp_path):
    from bench.deploy.api import InputTensor
    from bench.errors import BenchError

    phone = add_phone(mux, 1)
    variant = _variant(tmp_path, "fp16-aaaa", 1, 10)
    wrong = {"img-1": InputTensor(b"\0" * 16, (1, 3, 2, 2)), "img-2": InputTensor(b"\0" * 16, (1, 3, 2, 2))}
    with pytest.raises(BenchError, match=r"img-1.*float32 \[1, 3, 32, 32\]"):
        api.deploy(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": variant}, wrong)
    with pytest.raises(BenchError, match="no input tensor given for image img-2"):
        api.deploy(phone.udid, job_spec(["fp16-aaaa"]), {"fp16-aaaa": variant}, {"img-1": make_inputs()["img-1"]})
    assert phone.bytes_written == {}
