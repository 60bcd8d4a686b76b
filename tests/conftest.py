"""Shared test set-up. Areas keep their own fixtures in tests/<area>_fixtures.py."""

from __future__ import annotations

import os

import pytest

# No model-hub or dataset downloads, ever: transformers must only read local files.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Library progress bars off, as `bench` itself does before importing them (bench/cli/_common.py): tests run many
# commands in one process, and tqdm reads this once, when the first library imports it.
os.environ.setdefault("TQDM_DISABLE", "1")
# Two shared cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def bad_input_template(tmp_path_factory):
    """The healthy workspace the bad-input suites damage copies of (tests/bad_input_cases.py); built once."""
    from bad_input_cases import build_template

    return build_template(tmp_path_factory.mktemp("bad-input") / "ws")


@pytest.fixture(scope="session")
def byo_packages(tmp_path_factory):
    """Tiny Core ML models made directly with coremltools (tests/byo_fixtures.py); built once per session."""
    from byo_fixtures import make_packages

    return make_packages(tmp_path_factory.mktemp("byo") / "packages")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """`bench run` with no argument — what `make run` does — in a fresh workspace, built once per session: the default
    matrix (models/matrix.yaml) of the shipped built-in captioner, built for real, measured on host-torch (the target
    every machine has), evaluated and reported (results/<run>/report.html). Only the sample counts are smaller than
    `make run`'s (2 images, 1 round, 20 evaluation images): the report draws the same figures from the same variants.
    Returns the run's outcome (run_dir, data, report)."""
    import torch

    from bench.paths import Workspace
    from bench.run.api import run_pipeline
    from bench.run.config import RunConfig

    torch.set_num_threads(1)
    config = RunConfig.model_validate({"targets": ["host-torch"], "images": 2, "rounds": 1, "warmup": 0, "seed": 13,
                                       "eval_images": 20, "adaptive": {"ci_width": None}})
    outcome = run_pipeline(config, Workspace(tmp_path_factory.mktemp("default-run")), log=lambda *_: None)
    assert outcome.status == "complete", outcome.failures
    return outcome


@pytest.fixture(scope="session")
def kv_workspace(tmp_path_factory):
    """(root, {name: manifest}): the tiny captioner for iOS 18 with recompute and kv_cache decoders
    (tests/kv_fixtures.py); built once per session."""
    from kv_fixtures import build_kv_workspace

    return build_kv_workspace(tmp_path_factory.mktemp("kv-ws"))
