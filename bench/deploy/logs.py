"""The runner's log lines, streamed from syslog_relay while a job runs (text lines; filtered to the runner's pid)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path


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
        self._last_line_at = time.monotonic()

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
        self._last_line_at = time.monotonic()
        self._on_line(line)

    async def drain(self, *, idle_s: float = 0.3, limit_s: float = 2.0) -> None:
        """Wait until the runner's lines have stopped for `idle_s` (at most `limit_s`): syslog_relay delivers them
        a little after the files they describe, and the last ones ("job …: failed", the reason) matter most."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and time.monotonic() - self._last_line_at < idle_s:
            await asyncio.sleep(0.05)

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


class JobLog:
    """The runner's log lines of one job, bounded, kept for the run directory (`jobs/<job_id>.log`).

    Lines come from the device and are untrusted: control characters are replaced (a line never moves the
    terminal's cursor when printed), each line is cut at MAX_LINE_CHARS, and past MAX_BYTES further lines are only
    counted, so a runner that logs in a loop cannot exhaust the host's memory or disk.
    """

    MAX_LINE_CHARS = 2000
    MAX_BYTES = 4 * 1024 * 1024

    def __init__(self, job_id: str):
        self.job_id = job_id
        self.lines: list[str] = []
        self.dropped = 0
        self._bytes = 0

    def add(self, line: str) -> None:
        line = _CONTROL.sub("?", str(line).rstrip("\n"))
        if len(line) > self.MAX_LINE_CHARS:
            line = line[: self.MAX_LINE_CHARS - 1] + "…"
        size = len(line.encode("utf-8", "replace")) + 1
        if self._bytes + size > self.MAX_BYTES:
            self.dropped += 1
            return
        self._bytes += size
        self.lines.append(line)

    def text(self) -> str:
        tail = [f"… {self.dropped} more lines not kept (over {self.MAX_BYTES} bytes)"] if self.dropped else []
        return "\n".join(self.lines + tail) + "\n"

    def save(self, folder: Path) -> Path:
        """Write `<folder>/<job_id>.log` (temp then rename) and return its path."""
        from bench import atomic

        return atomic.write_text(Path(folder) / f"{self.job_id}.log", self.text(), durable=False)

    def last_line(self, limit: int = 160) -> str | None:
        if not self.lines:
            return None
        line = self.lines[-1]
        return line if len(line) <= limit else line[: limit - 1] + "…"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
