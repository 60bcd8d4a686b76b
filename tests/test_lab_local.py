"""The lab's pieces that need no cluster: the default `bench run` never imports Ray, addresses and token files are
checked before anything connects (one line each), the `ray start` commands never carry the token, and the per-host
package cache fetches a variant once even when two tasks ask for it at the same moment and refuses damaged bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deploy_fixtures import make_variant

TESTS = Path(__file__).parent

DEFAULT_RUN = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from bench.paths import Workspace
from bench.run.api import start_run
from bench.run.config import RunConfig
from run_fixtures import FakeTarget, images, variants

outcome = start_run(RunConfig.model_validate({{"seed": 1, "evaluate": False, "report": False, "rounds": 1,
                    "adaptive": {{"ci_width": None}}, "compute_units": ["cpuOnly"]}}), Workspace(Path({root!r})),
                    targets=[FakeTarget()], variants=variants("fp16"), images=images(2))
print("STATUS", outcome.status, "RAY", "ray" in sys.modules, "LAB", "bench.lab" in sys.modules)
"""


def test_default_run_never_imports_ray(tmp_path):
    script = DEFAULT_RUN.format(tests=str(TESTS), root=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent)
    assert "STATUS complete RAY False LAB False" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.5", "10.0.0.5:6379"), ("lab-head:7000", "lab-head:7000"), ("[::1]:7000", "[::1]:7000"),
])
def test_lab_addresses(text, expected):
    from bench.lab.cluster import parse_address

    assert str(parse_address(text)) == expected


@pytest.mark.parametrize("text", ["", "head:port", "head:70000", "a:b:c"])
def test_bad_lab_address_is_one_line(text):
    from bench.errors import InputError
    from bench.lab.cluster import parse_address

    with pytest.raises(InputError, match="lab address"):
        parse_address(text)


def test_token_file_must_exist_hold_a_token_and_be_private(tmp_path):
    from bench.errors import InputError
    from bench.lab.cluster import check_token_file, create_token_file

    token = tmp_path / "conf" / "lab-token"
    with pytest.raises(InputError, match="no lab token"):
        check_token_file(token)
    assert create_token_file(token) and not create_token_file(token)  # made once, then kept
    assert oct(token.stat().st_mode & 0o777) == "0o600" and len(token.read_text().strip()) == 64
    token.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        check_token_file(token)
    token.write_text("\n")
    token.chmod(0o600)
    with pytest.raises(InputError, match="empty"):
        check_token_file(token)


def test_ray_start_commands_carry_no_token_and_advertise_each_phone(tmp_path):
    from bench.lab.cluster import (Address, LabPhone, create_token_file, head_command, join_command,
                                   ray_environment)

    token = tmp_path / "token"
    create_token_file(token)
    secret = token.read_text().strip()
    phones = [LabPhone("00008110-01", "bench-01", "iPhone15,2", "22A3354", "0.3", "mac-1"),
              LabPhone("00008110-02", "bench-02", "iPhone15,2", "22A3354", "0.3", "mac-1")]
    head = head_command(Address("10.0.0.5", 6379))
    join = join_command(Address("10.0.0.5", 6379), "10.0.0.7", phones)
    env = ray_environment(token, loopback=False)
    assert "--node-ip-address=10.0.0.5" in head and "--port=6379" in head
    assert not any(secret in part for part in head + join + list(env.values()))
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token.resolve())
    resources = next(part for part in join if part.startswith("--resources="))
    assert '"iphone:00008110-01": 1.0' in resources and '"iphone-model:iPhone15_2": 2.0' in resources
    assert "," not in resources.split('"iphone-model:')[1].split('"')[0]  # a comma would crash the raylet
    pytest.importorskip("ray")
    from ray._private.label_utils import parse_node_labels_string, validate_node_labels

    odd = [LabPhone("00008110-03", "bench 03", "iPhone15,2", "22A3354", "0.3", "mac mini (2)")]
    labels = next(part for part in join_command(Address("10.0.0.5", 6379), "10.0.0.7", odd) if "--labels=" in part)
    parsed = parse_node_labels_string(labels.split("=", 1)[1])
    validate_node_labels(parsed)  # what `ray start` checks: it would refuse to start the host
    assert parsed["bench.host"] == "mac_mini__2" and parsed["bench.models"] == "iPhone15_2"


def test_host_cache_fetches_a_package_once_and_refuses_damaged_bytes(tmp_path):
    from bench.errors import DeviceError
    from bench.lab.packages import HostCache, pack, package_key

    variant = make_variant(tmp_path / "v", "int8-abcd", 1)
    key, data = package_key(variant), pack(variant)
    assert pack(variant) == data  # the same bytes every time
    cache, fetches = HostCache(tmp_path / "cache"), []

    def fetch():
        fetches.append(1)
        return data

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.ensure("int8-abcd", key, fetch)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fetches) == 1 and sorted(size for _, size in results) == [0, 0, 0, len(data)]
    folder = results[0][0]
    assert package_key(folder) == key and (folder / "encoder.mlpackage").is_dir()

    other = make_variant(tmp_path / "w", "fp16-abcd", 2)
    damaged = bytearray(pack(other))
    weights = (other / "encoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    damaged[bytes(damaged).index(weights) + 100] ^= 0xFF  # a flipped byte inside a weight file
    with pytest.raises(DeviceError, match="arrived damaged"):
        cache.ensure("fp16-abcd", package_key(other), lambda: bytes(damaged))
    assert not (cache.root / "packages" / package_key(other)).exists()


def test_a_mac_host_offers_core_ml_as_one_resource_with_its_label():
    from bench.lab.cluster import Address, LabMac, join_command

    mac = LabMac("mac mini (2)", "15.1", "arm64")
    join = join_command(Address("10.0.0.5", 6379), "10.0.0.7", [], mac=mac)
    resources = next(part for part in join if part.startswith("--resources="))
    assert resources == '--resources={"mac-coreml:mac_mini__2": 1.0}' and "--num-cpus=1" in join
    labels = next(part for part in join if part.startswith("--labels="))
    assert "bench.host=mac_mini__2" in labels and "bench.macos=15.1.arm64" in labels
    pytest.importorskip("ray")
    from ray._private.label_utils import parse_node_labels_string, validate_node_labels

    validate_node_labels(parse_node_labels_string(labels.split("=", 1)[1]))  # `ray start` would accept them


def test_joining_a_loopback_head_where_ray_would_rewrite_it_is_one_line(tmp_path):
    """On a machine with a routable interface Ray swaps a loopback head address for it when a host joins, then waits
    minutes for a head that is not there: refused at once, saying what to do (no head is needed to say so)."""
    from bench.errors import BenchError
    from bench.lab.cluster import LabPhone, join_lab, routable_address

    routable = routable_address()
    if routable is None:
        pytest.skip("loopback is the only interface here: Ray keeps a loopback head address, so joining works")
    phone = LabPhone("00008110-01", "bench-01", "iPhone15,2", "22A3354", "0.3", "mac-1")
    with pytest.raises(BenchError) as caught:
        join_lab("127.0.0.1:6379", tmp_path / "no-token", [phone])
    message = str(caught.value)
    assert "\n" not in message and f"bench lab up {routable}:6379" in message and "network namespace" in message
