"""Coalescing: a lone change at once, a burst of changes in few renders, writes and reloads."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from agent.daemon.coalesce import Coalescer

WINDOW = 0.1


@dataclass
class Recorder:
    """The coalesced action: records each call and lets the test hold it open."""

    calls: list[tuple[float, float]] = field(default_factory=list)  # (first_change_at, ran_at)
    called: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event | None = None
    running: int = 0
    overlapped: bool = False

    async def __call__(self, first_change_at: float) -> None:
        self.running += 1
        self.overlapped |= self.running > 1
        self.calls.append((first_change_at, time.monotonic()))
        self.called.set()
        if self.release is not None:
            await self.release.wait()
        self.running -= 1

    async def next_call(self) -> tuple[float, float]:
        await asyncio.wait_for(self.called.wait(), 5.0)
        self.called.clear()
        return self.calls[-1]

    async def no_further_call(self) -> bool:
        """True if no call arrives within three windows (what a spurious run would take)."""
        try:
            await asyncio.wait_for(self.called.wait(), 3 * WINDOW)
        except TimeoutError:
            return True
        return False


def test_lone_change_is_synced_at_once() -> None:
    """Leading edge (issue 11): the first change after a quiet spell waits for nothing.
    (Until issue 11 the first change armed a timer: a lone change waited a full window.)"""
    async def main() -> None:
        action = Recorder()
        c = Coalescer(WINDOW, action)
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            first_change_at, ran_at = await action.next_call()
            assert ran_at - first_change_at < WINDOW / 2
            assert await action.no_further_call()
            await asyncio.sleep(WINDOW)  # quiet for longer than the hold
            c.poke()
            first_change_at, ran_at = await action.next_call()
            assert ran_at - first_change_at < WINDOW / 2
        finally:
            task.cancel()

    asyncio.run(main())


def test_hundred_pokes_in_one_window_run_the_action_twice() -> None:
    """The first poke syncs at once; the 99 that follow within the window are one batch,
    synced when the window after the first sync ends. (Before issue 11: one run, a
    window after the first poke.)"""
    async def main() -> None:
        action = Recorder()
        c = Coalescer(WINDOW, action)
        task = asyncio.create_task(c.run())
        try:
            before_first = time.monotonic()
            c.poke()
            after_first = time.monotonic()
            poke_times = []
            for _ in range(99):
                await asyncio.sleep(0)  # let the coalescer task run between pokes
                c.poke()
                poke_times.append(time.monotonic())
            first_change_at, ran_at = await action.next_call()
            assert before_first <= first_change_at <= after_first
            assert ran_at - first_change_at < WINDOW / 2
            second_first_change, second_ran = await action.next_call()
            assert max(poke_times) < second_ran, "test setup: pokes must fall in the window"
            assert first_change_at < second_first_change <= max(poke_times)
            assert second_ran - ran_at >= WINDOW * 0.9
            assert await action.no_further_call()
            assert len(action.calls) == 2
            assert c.runs == 2
        finally:
            task.cancel()

    asyncio.run(main())


def test_poke_during_running_action_causes_exactly_one_more_run() -> None:
    async def main() -> None:
        action = Recorder(release=asyncio.Event())
        c = Coalescer(WINDOW, action)
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            await action.next_call()  # the first run is now in progress, held open
            before = time.monotonic()
            for _ in range(5):
                c.poke()
                await asyncio.sleep(0)
            after = time.monotonic()
            assert action.release is not None
            action.release.set()
            first_change_at, _ = await action.next_call()
            assert before <= first_change_at <= after
            assert await action.no_further_call()
            assert len(action.calls) == 2
            assert not action.overlapped
        finally:
            task.cancel()

    asyncio.run(main())


def test_no_poke_no_run() -> None:
    async def main() -> None:
        action = Recorder()
        c = Coalescer(WINDOW, action)
        task = asyncio.create_task(c.run())
        try:
            assert await action.no_further_call()
            assert action.calls == []
        finally:
            task.cancel()

    asyncio.run(main())


def test_zero_window_still_coalesces_synchronous_pokes() -> None:
    async def main() -> None:
        action = Recorder()
        c = Coalescer(0, action)
        task = asyncio.create_task(c.run())
        try:
            for _ in range(10):
                c.poke()
            await action.next_call()
            assert await action.no_further_call()
            assert len(action.calls) == 1
        finally:
            task.cancel()

    asyncio.run(main())


def test_a_failing_action_does_not_stop_later_syncs() -> None:
    async def main() -> None:
        action = Recorder()
        failures = [RuntimeError("plan blew up")]

        async def flaky(first_change_at: float) -> None:
            await action(first_change_at)
            if failures:
                raise failures.pop()

        c = Coalescer(0, flaky)
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            await action.next_call()
            c.poke()
            waiter = asyncio.create_task(action.called.wait())
            done, _ = await asyncio.wait(
                {task, waiter}, timeout=5, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            assert waiter in done, "the coalescer stopped instead of running again"
            assert len(action.calls) == 2
        finally:
            task.cancel()

    asyncio.run(main())


@dataclass
class Costly(Recorder):
    """An action that reports what it cost, as the pipeline's does after a write."""

    cost: float = 0.0

    async def __call__(self, first_change_at: float) -> float:  # type: ignore[override]
        await super().__call__(first_change_at)
        return self.cost


def test_an_expensive_sync_holds_the_next_one_back_by_nine_times_its_cost() -> None:
    """At most a tenth of the wall time goes to syncs that wrote: a 30 ms reload holds
    the next batch for 270 ms, even with a 10 ms window."""
    async def main() -> None:
        action = Costly(cost=0.03)
        c = Coalescer(0.01, action)
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            _, first = await action.next_call()
            await asyncio.sleep(0)
            c.poke()
            _, second = await action.next_call()
            assert second - first >= 0.27
            assert c.hold_s(0.03) == 0.03 * 9
            assert c.hold_s(0.0001) == 0.01  # cheap: the window alone paces
        finally:
            task.cancel()

    asyncio.run(main())


def test_a_cost_hold_ends_early_when_no_more_changes_are_coming() -> None:
    async def main() -> None:
        action = Costly(cost=0.1)
        coming = [True]
        c = Coalescer(0.01, action, more_coming=lambda: coming[0])
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            _, first = await action.next_call()
            c.poke()
            await asyncio.sleep(0.05)
            assert len(action.calls) == 1  # more are coming: the cost hold (0.9 s) applies
            coming[0] = False  # the burst is over: the batch in hand is its last
            _, second = await action.next_call()
            assert second - first < 0.5
        finally:
            task.cancel()

    asyncio.run(main())


def test_a_sync_that_wrote_nothing_costs_no_hold() -> None:
    async def main() -> None:
        action = Costly(cost=0.0)
        c = Coalescer(0.01, action)
        task = asyncio.create_task(c.run())
        try:
            c.poke()
            _, first = await action.next_call()
            c.poke()
            _, second = await action.next_call()
            assert second - first < 0.1
        finally:
            task.cancel()

    asyncio.run(main())
