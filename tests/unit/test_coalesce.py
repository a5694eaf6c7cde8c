"""Coalescing: a burst of changes is one render, one write, one reload."""

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


def test_hundred_pokes_in_one_window_run_the_action_once() -> None:
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
            assert max(poke_times) < ran_at, "test setup: pokes must all fall inside the window"
            assert before_first <= first_change_at <= after_first
            assert ran_at - first_change_at >= WINDOW * 0.9
            assert await action.no_further_call()
            assert len(action.calls) == 1
            assert c.runs == 1
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
