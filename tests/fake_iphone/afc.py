"""An AFC server over a directory on disk (the phone's media partition or an app container)."""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
from pathlib import Path

MAGIC = b"CFA6LPAA"
HEADER = struct.Struct("<8sQQQQ")  # magic, entire_length, this_length, packet_num, operation
STATUS, DATA, READ_DIR, REMOVE_PATH, MAKE_DIR, GET_FILE_INFO, GET_DEVINFO = 1, 2, 3, 8, 9, 0x0A, 0x0B
FILE_OPEN, FILE_OPEN_RES, READ, WRITE, FILE_SEEK, FILE_TELL, FILE_TELL_RES, FILE_CLOSE = (
    0x0D, 0x0E, 0x0F, 0x10, 0x11, 0x12, 0x13, 0x14)
RENAME_PATH, SET_FILE_TIME = 0x18, 0x1E
OK, UNKNOWN_ERROR, INVALID_ARG, OBJECT_NOT_FOUND, OBJECT_IS_DIR, PERM_DENIED = 0, 1, 7, 8, 9, 10
OP_NOT_SUPPORTED, OBJECT_EXISTS, DIR_NOT_EMPTY = 15, 16, 33
OPEN_MODES = {1: "rb", 2: "r+b", 3: "wb", 4: "w+b", 5: "ab", 6: "a+b"}


class AfcError(Exception):
    def __init__(self, code: int):
        self.code = code


def _cstrings(data: bytes) -> list[str]:
    return [part.decode() for part in data.split(b"\0")[:-1]]


class AfcServer:
    def __init__(self, device, root: Path, label: str):
        self.device, self.root, self.label = device, Path(root).resolve(), label
        self.handles: dict[int, tuple[object, str]] = {}
        self._next_handle = 1

    def _path(self, name: str) -> Path:
        """Map a device path into the root; refuse anything that escapes it (as the sandbox does)."""
        candidate = (self.root / name.lstrip("/")).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise AfcError(PERM_DENIED)
        return candidate

    def _relative(self, path: Path) -> str:
        return f"{self.label}/{path.relative_to(self.root).as_posix()}"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    header = await reader.readexactly(HEADER.size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                magic, entire, this, packet, operation = HEADER.unpack(header)
                if magic != MAGIC:
                    return
                payload = await reader.readexactly(entire - HEADER.size) if entire > HEADER.size else b""
                try:
                    op, body = self.handle(operation, payload)
                except AfcError as err:
                    op, body = STATUS, struct.pack("<Q", err.code)
                except FileNotFoundError:
                    op, body = STATUS, struct.pack("<Q", OBJECT_NOT_FOUND)
                except IsADirectoryError:
                    op, body = STATUS, struct.pack("<Q", OBJECT_IS_DIR)
                except OSError:
                    op, body = STATUS, struct.pack("<Q", UNKNOWN_ERROR)
                if not self.device.plugged:
                    return  # unplugged while handling: the reply never reaches the host
                writer.write(HEADER.pack(MAGIC, HEADER.size + len(body), HEADER.size, packet, op) + body)
                await writer.drain()
        finally:
            for handle, _name in self.handles.values():
                handle.close()
            self.handles.clear()

    def handle(self, operation: int, payload: bytes) -> tuple[int, bytes]:
        ok = (STATUS, struct.pack("<Q", OK))
        if operation == READ_DIR:
            path = self._path(_cstrings(payload)[0])
            names = [".", ".."] + sorted(os.listdir(path))
            return DATA, b"".join(n.encode() + b"\0" for n in names)
        if operation == GET_FILE_INFO:
            return DATA, self._stat(self._path(_cstrings(payload)[0]))
        if operation == MAKE_DIR:
            self._path(_cstrings(payload)[0]).mkdir(parents=True, exist_ok=True)
            return ok
        if operation == REMOVE_PATH:
            path = self._path(_cstrings(payload)[0])
            if path.is_dir() and not path.is_symlink():
                if any(path.iterdir()):
                    raise AfcError(DIR_NOT_EMPTY)
                path.rmdir()
            else:
                path.unlink()
            return ok
        if operation == RENAME_PATH:
            source, target = (self._path(p) for p in _cstrings(payload)[:2])
            if not source.exists():
                raise AfcError(OBJECT_NOT_FOUND)
            os.rename(source, target)
            self.device.file_events.append(("rename", self._relative(target)))
            return ok
        if operation == GET_DEVINFO:
            usage = shutil.disk_usage(self.root)
            info = {"Model": self.device.product_type, "FSTotalBytes": usage.total, "FSFreeBytes": usage.free,
                    "FSBlockSize": 4096}
            return DATA, b"".join(f"{k}\0{v}\0".encode() for k, v in info.items())
        if operation == FILE_OPEN:
            (mode,) = struct.unpack_from("<Q", payload)
            path = self._path(_cstrings(payload[8:])[0])
            if mode not in OPEN_MODES:
                raise AfcError(INVALID_ARG)
            if path.is_dir():
                raise AfcError(OBJECT_IS_DIR)
            handle = open(path, OPEN_MODES[mode])
            if mode != 1:
                self.device.file_events.append(("write", self._relative(path)))
            number = self._next_handle
            self._next_handle += 1
            self.handles[number] = (handle, self._relative(path))
            return FILE_OPEN_RES, struct.pack("<Q", number)
        if operation == READ:
            number, size = struct.unpack_from("<QQ", payload)
            return DATA, self._handle(number)[0].read(size)
        if operation == WRITE:
            (number,) = struct.unpack_from("<Q", payload)
            handle, name = self._handle(number)
            handle.write(payload[8:])
            self.device.count_write(name, len(payload) - 8)
            return ok
        if operation == FILE_SEEK:
            number, whence, offset = struct.unpack_from("<QQq", payload)
            self._handle(number)[0].seek(offset, whence)
            return ok
        if operation == FILE_TELL:
            (number,) = struct.unpack_from("<Q", payload)
            return FILE_TELL_RES, struct.pack("<Q", self._handle(number)[0].tell())
        if operation == FILE_CLOSE:
            (number,) = struct.unpack_from("<Q", payload)
            handle, _name = self.handles.pop(number, (None, None))
            if handle is None:
                raise AfcError(INVALID_ARG)
            handle.close()
            return ok
        if operation == SET_FILE_TIME:
            return ok
        raise AfcError(OP_NOT_SUPPORTED)

    def _handle(self, number: int):
        if number not in self.handles:
            raise AfcError(INVALID_ARG)
        return self.handles[number]

    @staticmethod
    def _stat(path: Path) -> bytes:
        info = path.lstat()
        kind = "S_IFDIR" if path.is_dir() else ("S_IFLNK" if path.is_symlink() else "S_IFREG")
        fields = {"st_size": info.st_size, "st_blocks": (info.st_size + 511) // 512, "st_nlink": info.st_nlink,
                  "st_ifmt": kind, "st_mtime": int(info.st_mtime * 1e9), "st_birthtime": int(info.st_ctime * 1e9)}
        return b"".join(f"{k}\0{v}\0".encode() for k, v in fields.items())
