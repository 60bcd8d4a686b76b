"""Push throughput over the loopback fake iPhone: our atomic, content-addressed push vs pymobiledevice3's own
`AfcService.push` of the same bytes, side by side (target: ours >= 0.8x theirs).

Both run the real pymobiledevice3 AFC client over a real UNIX socket into the protocol-level fake (tests/fake_iphone,
served from a child process so client and fake do not share one GIL), in the same house_arrest container. Ours
additionally size-checks every file and renames the tree into place (and sends small files four at a time); a real
phone over USB 2 tops out near 30-38 MiB/s, so these loopback figures measure client overhead, not the cable.
The ratio test compares the best of interleaved rounds (order alternating); medians are printed beside it.

    .venv/bin/python -m pytest benchmarks/test_deploy.py --benchmark-only -s
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_iphone import FakeIPhone, FakeUsbmuxd  # noqa: E402

MIB = 1024 * 1024
ROUNDS = int(os.environ.get("BENCH_PUSH_ROUNDS", "5"))


def _package(folder: Path) -> Path:
    """A 40 MiB stand-in package: one big weight file, a medium one, and twenty small files."""
    package = folder / "encoder.mlpackage"
    weights = package / "Data" / "com.apple.CoreML" / "weights"
    weights.mkdir(parents=True)
    rng = os.urandom
    (weights / "weight.bin").write_bytes(rng(32 * MIB))
    (weights / "weight2.bin").write_bytes(rng(7 * MIB))
    for index in range(20):
        (package / "Data" / f"meta{index}.json").write_bytes(rng(50_000))
    return package


def _serve_fake(socket_path: str, root: str) -> None:
    """Child process: the fake phone gets its own interpreter, so client and fake do not share one GIL."""
    import signal

    mux = FakeUsbmuxd(socket_path).start()
    phone = FakeIPhone(root=Path(root))
    phone.install_app("org.bench.runner")
    mux.add(phone)
    signal.sigwait({signal.SIGTERM})
    mux.stop()


@pytest.fixture(scope="module")
def setup():
    import multiprocessing

    import pymobiledevice3.common

    short = Path(tempfile.mkdtemp(prefix="bfb", dir="/tmp"))
    old_env = {k: os.environ.get(k) for k in ("HOME", "USBMUXD_SOCKET_ADDRESS")}
    os.environ["HOME"], os.environ["USBMUXD_SOCKET_ADDRESS"] = str(short), str(short / "mux.sock")
    old_home_folder = pymobiledevice3.common._HOMEFOLDER
    pymobiledevice3.common._HOMEFOLDER = short / ".pymobiledevice3"
    server = multiprocessing.get_context("fork").Process(target=_serve_fake,
                                                          args=(str(short / "mux.sock"), str(short / "phone")))
    server.start()
    deadline = time.monotonic() + 20
    while not (short / "mux.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    phone = FakeIPhone(root=short / "phone")  # the same on-disk phone, seen from this process (for _clear)
    package = _package(short / "src")
    size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
    loop = asyncio.new_event_loop()
    yield loop, phone, package, size
    loop.close()
    server.terminate()
    server.join(10)
    shutil.rmtree(short, ignore_errors=True)
    pymobiledevice3.common._HOMEFOLDER = old_home_folder
    for key, value in old_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


async def _open(udid):
    from bench.deploy.session import DeviceSession

    session = await DeviceSession(udid).__aenter__()
    afc = await session.container().__aenter__()
    return session, afc


def _clear(phone):
    models = phone.bench_dir() / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)


def _ours(loop, afc, package, round_no):
    from bench.deploy import container

    async def go():
        return await container.push_tree(afc, package, f"{container.MODELS}/ours{round_no}", "bench",
                                         inner="encoder.mlpackage")
    return loop.run_until_complete(go())


def _theirs(loop, afc, package, round_no):
    async def go():
        await afc.makedirs(f"Documents/bench/models/theirs{round_no}")
        await afc.push(str(package), f"Documents/bench/models/theirs{round_no}", progress_bar=False)
    loop.run_until_complete(go())


@pytest.mark.benchmark(group="deploy-push")
@pytest.mark.parametrize("who", ["ours", "pymobiledevice3"])
def test_push(benchmark, setup, who):
    """The same bytes pushed by our content-addressed atomic push and by pymobiledevice3's own AfcService.push."""
    loop, phone, package, size = setup
    push = _ours if who == "ours" else _theirs
    session, afc = loop.run_until_complete(_open(phone.udid))
    counter = iter(range(1000))
    benchmark.pedantic(lambda: push(loop, afc, package, next(counter)), setup=lambda: _clear(phone),
                       rounds=ROUNDS, iterations=1)
    benchmark.extra_info["MiB_per_s"] = round(size / MIB / benchmark.stats["median"], 1)
    loop.run_until_complete(afc.aclose())


@pytest.mark.benchmark(group="deploy-push-ratio")
def test_ours_keeps_at_least_80_percent_of_pymobiledevice3_throughput(benchmark, setup):
    """Interleaved rounds, alternating who goes first, so both see the same machine load and disk state."""
    loop, phone, package, size = setup
    session, afc = loop.run_until_complete(_open(phone.udid))
    ours, theirs = [], []
    rounds = iter(range(1000))

    def pair():
        round_no = next(rounds)
        order = ((_ours, ours), (_theirs, theirs))
        for runner, times in order if round_no % 2 == 0 else order[::-1]:  # alternate who goes first
            _clear(phone)
            start = time.perf_counter()
            runner(loop, afc, package, round_no)
            times.append(time.perf_counter() - start)

    benchmark.pedantic(pair, rounds=ROUNDS, iterations=1)
    loop.run_until_complete(afc.aclose())
    # Best round of each: on a shared 2-core machine the minimum is the least disturbed estimate of what the code
    # can do; medians are printed beside it.
    ours_rate, theirs_rate = size / MIB / min(ours), size / MIB / min(theirs)
    ours_median = size / MIB / sorted(ours)[len(ours) // 2]
    theirs_median = size / MIB / sorted(theirs)[len(theirs) // 2]
    print(f"\npush {size / MIB:.1f} MiB over the loopback fake, best of {ROUNDS}: ours {ours_rate:.1f} MiB/s, "
          f"pymobiledevice3 AfcService.push {theirs_rate:.1f} MiB/s, ratio {ours_rate / theirs_rate:.2f} "
          f"(medians {ours_median:.1f} vs {theirs_median:.1f} MiB/s)")
    benchmark.extra_info.update(ours_MiB_per_s=round(ours_rate, 1), pymobiledevice3_MiB_per_s=round(theirs_rate, 1))
    assert ours_rate >= 0.8 * theirs_rate
