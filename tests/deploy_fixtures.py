"""Fixtures for the deploy tests: a protocol-level fake usbmuxd with fake iPhones (tests/fake_iphone/).

The real pymobiledevice3 client talks to the fake over a UNIX socket named by USBMUXD_SOCKET_ADDRESS; HOME is a
fresh directory per test (and pymobiledevice3's import-time data folder is pointed there) so no real pair record
is ever read or written.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import tempfile
from pathlib import Path

import pytest

from fake_iphone import FakeIPhone, FakeUsbmuxd

RUNNER = "org.bench.runner"
DECODE = {"bos_id": 30522, "eos_id": 102, "pad_id": 0, "max_length": 20}


@pytest.fixture
def mux(monkeypatch):
    """A running fake usbmuxd (no devices yet); the socket path stays far below the 108-byte limit."""
    short = Path(tempfile.mkdtemp(prefix="bfk", dir="/tmp"))
    monkeypatch.setenv("HOME", str(short / "home"))
    monkeypatch.setenv("USBMUXD_SOCKET_ADDRESS", str(short / "mux.sock"))
    monkeypatch.setenv("BENCH_TUNNELD_ADDRESS", "127.0.0.1:9")  # nothing listens: a tunnel is never found
    (short / "home").mkdir()
    # pymobiledevice3 fixes its data folder (pair-record cache) from HOME once, at import: point it here as well.
    import pymobiledevice3.common

    monkeypatch.setattr(pymobiledevice3.common, "_HOMEFOLDER", short / "home" / ".pymobiledevice3")
    # Tests never reach the network: the one seam that decides it (Apple's signing server, the image download)
    # says it is unreachable, as on a lab host without internet.
    import bench.deploy.diskimage

    monkeypatch.setattr(bench.deploy.diskimage, "network_reachable", lambda *_args, **_kwargs: False)
    server = FakeUsbmuxd(short / "mux.sock").start()
    server.tmp = short
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(short, ignore_errors=True)


def add_phone(mux, index: int = 1, *, installed: bool = True, **kwargs) -> FakeIPhone:
    """Attach a fake phone with a distinct UDID; the runner is installed unless told otherwise."""
    udid = f"00008110-{index:016X}"
    phone = FakeIPhone(root=mux.tmp / f"phone{index}", udid=udid, name=f"Fake {index}", **kwargs)
    if installed:
        phone.install_app(RUNNER, "0.3", "12")
    return mux.add(phone)


def make_runner_app(folder: Path, version: str = "0.4", build: str = "13") -> Path:
    """A stand-in BenchRunner.app directory (Info.plist + a binary); installd's signature check is faked."""
    app = folder / "BenchRunner.app"
    app.mkdir(parents=True)
    (app / "Info.plist").write_bytes(plistlib.dumps({"CFBundleIdentifier": RUNNER, "CFBundleExecutable": "BenchRunner",
                                                     "CFBundleShortVersionString": version, "CFBundleVersion": build}))
    (app / "BenchRunner").write_bytes(os.urandom(4096))
    return app


def make_variant(folder: Path, variant_id: str, seed: int, weight_bytes: int = 6000) -> Path:
    """A few-KB directory tree posing as a built variant (encoder.mlpackage + decoder.mlpackage); no builder."""
    import random

    rng = random.Random(seed)
    variant = folder / variant_id
    for role in ("encoder", "decoder"):
        package = variant / f"{role}.mlpackage"
        data = package / "Data" / "com.apple.CoreML"
        (data / "weights").mkdir(parents=True)
        (data / "model.mlmodel").write_bytes(rng.randbytes(1500))
        (data / "weights" / "weight.bin").write_bytes(rng.randbytes(weight_bytes))
        (package / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}')
    return variant


def job_spec(variant_ids, image_ids=("img-1", "img-2"), units=("cpuOnly", "cpuAndNeuralEngine"), **kwargs):
    from bench.deploy.api import JobSpec, ModelSpec

    models = tuple(ModelSpec(v, 32, DECODE, tuple(image_ids)) for v in variant_ids)
    steps = tuple((v, u) for v in variant_ids for u in units)
    return JobSpec(models=models, steps=steps, warmup=1, repeats=2, **kwargs)


def make_inputs(image_ids=("img-1", "img-2"), size: int = 32):
    import numpy as np

    from bench.deploy.api import InputTensor

    rng = np.random.default_rng(0)
    return {i: InputTensor(rng.standard_normal((1, 3, size, size)).astype("<f4").tobytes(), (1, 3, size, size))
            for i in image_ids}


@pytest.fixture
def tunneld(mux, monkeypatch):
    """A fake tunneld listing (HTTP) whose tunnels are plain loopback RSD endpoints (tests/fake_iphone/rsd.py)."""
    from fake_iphone.rsd import FakeTunneld

    server = FakeTunneld()
    monkeypatch.setenv("BENCH_TUNNELD_ADDRESS", server.address)
    try:
        yield server
    finally:
        server.stop()
