"""The one source lifecycle (agent/sources/lifecycle.py), on a real asyncio loop.

The "service" here is a scripted subclass: what a real one does (libvirtd,
netlink, the system bus) is covered by each source's own tests. Presence is
a real file watched with real inotify, and wakeups are counted on the loop
itself (its iterations and its timer heap), not inferred from sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.model.record import ObjectState
from agent.sources.base import Objects, ServiceSource
from agent.sources.lifecycle import Awaited, Backoff, Hints, Idle, Problem, Unavailable


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts how often the loop woke up (one ``_run_once`` per wakeup)."""

    iterations = 0

    def _run_once(self) -> None:
        self.iterations += 1
        super()._run_once()  # type: ignore[misc]

    def timers(self) -> int:
        """Armed timers, less the test's own overall timeout."""
        armed = sum(1 for h in self._scheduled if not h.cancelled())  # type: ignore[attr-defined]
        return armed - 1


def run(body: Callable[[], Any]) -> None:
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(asyncio.wait_for(body(), 20))


class Store:
    def __init__(self) -> None:
        self.replaced: list[dict[str, ObjectState]] = []

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        self.replaced.append(dict(objects))

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        raise AssertionError("not used here")


class Scripted(ServiceSource[int]):
    """Each connect() either fails (an exception in ``failures``) or succeeds."""

    kind = "scripted"
    retry_first_s = 0.01
    retry_max_s = 0.04

    def __init__(self, awaited: Awaited | None = None) -> None:
        super().__init__("scripted")
        self.awaited = awaited
        self.calls: list[str] = []
        self.failures: list[BaseException] = []
        self.connects = 0
        self.end = asyncio.Event()  # set: the current connection ends
        self.snapshot: Objects = {"a": ObjectState()}

    def config_key(self) -> object:
        return None

    def wait_available(self) -> Awaited | None:
        return self.awaited

    async def connect(self) -> int:
        self.connects += 1
        self.calls.append("connect")
        if self.failures:
            raise self.failures.pop(0)
        return self.connects

    async def subscribe(self, conn: int) -> None:
        self.calls.append("subscribe")

    async def list_all(self, conn: int) -> Objects:
        self.calls.append("list")
        return self.snapshot

    async def follow(self, conn: int) -> str:
        self.calls.append("follow")
        await self.end.wait()
        self.end.clear()
        return "the service closed the connection"

    async def disconnect(self, conn: int) -> None:
        self.calls.append("disconnect")

    def describe(self, error: BaseException) -> Problem:
        return Problem(f"refused: {error}", "start the service")


async def until(probe: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 5
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_subscribe_before_list_and_a_whole_snapshot_on_every_connect() -> None:
    async def body() -> None:
        src, store = Scripted(), Store()
        task = asyncio.create_task(src.run(store))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.calls == ["connect", "subscribe", "list", "follow"]
        assert src.health.state == "connected"
        assert store.replaced == [{"a": ObjectState()}]
        # The connection ends: the last snapshot stays (nothing replaced), then
        # the reconnect lists again and replaces everything with what it found.
        src.snapshot = {"b": ObjectState()}
        src.end.set()
        await until(lambda: len(store.replaced) == 2, "the resync")
        assert store.replaced[1] == {"b": ObjectState()}
        assert src.calls[4:] == ["disconnect", "connect", "subscribe", "list", "follow"]
        await cancel(task)
        assert src.calls[-1] == "disconnect"

    run(body)


def test_wording_once_per_outage_then_lost_then_recovered(tmp_path: Path) -> None:
    async def body() -> None:
        src = Scripted()
        src.failures = [OSError("ECONNREFUSED")] * 3
        with capture_logs() as logs:
            task = asyncio.create_task(src.run(Store()))
            await until(lambda: src.health.state == "connected", "connected")
            src.end.set()
            await until(lambda: src.connects == 5, "the reconnect")
            await until(lambda: src.health.state == "connected", "connected again")
            await cancel(task)
        said = [(e["log_level"], e["event"]) for e in logs]
        assert said == [
            ("warning", "cannot connect to scripted"),
            ("debug", "scripted still unreachable"),
            ("debug", "scripted still unreachable"),
            ("info", "scripted recovered"),
            ("warning", "scripted connection lost; keeping the last snapshot"),
            ("info", "scripted recovered"),
        ]
        first = logs[0]
        assert (first["error"], first["fix"]) == ("refused: ECONNREFUSED", "start the service")
        assert src.health.last_error == "the service closed the connection"

    run(body)


def test_backoff_doubles_while_present_and_failing(tmp_path: Path) -> None:
    sock = tmp_path / "service.sock"
    sock.touch()

    async def body() -> None:
        src = Scripted(Awaited((sock,), "the service's socket"))
        src.failures = [OSError("ECONNREFUSED")] * 4
        task = asyncio.create_task(src.run(Store()))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.health.state == "disconnected"
        assert src.health.detail == "refused: ECONNREFUSED; reconnecting in 0.01s"
        assert src.health.last_error == "refused: ECONNREFUSED (start the service)"
        assert src.fix_hint() == "start the service"
        details = set()
        while src.health.state != "connected":
            details.add(src.health.detail)
            await asyncio.sleep(0.001)
        assert {d for d in details if d and "0.04s" in d}  # capped at retry_max_s
        assert src.fix_hint() is None
        assert src.connects == 5
        await cancel(task)

    run(body)


def test_an_absent_service_is_awaited_without_a_single_wakeup(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "service" / "service.sock"

    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        src = Scripted(Awaited((sock,), "the service's socket", "start the service"))
        task = asyncio.create_task(src.run(Store()))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.connects == 0
        assert src.health.state == "disconnected"
        assert src.health.detail == (
            f"the service's socket {sock} does not exist; waiting for {sock} to appear")
        await asyncio.sleep(0.05)  # let the watch settle on the nearest ancestor
        await asyncio.sleep(0)  # and that sleep's timer be gone
        before = loop.iterations
        assert loop.timers() == 0
        # Block off the loop for a second: the only wakeup allowed is the one
        # that hands the thread's result back.
        await asyncio.to_thread(time.sleep, 1.0)
        assert loop.iterations - before <= 2
        assert loop.timers() == 0
        # The socket appears (two directory levels deep): connected at once.
        sock.parent.mkdir(parents=True)
        sock.touch()
        await until(lambda: src.health.state == "connected", "connected on appearance")
        assert src.connects == 1
        await cancel(task)

    run(body)


def test_a_service_whose_socket_vanishes_is_awaited_again(tmp_path: Path) -> None:
    sock = tmp_path / "service.sock"
    sock.touch()

    async def body() -> None:
        src = Scripted(Awaited((sock,), "the service's socket"))
        task = asyncio.create_task(src.run(Store()))
        await until(lambda: src.health.state == "connected", "connected")
        sock.unlink()
        src.end.set()
        await until(lambda: "waiting for" in (src.health.detail or ""), "waiting")
        assert src.health.detail == (
            f"the service closed the connection; waiting for {sock} to appear")
        assert src.connects == 1
        sock.touch()
        await until(lambda: src.connects == 2 and src.health.state == "connected", "back")
        await cancel(task)

    run(body)


def test_unavailable_is_said_once_and_never_retried() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        src = Scripted()
        src.failures = [Unavailable(Problem("module missing", "install it"))]
        task = asyncio.create_task(src.run(Store()))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.health.detail == "module missing; not retrying"
        assert loop.timers() == 0
        await asyncio.to_thread(time.sleep, 0.2)
        assert src.connects == 1
        await cancel(task)

    run(body)


def test_backoff_and_hints() -> None:
    b = Backoff(0.25, 1.0)
    assert [b.next() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    b.reset()
    assert b.next() == 0.25

    async def body() -> None:
        hints: Hints[str] = Hints()
        hints.put("a")
        await asyncio.to_thread(hints.put, "b")  # from a thread, as libvirt's callbacks do
        await asyncio.sleep(0)
        assert await hints.batch() == ["a", "b"]
        hints.put("c")
        hints.clear()
        hints.put("d")
        assert await hints.batch() == ["d"]

    run(body)


class Releasing(Scripted):
    """Offers its connection for release whenever ``idle`` is set (follow returns Idle)."""

    def __init__(self, watched: tuple[Path, ...]) -> None:
        super().__init__()
        self.watched: tuple[Path, ...] | None = watched
        self.idle = asyncio.Event()
        self.hints_pending = False

    async def follow(self, conn: int) -> str | Idle:
        self.calls.append("follow")
        ended = asyncio.create_task(self.end.wait())
        idle = asyncio.create_task(self.idle.wait())
        done, pending = await asyncio.wait({ended, idle}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        if idle in done:
            self.idle.clear()
            return Idle(7, lambda: self.hints_pending)
        self.end.clear()
        return "the service closed the connection"

    def release_watch(self) -> Awaited | None:
        return None if self.watched is None else Awaited(self.watched, "the service's files")

    def connected_detail(self) -> str | None:
        return "2 objects"


def test_an_idle_connection_is_released_watched_without_wakeups_and_back_at_a_change(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()

    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        src, store = Releasing((state, tmp_path / "config")), Store()
        with capture_logs() as logs:
            task = asyncio.create_task(src.run(store))
            await until(lambda: src.health.state == "connected", "connected")
            src.idle.set()
            await until(lambda: src.health.state == "released", "released")
        # Listed once more after the watch was armed, then disconnected.
        assert src.calls == ["connect", "subscribe", "list", "follow", "list", "disconnect"]
        assert src.health.detail == (
            "2 objects; idle: connection released after 7s without events; reconnects "
            f"when the service's files change ({state}, {tmp_path / 'config'})")
        assert not src.health.error_active
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]
        # While released: no timer, no wakeup (the snapshot stays as listed).
        await asyncio.sleep(0)
        assert loop.timers() == 0
        before = loop.iterations
        await asyncio.to_thread(time.sleep, 0.5)
        assert loop.iterations - before <= 2
        assert loop.timers() == 0
        assert len(store.replaced) == 2
        # A change reconnects at once (no backoff) and lists everything again.
        src.snapshot = {"b": ObjectState()}
        (state / "web.xml").write_text("<domstatus/>")
        await until(lambda: src.health.state == "connected" and src.connects == 2, "woken")
        assert src.calls[6:] == ["connect", "subscribe", "list", "follow"]
        assert store.replaced[-1] == {"b": ObjectState()}
        assert src.health.detail == "2 objects"
        await cancel(task)

    run(body)


def test_no_release_when_hints_came_meanwhile_or_the_source_must_stay(tmp_path: Path) -> None:
    async def body() -> None:
        src = Releasing((tmp_path,))
        task = asyncio.create_task(src.run(Store()))
        await until(lambda: src.health.state == "connected", "connected")
        src.hints_pending = True  # an event arrived during the last listing
        src.idle.set()
        await until(lambda: src.calls.count("follow") == 2, "following on")
        assert src.calls == ["connect", "subscribe", "list", "follow", "list", "follow"]
        src.hints_pending = False
        src.watched = None  # e.g. a domain whose address only probing finds
        src.idle.set()
        await until(lambda: src.calls.count("follow") == 3, "following on")
        assert src.calls[6:] == ["follow"]  # not even listed: nothing to release to
        assert src.health.state == "connected"
        await cancel(task)

    run(body)


def test_batch_within_gives_none_after_a_quiet_spell() -> None:
    async def body() -> None:
        hints: Hints[str] = Hints()
        assert await hints.batch_within(0.01) is None
        hints.put("a")
        assert hints.pending()
        assert await hints.batch_within(5) == ["a"]
        assert not hints.pending()

    run(body)
