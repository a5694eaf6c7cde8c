"""Blocking calls in worker threads, each with a bound on how long it may take.

A service that hangs (alive, its socket open, but not answering: SIGSTOPped,
deadlocked, stuck on a dead NFS mount) never fails a call: the thread just
waits, and a source whose calls wait reads as "connected" for ever.
``Watchdog.call`` runs the call in a thread and, when it has not returned
after ``bound_s``, raises ``Stalled``: the lifecycle (lifecycle.py) says what
is stuck and for how long, abandons that connection and reconnects with its
backoff. A thread cannot be stopped; it stays blocked until the service
answers, so what piles up is bounded:

- a connection (``Line``) whose call is stuck gets no further call: whatever
  must still happen to it (closing it) runs once that call has returned;
- at most ``max_stuck`` calls are stuck at once; at the bound the lifecycle
  tries nothing new until one returns (``settled``), which is also the first
  sign the service answers again.

Zero cost while idle: the only timer is the bound of a call in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(component="sources.watchdog")

T = TypeVar("T")

# One connection abandoned and one attempt at a new one: the second stuck call
# stops further attempts until either returns.
MAX_STUCK = 2


@dataclass(eq=False)
class StuckCall:
    """A call that has not returned within its bound (it may still, any time)."""

    label: str  # what the caller called it, e.g. "listAllDomains"
    started: float  # time.monotonic()
    bound_s: float
    line: Line | None = None

    @property
    def what(self) -> str:
        """The RPC it waits in now, where the line is told (``Line.doing``), else its label."""
        doing = None if self.line is None else self.line.doing
        return doing or self.label

    def waiting_s(self) -> float:
        return time.monotonic() - self.started

    def waiting(self) -> str:
        return f"{self.what} waiting {self.waiting_s():.0f} s"


class Stalled(Exception):
    """A blocking call has not returned within its bound: its connection is abandoned."""

    def __init__(self, service: str, stuck: StuckCall, *, earlier: bool = False) -> None:
        how = ("stuck since earlier" if earlier
               else f"no answer within {stuck.bound_s:g} s")
        super().__init__(f"{service} not answering: {stuck.what} ({how})")
        self.stuck = stuck


@dataclass(eq=False)
class Line:
    """The calls on one connection: none starts while an earlier one is stuck."""

    stuck: StuckCall | None = None
    # The call in flight, stuck or not: one whose caller was cancelled (a config
    # reload, shutdown) still runs, and closing under it is as unsafe.
    pending: asyncio.Future[Any] | None = None
    # Which RPC the call in flight is in, set by the worker thread (a plain str
    # store) where the caller traces it (libvirt/traced.py); None: just the label.
    doing: str | None = None
    # Blocking work (closing the connection) to run in a thread once the stuck
    # call has returned: before that, libvirt may still be using the connection.
    afterwards: list[Callable[[], object]] = field(default_factory=list)


class Watchdog:
    """Runs blocking calls in threads; one not back within ``bound_s`` is ``Stalled``."""

    def __init__(self, service: str, bound_s: float | None,
                 max_stuck: int = MAX_STUCK) -> None:
        self.service = service  # e.g. "libvirtd": the word status and logs use
        self.bound_s = bound_s  # None: wait for ever (the watchdog is off)
        self.max_stuck = max_stuck
        self._stuck: list[StuckCall] = []
        self._settled: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[object]] = set()

    @property
    def stuck(self) -> tuple[StuckCall, ...]:
        return tuple(self._stuck)

    def at_bound(self) -> bool:
        return len(self._stuck) >= self.max_stuck

    async def settled(self) -> None:
        """Until fewer than ``max_stuck`` calls are stuck (one returned)."""
        while self.at_bound():
            if self._settled is None or self._settled.done():
                self._settled = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._settled)

    async def call(self, what: str, fn: Callable[..., T], *args: Any, line: Line | None = None,
                   late: Callable[[T], object] | None = None) -> T:
        """``fn(*args)`` in a thread. Raises ``Stalled`` when ``line`` is stuck already
        or the call is not back within the bound; ``late`` then gets what it returns
        (in a thread, e.g. to close a connection opened too late)."""
        if line is not None and line.stuck is not None:
            raise Stalled(self.service, line.stuck, earlier=True)
        if line is not None:
            line.doing = None  # before the thread starts: it sets it from then on
        future = _in_thread(fn, *args)
        started = time.monotonic()
        if line is not None:
            line.pending = future
            future.add_done_callback(lambda f: self._free(line, f))
        done, _ = await asyncio.wait((future,), timeout=self.bound_s)
        if done or self.bound_s is None:
            return await future
        stuck = StuckCall(what, started, self.bound_s, line)
        self._stuck.append(stuck)
        if line is not None:
            line.stuck = stuck
        future.add_done_callback(lambda f: self._returned(stuck, f, line, late))
        # The lifecycle says it once per outage (the error of its "connection lost").
        log.debug(f"{self.service} not answering; abandoning the connection",
                  call=what, waited_s=self.bound_s)
        raise Stalled(self.service, stuck)

    def _returned(self, stuck: StuckCall, future: asyncio.Future[T], line: Line | None,
                  late: Callable[[T], object] | None) -> None:
        self._stuck.remove(stuck)
        error = None if future.cancelled() else future.exception()
        failed = future.cancelled() or error is not None
        # Returned: the service answers again. Failed: e.g. the keepalive armed on
        # the abandoned connection closed it (the service may still hang).
        log.info(f"stuck {self.service} call ended", call=stuck.what,
                 after_s=round(stuck.waiting_s(), 1),
                 outcome=f"failed: {error}" if failed else "returned")
        work: list[Callable[[], object]] = []
        if line is not None:
            line.stuck = None
            work, line.afterwards = line.afterwards, []
        if late is not None and not failed:
            result = future.result()
            work.append(lambda: late(result))
        for job in work:
            self._spawn(job)
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _free(self, line: Line, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: a caller cancelled meanwhile cannot
        if line.pending is future:
            line.pending = None
        if line.stuck is None:  # else _returned, called next, runs them
            work, line.afterwards = line.afterwards, []
            for job in work:
                self._spawn(job)

    @staticmethod
    def idle(line: Line) -> bool:
        """No call in flight on ``line``: a new one may start (and close it)."""
        return line.stuck is None and (line.pending is None or line.pending.done())

    def after(self, line: Line, job: Callable[[], object]) -> None:
        """Run ``job`` in a thread once ``line`` has no call in flight (now, if it has none)."""
        if self.idle(line):
            self._spawn(job)
        else:
            line.afterwards.append(job)

    def _spawn(self, job: Callable[[], object]) -> None:
        # Cleanup of an abandoned connection: it may fail in any way, nobody waits for it.
        future = _in_thread(job)
        self._background.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: asyncio.Future[object]) -> None:
        self._background.discard(future)
        if not future.cancelled():
            future.exception()  # retrieved: a failed cleanup is nobody's news


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` in a daemon thread of its own, its outcome as a future on this loop.

    Not the loop's default executor: a stuck call would hold one of its few
    workers (min(32, CPUs + 4)) for as long as the service hangs, and asyncio
    joins those at exit, so a hung service would also hang namesync's shutdown.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    ctx = contextvars.copy_context()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = ctx.run(fn, *args)
        except BaseException as e:  # handed to the awaiting task, whatever it is
            error = e
            call = lambda: settle(lambda: future.set_exception(error))  # noqa: E731
        else:
            call = lambda: settle(lambda: future.set_result(result))  # noqa: E731
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(call)

    threading.Thread(target=run, name=f"blocking:{getattr(fn, '__name__', 'call')}",
                     daemon=True).start()
    return future
