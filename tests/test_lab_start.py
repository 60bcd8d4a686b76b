"""The real `ray start` path behind `bench lab up` and `bench lab join`: the CLI starts a head, then a host joins it
with its (fake) iPhone, as two separate `ray start` process trees; `bench lab status` sees the host and the phone.
Token auth on; every listener on loopback; the token on no command line; everything stopped here by process id.

Ray rewrites a loopback head address to the machine's interface address when a host joins (`ray start --address`
on 127.0.0.1 then waits for a GCS at 192.0.2.x), so head and host run in a network namespace of this test's own
(`unshare --net`), where loopback is the only interface — what a lab on one machine needs too (docs/lab.md).
Faked: the phone (tests/fake_iphone on a UNIX socket, which the namespace does not hide). Real: the CLI, `ray start`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from deploy_fixtures import RUNNER  # noqa: E402
from lab_fixtures import LOOPBACK  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


def _own_network_namespace() -> bool:
    try:
        return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _processes_of(root: Path) -> set[int]:
    """Every process of the lab started here: those naming its Ray temp dir, and everything they started."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if any(str(root) in part for part in process.info["cmdline"] or []):
            found.add(process.pid)
            try:
                found.update(child.pid for child in process.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
    return found


def _listeners_in_namespace(member: int, pids: set[int]) -> list[tuple[int, str, int]]:
    """lab_fixtures.listeners, run inside the lab's network namespace (/proc/net shows the reader's namespace)."""
    check = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
             f"from lab_fixtures import listeners; print(json.dumps(listeners({sorted(pids)!r})))")
    done = subprocess.run(["nsenter", f"--net=/proc/{member}/ns/net", sys.executable, "-c", check],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(item) for item in json.loads(done.stdout)]


def _stop(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        _, alive = psutil.wait_procs([p for p in map(_process, pids) if p is not None], timeout=10)
        if not alive:
            return


def _process(pid: int):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


@pytest.mark.skipif(not _own_network_namespace(), reason="needs `unshare --net` (a network namespace of its own)")
def test_lab_up_and_join_start_real_ray_nodes_on_loopback():
    from fake_iphone import FakeIPhone, FakeUsbmuxd

    root = Path(tempfile.mkdtemp(prefix="blup", dir="/tmp"))  # UNIX socket paths stay short
    (root / "home").mkdir()
    token = root / "token"
    mux = FakeUsbmuxd(root / "mux.sock").start()
    phone = FakeIPhone(root=root / "phone1", udid="00008110-00000000000000A1", name="Fake A1")
    phone.install_app(RUNNER, "0.3", "12")
    mux.add(phone)
    bench = f"{sys.executable} -m bench"
    script = f"""set -e
ip link set lo up
{bench} lab up 127.0.0.1:6379 --token-file {token}
{bench} lab join 127.0.0.1:6379 --token-file {token}
{bench} lab status 127.0.0.1:6379 --token-file {token}
"""
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "HOME": str(root / "home"), "RAY_TMPDIR": str(root),
           "USBMUXD_SOCKET_ADDRESS": str(root / "mux.sock"), "BENCH_TUNNELD_ADDRESS": "127.0.0.1:9",
           "COLUMNS": "200"}
    try:
        done = subprocess.run(["unshare", "--net", "bash", "-c", script], capture_output=True, text=True, env=env,
                              timeout=400, cwd=root)
        pids = _processes_of(root)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "lab head listening on 127.0.0.1:6379" in done.stdout
        assert f"offering Fake A1 ({phone.udid}" in done.stdout
        status = done.stdout.split("offering Fake A1", 1)[1]
        assert "Fake A1" in status and "ready" in status, done.stdout
        raylets = [pid for pid in pids if (p := _process(pid)) is not None and p.name() == "raylet"]
        assert len(raylets) == 2  # the head's and the host's: two nodes, two process trees
        bound = _listeners_in_namespace(raylets[0], pids)
        assert any(port == 6379 for _, _, port in bound)
        assert all(ip in LOOPBACK for _, ip, _ in bound), [b for b in bound if b[1] not in LOOPBACK]
        secret = token.read_text().strip()
        assert oct(token.stat().st_mode & 0o777) == "0o600"
        for pid in pids:  # the token travels as a file path, never as an argument
            process = _process(pid)
            assert process is None or not any(secret in part for part in process.cmdline())
        assert secret not in done.stdout + done.stderr
    finally:
        _stop(_processes_of(root))
        mux.stop()
        assert not _processes_of(root), "a lab process outlived the test"
        shutil.rmtree(root, ignore_errors=True)
