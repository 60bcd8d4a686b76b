"""One fake iPhone: identity, trust, files on disk, installed apps, processes, faults and counters; lockdownd."""

from __future__ import annotations

import asyncio
import collections
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from .captions import CaptionScenario
from .coreml_model import SPARSE_SLOWER, CoreMLRules
from .wire import close, read_plist, write_plist

LOCKDOWN_PORT = 62078
HOST_ID = "FA4E0000-0000-0000-0000-000000000001"
DVT_SERVICE = "com.apple.instruments.remoteserver.DVTSecureSocketProxy"


@dataclass
class Faults:
    """What goes wrong on this phone. Tests flip these; the fake reads them when the moment comes."""

    untrusted: bool = False  # no pair record: lockdown StartSession fails
    unplug_after_bytes: int | None = None  # detach once this many AFC bytes were written (to paths with the marker)
    unplug_path_marker: str = "/models/"
    runner_crash: bool = False  # runner exits after writing result.partial.json, no DONE
    runner_crash_first_jobs: int = 0  # like runner_crash, but only in the first N measuring jobs; then it works
    crash_before_done: bool = False  # runner writes a complete-looking result.json, then dies before DONE
    runner_hang: bool = False  # runner never finishes (until killed)
    unplug_while_running: bool = False  # the cable goes after the runner's first step
    unplug_at_launch: bool = False  # the cable goes while DVT is launching the runner (no reply reaches the host)
    unplug_after_done: bool = False  # the cable goes right after the runner wrote DONE (before the host pulls)
    malformed_result: bool = False  # result.json is not JSON, then DONE
    oversized_result: bool = False  # result.json larger than 64 MiB, then DONE
    result_unwritable: bool = False  # runner cannot write its result: writes the failed fallback, then DONE
    done_without_result: bool = False  # runner writes DONE but no result.json (the fallback failed too)
    log_flood: int = 0  # extra runner log lines (long, with terminal escape sequences) before the result
    thermal_serious_probes: int = 0  # the first N status jobs report "serious", later ones "nominal"
    install_verification_fails: bool = False  # installd answers ApplicationVerificationFailed
    runner_seconds: float = 0.05  # simulated work per step
    background_after_steps: int | None = None  # the app leaves the foreground (phone locks) after N measured steps
    inactive_blip: bool = False  # the app is briefly inactive between two checks and back: a complete result


@dataclass
class App:
    bundle_id: str
    version: str
    build: str
    development_signed: bool = True  # get-task-allow: house_arrest vends its container, DVT may launch it


@dataclass
class FakeIPhone:
    root: Path
    udid: str = "00008110-000A1B2C3D4E5F60"
    product_type: str = "iPhone14,2"
    hardware_model: str = "D63AP"
    ios: str = "16.7.2"
    build: str = "20H115"
    name: str = "Fake iPhone"
    developer_mode: bool = True
    ddi_mounted: bool = True  # the disk image this iOS needs: Developer (< 17) or Personalized (17+)
    locked: bool = False  # at the lock screen: FrontBoard refuses launches (reason Locked)
    developer_profile_trusted: bool = True  # False: the Apple Development certificate is not trusted (Security)
    passcode: bool = False  # AMFI refuses to turn Developer Mode on from the host while a passcode is set
    personalization_ticket: bool = False  # iOS 17+: the phone still holds Apple's ticket for the Personalized image
    battery_percent: int = 87
    battery_centi_celsius: int = 3120
    charging: bool = True
    low_power_mode: bool = False
    faults: Faults = field(default_factory=Faults)
    coreml: CoreMLRules = SPARSE_SLOWER  # the Core ML stand-in's placement and timing scenario (coreml_model.py)
    captions: CaptionScenario | None = None  # what the stand-in decodes per image and unit (captions.py); None: seeded
    # Generic jobs (any imported model): the relative drift of every output from the exact answer, per compute unit
    # (generic_runner.py). A SCENARIO the test sets; the host must measure it back from the outputs.
    output_drift: dict = field(default_factory=lambda: {"cpuOnly": 0.0, "cpuAndGPU": 0.001,
                                                        "cpuAndNeuralEngine": 0.01, "all": 0.01})
    apps: dict[str, App] = field(default_factory=dict)
    runner_bundle_id: str = "org.bench.runner"

    def __post_init__(self):
        self.root = Path(self.root)
        (self.root / "media").mkdir(parents=True, exist_ok=True)
        self.device_id = 0
        self.mux = None
        self.plugged = True
        self.bytes_written: collections.Counter[str] = collections.Counter()  # AFC WRITE payload bytes per path
        self.requests: collections.Counter[str] = collections.Counter()  # lockdown requests and service starts
        self.launches: list[dict] = []
        self.processes: dict[int, str] = {}  # pid -> bundle id
        self.runner_tasks: dict[int, asyncio.Task] = {}  # pid -> the runner stand-in's task
        self.file_events: list[tuple[str, str]] = []  # ("write"|"rename", path) in the order the phone saw them
        self.status_probes = 0
        self.uploaded_images: list[tuple[str, bytes]] = []  # (image type, bytes) received by mobile_image_mounter
        self.amfi_actions: list[int] = []  # com.apple.amfi.lockdown actions asked for
        self.measure_jobs = 0  # measuring (not status) jobs the runner has started
        # Packages the runner stand-in compiled (container path of the .mlpackage), one entry per compile, as the
        # Swift runner's MLModel.compileModel(at:) calls would be: what a compile-once test counts.
        self.compiled_packages: list[str] = []
        self.syslog_subscribers: list[asyncio.Queue] = []
        self._ports: dict[int, str] = {LOCKDOWN_PORT: "lockdownd"}
        self._next_port = itertools.count(49200)
        self._next_pid = itertools.count(401)
        self._writers: set[asyncio.StreamWriter] = set()
        self._unplug_counted = 0

    # ---- state ----------------------------------------------------------------------------------------------------
    @property
    def trusted(self) -> bool:
        return not self.faults.untrusted

    @property
    def ios_major(self) -> int:
        return int(self.ios.split(".")[0])

    @property
    def disk_image_type(self) -> str:
        """The developer disk image this iOS mounts: shared "Developer" below 17, "Personalized" from 17."""
        return "Developer" if self.ios_major < 17 else "Personalized"

    def container(self, bundle_id: str) -> Path:
        path = self.root / "containers" / bundle_id
        (path / "Documents").mkdir(parents=True, exist_ok=True)
        return path

    def bench_dir(self, bundle_id: str | None = None) -> Path:
        return self.container(bundle_id or self.runner_bundle_id) / "Documents" / "bench"

    def install_app(self, bundle_id: str, version: str = "1.0", build: str = "1", *,
                    development_signed: bool = True) -> None:
        self.apps[bundle_id] = App(bundle_id, version, build, development_signed)
        self.container(bundle_id)

    def model_bytes_written(self) -> int:
        return sum(n for path, n in self.bytes_written.items() if "/models/" in path)

    def pair_record(self, buid: str) -> dict:
        return {"HostID": HOST_ID, "SystemBUID": buid, "HostCertificate": b"", "HostPrivateKey": b"",
                "DeviceCertificate": b"", "RootCertificate": b"", "RootPrivateKey": b"", "EscrowBag": b"fake",
                "WiFiMACAddress": "00:00:00:00:00:00"}

    def lockdown_values(self) -> dict:
        return {"ProductType": self.product_type, "ProductVersion": self.ios, "BuildVersion": self.build,
                "DeviceName": self.name, "HardwareModel": self.hardware_model, "UniqueDeviceID": self.udid,
                "CPUArchitecture": "arm64e", "DeviceClass": "iPhone", "UniqueChipID": 0x1A2B3C4D5E6F,
                "SerialNumber": "FAKE" + self.udid[-8:], "ProductName": "iPhone OS",
                "WiFiAddress": "00:00:00:00:00:00", "ChipID": 0x8110, "BoardId": 0x0C, "DevicePublicKey": b"",
                "PasswordProtected": self.passcode}

    # ---- plugging -------------------------------------------------------------------------------------------------
    def unplug(self) -> None:
        """Detach: usbmuxd stops listing the phone and every open connection drops (call on the fake's loop)."""
        self.plugged = False
        self.drop_connections()

    def replug(self) -> None:
        self.plugged = True

    def drop_connections(self) -> None:
        for writer in list(self._writers):
            close(writer)
        self._writers.clear()

    def count_write(self, path: str, n: int) -> None:
        self.bytes_written[path] += n
        limit = self.faults.unplug_after_bytes
        if limit is not None and self.faults.unplug_path_marker in path:
            self._unplug_counted += n
            if self._unplug_counted >= limit:
                self.faults.unplug_after_bytes = None
                self._unplug_counted = 0
                self.unplug()

    # ---- syslog ---------------------------------------------------------------------------------------------------
    def log(self, process: str, pid: int, message: str) -> None:
        line = f"Nov 29 03:00:00 {self.name.replace(' ', '-')} {process}[{pid}] <Notice>: {message}"
        for queue in self.syslog_subscribers:
            queue.put_nowait(line)

    # ---- connections ----------------------------------------------------------------------------------------------
    def handler_for(self, port: int):
        return self._ports.get(port)

    async def serve(self, service: str, reader, writer) -> None:
        from . import services

        self._writers.add(writer)
        try:
            if service == "lockdownd":
                await self._lockdownd(reader, writer)
            else:
                await services.serve(self, service, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            self._writers.discard(writer)
            close(writer)

    async def _lockdownd(self, reader, writer) -> None:
        session = False
        while True:
            request = await read_plist(reader)
            if request is None:
                return
            name = request.get("Request")
            self.requests[name] += 1
            reply = {"Request": name}
            if name == "QueryType":
                reply["Type"] = "com.apple.mobile.lockdown"
            elif name == "GetValue":
                reply.update(self._get_value(request.get("Domain"), request.get("Key")))
            elif name == "StartSession":
                if not self.trusted or request.get("HostID") != HOST_ID:
                    reply["Error"] = "InvalidHostID"
                else:
                    session = True
                    reply.update(SessionID="FAKE-SESSION", EnableSessionSSL=False)
            elif name == "StopSession":
                session = False
                reply["Result"] = "Success"
            elif name == "StartService":
                reply.update(self._start_service(request.get("Service"), session))
            elif name in ("SetValue", "RemoveValue"):
                reply["Error"] = "SetProhibited"
            else:
                reply["Error"] = "InvalidRequest"
            await write_plist(writer, reply)

    def _get_value(self, domain, key) -> dict:
        if domain == "com.apple.security.mac.amfi" and key == "DeveloperModeStatus":
            return {"Value": self.developer_mode}
        values = self.lockdown_values()
        if domain is None and key is None:
            return {"Value": values}
        if domain is None and key in values:
            return {"Value": values[key]}
        return {"Error": "MissingValue"}

    def _start_service(self, service: str, session: bool) -> dict:
        from . import services

        self.requests[f"service:{service}"] += 1
        if not session:
            return {"Error": "InvalidHostID"}
        if service not in services.KNOWN:
            return {"Error": "InvalidService"}
        if service == DVT_SERVICE and (not self.ddi_mounted or self.ios_major >= 17):
            return {"Error": "InvalidService"}  # what a phone without the Developer Disk Image answers
        port = next(self._next_port)
        self._ports[port] = service
        return {"Port": port, "Service": service, "EnableServiceSSL": False}

    # ---- processes ------------------------------------------------------------------------------------------------
    def new_pid(self) -> int:
        return next(self._next_pid)
