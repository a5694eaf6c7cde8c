"""The watchdog of blocking calls (agent/sources/watchdog.py) and what the lifecycle
does with a stalled one, on a real asyncio loop with real threads.

The "blocking call" is a fake: a function that waits on a ``threading.Event`` the
test sets, the one way to hang a call on demand and let it go at a chosen moment
(the real hang, a SIGSTOPped libvirtd, is in tests/integration/test_libvirt_hung.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.model.record import ObjectState
from agent.sources.base import Objects
from agent.sources.watchdog import Line, Stalled, Watchdog
from tests.unit.test_lifecycle import CountingLoop, Scripted, Store, cancel, until

pytestmark = pytest.mark.timeout(30)

BOUND_S = 0.05


def run(body: Callable[[], Any]) -> None:
    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        runner.run(asyncio.wait_for(body(), 20))


class Hang:
    """A blocking call that returns ``value`` once let go (or raises ``error``)."""

    def __init__(self, value: object = "late") -> None:
        self.value = value
        self.error: BaseException | None = None
        self.go = threading.Event()
        self.started = 0

    def __call__(self) -> object:
        self.started += 1
        assert self.go.wait(10), "never let go"
        if self.error is not None:
            raise self.error
        return self.value


def test_a_call_that_returns_in_time_gives_its_value_or_its_error_and_leaves_no_timer() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        dog = Watchdog("svc", 5.0)
        assert await dog.call("add", lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(KeyError, match="gone"):
            await dog.call("fail", _raise, KeyError("gone"))
        assert dog.stuck == ()
        assert loop.timers() == 0  # the bound's timer went with the call: idle is free

    run(body)


def _raise(error: BaseException) -> None:
    raise error


def test_a_stuck_call_stalls_its_line_which_gets_no_further_call_until_it_returns() -> None:
    async def body() -> None:
        dog, line, hang = Watchdog("svc", BOUND_S), Line(), Hang()
        with pytest.raises(Stalled) as stalled:
            await dog.call("listAll", hang, line=line)
        assert str(stalled.value) == f"svc not answering: listAll (no answer within {BOUND_S:g} s)"
        assert line.stuck is stalled.value.stuck
        [stuck] = dog.stuck
        assert stuck.what == "listAll" and stuck.waiting_s() >= BOUND_S
        assert stuck.waiting().startswith("listAll waiting ")

        # The connection's next call is refused without starting a thread...
        other = Hang()
        with pytest.raises(Stalled, match=r"svc not answering: listAll \(stuck since earlier\)"):
            await dog.call("close", other, line=line)
        assert other.started == 0
        # ...and what must still happen to it waits for the stuck call to return.
        closed = threading.Event()
        dog.after(line, closed.set)
        await asyncio.sleep(BOUND_S)
        assert not closed.is_set()

        with capture_logs() as logs:
            hang.go.set()
            await until(closed.is_set, "the deferred close")
        assert line.stuck is None and dog.stuck == ()
        [ended] = [e for e in logs if e["event"] == "stuck svc call ended"]
        assert ended["call"] == "listAll" and ended["outcome"] == "returned"
        # Not stuck any more: its calls run again, and ``after`` runs at once.
        assert await dog.call("again", lambda: 7, line=line) == 7
        now = threading.Event()
        dog.after(line, now.set)
        await until(now.is_set, "an immediate after()")

    run(body)


def test_a_late_result_is_handed_to_late_and_a_late_failure_is_logged_not_raised() -> None:
    async def body() -> None:
        dog = Watchdog("svc", BOUND_S)
        opened, got = Hang("handle"), threading.Event()
        seen: list[object] = []

        def late(result: object) -> None:
            seen.append(result)
            got.set()

        with pytest.raises(Stalled):
            await dog.call("open", opened, late=late)
        opened.go.set()
        await until(got.is_set, "the late handle")
        assert seen == ["handle"]

        failing = Hang()
        failing.error = OSError("closed by keepalive")
        with pytest.raises(Stalled):
            await dog.call("list", failing, late=late)
        with capture_logs() as logs:
            failing.go.set()
            await until(lambda: not dog.stuck, "the failed call ended")
        assert seen == ["handle"]  # a failure has no result to clean up
        [ended] = [e for e in logs if e["event"] == "stuck svc call ended"]
        assert ended["outcome"] == "failed: closed by keepalive"

    run(body)


def test_a_call_whose_caller_was_cancelled_still_holds_its_line_until_it_returns() -> None:
    async def body() -> None:
        dog, line, hang = Watchdog("svc", 5.0), Line(), Hang()
        call = asyncio.create_task(dog.call("list", hang, line=line))
        await until(lambda: hang.started, "the call started")
        await cancel(call)  # e.g. a config reload: the thread cannot be stopped
        assert not dog.idle(line) and dog.stuck == ()  # in flight, not stuck
        closed = threading.Event()
        dog.after(line, closed.set)  # closing under a running call would be unsafe
        await asyncio.sleep(BOUND_S)
        assert not closed.is_set()
        hang.go.set()
        await until(closed.is_set, "the close once the call returned")
        assert dog.idle(line)

    run(body)


def test_settled_waits_while_max_stuck_calls_are_stuck_and_wakes_when_one_returns() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, CountingLoop)
        dog = Watchdog("svc", BOUND_S, max_stuck=2)
        first, second = Hang(), Hang()
        for hang in (first, second):
            with pytest.raises(Stalled):
                await dog.call("open", hang)
        assert dog.at_bound()
        waiter = asyncio.create_task(dog.settled())
        await asyncio.sleep(BOUND_S)
        assert not waiter.done()
        assert loop.timers() == 0  # waiting for a return arms nothing: no polling
        second.go.set()
        await asyncio.wait_for(waiter, 5)
        assert not dog.at_bound() and [s.what for s in dog.stuck] == ["open"]
        await dog.settled()  # below the bound: at once
        first.go.set()
        await until(lambda: not dog.stuck, "both ended")

    run(body)


def test_no_bound_waits_for_ever() -> None:
    async def body() -> None:
        dog, hang = Watchdog("svc", None), Hang("done")
        call = asyncio.create_task(dog.call("slow", hang))
        await asyncio.sleep(BOUND_S * 2)
        assert not call.done() and dog.stuck == ()
        hang.go.set()
        assert await asyncio.wait_for(call, 5) == "done"

    run(body)


class Hanging(Scripted):
    """A scripted service whose listing goes through the watchdog and may hang."""

    def __init__(self) -> None:
        super().__init__()
        self.watchdog = Watchdog("svc", BOUND_S, max_stuck=2)
        self.hangs: list[Hang] = []  # the next listings' calls; empty: answer at once

    async def list_all(self, conn: int) -> Objects:
        self.calls.append("list")
        hang = self.hangs.pop(0) if self.hangs else None
        if hang is not None:
            await self.watchdog.call("listAll", hang)
        return self.snapshot


def test_the_lifecycle_says_what_is_stuck_keeps_the_snapshot_and_recovers_when_it_returns() -> None:
    async def body() -> None:
        src, store = Hanging(), Store()
        task = asyncio.create_task(src.run(store))
        await asyncio.wait_for(src.synced.wait(), 5)
        assert src.detail_now() is None

        # The connection ends; every listing after it hangs (two stuck: the bound).
        first, second = Hang(), Hang()
        src.hangs = [first, second]
        src.snapshot = {"b": ObjectState()}
        with capture_logs() as logs:
            src.end.set()
            await until(lambda: src.watchdog.at_bound() and "when it answers"
                        in (src.health.detail or ""), "both listings stuck")
        assert src.health.state == "disconnected"
        assert src.health.error_active
        assert src.health.last_error == ("refused: svc not answering: listAll "
                                         f"(no answer within {BOUND_S:g} s) (start the service)")
        detail = src.detail_now()
        assert detail is not None
        assert detail.startswith("svc not answering: listAll waiting 0 s, listAll waiting 0 s; "
                                 "reconnecting when it answers"), detail
        connects = src.connects
        await asyncio.sleep(BOUND_S * 4)
        assert src.connects == connects  # at the bound: no new attempt, no new thread
        assert store.replaced == [{"a": ObjectState()}]  # the last snapshot stays
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1, warnings  # said once for the outage

        # The service answers: one stuck call returns, the source reconnects and resyncs.
        first.go.set()
        await until(lambda: src.health.state == "connected", "reconnected")
        assert store.replaced[-1] == {"b": ObjectState()}
        assert not src.health.error_active
        # The other abandoned call still waits: status says so, while connected.
        assert (src.detail_now() or "").startswith("an abandoned call still waits: listAll")
        second.go.set()
        await until(lambda: not src.watchdog.stuck, "the last stuck call ended")
        assert src.detail_now() is None
        await cancel(task)

    run(body)
