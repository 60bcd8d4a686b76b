"""Framing shared by the fake services: big-endian length-prefixed XML plists (lockdownd and most services)."""

from __future__ import annotations

import asyncio
import plistlib
import struct


async def read_plist(reader: asyncio.StreamReader) -> dict | None:
    """One length-prefixed plist, or None at end of stream."""
    try:
        header = await reader.readexactly(4)
        (size,) = struct.unpack(">I", header)
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return plistlib.loads(body)


async def write_plist(writer: asyncio.StreamWriter, message: dict) -> None:
    body = plistlib.dumps(message, fmt=plistlib.FMT_XML)
    writer.write(struct.pack(">I", len(body)) + body)
    await writer.drain()


def close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except (OSError, RuntimeError):
        pass
