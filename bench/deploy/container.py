"""The runner's data container over house_arrest/AFC: content-addressed, atomic pushes; listing; pruning; pulls.

Layout (docs/contracts.md §5), relative to the container root:
    Documents/bench/models/<sha256>/{encoder,decoder}.mlpackage
    Documents/bench/inputs/<sha256>.f32
    Documents/bench/compiled/<run scope>/<sha256>/{encoder,decoder}.mlmodelc   the runner's, kept for one run
    Documents/bench/jobs/<job_id>/job.json          written last
    Documents/bench/results/<job_id>/{result.partial.json,result.json,DONE}

AFC writes are not atomic and a cable pull leaves a partial file (pymobiledevice3 issue; see shared notes), so every
push goes to a `.tmp-<random>` name beside its final name, sizes are checked with GET_FILE_INFO, and only then is it
renamed. A name under models/ or inputs/ therefore always holds complete content, and its hash is its name: a thing
already present is never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path

from bench.deploy.contract import CONTAINER_ROOT
from bench.deploy.errors import DeviceNotFound, PushFailed, ResultInvalid, RunnerNotDebuggable, RunnerNotInstalled

ROOT = CONTAINER_ROOT  # "Documents/bench", defined once by the contract
MODELS = f"{ROOT}/models"
INPUTS = f"{ROOT}/inputs"
COMPILED = f"{ROOT}/compiled"
JOBS = f"{ROOT}/jobs"
RESULTS = f"{ROOT}/results"
TMP_PREFIX = ".tmp-"
WRITE_CHUNK = 4 * 1024 * 1024
MAX_PULL_BYTES = 64 * 1024 * 1024
PARALLEL_FILES = 4  # AFC requests are matched by packet number, so small files can be in flight together


@dataclass
class PushStats:
    files: int = 0
    bytes_sent: int = 0
    skipped: int = 0  # content already on the device


class SettledRequests(dict):
    """Stands in for the AFC client's table of in-flight requests (packet number -> future) and keeps every
    future it was given until that future's error has been read.

    When the connection drops, pymobiledevice3 11.45 sets the error on every pending request future
    (services/afc.py, `_afc_reader_loop`); a request whose task was cancelled or failed while sending never reads
    it, and asyncio then prints "Future exception was never retrieved" with a traceback, once per such request,
    after our one-line error. `settle()` reads every finished future's error (and forgets it), so each error of a
    concurrent push is awaited here or by its task. Memory stays bounded: settled futures are dropped as we go.
    """

    SWEEP_AT = 64

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.issued: list[asyncio.Future] = []

    def __setitem__(self, packet, future) -> None:
        if len(self.issued) >= self.SWEEP_AT:
            self.settle()
        self.issued.append(future)
        super().__setitem__(packet, future)

    def settle(self) -> None:
        """Read the outcome of every finished request (marking its error as retrieved); keep the unfinished."""
        waiting = []
        for future in self.issued:
            if not future.done():
                waiting.append(future)
            elif not future.cancelled():
                future.exception()
        self.issued = waiting


def connection_lost(afc) -> bool:
    """Whether the AFC connection has ended (its reader saw the device go; pinned 11.45 internals)."""
    terminated = getattr(afc, "_afc_terminated", None)
    return bool(terminated is not None and terminated.is_set())


def settle_requests(afc) -> None:
    """Read every finished request's error (after a drop or a close), so asyncio never prints one later."""
    pending = getattr(afc, "_afc_pending", None)
    if isinstance(pending, SettledRequests):
        pending.settle()


async def open_container(lockdown, bundle_id: str, udid: str):
    """A HouseArrestService rooted at the app's data container, its request futures tracked (SettledRequests)."""
    from pymobiledevice3.exceptions import AppNotInstalledError, PyMobileDevice3Exception
    from pymobiledevice3.services.house_arrest import HouseArrestService

    try:
        afc = await HouseArrestService.create(lockdown, bundle_id)
        afc._afc_pending = SettledRequests(afc._afc_pending)
        return afc
    except AppNotInstalledError:
        raise RunnerNotInstalled(f"{bundle_id} is not installed", udid=udid,
                                 action="run `bench devices install runner/build/BenchRunner.ipa`") from None
    except PyMobileDevice3Exception as err:
        raise RunnerNotDebuggable(f"{bundle_id} is installed but its container cannot be opened "
                                  f"({vend_refusal(err)}): it is signed for distribution", udid=udid,
                                  action=SIGNING_ACTION) from None


SIGNING_ACTION = ("sign with a development profile (get-task-allow), e.g. `runner/build.sh`, then "
                  "`bench devices install runner/build/BenchRunner.ipa`")


def vend_refusal(err: Exception) -> str:
    """house_arrest's own reason ("InstallationLookupFailed"), without the library's multi-line "please report"
    advice it appends to errors it has no class for."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    reason = first.rsplit(": ", 1)[-1].rstrip(".")
    return f"house_arrest: {reason}" if reason else "house_arrest refused it"


def _transfer_error(err: BaseException, udid: str, what: str) -> Exception:
    from pymobiledevice3.exceptions import ConnectionTerminatedError

    if isinstance(err, ConnectionTerminatedError | ConnectionError | asyncio.IncompleteReadError | EOFError):
        return PushFailed(f"device went away while sending {what}; nothing partial was kept under a final name",
                          udid=udid, action="reconnect the cable and run again (finished items are not resent)")
    return PushFailed(f"sending {what} failed: {err}", udid=udid, action="run again; check free space on the device")


async def _write_file(afc, remote: str, data_source: Path | bytes) -> int:
    """Write one file in 4 MiB requests; return the bytes sent.

    The handle is closed only after a complete write: a failed or cancelled push is abandoned with its connection
    (AFC handles belong to the connection), and writing a close request into a dead connection only adds noise.
    """
    handle = await afc.fopen(remote, "w")
    sent = 0
    if isinstance(data_source, bytes):
        for offset in range(0, len(data_source), WRITE_CHUNK):
            chunk = data_source[offset:offset + WRITE_CHUNK]
            await afc.fwrite(handle, chunk)
            sent += len(chunk)
    else:
        with open(data_source, "rb") as local:
            while chunk := local.read(WRITE_CHUNK):
                await afc.fwrite(handle, chunk)
                sent += len(chunk)
    await afc.fclose(handle)
    return sent


async def _check_size(afc, remote: str, expected: int, udid: str) -> None:
    size = (await afc.stat(remote)).get("st_size")
    if size != expected:
        raise PushFailed(f"{remote} holds {size} bytes on the device, {expected} were sent", udid=udid,
                         action="run again; check free space on the device")


async def push_tree(afc, local_dir: Path, final: str, udid: str, *, inner: str = "") -> PushStats:
    """Push a directory tree to `final`/`inner` atomically (temporary directory, per-file size check, one rename
    of the temporary directory to `final`).

    Returns at once (0 bytes) when `final` already exists: its name is its content hash.
    """
    from bench.deploy.hashing import tree_files

    stats = PushStats()
    if await afc.exists(final):
        stats.skipped = 1
        return stats
    temporary = posixpath.join(posixpath.dirname(final), f"{TMP_PREFIX}{secrets.token_hex(6)}")
    files = tree_files(Path(local_dir))
    async with _discarded_on_failure(afc, temporary, udid, local_dir.name):
        base = posixpath.join(temporary, inner) if inner else temporary
        folders = sorted({posixpath.dirname(rel) for rel, _ in files} | {""})
        await afc.makedirs(base)
        for folder in folders:
            if folder:
                await afc.makedirs(posixpath.join(base, folder))
        limit = asyncio.Semaphore(PARALLEL_FILES)

        async def send(relative: str, path: Path) -> int:
            async with limit:
                remote = posixpath.join(base, relative)
                size = path.stat().st_size
                sent = await _write_file(afc, remote, path)
                await _check_size(afc, remote, size, udid)
                return sent

        sent = await _all_or_nothing([send(rel, path) for rel, path in files])
        await afc.rename(temporary, final)
    stats.files, stats.bytes_sent = len(files), sum(sent)
    return stats


async def push_bytes(afc, data: bytes, final: str, udid: str, *, overwrite: bool = False) -> PushStats:
    """Push one file atomically (temporary name, size check, rename). Skipped when present unless `overwrite`."""
    stats = PushStats()
    if not overwrite and await afc.exists(final):
        stats.skipped = 1
        return stats
    temporary = posixpath.join(posixpath.dirname(final), f"{TMP_PREFIX}{secrets.token_hex(6)}")
    async with _discarded_on_failure(afc, temporary, udid, posixpath.basename(final)):
        await afc.makedirs(posixpath.dirname(final))
        stats.bytes_sent = await _write_file(afc, temporary, data)
        await _check_size(afc, temporary, len(data), udid)
        await afc.rename(temporary, final)
    stats.files = 1
    return stats


@contextlib.asynccontextmanager
async def _discarded_on_failure(afc, temporary: str, udid: str, what: str):
    """A failed push removes its temporary name (best effort) and ends in one PushFailed."""
    from pymobiledevice3.exceptions import PyMobileDevice3Exception

    try:
        yield
    except PushFailed:
        await _discard(afc, temporary)
        raise
    except (PyMobileDevice3Exception, OSError, asyncio.IncompleteReadError) as err:
        await _discard(afc, temporary)
        raise _transfer_error(err, udid, what) from None


async def _all_or_nothing(coroutines) -> list:
    """Run coroutines together; on the first failure cancel the rest and raise that failure itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(coroutine) for coroutine in coroutines]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


async def _discard(afc, path: str) -> None:
    """Best effort: the connection may be gone. A leftover .tmp- name is never read and is pruned later."""
    from pymobiledevice3.exceptions import PyMobileDevice3Exception

    if connection_lost(afc):
        return  # nothing can be removed through a dead connection; the next prune does it
    try:
        await asyncio.wait_for(afc.rm(path, force=True), timeout=5)
    except (PyMobileDevice3Exception, OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return


@dataclass(frozen=True)
class Held:
    models: tuple[str, ...]  # package tree hashes under models/
    inputs: tuple[str, ...]  # input hashes under inputs/
    jobs: tuple[str, ...]
    results: tuple[str, ...]
    leftovers: tuple[str, ...]  # interrupted pushes (.tmp-*)
    compiled: tuple[str, ...] = ()  # compile scopes (run ids) under compiled/: models the runner compiled and kept


async def _listdir(afc, path: str) -> list[str]:
    from pymobiledevice3.exceptions import AfcFileNotFoundError

    try:
        return sorted(await afc.listdir(path))
    except AfcFileNotFoundError:
        return []


async def list_held(afc) -> Held:
    models, inputs = await _listdir(afc, MODELS), await _listdir(afc, INPUTS)
    jobs, results = await _listdir(afc, JOBS), await _listdir(afc, RESULTS)
    leftovers = [f"{MODELS}/{n}" for n in models if n.startswith(TMP_PREFIX)]
    leftovers += [f"{INPUTS}/{n}" for n in inputs if n.startswith(TMP_PREFIX)]
    return Held(
        models=tuple(n for n in models if not n.startswith(TMP_PREFIX)),
        inputs=tuple(n.removesuffix(".f32") for n in inputs if not n.startswith(TMP_PREFIX)),
        jobs=tuple(jobs),
        results=tuple(results),
        leftovers=tuple(leftovers),
        compiled=tuple(await _listdir(afc, COMPILED)),
    )


async def prune(afc, keep_models: set[str], keep_inputs: set[str], *, jobs: bool = True) -> list[str]:
    """Remove models/inputs not in the keep sets, interrupted pushes, and (by default) old jobs and results."""
    held = await list_held(afc)
    doomed = list(held.leftovers)
    doomed += [f"{MODELS}/{sha}" for sha in held.models if sha not in keep_models]
    # by the names held: captioner inputs are <sha>.f32, generic jobs' <sha>.bin (bench.deploy.contract)
    doomed += [f"{INPUTS}/{name}" for name in await _listdir(afc, INPUTS) if not name.startswith(TMP_PREFIX)
               and name.removesuffix(".f32").removesuffix(".bin") not in keep_inputs]
    if jobs:
        doomed += [f"{JOBS}/{name}" for name in held.jobs] + [f"{RESULTS}/{name}" for name in held.results]
    doomed += [f"{COMPILED}/{scope}" for scope in held.compiled]  # a cache: the next run compiles again
    for path in doomed:
        await afc.rm(path, force=True)
    return doomed


async def drop_compiled_except(afc, scope: str) -> list[str]:
    """Remove the compiled models other runs left (compiled/<other scope>): a device keeps one run's at a time, so
    its storage holds at most the packages of the run it is measuring, compiled."""
    doomed = [f"{COMPILED}/{name}" for name in await _listdir(afc, COMPILED) if name != scope]
    for path in doomed:
        await afc.rm(path, force=True)
    return doomed


async def pull(afc, path: str, udid: str, *, max_bytes: int = MAX_PULL_BYTES) -> bytes:
    """Read one file, refusing anything larger than `max_bytes` before reading it."""
    from pymobiledevice3.exceptions import AfcFileNotFoundError, PyMobileDevice3Exception

    try:
        info = await afc.stat(path)
    except AfcFileNotFoundError:
        raise ResultInvalid(f"{path} is missing on the device", udid=udid) from None
    except (PyMobileDevice3Exception, OSError) as err:
        raise DeviceNotFound(f"lost while reading {path}: {err}", udid=udid, action="reconnect and run again") from None
    size = info.get("st_size")
    if info.get("st_ifmt") != "S_IFREG" or not isinstance(size, int):
        raise ResultInvalid(f"{path} is not a regular file of known size", udid=udid)
    if size > max_bytes:
        raise ResultInvalid(f"{path} is {size} bytes, over the {max_bytes}-byte limit; not pulled",
                            udid=udid, action="check the runner version; a result this big is not a result")
    try:
        return await afc.get_file_contents(path)
    except (PyMobileDevice3Exception, OSError) as err:
        raise DeviceNotFound(f"lost while reading {path}: {err}", udid=udid, action="reconnect and run again") from None
