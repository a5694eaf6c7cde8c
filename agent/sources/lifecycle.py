"""One lifecycle for everything that follows a service: sources and resolver watchers.

connect -> subscribe -> list -> take the whole snapshot -> follow, and on any
failure: say so once, keep what was last known, and try again. Subclasses
supply the hooks; this module alone decides ordering, retry timing and the
wording of status and logs, so every source behaves (and reads) the same:

- subscribe before list, so nothing that happens between the two is lost;
- every (re)connect hands over a whole new snapshot (level-triggered);
- while disconnected the last snapshot stays (a daemon restart must not
  make running VMs vanish);
- a service that is absent (its socket or directory missing) is awaited
  with inotify, without a single timer wakeup; backoff applies only to a
  service that is there and failing;
- "cannot connect" is logged once per outage with the reason and the fix,
  further attempts at debug; "connection lost" when it had been connected;
  "recovered" when it is back;
- a service that keeps an idle connection awake (libvirtd pings every client
  every 5 s) may be *released* while nothing happens: ``follow`` returns
  ``Idle`` after a quiet spell, ``release_watch`` names the files the service
  writes for every change that matters, and the lifecycle arms inotify on
  them, lists once more (what changed before the watch is in that listing),
  disconnects, and reconnects with no backoff at the first change. The last
  snapshot stays published meanwhile; status shows "released", not an error;
- a service that hangs (alive but not answering) is noticed by ``watchdog``, the
  watchdog its blocking calls go through (watchdog.py): a call not back in
  time fails the session with ``Stalled`` like a lost connection, status
  shows what waits and for how long, and while too many calls are stuck no
  new attempt is made until one returns (no timer: the return wakes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import structlog

from agent.sources.dirwatch import Changes, wait_for_any
from agent.sources.watchdog import Watchdog

log = structlog.get_logger(component="sources.lifecycle")

LinkState = Literal["starting", "connected", "released", "disconnected", "stopped"]

C = TypeVar("C")  # whatever connect() returns: a connection, a bus, a socket pair
S = TypeVar("S")  # whatever list_all() returns: a snapshot of objects, a resolver view
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why something does not work, in words a user can act on."""

    reason: str
    fix: str | None = None

    def __str__(self) -> str:
        return self.reason if self.fix is None else f"{self.reason} ({self.fix})"


@dataclass(frozen=True, slots=True)
class Awaited:
    """What must exist before connecting is worth trying: any one of ``paths``.
    As a release watch: the directories whose changes wake the source, and which
    of their files count (``counts``: path, closed after writing; None: all)."""

    paths: tuple[Path, ...]
    what: str  # e.g. "libvirtd's socket"
    fix: str | None = None
    counts: Callable[[Path, bool], bool] | None = None

    def present(self) -> bool:
        return any(p.exists() for p in self.paths)

    def problem(self) -> Problem:
        return Problem(f"{self.what} {self.paths[0]} does not exist", self.fix)


def _nothing_pending() -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Idle:
    """What ``follow`` returns to offer its connection for release after ``quiet_s``
    without events; ``pending`` says whether hints arrived meanwhile (then it follows on)."""

    quiet_s: float
    pending: Callable[[], bool] = _nothing_pending


@dataclass(frozen=True, slots=True)
class _Release:
    """A connection given up while idle: the armed watch that brings it back."""

    awaited: Awaited
    changes: Changes
    quiet_s: float


class Unavailable(Exception):
    """Raised by a hook when retrying cannot help (a module missing, a bad URI)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class Backoff:
    """Doubling delays between attempts at a service that is there but failing."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next = self.first_s


class Hints(Generic[T]):
    """Hints from callbacks (on the loop or in any thread), taken in batches.

    An event is only a hint of what to read again; a batch lets the follower
    read each named object once however many events named it.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[T] = asyncio.Queue()

    def put(self, item: T) -> None:
        if threading.get_ident() == self._loop_thread:
            self._queue.put_nowait(item)
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def batch(self) -> list[T]:
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def batch_within(self, quiet_s: float) -> list[T] | None:
        """The next batch, or None after ``quiet_s`` without one (one timer, not a poll)."""
        try:
            return await asyncio.wait_for(self.batch(), quiet_s)
        except TimeoutError:
            return None

    def pending(self) -> bool:
        return not self._queue.empty()

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


@dataclass
class Health:
    state: LinkState = "starting"
    since: float = 0.0  # wall-clock time of the last state change
    last_event: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    recovered_at: float | None = None  # first success after last_error; None while failing
    detail: str | None = None  # e.g. "reconnecting in 4s"

    @property
    def error_active(self) -> bool:
        return self.last_error is not None and self.recovered_at is None


@dataclass(frozen=True, slots=True)
class _Outage:
    was_connected: bool = False  # the connection that just ended had synced
    warned: bool = False  # "cannot connect" already said for this outage


class Observed:
    """Health and readiness of anything the daemon follows: what status shows."""

    kind: str = "service"

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = Health(since=time.time())
        # Set once the first snapshot is taken, or the first attempt failed: the
        # daemon reports ready only when every source has had its chance.
        self.synced = asyncio.Event()

    def set_state(self, state: LinkState, detail: str | None = None) -> None:
        if state != self.health.state:
            self.health.since = time.time()
        self.health.state = state
        self.health.detail = detail

    def saw_event(self) -> None:
        self.health.last_event = time.time()

    def record_error(self, message: str) -> None:
        self.health.last_error = message
        self.health.last_error_at = time.time()
        self.health.recovered_at = None

    def record_recovery(self) -> None:
        """The last error is now history (status shows it as past, with its time)."""
        if self.health.error_active:
            self.health.recovered_at = time.time()

    def mark_synced(self) -> None:
        self.synced.set()

    def fix_hint(self) -> str | None:
        """The plain fix for what fails now (status shows it), if one is known."""
        return None


class Lifecycle(Observed, ABC, Generic[C, S]):
    """Connection supervision; subclasses supply the hooks below."""

    retry_first_s: float = 1.0
    retry_max_s: float = 30.0
    while_down: str = "keeping the last snapshot"  # what a lost connection leaves
    _outage = _Outage()  # replaced, never mutated: a shared default is safe
    _problem: Problem | None = None  # what fails now; None while connected
    _failing_then: str = ""  # what happens next while failing (status)
    _released_detail: str | None = None  # what status adds while released
    _woken: Path | None = None  # what ended the last release, until reconnected
    # Why the last release could not be armed (inotify limits), until reconnected:
    # a source's release_watch() offers no release meanwhile.
    release_refused: str | None = None
    watchdog: Watchdog | None = None  # the watchdog of the hooks' blocking calls, if any

    # --- hooks ---------------------------------------------------------------

    def wait_available(self) -> Awaited | None:
        """What to watch for before trying (a socket path); None: always try."""
        return None

    @abstractmethod
    async def connect(self) -> C:
        """Open the connection; raise (``Unavailable`` if retrying cannot help)."""

    async def subscribe(self, conn: C) -> None:
        """Register for events; runs before ``list_all`` so no change is missed."""

    @abstractmethod
    async def list_all(self, conn: C) -> S:
        """Read everything there is now."""

    @abstractmethod
    def take(self, snapshot: S) -> None:
        """Replace everything known with ``snapshot`` (on every (re)connect)."""

    @abstractmethod
    async def follow(self, conn: C) -> str | Idle:
        """Follow events until the connection ends; return why it ended (or raise),
        or ``Idle`` after a quiet spell to have it released (see ``release_watch``)."""

    def release_watch(self) -> Awaited | None:
        """What to watch while the connection is released after ``follow`` returned
        ``Idle``: directories in which the service writes a file for every change
        that matters. None: keep the connection (status should say why)."""
        return None

    async def disconnect(self, conn: C) -> None:
        """Release the connection (it may be dead already)."""

    def describe(self, error: BaseException) -> Problem:
        """A failed hook's error as a plain reason and, where known, the fix."""
        return Problem(f"{type(error).__name__}: {error}")

    def companions(self) -> Sequence[Coroutine[Any, Any, None]]:
        """Work that runs beside the connection for the whole life (file watchers)."""
        return ()

    def connected_detail(self) -> str | None:
        """What status shows while connected."""
        return None

    def on_disconnected(self) -> None:
        """The connection ended; what was last known stays until the next ``take``."""

    def failed_detail(self, problem: Problem, then: str) -> str:
        """What status shows while disconnected; ``then`` says what happens next."""
        return f"{problem.reason}; {then}"

    # --- the loop ---------------------------------------------------------------

    async def supervise(self) -> None:
        """Run the lifecycle (and the companions) until cancelled."""
        companions = self.companions()
        if not companions:
            await self._stay_connected()
            return
        async with asyncio.TaskGroup() as tg:
            for coro in companions:
                tg.create_task(coro)
            tg.create_task(self._stay_connected())

    async def _stay_connected(self) -> None:
        backoff = Backoff(self.retry_first_s, self.retry_max_s)
        while True:
            awaited = self.wait_available()
            if awaited is not None and not awaited.present():
                self._failed(awaited.problem(), f"waiting for {awaited.paths[0]} to appear")
                await wait_for_any(awaited.paths)
                continue
            try:
                ended = await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except Unavailable as e:
                self._failed(e.problem, "not retrying")
                await asyncio.Future()  # nothing can change that but a new config
                return
            except Exception as e:
                problem = self.describe(e)
            else:
                if isinstance(ended, _Release):
                    await self._wait_released(ended)
                    continue  # reconnect now: something changed, no backoff
                problem = Problem(ended)
            self.on_disconnected()
            if awaited is not None and not awaited.present():
                # Gone with its socket: wait for it to come back, no timer.
                self._failed(problem, f"waiting for {awaited.paths[0]} to appear")
                await wait_for_any(awaited.paths)
                continue
            if self.watchdog is not None and self.watchdog.at_bound():
                # Threads stuck in the service: add none; the first to return wakes this.
                self._failed(problem, "reconnecting when it answers")
                await self.watchdog.settled()
                continue
            delay = backoff.next()
            self._failed(problem, f"reconnecting in {delay:g}s")
            await asyncio.sleep(delay)

    async def _session(self, backoff: Backoff) -> str | _Release:
        conn = await self.connect()
        self.release_refused = None
        try:
            await self.subscribe(conn)
            self.take(await self.list_all(conn))
            self._connected()
            backoff.reset()
            while True:
                ended = await self.follow(conn)
                if not isinstance(ended, Idle):
                    return ended
                release = await self._release(conn, ended)
                if release is not None:
                    return release
        finally:
            # Releasing a dead connection may fail; cancellation must not skip it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.disconnect(conn))

    async def _release(self, conn: C, idle: Idle) -> _Release | None:
        """Arm the watch, then list once more, then give the connection up; None: keep it.

        Armed first: a change after that wakes the watch, one before it is in
        the listing, so nothing falls between the last event and the release.
        """
        awaited = self.release_watch()
        if awaited is None:
            return None
        with contextlib.ExitStack() as stack:
            try:
                changes = stack.enter_context(Changes(awaited.paths, awaited.counts))
            except OSError as e:  # inotify limits: stay connected rather than blind
                # ...and do not try again at every quiet spell: until the next
                # connection (release_watch says why it is kept).
                self.release_refused = f"cannot watch {awaited.what}: {e.strerror or e}"
                log.warning(f"{self.kind} kept connected while idle", source=self.name,
                            reason=self.release_refused)
                return None
            self.take(await self.list_all(conn))
            if idle.pending() or self.release_watch() is None:
                return None  # something happened meanwhile: follow it
            stack.pop_all()
            return _Release(awaited, changes, idle.quiet_s)
        return None  # pragma: no cover (mypy: the with may swallow)

    async def _wait_released(self, release: _Release) -> None:
        paths = ", ".join(str(p) for p in release.awaited.paths)
        self._released_detail = (f"idle: connection released after {release.quiet_s:g}s "
                                 f"without events; reconnects when {release.awaited.what} "
                                 f"change ({paths})")
        self.set_state("released", self._detail_while("released"))
        log.debug(f"{self.kind} released while idle", source=self.name, watching=paths)
        with release.changes:
            self._woken = await release.changes.wait()
        self._released_detail = None

    def _detail_while(self, state: LinkState) -> str | None:
        detail = self.connected_detail()
        if state != "released":
            return detail
        return "; ".join(d for d in (detail, self._released_detail) if d)

    def refresh_detail(self) -> None:
        """Show ``connected_detail()`` again (connected or released) after it changed."""
        if self.health.state in ("connected", "released"):
            self.set_state(self.health.state, self._detail_while(self.health.state))

    def fix_hint(self) -> str | None:
        return None if self._problem is None else self._problem.fix

    def detail_now(self) -> str | None:
        """``health.detail`` with what the calls stuck in the service wait for, as of now."""
        calls = self.watchdog
        if calls is None or not calls.stuck:
            return self.health.detail
        waiting = ", ".join(s.waiting() for s in calls.stuck)
        if self.health.state == "connected":
            return "; ".join(d for d in (self.health.detail,
                                         f"an abandoned call still waits: {waiting}") if d)
        # The stall's own wording, with the clock running, instead of its reason.
        return f"{calls.service} not answering: {waiting}; {self._failing_then}"

    def _connected(self) -> None:
        self._problem = None
        outage, self._outage = self._outage, _Outage(was_connected=True)
        self.set_state("connected", self.connected_detail())
        self.mark_synced()
        self.record_recovery()
        woken, self._woken = self._woken, None
        if outage.warned:
            log.info(f"{self.kind} recovered", source=self.name)
        elif woken is not None:  # back from a release: routine, not news
            log.debug(f"{self.kind} reconnected", source=self.name, woken_by=str(woken))
        else:
            log.info(f"{self.kind} synced", source=self.name)

    def _failed(self, problem: Problem, then: str) -> None:
        outage = self._outage
        self._problem = problem
        self._failing_then = then
        self.record_error(str(problem))
        self.set_state("disconnected", self.failed_detail(problem, then))
        self.mark_synced()  # the daemon must not wait for a service that is down
        fields = {"source": self.name, "error": problem.reason, "fix": problem.fix, "then": then}
        if outage.was_connected:
            log.warning(f"{self.kind} connection lost; {self.while_down}", **fields)
        elif not outage.warned:
            log.warning(f"cannot connect to {self.kind}", **fields)
        else:
            log.debug(f"{self.kind} still unreachable", **fields)
        self._outage = _Outage(warned=True)
