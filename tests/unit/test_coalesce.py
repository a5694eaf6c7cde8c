"""Coalescing: a lone change at once, a burst in few syncs, reloads paced by what they cost.

Deterministic: the coalescer runs on a virtual clock (``VirtualTime``) that
moves only when the test says so; no assertion depends on how fast this
machine is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.daemon.coalesce import Coalescer, ReloadBudget

WINDOW = 0.02


class VirtualTime:
    """A clock and an asyncio sleep on it: sleepers wake only when ``advance`` passes
    their time, in order, each given the chance to run before the next."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._seq), fut))
        await fut

    @staticmethod
    async def settle() -> None:
        for _ in range(50):  # every ready task runs until it waits again
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            at, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, at)
            if not fut.cancelled():
                fut.set_result(None)
            await self.settle()
        self.now = end
        await self.settle()


@dataclass
class Recorder:
    """The coalesced action: records (first_change_at, started_at) on the virtual clock;
    takes ``duration`` virtual seconds and charges ``reread`` as a sink's reload would."""

    vt: VirtualTime
    duration: float = 0.0
    reread: float = 0.0
    coalescer: Coalescer | None = None
    calls: list[tuple[float, float]] = field(default_factory=list)
    running: int = 0
    overlapped: bool = False
    fail_first: bool = False

    async def __call__(self, first_change_at: float) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        self.calls.append((first_change_at, self.vt.now))
        try:
            if self.duration:
                await self.vt.sleep(self.duration)
            if self.fail_first and len(self.calls) == 1:
                raise RuntimeError("plan blew up")
            if self.reread and self.coalescer is not None:
                self.coalescer.charge(self.reread)
        finally:
            self.running -= 1


def make(vt: VirtualTime, window: float = WINDOW, *, more_coming: Callable[[], bool] = lambda:
         True, **action: object) -> tuple[Coalescer, Recorder]:
    rec = Recorder(vt, **action)  # type: ignore[arg-type]
    c = Coalescer(window, rec, more_coming=more_coming, clock=vt, sleep=vt.sleep)
    rec.coalescer = c
    return c, rec


def run(test: Callable[[VirtualTime], Awaitable[None]]) -> None:
    async def main() -> None:
        vt = VirtualTime()
        await test(vt)

    asyncio.run(main())


async def started(c: Coalescer, vt: VirtualTime) -> asyncio.Task[None]:
    task = asyncio.create_task(c.run())
    await vt.settle()
    return task


def test_lone_change_is_synced_at_once() -> None:
    """Leading edge (issue 11): the first change after a quiet spell waits for nothing."""
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt)
        task = await started(c, vt)
        c.poke()
        await vt.settle()
        assert rec.calls == [(1000.0, 1000.0)]
        await vt.advance(1.0)  # quiet for longer than the window
        c.poke()
        await vt.settle()
        assert rec.calls[1] == (1001.0, 1001.0)
        assert c.runs == 2
        task.cancel()

    run(body)


def test_pokes_within_the_window_after_a_sync_are_one_batch_at_its_end() -> None:
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt)
        task = await started(c, vt)
        c.poke()  # synced at once, at 1000.0
        await vt.settle()
        await vt.advance(0.005)
        c.poke()  # the first of the next batch
        for _ in range(98):
            await vt.advance(0.0001)
            c.poke()
        await vt.advance(1.0)
        assert rec.calls == [(1000.0, 1000.0), (1000.005, pytest.approx(1000.0 + WINDOW))]
        task.cancel()

    run(body)


def test_a_change_during_a_sync_is_synced_once_after_it_and_never_alongside() -> None:
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, duration=0.05)
        task = await started(c, vt)
        c.poke()
        await vt.advance(0.01)  # the sync runs until 1000.05
        for _ in range(5):
            c.poke()
            await vt.advance(0.001)
        await vt.advance(1.0)
        assert [at for _, at in rec.calls] == [1000.0, pytest.approx(1000.05 + WINDOW)]
        assert rec.calls[1][0] == pytest.approx(1000.01)
        assert not rec.overlapped
        task.cancel()

    run(body)


def test_no_poke_no_run() -> None:
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt)
        task = await started(c, vt)
        await vt.advance(60.0)
        assert rec.calls == []
        task.cancel()

    run(body)


def test_a_failing_action_does_not_stop_later_syncs() -> None:
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, fail_first=True)
        task = await started(c, vt)
        c.poke()
        await vt.advance(1.0)
        c.poke()
        await vt.advance(1.0)
        assert len(rec.calls) == 2
        assert not task.done()
        task.cancel()

    run(body)


def test_cheap_reloads_never_hold_a_burst_back() -> None:
    """100 names: dnsmasq re-reads in 0.4 ms. A change every 130 ms (a burst of
    `podman run`s on this machine) is each synced the moment it comes."""
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, reread=0.0004)
        task = await started(c, vt)
        for _ in range(100):
            c.poke()
            await vt.advance(0.13)
        assert all(first == at for first, at in rec.calls)
        assert len(rec.calls) == 100
        task.cancel()

    run(body)


def test_ten_thousand_names_still_get_a_reload_each_at_burst_pace() -> None:
    """10k names: ~9 ms per re-read; a tenth of the time allows one per 90 ms, and
    the allowance absorbs the starts that come closer together than that."""
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, reread=0.009)
        task = await started(c, vt)
        gaps = itertools.cycle([0.03, 0.05, 0.3])  # 127 ms apart on average, unevenly
        for _ in range(100):
            c.poke()
            await vt.advance(next(gaps))
        await vt.advance(1.0)
        assert len(rec.calls) == 100
        assert max(at - first for first, at in rec.calls) <= WINDOW + 1e-9
        task.cancel()

    run(body)


def test_expensive_reloads_are_paced_to_a_tenth_of_the_wall_time() -> None:
    """100k names: a re-read costs 300 ms. Changes every 10 ms for a minute: dnsmasq
    re-reads for at most a tenth of it, plus the allowance and one reload."""
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, reread=0.3)
        task = await started(c, vt)
        t0 = vt.now
        for _ in range(6000):
            c.poke()
            await vt.advance(0.01)
        wall = vt.now - t0
        spent = c.budget.charged_s
        assert spent <= 0.1 * wall + c.budget.allowance_s + 0.3
        assert spent >= 0.1 * wall - 0.3  # and it does not starve either
        # Every change still gets out: the last poke is synced within one pacing step.
        await vt.advance(3.0)
        assert rec.calls[-1][0] >= t0 + wall - 3.0
        task.cancel()

    run(body)


def test_the_budget_hold_ends_when_no_more_changes_are_coming() -> None:
    """A batch held back by the budget alone goes once every source in it says its
    burst is over (Podman: no container created but not started)."""
    async def body(vt: VirtualTime) -> None:
        coming = [True]
        c, rec = make(vt, reread=0.5, more_coming=lambda: coming[0])
        task = await started(c, vt)
        c.poke()
        await vt.settle()  # first sync at once; owed 0.5 s, allowance 0.1 s
        await vt.advance(0.1)
        c.poke()
        await vt.advance(1.0)
        assert len(rec.calls) == 1  # held: more are coming, 0.4 s over budget at 10 %
        coming[0] = False
        await vt.advance(max(WINDOW, 0.005))
        assert len(rec.calls) == 2
        assert rec.calls[1][1] < 1000.0 + 1.2
        task.cancel()

    run(body)


def test_a_sync_that_signalled_nothing_charges_nothing() -> None:
    """Identical output: no write, no signal, so no re-read to pay for."""
    async def body(vt: VirtualTime) -> None:
        c, rec = make(vt, reread=0.0)
        task = await started(c, vt)
        for _ in range(50):
            c.poke()
            await vt.advance(0.03)
        assert c.budget.charged_s == 0.0
        assert all(first == at for first, at in rec.calls)
        task.cancel()

    run(body)


def test_budget_drains_at_its_share_and_allows_a_horizon_of_rereading_at_once() -> None:
    b = ReloadBudget(share=0.1, horizon_s=1.0)
    assert b.ready_at(5.0) == 5.0
    b.charge(0.05, 5.0)
    assert b.ready_at(5.0) == 5.0  # within the 100 ms allowance
    b.charge(0.25, 5.0)
    assert b.owed(5.0) == pytest.approx(0.3)
    assert b.ready_at(5.0) == pytest.approx(7.0)  # 0.2 s over, paid back at 0.1 s/s
    assert b.owed(6.0) == pytest.approx(0.2)
    assert b.owed(100.0) == 0.0
    b.charge(-1.0, 100.0)  # a clock step on dnsmasq's side never credits
    assert b.owed(100.0) == 0.0
    assert b.charged_s == pytest.approx(0.3)


def test_a_sinks_rereads_charge_the_budget_however_the_sinks_were_set(tmp_path: Path) -> None:
    """The daemon's startup assigns ``pipeline.sinks`` directly, a config reload calls
    ``set_sinks``: either way a sink's re-read, reported from its own thread, is paid
    for on the loop. (Assignment once left the budget uncharged: nothing paced.)"""
    from agent.daemon.pipeline import Pipeline
    from agent.plan.table import Table
    from agent.sinks.base import Sink
    from agent.sinks.reread import Reread

    class Quiet(Sink):
        def apply(self, table: Table, changed_at: float) -> bool:
            return True

    async def main() -> None:
        p = Pipeline([], WINDOW)
        await p.sync()  # the loop is known from the first sync on
        first, second = Quiet(tmp_path / "a"), Quiet(tmp_path / "b")
        p.sinks = [first]
        p.set_sinks([second])
        for sink in (first, second):
            assert sink.on_reread is not None
            t = threading.Thread(target=sink.on_reread, args=(Reread(0.009, 0.02, True),))
            t.start()
            t.join()
        for _ in range(10):
            await asyncio.sleep(0)
        assert p.coalescer.budget.charged_s == pytest.approx(0.018)
        p.close()

    asyncio.run(main())
