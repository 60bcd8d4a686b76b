"""iOS 17+ without the tunnel: a fake tunneld (its HTTP listing) and a fake RSD endpoint reached over plain loopback.

The real tunnel (QUIC or TLS-PSK over a utun interface) cannot exist here. What the host does *after* the tunnel is
up can: tunneld's `GET /` listing, the RemoteXPC (HTTP/2 + XPC) handshake that yields the service table, and DVT
over `com.apple.instruments.dtservicehub` at the advertised port. This module serves those, so the harness's iOS 17
path (tunneld lookup off the event loop, RSD connect, DvtProvider over RSD, launch, kill) runs with the real client.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

from hyperframe.frame import DataFrame, Frame, SettingsFrame

from pymobiledevice3.remote.remotexpc import HTTP2_MAGIC
from pymobiledevice3.remote.xpc_message import XpcUInt64Type, create_xpc_wrapper

from .dvt import serve_dvt
from .wire import close

FRAME_HEADER = 9
DTSERVICEHUB = "com.apple.instruments.dtservicehub"


class FakeTunnel:
    """RSD + DVT listeners for one iOS 17 phone, on the fake usbmuxd's loop; `listing()` is what tunneld reports."""

    def __init__(self, mux, device):
        self.mux, self.device = mux, device
        self.rsd_port = self.dvt_port = 0
        self.alive = True  # False: the listing still names the tunnel but nothing answers (a dead tunnel)
        self._servers = []

    def start(self) -> "FakeTunnel":
        async def open_servers():
            rsd = await asyncio.start_server(self._rsd, "127.0.0.1", 0)
            dvt = await asyncio.start_server(self._dvt, "127.0.0.1", 0)
            self._servers = [rsd, dvt]
            return rsd.sockets[0].getsockname()[1], dvt.sockets[0].getsockname()[1]

        self.rsd_port, self.dvt_port = asyncio.run_coroutine_threadsafe(open_servers(), self.mux.loop).result(10)
        return self

    def listing(self) -> list[dict]:
        return [{"tunnel-address": "127.0.0.1", "tunnel-port": self.rsd_port, "interface": "utun-fake"}]

    def peer_info(self) -> dict:
        device = self.device
        return {"MessageType": "Handshake", "MessagingProtocolVersion": XpcUInt64Type(7), "UUID": uuid.uuid4(),
                "Properties": {"UniqueDeviceID": device.udid, "ProductType": device.product_type,
                               "OSVersion": device.ios, "BuildVersion": device.build, "HardwareModel":
                               device.hardware_model, "DeviceClass": "iPhone"},
                # Developer services come from the disk image: without it mounted the phone does not offer them.
                "Services": ({DTSERVICEHUB: {"Port": str(self.dvt_port), "Properties": {}}}
                             if device.ddi_mounted else {})}

    async def _read_frame(self, reader) -> Frame:
        header = await reader.readexactly(FRAME_HEADER)
        frame, size = Frame.parse_frame_header(memoryview(header))
        frame.parse_body(memoryview(await reader.readexactly(size)))
        return frame

    async def _rsd(self, reader, writer) -> None:
        """RemoteXPC: HTTP/2 preface and settings, then answer the client's Handshake with the service table."""
        try:
            if not self.alive or await reader.readexactly(len(HTTP2_MAGIC)) != HTTP2_MAGIC:
                return
            writer.write(SettingsFrame(settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 100}).serialize())
            await writer.drain()
            while True:
                frame = await self._read_frame(reader)
                if isinstance(frame, DataFrame) and b"Handshake" in frame.data:
                    writer.write(DataFrame(stream_id=1, data=create_xpc_wrapper(self.peer_info())).serialize())
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            close(writer)

    async def _dvt(self, reader, writer) -> None:
        if not self.alive:
            close(writer)
            return
        try:
            await serve_dvt(self.device, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return
        finally:
            close(writer)


class FakeTunneld:
    """tunneld's HTTP listing (`GET /` -> {udid: [tunnel, …]}) on 127.0.0.1, in a thread."""

    def __init__(self):
        self.tunnels: dict[str, FakeTunnel] = {}
        tunnels = self.tunnels

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                body = json.dumps({udid: t.listing() for udid, t in tunnels.items()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                return

        self._server = HTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fake-tunneld", daemon=True).start()

    def add(self, mux, device) -> FakeTunnel:
        tunnel = FakeTunnel(mux, device).start()
        self.tunnels[device.udid] = tunnel
        return tunnel

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
