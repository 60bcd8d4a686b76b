"""The one exception root. The CLI turns every BenchError into a single line (bench/cli/__init__.py)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """Root of every error the harness raises on purpose. `str(err)` is the one line a user sees."""

    exit_code = 2


class InputError(BenchError):
    """Bad user input: a file, a YAML key, a name. Carries where it was found when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None):
        self.file, self.line, self.detail = file, line, message
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")


class DatasetError(InputError):
    """A dataset that cannot be used as given (missing images, empty references, bad manifest line)."""


class BuildError(BenchError):
    """A model variant could not be built, or its stored bytes miss its recipe."""


class PlatformUnavailable(BenchError):
    """The operation needs something this machine does not have (macOS Core ML, an iPhone, a tunnel)."""


class DeviceError(BenchError):
    """A device operation failed; `udid` names the device, `action` says what a person must do."""

    def __init__(self, message: str, *, udid: str | None = None, action: str | None = None):
        self.udid, self.action = udid, action
        text = f"{udid}: {message}" if udid else message
        super().__init__(f"{text} — {action}" if action else text)


class ContractError(BenchError):
    """A job or result file that breaks the runner contract (docs/contract.md)."""


class RecordError(BenchError):
    """A stored record that cannot be read: unknown schema version, corrupt JSON, wrong kind."""


class DamagedError(BenchError):
    """Stored data whose bytes differ from what was recorded when it was written: refused, never measured.
    `path` names the damaged file."""

    def __init__(self, message: str, *, path: str | None = None):
        self.path = path
        super().__init__(message)


class IncomparableError(BenchError):
    """Two runs differ in device model, OS build or variant hash and were not forced together."""


def did_you_mean(kind: str, name: str, choices: Iterable[str]) -> InputError:
    """An InputError for an unknown name, suggesting the closest known ones."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    known = f" (known: {', '.join(choices[:12])}{', …' if len(choices) > 12 else ''})" if not close else ""
    return InputError(f"unknown {kind} {name!r}{hint}{known}")


# Seeds feed numpy (which refuses negatives and values past 2**32 - 1 in its legacy generator), `random` and torch:
# one range for all, checked before any work so a typo never fails minutes into a run.
MAX_SEED = 2**32 - 1


def check_seed(seed: int | None, name: str = "seed") -> int | None:
    """`seed` unchanged when it is None or an integer in 0..MAX_SEED; else an InputError naming `name`."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{name} must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed
