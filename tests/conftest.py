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
