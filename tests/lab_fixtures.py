"""A real local Ray lab for the lab tests: a head and two hosts (separate process trees, ray.cluster_utils.Cluster),
token auth on, loopback only (shared/notes/ray.md), each host with its own fake usbmuxd and fake iPhones.

Faked: the phones (tests/fake_iphone, spoken to by the real pymobiledevice3 inside the hosts' Ray workers) and image
preprocessing (zeros, to keep torch out). Real: Ray (processes, scheduling on custom resources, the object store,
killing a host), the deploy layer, the scheduler, the run store.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from deploy_fixtures import DECODE, RUNNER, make_variant

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def zeros(images, size, mode, variant=None):
    return np.zeros((1, 3, size, size), "f4")


PHONES_PROCESS = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from fake_iphone import FakeIPhone, FakeUsbmuxd

root = Path({root!r})
mux = FakeUsbmuxd(root / "mux.sock").start()
for index in {indices!r}:
    phone = FakeIPhone(root=root / f"phone{{index}}", udid=f"00008110-{{index:016X}}", name=f"Fake {{index}}",
                       product_type={model!r})
    phone.faults.runner_seconds = {runner_seconds!r}
    phone.install_app({runner!r}, "0.3", "12")
    mux.add(phone)
print("READY", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us by pid)
mux.stop()
"""


class FakeHost:
    """One lab host: a fake usbmuxd with its phones, its HOME and package cache, and (once joined) its Ray node.

    `own_process`: the phones are served from a process of their own (as real phones bring their own CPUs), for
    benchmarks; the test then cannot flip faults on them. Default: in this process, faults settable."""

    def __init__(self, root: Path, name: str, indices: list[int], model: str = "iPhone14,2", *,
                 own_process: bool = False, runner_seconds: float = 0.05, mac: bool = False):
        from fake_iphone import FakeIPhone, FakeUsbmuxd

        self.name, self.root, self.process, self.mux = name, root, None, None
        self.mac = None
        if mac:  # it offers Core ML on "its Mac": the runtime in its workers is FakeCaptionCoreML (fake_mac_runtime)
            from bench.lab.cluster import LabMac

            self.mac = LabMac(name, "15.1", "arm64")
        (root / "home").mkdir(parents=True)
        self.phones = []
        if own_process:
            import subprocess
            import sys

            script = PHONES_PROCESS.format(tests=str(Path(__file__).parent), root=str(root), indices=list(indices),
                                           model=model, runner_seconds=runner_seconds, runner=RUNNER)
            self.process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
            assert self.process.stdout.readline().strip() == "READY"
            self.phones = [FakeIPhone(root=root / f"info{index}", udid=f"00008110-{index:016X}",
                                      name=f"Fake {index}", product_type=model) for index in indices]  # names only
        else:
            self.mux = FakeUsbmuxd(root / "mux.sock").start()
            for index in indices:
                phone = FakeIPhone(root=root / f"phone{index}", udid=f"00008110-{index:016X}", name=f"Fake {index}",
                                   product_type=model)
                phone.faults.runner_seconds = runner_seconds
                phone.install_app(RUNNER, "0.3", "12")
                self.phones.append(self.mux.add(phone))
        self.node = None

    def lab_phones(self):
        from bench.lab.cluster import LabPhone

        return [LabPhone(p.udid, p.name, p.product_type, p.build, "0.3", self.name, p.ios) for p in self.phones]

    def env(self) -> dict[str, str]:
        from bench.lab.cluster import phones_environment

        tests = str(Path(__file__).parent)  # the workers import fake_mac_runtime from here
        return {"HOME": str(self.root / "home"), "USBMUXD_SOCKET_ADDRESS": str(self.root / "mux.sock"),
                "PYTHONPATH": os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH")) if p),
                "BENCH_TUNNELD_ADDRESS": "127.0.0.1:9", "BENCH_LAB_CACHE": str(self.root / "cache"),
                **phones_environment(self.lab_phones())}

    def join(self, cluster):
        """What `bench lab join` does, with Cluster.add_node in place of `ray start` (several nodes, one machine)."""
        from bench.lab.cluster import (check_not_claimed, host_labels, phone_resources, register_mac, register_phones,
                                       worker_slots)

        check_not_claimed(self.lab_phones())
        resources = {**phone_resources(self.lab_phones()), **({self.mac.resource: 1.0} if self.mac else {})}
        self.node = cluster.add_node(num_cpus=worker_slots(self.lab_phones()) + (1 if self.mac else 0),
                                     node_ip_address="127.0.0.1", resources=resources,
                                     labels=host_labels(self.lab_phones(), self.name, self.mac), env_vars=self.env(),
                                     object_store_memory=80 * 1024 * 1024)
        register_phones(self.lab_phones())
        if self.mac:
            register_mac(self.mac)
        return self.node

    def stop(self):
        if self.mux is not None:
            self.mux.stop()
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except Exception:  # noqa: BLE001 — it would not stop: end it, by its pid
                self.process.kill()
                self.process.wait()


class FakeCaptionCoreML:
    """The Core ML runtime of a Mac, which cannot exist on Linux (a test double): `load_package` checks the package
    is there and answers predictions as a captioner whose caption ends (eos) after three tokens, in a few ms."""

    SECONDS = {"encoder": 0.002, "decoder": 0.001}

    def load_package(self, package: Path, compute_unit: str):
        if not (Path(package) / "Manifest.json").is_file():
            raise OSError(f"{package} is not an .mlpackage")
        return _FakeCaptionModel("encoder" if "encoder" in Path(package).name else "decoder")


class _FakeCaptionModel:
    def __init__(self, role: str):
        self.role = role

    def predict(self, features: dict) -> dict:
        import time

        time.sleep(FakeCaptionCoreML.SECONDS[self.role])
        if self.role == "encoder":
            return {"image_embeds": np.zeros((1, 4, 8), "f4")}
        ids = features["input_ids"]
        length = ids.shape[1]
        logits = np.zeros((1, length, 128), "f4")
        for position in range(length):  # next token: 10, 11, then eos (DECODE["eos_id"])
            logits[0, position, 10 + position if position < 2 else DECODE["eos_id"]] = 1.0
        return {"logits": logits}


def fake_mac_runtime() -> None:
    """Ray worker setup hook (runtime_env worker_process_setup_hook): the lab host's Mac runtime becomes the fake."""
    from bench.lab import host

    host.mac_runtime = FakeCaptionCoreML


@contextmanager
def lab_cluster(hosts_spec: dict[str, list[int]], macs: tuple[str, ...] = (), **host_options):
    """Head + one node per host; yields (cluster, hosts, token file). Everything is stopped by process id. Hosts
    named in `macs` also offer Core ML on "their Mac" (FakeCaptionCoreML in their workers)."""
    import ray
    from ray.cluster_utils import Cluster

    from bench.lab.cluster import create_token_file, ray_environment, use_environment

    root = Path(tempfile.mkdtemp(prefix="blab", dir="/tmp"))  # UNIX socket paths stay short
    token = root / "token"
    create_token_file(token)
    saved = dict(os.environ)
    use_environment(ray_environment(token, loopback=True))
    cluster, hosts = None, {}
    try:
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=False, object_store_memory=80 * 1024 * 1024,
            _system_config={"health_check_period_ms": 1000, "health_check_failure_threshold": 5}))
        ray.init(address=cluster.address, namespace="bench-lab", logging_level="ERROR", log_to_driver=False,
                 configure_logging=False,
                 runtime_env={"worker_process_setup_hook": "lab_fixtures.fake_mac_runtime"} if macs else None)
        for name, indices in hosts_spec.items():
            hosts[name] = FakeHost(root / name, name, indices, mac=name in macs, **host_options)
            hosts[name].join(cluster)
        yield cluster, hosts, token
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for host in hosts.values():
            host.stop()
        os.environ.clear()
        use_environment(saved)
        shutil.rmtree(root, ignore_errors=True)


def cluster_pids(cluster) -> set[int]:
    """Every process of the cluster: the nodes' own processes and everything they started (workers, agents)."""
    import psutil

    pids = set()
    for node in cluster.list_all_nodes():
        for infos in node.all_processes.values():
            for info in infos:
                try:
                    process = psutil.Process(info.process.pid)
                except psutil.NoSuchProcess:
                    continue
                pids.add(process.pid)
                pids.update(child.pid for child in process.children(recursive=True))
    return pids


def listeners(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket and bound UDP socket of these processes."""
    import psutil

    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def declare_spec(variant: Path, spec_version: int) -> Path:
    """Make a make_variant() stand-in declare a Core ML specification version: its packages' Model protobuf says
    `spec_version` (an ML program, as coremltools writes it) and their Manifest.json is a package manifest; the
    weights stay random bytes (the fake phones never read them)."""
    import json

    from bench.build.analyze import proto_modules

    model_pb2, _ = proto_modules()
    spec = model_pb2.Model(specificationVersion=spec_version)
    spec.mlProgram.version = 1
    for role in ("encoder", "decoder"):
        package = variant / f"{role}.mlpackage"
        (package / "Data" / "com.apple.CoreML" / "model.mlmodel").write_bytes(spec.SerializeToString())
        (package / "Manifest.json").write_text(json.dumps({"fileFormatVersion": "1.0.0", "itemInfoEntries": {},
                                                           "rootModelIdentifier": "model"}))
    return variant


def lab_variants(folder: Path, names=("fp16", "int8")):
    from bench.run.targets.base import VariantRef

    return [VariantRef(f"{name}-{i:012x}", name, f"{i:012x}", path=make_variant(folder, f"{name}-{i:012x}", i),
                       image_size=32, decode=DECODE) for i, name in enumerate(names, start=1)]


@pytest.fixture
def no_ray_leftovers():
    yield
    import ray

    assert not ray.is_initialized()
