"""A directory of files written by another program, each parsed into a value.

libvirt's lease helper (``<bridge>.status``) and netavark (aardvark-dns's
per-network files) both keep their state as one file per thing in a
directory that may not exist yet, replaced by rename. This follows the
directory into existence (dirwatch.py), reads every file that changed in a
worker thread, and keeps per file the last value its parser accepted: a file
the parser refuses keeps its last good value (or loses it, if the caller
says a refused file must not be trusted) and is listed under ``refused``
with the reason, for status. A removed file is gone from the view.

One read per wake-up, of everything that changed meanwhile: a burst of
writes costs a few reads, not one per event. A change to small files (a
lease file holds a few hundred bytes per client) is read right on the loop:
a local read of a few KiB takes microseconds, while the hop to a worker
thread and back costs two scheduler wakeups, measured at up to 10 ms each
on a busy machine, on the path from a lease to its answer. Whole-directory
rescans, large files, and files under a lock that is not free at once go to
a thread (netavark's commit lock is nearly always free when its file's
close wakes us: then the read stays on the loop too).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import structlog

from agent.sources.dirwatch import RESCAN, watch_dir

log = structlog.get_logger(component="sources.parsed_dir")

T = TypeVar("T")

INLINE_MAX_BYTES = 64 * 1024  # changed files up to this size are read on the loop


class Incomplete(Exception):
    """Raised by a parser for a file caught mid-write: its writer's close brings
    another event, so this reading is neither a value nor a refusal."""


@dataclass(frozen=True)
class DirView(Generic[T]):
    present: bool = False  # the directory exists
    files: Mapping[str, T] = field(default_factory=dict)  # key -> last accepted value
    refused: Mapping[str, str] = field(default_factory=dict)  # key -> why its file was refused


class _Gone:
    """The file is not there (removed, or never was)."""


_GONE = _Gone()


@dataclass(frozen=True, slots=True)
class _Refusal:
    reason: str


def _no_lock(_directory: Path) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


@dataclass(frozen=True)
class FileFormat(Generic[T]):
    """How to read one kind of file in the directory."""

    key: Callable[[str], str | None]  # file name -> key in the view; None: not ours
    parse: Callable[[str, bytes], T]  # (key, bytes) -> value; ValueError: refused
    max_bytes: int = 16 * 1024 * 1024
    keep_last_good: bool = True  # False: a refused file's last value is dropped
    # Held around a read, e.g. the writer's lock (netavark commits under one).
    read_lock: Callable[[Path], contextlib.AbstractContextManager[None]] = _no_lock
    # The same lock, taken only if it is free at once (yields whether it is held):
    # a small read may then stay on the loop. None: a locked read always waits.
    read_lock_now: Callable[[Path], contextlib.AbstractContextManager[bool]] | None = None


def _read_one(path: Path, fmt: FileFormat[T], key: str) -> object:
    """A value, a _Refusal, Incomplete, or _GONE. Blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return _GONE
    except OSError as e:
        return _Refusal(f"cannot open: {os.strerror(e.errno or errno.EIO)}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return _Refusal("not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= fmt.max_bytes and (chunk := os.read(fd, 1 << 16)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        return _Refusal(f"cannot read: {os.strerror(e.errno or errno.EIO)}")
    finally:
        os.close(fd)
    if size > fmt.max_bytes:
        return _Refusal(f"more than {fmt.max_bytes} bytes")
    try:
        return fmt.parse(key, b"".join(chunks))
    except Incomplete as e:
        return e
    except ValueError as e:
        return _Refusal(str(e))


def read_files(
    directory: Path, fmt: FileFormat[T], names: Iterable[str] | None
) -> dict[str, object]:
    """Read the named files (None: every one of ours there is), by key. Blocking."""
    with fmt.read_lock(directory):
        return _read_unlocked(directory, fmt, names)


def _read_unlocked(
    directory: Path, fmt: FileFormat[T], names: Iterable[str] | None
) -> dict[str, object]:
    if names is None:
        try:
            names = os.listdir(directory)
        except OSError:
            return {}
    out: dict[str, object] = {}
    for name in names:
        key = fmt.key(name)
        if key is not None:
            out[key] = _read_one(directory / name, fmt, key)
    return out


class ParsedDir(Generic[T]):
    """Follows ``directory``; calls ``on_change(new, old)`` whenever the view changed
    (``self.view`` is already the new one then)."""

    def __init__(self, directory: Path, fmt: FileFormat[T],
                 on_change: Callable[[DirView[T], DirView[T]], None]) -> None:
        self.directory = directory
        self.fmt = fmt
        self.on_change = on_change
        self.view: DirView[T] = DirView()
        self.watching: Path | None = None  # the directory, or the ancestor waited on
        # Set once the directory was read (or found missing) for the first time.
        self.read = asyncio.Event()
        self._dirty: set[str] = set()
        self._rescan = False
        self._kick = asyncio.Event()

    async def run(self) -> None:
        reader = asyncio.create_task(self._reader(), name=f"read:{self.directory}")
        try:
            changes = watch_dir(self.directory, on_watch=self._watching)
            async with contextlib.aclosing(changes):
                async for name in changes:
                    if name == RESCAN:
                        self._rescan = True
                    else:
                        self._dirty.add(name)
                    self._kick.set()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _watching(self, path: Path) -> None:
        self.watching = path
        # Appeared or gone: everything it holds (or held) is read again.
        self._rescan = True
        self._kick.set()

    async def _reader(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            rescan, self._rescan = self._rescan, False
            dirty, self._dirty = self._dirty, set()
            names = None if rescan else dirty
            try:
                readings = self._read_now(names)
                if readings is None:
                    readings = await asyncio.to_thread(read_files, self.directory, self.fmt, names)
            except OSError as e:  # the read lock could not be taken, and the like
                log.warning("cannot read directory", path=str(self.directory), error=str(e))
                continue
            view = self._merge(readings, whole=rescan)
            self.read.set()
            if view != self.view:
                old, self.view = self.view, view
                self.on_change(view, old)

    def _read_now(self, names: set[str] | None) -> dict[str, object] | None:
        """Small changed files, read on the loop if no lock must be waited for; else None."""
        if names is None or not self._small(names):
            return None
        if self.fmt.read_lock is _no_lock:
            return _read_unlocked(self.directory, self.fmt, names)
        if self.fmt.read_lock_now is None:
            return None  # a lock may be waited for: never on the loop
        with self.fmt.read_lock_now(self.directory) as held:
            return _read_unlocked(self.directory, self.fmt, names) if held else None

    def _small(self, names: set[str]) -> bool:
        total = 0
        for name in names:
            try:
                total += os.stat(self.directory / name, follow_symlinks=False).st_size
            except OSError:
                continue  # gone: nothing to read
        return total <= INLINE_MAX_BYTES

    def _merge(self, readings: Mapping[str, object], *, whole: bool) -> DirView[T]:
        files = dict(self.view.files)
        refused = dict(self.view.refused)
        if whole:
            # A full listing: what it does not mention is gone.
            readings = {**dict.fromkeys(set(files) | set(refused), _GONE), **readings}
        for key, reading in sorted(readings.items()):
            if isinstance(reading, Incomplete):
                continue
            if reading is _GONE:
                files.pop(key, None)
                refused.pop(key, None)
            elif isinstance(reading, _Refusal):
                self._refuse(key, reading.reason, refused)
                if not self.fmt.keep_last_good:
                    files.pop(key, None)
            else:
                files[key] = reading  # type: ignore[assignment]
                refused.pop(key, None)
        return DirView(self.directory == self.watching, files, refused)

    def _refuse(self, key: str, why: str, refused: dict[str, str]) -> None:
        if refused.get(key) != why:
            log.warning("file refused", path=str(self.directory), key=key, reason=why,
                        kept_last_good=self.fmt.keep_last_good)
        refused[key] = why

