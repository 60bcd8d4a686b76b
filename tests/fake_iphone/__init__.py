"""A protocol-level fake iPhone: the real pymobiledevice3 client talks to it over a UNIX socket, unmodified.

What is faked, and at which level:
- usbmuxd (plist protocol) on a UNIX socket: ReadBUID, ListDevices, Listen, ReadPairRecord, SavePairRecord, Connect;
  after Connect the socket is a raw pipe to a device port, exactly as with the real daemon.
- lockdownd without TLS (StartSession answers EnableSessionSSL false, StartService EnableServiceSSL false).
- AFC (media root and app containers), house_arrest, installation_proxy, diagnostics_relay (battery),
  mobile_image_mounter (LookupImage/CopyDevices), syslog_relay, and DVT process control served with pymobiledevice3's
  own DTX classes.
- iOS 17+ after the tunnel (rsd.py): tunneld's HTTP listing and an RSD endpoint (RemoteXPC over HTTP/2) on plain
  loopback TCP advertising com.apple.instruments.dtservicehub, served by the same DTX process control.
- A runner stand-in honouring docs/contracts.md §5 (reads jobs/<id>/job.json, writes result.partial.json, result.json
  atomically, then DONE; mode "status"), with a stand-in for the Core ML runtime (coreml_model.py): it reads the pushed
  packages' protobuf, places each op on CPU / GPU / Neural Engine per compute unit (reported as the MLComputePlan on
  iOS 17.4+) and derives the samples' latencies from that placement.

Not faked (cannot exist here): TLS/pairing crypto, the iOS 17 tunnel link itself (QUIC/TLS-PSK/utun), code
signing, disk-image mounting.

    with FakeUsbmuxd(tmp_path / "mux.sock") as mux:            # sets nothing globally; tests set the env var
        phone = mux.add(FakeIPhone(root=tmp_path / "phone1"))
        phone.faults.unplug_after_bytes = 10_000
"""

from .device import Faults, FakeIPhone
from .usbmuxd import FakeUsbmuxd

__all__ = ["FakeIPhone", "FakeUsbmuxd", "Faults"]
