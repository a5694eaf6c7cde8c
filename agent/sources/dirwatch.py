"""Watch a directory that may not exist yet, level-triggered.

Daemons (libvirt's lease helper, netavark) create their state directories
lazily and replace files in them by rename. This yields the name of every
file that was written, renamed in or removed, and ``RESCAN`` whenever the
caller must re-read the whole directory: at start, when the directory
appears or is replaced, and when the kernel's queue overflowed. No polling:
while the directory is missing, the nearest existing ancestor is watched for
the next path component to appear.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Final

from asyncinotify import Event, Inotify, Mask, Watch

RESCAN: Final = ""

_FILE_EVENTS = Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE | Mask.CREATE
_SELF_GONE = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.UNMOUNT
_APPEAR = Mask.CREATE | Mask.MOVED_TO


def _nearest_existing(path: Path) -> Path:
    candidate = path
    while not candidate.is_dir() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


async def watch_dir(
    path: Path, on_watch: Callable[[Path], None] | None = None
) -> AsyncGenerator[str, None]:
    """Yield changed file names in ``path`` (no directories), or RESCAN.

    ``on_watch`` is told what is being watched whenever that changes: ``path``
    itself, or the ancestor waited on until ``path`` exists.
    """
    with Inotify() as inotify:
        while True:
            base = _nearest_existing(path)
            if base == path:
                watch = inotify.add_watch(path, _FILE_EVENTS | _SELF_GONE | Mask.ONLYDIR)
                if on_watch is not None:
                    on_watch(path)
                # Anything written before the watch existed is seen by this rescan.
                yield RESCAN
                async with contextlib.aclosing(_files_until_gone(inotify, watch)) as names:
                    async for name in names:
                        yield name
                _forget(inotify, watch)
                # The directory went away: whatever was in it is gone too.
                yield RESCAN
                continue
            watch = inotify.add_watch(base, _APPEAR | _SELF_GONE | Mask.ONLYDIR)
            if on_watch is not None:
                on_watch(base)
            # The next component may have appeared between the check and the watch.
            if _nearest_existing(path) == base:
                await _next_component(inotify, watch)
            _forget(inotify, watch)


async def _files_until_gone(inotify: Inotify, watch: Watch) -> AsyncGenerator[str, None]:
    """File names changed in the watched directory (RESCAN on overflow), until it goes."""
    async for event in inotify:
        if event.mask & Mask.Q_OVERFLOW:
            yield RESCAN
            continue
        if event.watch is not watch:
            continue
        if event.mask & _SELF_GONE:
            return
        if event.name is not None and not event.mask & Mask.ISDIR:
            yield str(event.name)


async def _next_component(inotify: Inotify, watch: Watch) -> None:
    """Return once a directory appears in (or moves into) the watched ancestor."""
    async for event in inotify:
        if event.watch is not watch:
            continue
        if event.mask & (_SELF_GONE | Mask.Q_OVERFLOW):
            return
        if event.mask & Mask.ISDIR or event.mask & Mask.MOVED_TO:
            return


def _forget(inotify: Inotify, watch: Watch) -> None:
    # Already removed by the kernel (IN_IGNORED) when the directory went away.
    with contextlib.suppress(OSError, ValueError, KeyError):
        inotify.rm_watch(watch)


async def wait_for_any(paths: tuple[Path, ...]) -> Path:
    """Return the first of ``paths`` that exists, waiting with inotify until one does.

    A service's socket is created when the service binds it: watching the
    nearest existing ancestor of each path costs no wakeup until something
    appears there (a timer-based retry would wake up forever on a laptop
    without the service).
    """
    with Inotify() as inotify:
        while True:
            found = next((p for p in paths if p.exists()), None)
            if found is not None:
                return found
            watches = _watch_ancestors(inotify, paths)
            try:
                # It may have appeared between the check and the watches.
                if not any(p.exists() for p in paths):
                    async for event in inotify:
                        if event.watch in watches:
                            break
            finally:
                for watch in watches:
                    _forget(inotify, watch)


def _watch_ancestors(inotify: Inotify, paths: tuple[Path, ...]) -> list[Watch]:
    """Watch the nearest existing ancestor of each path for its next component."""
    watches: list[Watch] = []
    failed: OSError | None = None
    for base in {_nearest_existing(p.parent) for p in paths}:
        try:
            watches.append(inotify.add_watch(base, _APPEAR | _SELF_GONE | Mask.ONLYDIR))
        except OSError as e:  # no permission, inotify limits reached
            failed = e
    if not watches and failed is not None:
        raise failed  # waiting on nothing would wait for ever
    return watches


class Changes:
    """The first change in any of ``dirs`` once armed: a file written, renamed in or
    out, or removed there, or a missing one of ``dirs`` appearing. ``counts``
    (path, closed after writing) says which files' changes count; None: all.

    Armed on entry, so whatever happens after ``with`` is seen by ``wait``, even
    a change made before ``wait`` is called (the kernel queues it). Waiting costs
    no wakeup until something changes: this is how a source that released its
    connection while idle learns that there is something to read again.
    """

    def __init__(self, dirs: tuple[Path, ...],
                 counts: Callable[[Path, bool], bool] | None = None) -> None:
        self.dirs = dirs
        self._counts = counts
        self._inotify: Inotify | None = None
        # watched directory -> the names in it that matter (None: every name)
        self._wanted: dict[Watch, frozenset[str] | None] = {}

    def __enter__(self) -> Changes:
        self._inotify = Inotify()
        try:
            self._arm(self._inotify)
        except BaseException:
            self._inotify.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None

    def _arm(self, inotify: Inotify) -> None:
        every: set[Path] = set()  # watched for any change in them
        appear: dict[Path, set[str]] = {}  # ancestor -> the next components awaited there
        for d in self.dirs:
            base = _nearest_existing(d)
            if base == d:
                every.add(d)
            else:
                appear.setdefault(base, set()).add(d.relative_to(base).parts[0])
        for base in every:
            watch = inotify.add_watch(base, _FILE_EVENTS | _SELF_GONE | Mask.ONLYDIR)
            self._wanted[watch] = None
        for base, names in appear.items():
            if base not in every:
                watch = inotify.add_watch(base, _APPEAR | _SELF_GONE | Mask.ONLYDIR)
                self._wanted[watch] = frozenset(names)

    async def wait(self) -> Path:
        """The path whose change ended the wait (a watched directory on overflow)."""
        assert self._inotify is not None, "not armed"
        async for event in self._inotify:
            if event.mask & Mask.Q_OVERFLOW:
                return self.dirs[0]
            watch = event.watch
            if watch is None or watch not in self._wanted:
                continue
            if self._ends_wait(self._wanted[watch], event):
                return event.path or watch.path
        raise AssertionError("inotify stream ended")  # pragma: no cover

    def _ends_wait(self, names: frozenset[str] | None, event: Event) -> bool:
        if event.mask & _SELF_GONE:
            return True
        if names is not None:  # an ancestor: only the awaited directory appearing
            return str(event.name) in names
        if self._counts is None:
            return True
        return (event.path is not None and not event.mask & Mask.ISDIR
                and self._counts(event.path, bool(event.mask & Mask.CLOSE_WRITE)))
