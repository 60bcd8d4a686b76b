"""The runner's log lines, streamed from syslog_relay while a job runs (text lines; filtered to the runner's pid)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class SyslogTail:
    """Background task copying syslog lines of one process to a callback. Start before launch, set `pid` after.

    Lines seen before the pid is known are held back (bounded) and replayed once it is set, so a fast runner's first
    lines are not lost.
    """

    def __init__(self, lockdown, on_line: Callable[[str], None], *, process_name: str | None = None):
        self._lockdown, self._on_line, self._process_name = lockdown, on_line, process_name
        self._task: asyncio.Task | None = None
        self._held: list[str] = []
        self.pid: int | None = None
        self.lines = 0

    def _wanted(self, line: str) -> bool:
        if self.pid is not None and f"[{self.pid}]" in line:
            return True
        return bool(self._process_name) and f"{self._process_name}[" in line

    def set_pid(self, pid: int) -> None:
        self.pid = pid
        held, self._held = self._held, []
        for line in held:
            if self._wanted(line):
                self._emit(line)

    def _emit(self, line: str) -> None:
        self.lines += 1
        self._on_line(line)

    async def _run(self) -> None:
        from pymobiledevice3.exceptions import PyMobileDevice3Exception
        from pymobiledevice3.services.syslog import SyslogService

        try:
            async with SyslogService(self._lockdown) as syslog:
                async for text in _lines(syslog):
                    if self._wanted(text):
                        self._emit(text)
                    elif self.pid is None and len(self._held) < 1000:
                        self._held.append(text)
        except (PyMobileDevice3Exception, OSError, asyncio.IncompleteReadError, ConnectionError):
            return  # logs are a convenience; the DONE marker and result decide the outcome

    async def __aenter__(self) -> "SyslogTail":
        self._task = asyncio.create_task(self._run(), name="syslog-tail")
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_exc) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


LINE_END = b"\n\x00"


async def _lines(syslog):
    """Lines of syslog_relay. SyslogService.watch() in 11.45 keeps its buffer when a chunk ends exactly at a line
    end, so every later chunk repeats old lines; this reader splits the same stream correctly."""
    buffer = b""
    while True:
        chunk = await syslog.service.recv_any(4096)
        if not chunk:
            return
        buffer += chunk
        *complete, buffer = buffer.split(LINE_END)
        for line in complete:
            if line:
                yield line.decode("utf-8", "replace")
