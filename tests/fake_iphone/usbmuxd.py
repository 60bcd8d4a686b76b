"""A fake usbmuxd speaking the plist protocol on a UNIX socket, in its own thread and event loop."""

from __future__ import annotations

import asyncio
import plistlib
import socket
import struct
import threading
from pathlib import Path

from .wire import close

HEADER = struct.Struct("<IIII")  # total length, version (1 = plist), message type (8 = plist), tag
RESULT_OK, RESULT_BADDEV, RESULT_CONNREFUSED = 0, 2, 3


class FakeUsbmuxd:
    def __init__(self, socket_path: Path | str):
        self.socket_path = str(socket_path)
        if len(self.socket_path.encode()) >= 104:
            raise ValueError(f"UNIX socket path too long ({len(self.socket_path)} bytes): {self.socket_path}")
        self.devices: dict[int, object] = {}
        self.buid = "00000000-0000-0000-0000-0000000FA4E0"
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._ready = threading.Event()
        self._next_id = 1

    # ---- lifecycle (called from the test thread) ----------------------------------------------------------------
    def start(self) -> "FakeUsbmuxd":
        self._thread = threading.Thread(target=self._serve_forever, name="fake-usbmuxd", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake usbmuxd did not start")
        return self

    def stop(self) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        Path(self.socket_path).unlink(missing_ok=True)

    def __enter__(self) -> "FakeUsbmuxd":
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def add(self, device):
        """Attach a FakeIPhone (returns it)."""
        device.device_id = self._next_id
        device.mux = self
        self._next_id += 1
        self.devices[device.device_id] = device
        return device

    def call(self, function, *args):
        """Run a function on the fake's loop and wait for it (for state changes from the test thread)."""
        async def run():
            return function(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # ---- server -------------------------------------------------------------------------------------------------
    def _serve_forever(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        Path(self.socket_path).unlink(missing_ok=True)
        self._server = self.loop.run_until_complete(asyncio.start_unix_server(self._client, path=self.socket_path,
                                                                              limit=1 << 24))
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        for device in self.devices.values():
            device.drop_connections()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def attached(self) -> list:
        return [d for d in self.devices.values() if d.plugged]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._session(reader, writer)
        except asyncio.CancelledError:
            return  # the fake is shutting down

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(HEADER.size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length, version, _kind, tag = HEADER.unpack(header)
                message = plistlib.loads(await reader.readexactly(length - HEADER.size))
                if version != 1:
                    await self._reply(writer, tag, {"MessageType": "Result", "Number": 6})
                    continue
                handed_over = await self._handle(message, tag, reader, writer)
                if handed_over:
                    return
        finally:
            close(writer)

    async def _reply(self, writer, tag: int, message: dict) -> None:
        body = plistlib.dumps(message)
        writer.write(HEADER.pack(HEADER.size + len(body), 1, 8, tag) + body)
        await writer.drain()

    async def _handle(self, message: dict, tag: int, reader, writer) -> bool:
        kind = message.get("MessageType")
        if kind == "ReadBUID":
            await self._reply(writer, tag, {"BUID": self.buid})
        elif kind == "ListDevices":
            await self._reply(writer, tag, {"DeviceList": [self._attached_record(d) for d in self.attached()]})
        elif kind == "Listen":
            await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_OK})
            for device in self.attached():
                await self._reply(writer, 0, self._attached_record(device))
        elif kind == "ReadPairRecord":
            device = self._by_udid(message.get("PairRecordID"))
            if device is None or not device.trusted:
                await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_BADDEV})
            else:
                await self._reply(writer, tag, {"PairRecordData": plistlib.dumps(device.pair_record(self.buid))})
        elif kind == "SavePairRecord":
            await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_OK})
        elif kind == "Connect":
            device = self.devices.get(message.get("DeviceID"))
            port = socket.ntohs(int(message.get("PortNumber", 0)))
            if device is None or not device.plugged:
                await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_BADDEV})
                return False
            handler = device.handler_for(port)
            if handler is None:
                await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_CONNREFUSED})
                return False
            await self._reply(writer, tag, {"MessageType": "Result", "Number": RESULT_OK})
            await device.serve(handler, reader, writer)
            return True
        else:
            await self._reply(writer, tag, {"MessageType": "Result", "Number": 1})
        return False

    def _by_udid(self, udid):
        return next((d for d in self.devices.values() if d.udid == udid), None)

    @staticmethod
    def _attached_record(device) -> dict:
        return {"MessageType": "Attached", "DeviceID": device.device_id,
                "Properties": {"ConnectionType": "USB", "DeviceID": device.device_id, "LocationID": 0,
                               "ProductID": 0x12A8, "SerialNumber": device.udid, "ConnectionSpeed": 480000000}}
