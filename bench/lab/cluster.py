"""The lab's cluster: where the head is, the shared token, starting the head (`bench lab up`), joining a host with its
phones (`bench lab join`), connecting a driver (`bench run --lab`) and the lab's status (`bench lab status`).

A phone is a Ray custom resource `iphone:<udid>` (capacity 1, so one job at a time) advertised by the host it is
plugged into; `iphone-model:<ProductType>` counts the host's phones of each model (jobs that accept "any
iPhone15,2"). What a host knows about its phones (name, model, OS build, runner version) goes into the lab's key-value
store under `phone/<udid>` and, for the tasks on that host, into the environment variable BENCH_LAB_PHONES.

Security: token authentication is always on (RAY_AUTH_MODE=token). The token lives in a file readable only by its
owner (RAY_AUTH_TOKEN_PATH); it is never put on a command line, in an environment variable's value, or in a log.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError, InputError, PlatformUnavailable

PHONE_RESOURCE = "iphone:"
MODEL_RESOURCE = "iphone-model:"
MAC_RESOURCE = "mac-coreml:"  # + host label: Core ML on that Mac (capacity 1: one round at a time on its CPU/GPU/ANE)
PHONES_ENV = "BENCH_LAB_PHONES"
TOKEN_ENV = "BENCH_LAB_TOKEN_FILE"
KV_NAMESPACE = "bench-lab"
DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0


class LabError(BenchError):
    """The lab cannot be used as asked (head unreachable, token refused, a phone claimed twice, …)."""


# --- addresses -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def parse_address(text: str, *, default_port: int = DEFAULT_PORT) -> Address:
    """HOST[:PORT] (IPv6 as [addr]:port); an empty or malformed address is one line."""
    raw = (text or "").strip().removeprefix("ray://")
    if not raw:
        raise InputError("the lab address is empty; give HOST[:PORT] of the head (`bench lab up` prints it)")
    host, port = raw, str(default_port)
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not _is_ipv6(host)):
        raise InputError(f"lab address {text!r} is not HOST[:PORT] (e.g. 10.0.0.5:{DEFAULT_PORT})")
    return Address(host, int(port))


def _is_ipv6(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def check_reachable(address: Address, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds with one line when nothing answers at the head's address (Ray itself retries for minutes)."""
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout_s):
            return
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise LabError(f"cannot reach the lab head at {address} ({why}); is `bench lab up` running there, and is "
                       f"TCP port {address.port} open in its firewall?") from None


def routable_address() -> str | None:
    """The address Ray's own lookup would take for this machine (the interface towards the internet; a UDP
    connect sends nothing), or None where loopback is all there is (an isolated network namespace)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("8.8.8.8", 53))
            found = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(found).is_loopback else found


def local_ip_towards(address: Address) -> str:
    """The address this host uses to reach the head: the one to advertise (loopback stays loopback)."""
    if address.loopback:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET6 if ":" in address.host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address.host, address.port))
        return probe.getsockname()[0]


# --- the token ---------------------------------------------------------------------------------------------------

def default_token_file() -> Path:
    configured = os.environ.get(TOKEN_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bench" / "lab-token"


def create_token_file(path: Path) -> bool:
    """Make a new random token readable by its owner only; False when one is already there (it is kept)."""
    if path.exists():
        check_token_file(path)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return True


def check_token_file(path: Path) -> Path:
    """The token file must exist, hold a token and be private; its content is never printed."""
    if not path.is_file():
        raise InputError(f"no lab token at {path}; copy the head's token file here (mode 600), or set {TOKEN_ENV} "
                         "to its path (`bench lab` commands also take --token-file)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(f"{path}: the lab token is readable by others (mode {stat.S_IMODE(mode):o}); "
                         f"run `chmod 600 {path}`")
    if not path.read_text().strip():
        raise InputError(f"{path}: the lab token file is empty; copy it again from the head")
    return path


def ray_environment(token_file: Path, *, loopback: bool, joining: bool = False) -> dict[str, str]:
    """What every Ray process of the lab needs in its environment: token auth from the file, and whether Ray may
    form a multi-node cluster (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER).

    A head or driver on loopback keeps it off: Ray's own node-IP lookup then stays on 127.0.0.1
    (shared/notes/ray.md: `--node-ip-address` alone is not enough). Everything else turns it on: a host joining a
    head (`ray start --address` refuses to join with it off), and any head or driver on a real address — on macOS
    Ray's default is off, which would keep a Mac head on loopback and refuse every Mac host."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file.resolve()),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0" if loopback and not joining else "1"}
    return env


def use_environment(env: dict[str, str]) -> None:
    """Apply the lab's Ray environment to this process. Ray reads its auth settings once, when first imported, so
    they are re-read here (the same reset Ray's own tests use) — else a process that imported Ray earlier would
    connect without its token."""
    os.environ.update(env)
    if "ray" not in sys.modules:
        return  # Ray reads all of it when imported
    try:
        from ray._private import ray_constants
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # another Ray build: it reads the environment when it connects
        return
    ray_constants.ENABLE_RAY_CLUSTER = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1") != "0"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


# --- phones as resources -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabPhone:
    udid: str
    name: str
    model: str | None
    os_build: str | None = None
    runner_version: str | None = None
    host: str | None = None
    os_version: str | None = None  # the iOS the phone reported to its host (the plan skips variants needing newer)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def phone_resources(phones: list[LabPhone]) -> dict[str, float]:
    """`iphone:<udid>` = 1 per phone; `iphone-model:<model>` = how many of that model this host holds."""
    resources: dict[str, float] = {}
    for phone in phones:
        resources[PHONE_RESOURCE + phone.udid] = 1.0
        if phone.model:
            key = model_resource(phone.model)
            resources[key] = resources.get(key, 0.0) + 1.0
    return resources


def model_resource(model: str) -> str:
    """`iphone-model:iPhone15_2` for iPhone15,2: Ray hands resources to its raylet as "name,value,…", so a comma in
    a resource name crashes the host's raylet at start."""
    return MODEL_RESOURCE + model.replace(",", "_")


def label_value(text: str | None) -> str:
    """A Ray node label value (letters, digits, '-', '_', '.'; at most 63 characters; a letter or digit at each end)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text or "")[:63]
    return cleaned.strip("-_.") or "unknown"


@dataclass(frozen=True)
class LabMac:
    """A host's Core ML on macOS (`macos-coreml`), offered to the lab like a phone."""

    host: str
    os_version: str | None = None
    machine: str | None = None

    @property
    def resource(self) -> str:
        return MAC_RESOURCE + label_value(self.host)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def this_mac() -> LabMac | None:
    """This host's Core ML target when it is a Mac whose coremltools can predict, else None."""
    import importlib.util
    import platform

    if platform.system() != "Darwin" or importlib.util.find_spec("coremltools") is None:
        return None
    return LabMac(socket.gethostname(), platform.mac_ver()[0] or None, platform.machine() or None)


def host_labels(phones: list[LabPhone], host: str, mac: LabMac | None = None) -> dict[str, str]:
    """Ray node labels (label values allow letters, digits, '-', '_', '.'; at most 63 characters)."""
    clean = label_value
    labels = {"bench.host": clean(host)}
    if mac is not None:
        labels["bench.macos"] = clean(f"{mac.os_version or '?'}.{mac.machine or '?'}")
    models = sorted({p.model for p in phones if p.model})
    versions = sorted({p.runner_version for p in phones if p.runner_version})
    builds = sorted({p.os_build for p in phones if p.os_build})
    for key, values in (("bench.models", models), ("bench.runner", versions), ("bench.os-builds", builds)):
        if values:
            labels[key] = clean(".".join(values))
    return labels


def phones_environment(phones: list[LabPhone]) -> dict[str, str]:
    """The host's phones for the tasks running there (they pick a phone of a model from this list)."""
    return {PHONES_ENV: json.dumps([p.as_dict() for p in phones], sort_keys=True)}


def phones_here() -> list[LabPhone]:
    """Inside a task: the phones of the host it runs on."""
    return [LabPhone(**entry) for entry in json.loads(os.environ.get(PHONES_ENV) or "[]")]


def attached_phones(inventory=None) -> list[LabPhone]:
    """The attached, healthy phones of this host (the same health `bench devices` shows); unhealthy ones are left
    out with their problem in `skipped`."""
    phones, _ = survey_phones(inventory)
    return phones


def survey_phones(inventory=None) -> tuple[list[LabPhone], list[str]]:
    from bench.deploy.api import survey

    result = survey(inventory)
    host = socket.gethostname()
    healthy, skipped = [], []
    for row in result.rows:
        info, health = row.info, row.health
        if not info.connected or not info.enabled:
            continue
        if health is None or not health.ready:
            problems = "; ".join(health.problems) if health else "no health report"
            skipped.append(f"{info.name or info.udid}: {problems}")
            continue
        healthy.append(LabPhone(udid=info.udid, name=info.name or info.udid, model=info.model,
                                os_build=info.os_build,
                                runner_version=health.runner.version if health.runner else None, host=host,
                                os_version=info.os_version or info.expected_os))
    if result.usbmux_problem:
        skipped.append(result.usbmux_problem)
    return healthy, skipped


# --- connecting ----------------------------------------------------------------------------------------------------

def connect(address: str | Address, token_file: Path | None = None):
    """Connect this process to the lab as a driver (idempotent). Unreachable head / refused token: one line."""
    where = address if isinstance(address, Address) else parse_address(address)
    token = check_token_file(token_file or default_token_file())
    check_reachable(where)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return sys.modules["ray"]
    use_environment(ray_environment(token, loopback=where.loopback))  # before importing Ray: it reads them once
    try:
        import ray
    except ImportError:
        raise PlatformUnavailable("Ray is not installed here; install the lab extra: pip install 'bench[lab]'") \
            from None

    _quiet_ray()
    with _native_log() as native:  # Ray's C++ core logs retries to fd 2: keep them, read them, show one line
        try:
            ray.init(address=str(where), namespace=KV_NAMESPACE, logging_level="ERROR", log_to_driver=False,
                     configure_logging=False)
            return ray
        except Exception as err:  # noqa: BLE001 — Ray raises bare exceptions (ConnectionError, RuntimeError, …)
            failure, log_text = err, native.read_text(errors="replace")
    raise _connection_error(where, token, failure, log_text) from None


@contextmanager
def _native_log():
    """Point this process's fd 2 at a private file while Ray connects (its native logs go there, not to the user)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as folder:
        path = Path(folder) / "native.log"
        with open(path, "w") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield path
            finally:
                os.dup2(saved, 2)
                os.close(saved)


def _connection_error(where: Address, token: Path, err: Exception, native_log: str) -> LabError:
    text = f"{err}\n{native_log}"
    if "InvalidAuthToken" in text or "Unauthenticated" in text:
        return LabError(f"the lab head at {where} refused the token in {token}; copy the head's token file to this "
                        "host (mode 600) and try again")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return LabError(f"cannot join the lab at {where}: {first[:200]} (is it a Ray {_ray_version()} head?)")


def _ray_version() -> str:
    import ray

    return ray.__version__


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _quiet_ray() -> None:
    import logging

    for name in ("ray", "ray._private", "ray.util"):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- starting the head and the hosts (`ray start`, so they outlive the command) -----------------------------------

def ray_executable() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def head_command(bind: Address, *, num_cpus: int = 0) -> list[str]:
    """The head runs no jobs (num_cpus 0, no phones): it only schedules. It binds to the address the user names."""
    return [ray_executable(), "start", "--head", f"--node-ip-address={bind.host}", f"--port={bind.port}",
            f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats"]


def worker_slots(phones: list[LabPhone]) -> int:
    """Ray keeps about num_cpus idle workers per host and kills the rest after a second idle; a job's worker imports
    pymobiledevice3 (seconds), so a host keeps one worker per phone alive: num_cpus = phones (tasks ask for 0)."""
    return max(1, len(phones))


def join_command(head: Address, node_ip: str, phones: list[LabPhone], *, num_cpus: int | None = None,
                 mac: LabMac | None = None) -> list[str]:
    num_cpus = (worker_slots(phones) + (1 if mac and phones else 0)) if num_cpus is None else num_cpus
    host = phones[0].host if phones else (mac.host if mac else socket.gethostname())
    labels = ",".join(f"{key}={value}" for key, value in host_labels(phones, host or "unknown", mac).items())
    resources = {**phone_resources(phones), **({mac.resource: 1.0} if mac else {})}
    return [ray_executable(), "start", f"--address={head}", f"--node-ip-address={node_ip}",
            f"--resources={json.dumps(resources, sort_keys=True)}", f"--labels={labels}",
            f"--num-cpus={num_cpus}", "--disable-usage-stats"]


def start_head(bind: str, token_file: Path) -> Address:
    """`bench lab up`: a new token when there is none, then `ray start --head` bound to `bind`."""
    where = parse_address(bind)
    create_token_file(token_file)
    _ray_start(head_command(where), token_file, where.loopback, {})
    return where


def join_lab(address: str, token_file: Path, phones: list[LabPhone], *, num_cpus: int | None = None,
             node_ip: str | None = None, mac: LabMac | None = None) -> list[LabPhone]:
    """`bench lab join`: refuse a host with nothing to offer (no phone, no Core ML on a Mac) or a phone another host
    already holds, then start this host's Ray node advertising its phones and its Mac Core ML target, and describe
    them in the lab's key-value store."""
    where = parse_address(address)
    if not phones and mac is None:
        raise LabError("no healthy iPhone is attached to this host (and it is no Mac with Core ML), so it has "
                       "nothing to offer the lab; `bench devices` shows what each phone needs")
    if where.loopback and (routable := routable_address()) is not None:
        # `ray start --address=127.0.0.1:…` swaps in this address and then waits minutes for a head that is not there
        raise LabError(f"a host cannot join a head on loopback ({where}) on this machine: Ray replaces it with "
                       f"{routable} when joining; start the head on an address the hosts reach (`bench lab up "
                       f"{routable}:{where.port}`), or run head and hosts in one network namespace (docs/lab.md)")
    connect(where, token_file)
    try:
        check_not_claimed(phones)
    finally:
        disconnect()
    env = phones_environment(phones)
    _ray_start(join_command(where, node_ip or local_ip_towards(where), phones, num_cpus=num_cpus, mac=mac),
               token_file, where.loopback, env, joining=True)
    connect(where, token_file)
    try:
        register_phones(phones)
        if mac is not None:
            register_mac(mac)
    finally:
        disconnect()
    return phones


def _ray_start(command: list[str], token_file: Path, loopback: bool, extra_env: dict[str, str], *,
               joining: bool = False) -> None:
    env = {**os.environ, **ray_environment(token_file, loopback=loopback, joining=joining), **extra_env}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise PlatformUnavailable("Ray is not installed; install the lab extra: pip install 'bench[lab]'") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise LabError(f"`ray start` failed: {lines[-1] if lines else f'exit code {done.returncode}'}")


# --- what the lab holds --------------------------------------------------------------------------------------------

def check_not_claimed(phones: list[LabPhone]) -> None:
    """A phone is plugged into one host: a second host advertising it would run two jobs on it at once."""
    holders = phone_holders()
    for phone in phones:
        other = holders.get(phone.udid)
        if other:
            raise LabError(f"phone {phone.name} ({phone.udid}) is already held by lab host {', '.join(other)}; "
                           "a phone belongs to one host — unplug it there or stop that host (`ray stop`) first")


def phone_holders() -> dict[str, list[str]]:
    """udid -> the live hosts advertising it (more than one means the phone moved and the old host still claims it)."""
    import ray

    holders: dict[str, list[str]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        host = (node.get("Labels") or {}).get("bench.host") or node.get("NodeManagerAddress") or "?"
        for resource in node.get("Resources") or {}:
            if resource.startswith(PHONE_RESOURCE):
                holders.setdefault(resource[len(PHONE_RESOURCE):], []).append(host)
    return holders


def register_phones(phones: list[LabPhone]) -> None:
    from ray.experimental import internal_kv

    for phone in phones:
        internal_kv._internal_kv_put(f"phone/{phone.udid}", json.dumps(phone.as_dict()), overwrite=True,
                                     namespace=KV_NAMESPACE)


def register_mac(mac: LabMac) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(f"mac/{label_value(mac.host)}", json.dumps(mac.as_dict()), overwrite=True,
                                 namespace=KV_NAMESPACE)


def lab_macs() -> list[LabMac]:
    """The Macs live hosts offer now (`mac-coreml:<host>` resources), described as they registered."""
    import ray
    from ray.experimental import internal_kv

    macs = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for resource in node.get("Resources") or {}:
            if resource.startswith(MAC_RESOURCE):
                host = resource[len(MAC_RESOURCE):]
                raw = internal_kv._internal_kv_get(f"mac/{host}", namespace=KV_NAMESPACE)
                macs.append(LabMac(**json.loads(raw)) if raw else LabMac(host))
    return sorted(macs, key=lambda mac: mac.host)


def registered_phones() -> dict[str, LabPhone]:
    from ray.experimental import internal_kv

    found = {}
    for key in internal_kv._internal_kv_list("phone/", namespace=KV_NAMESPACE) or []:
        raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        if raw:
            entry = json.loads(raw)
            found[entry["udid"]] = LabPhone(**entry)
    return found


@dataclass
class HostStatus:
    host: str
    node_id: str
    alive: bool
    address: str
    phones: list[dict] = field(default_factory=list)  # {udid, name, model, os_build, runner, health, running}
    mac: str | None = None  # "Core ML, macOS <version> <machine>" when the host offers its Mac


def lab_status(*, health_timeout_s: float = 60.0) -> list[HostStatus]:
    """Every host and its phones: health checked on the host itself (`bench devices`' checks) unless the phone is
    running a job, in which case the job is shown."""
    import ray

    from bench.lab.host import RUNNING_PREFIX

    known = registered_phones()
    running = _running_jobs(RUNNING_PREFIX)
    hosts, checks = [], {}
    for node in ray.nodes():
        labels = node.get("Labels") or {}
        udids = sorted(r[len(PHONE_RESOURCE):] for r in node.get("Resources") or {} if r.startswith(PHONE_RESOURCE))
        status = HostStatus(labels.get("bench.host") or node.get("NodeManagerHostname") or "?", node["NodeID"],
                            bool(node.get("Alive")), node.get("NodeManagerAddress") or "?")
        if "node:__internal_head__" in (node.get("Resources") or {}):
            status.host += " (head)"
        macs = [r for r in node.get("Resources") or {} if r.startswith(MAC_RESOURCE)]
        if macs:
            mac = next((m for m in lab_macs() if m.resource == macs[0]), None)
            status.mac = f"Core ML, macOS {mac.os_version or '?'} {mac.machine or ''}".rstrip() if mac else "Core ML"
        for udid in udids:
            phone = known.get(udid)
            status.phones.append({"udid": udid, "name": phone.name if phone else udid,
                                  "model": phone.model if phone else None,
                                  "os_build": phone.os_build if phone else None,
                                  "runner": phone.runner_version if phone else None,
                                  "running": running.get(udid), "health": None})
        hosts.append(status)
        if status.alive and udids:
            checks[node["NodeID"]] = _health_on(node["NodeID"], [u for u in udids if u not in running])
    for status in hosts:
        ref = checks.get(status.node_id)
        if ref is None:
            continue
        try:
            reports = ray.get(ref, timeout=health_timeout_s)
        except Exception as err:  # noqa: BLE001 — a host that cannot answer is shown as such, the others still are
            reports = {p["udid"]: f"no answer from the host ({type(err).__name__})" for p in status.phones}
        for phone in status.phones:
            if phone["running"] is None:
                phone["health"] = reports.get(phone["udid"], "unknown")
    return hosts


def _running_jobs(prefix: str) -> dict[str, str]:
    from ray.experimental import internal_kv

    running = {}
    for key in internal_kv._internal_kv_list(prefix, namespace=KV_NAMESPACE) or []:
        raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        name = key.decode() if isinstance(key, bytes) else key
        if raw:
            running[name[len(prefix):]] = raw.decode() if isinstance(raw, bytes) else raw
    return running


def _health_on(node_id: str, udids: list[str]):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from bench.lab.host import phone_health

    remote = ray.remote(num_cpus=0, max_retries=0)(phone_health)
    return remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(udids)
