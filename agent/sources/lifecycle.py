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
  "recovered" when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import structlog

from agent.sources.dirwatch import wait_for_any

log = structlog.get_logger(component="sources.lifecycle")

LinkState = Literal["starting", "connected", "disconnected", "stopped"]

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
    """What must exist before connecting is worth trying: any one of ``paths``."""

    paths: tuple[Path, ...]
    what: str  # e.g. "libvirtd's socket"
    fix: str | None = None

    def present(self) -> bool:
        return any(p.exists() for p in self.paths)

    def problem(self) -> Problem:
        return Problem(f"{self.what} {self.paths[0]} does not exist", self.fix)


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
    async def follow(self, conn: C) -> str:
        """Follow events until the connection ends; return why it ended (or raise)."""

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
                reason = await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except Unavailable as e:
                self._failed(e.problem, "not retrying")
                await asyncio.Future()  # nothing can change that but a new config
                return
            except Exception as e:
                problem = self.describe(e)
            else:
                problem = Problem(reason)
            self.on_disconnected()
            if awaited is not None and not awaited.present():
                # Gone with its socket: wait for it to come back, no timer.
                self._failed(problem, f"waiting for {awaited.paths[0]} to appear")
                await wait_for_any(awaited.paths)
                continue
            delay = backoff.next()
            self._failed(problem, f"reconnecting in {delay:g}s")
            await asyncio.sleep(delay)

    async def _session(self, backoff: Backoff) -> str:
        conn = await self.connect()
        try:
            await self.subscribe(conn)
            self.take(await self.list_all(conn))
            self._connected()
            backoff.reset()
            return await self.follow(conn)
        finally:
            # Releasing a dead connection may fail; cancellation must not skip it.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.disconnect(conn))

    def fix_hint(self) -> str | None:
        return None if self._problem is None else self._problem.fix

    def _connected(self) -> None:
        self._problem = None
        outage, self._outage = self._outage, _Outage(was_connected=True)
        self.set_state("connected", self.connected_detail())
        self.mark_synced()
        self.record_recovery()
        if outage.warned:
            log.info(f"{self.kind} recovered", source=self.name)
        else:
            log.info(f"{self.kind} synced", source=self.name)

    def _failed(self, problem: Problem, then: str) -> None:
        outage = self._outage
        self._problem = problem
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
