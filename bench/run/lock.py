"""One bench process measures a run at a time: an exclusive, non-blocking fcntl lock on `results/<run>/.lock`.

The lock is held from the moment a run is created (or a resume is admitted) until its measuring, evaluation and
report are done; the kernel drops it when the holder dies, so a killed run never stays locked. A second
`bench run --resume` of the same run is refused at once instead of measuring the same jobs twice.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from bench.errors import BenchError

LOCK_NAME = ".lock"


class RunBusyError(BenchError):
    """Another bench process holds the run's lock."""


class RunLock:
    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self._fd = run_dir, fd

    @classmethod
    def acquire(cls, run_dir: Path | str) -> "RunLock":
        run_dir = Path(run_dir)
        try:
            fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise BenchError(f"cannot lock run {run_dir.name}: {run_dir / LOCK_NAME}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusyError(f"run {run_dir.name} is being measured right now by another bench process; wait for "
                               "it to finish (nothing was changed)") from None
        # Nothing is written into the lock file: taking the lock must not change the run directory.
        return cls(run_dir, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
