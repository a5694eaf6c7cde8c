"""The Podman source's pacing: a lone change at once, a burst in a few batches."""

from __future__ import annotations

import asyncio
import itertools

from agent.sources.podman.pace import Pacer


def test_lone_change_is_handed_over_at_once() -> None:
    async def main() -> None:
        flushed: list[set[str]] = []
        pacer = Pacer(flushed.append, min_gap_s=0.05, max_gap_s=0.2)
        pacer.poke({"a"})
        assert flushed == [{"a"}]  # synchronously, no timer
        await asyncio.sleep(0.25)  # quiet longer than the longest gap
        pacer.poke({"b"})
        assert flushed == [{"a"}, {"b"}]

    asyncio.run(main())


def test_burst_is_batched_with_growing_gaps() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        flushed: list[tuple[float, set[str]]] = []
        pacer = Pacer(lambda ids: flushed.append((loop.time(), ids)), min_gap_s=0.02,
                      max_gap_s=0.16)
        start = loop.time()
        # one change every 10 ms for 0.6 s: 60 changes
        for i in range(60):
            pacer.poke({f"c{i}"})
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert set().union(*(ids for _, ids in flushed)) == {f"c{i}" for i in range(60)}
        # at once, +20, +40 (gap 40), +80, +160, then every 160 ms: far fewer than 60
        assert len(flushed) <= 10, [round(t - start, 3) for t, _ in flushed]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(flushed)]
        assert all(g >= 0.019 for g in gaps), gaps
        assert max(gaps) <= 0.16 + 0.05

    asyncio.run(main())


def test_drop_forgets_pending_changes() -> None:
    async def main() -> None:
        flushed: list[set[str]] = []
        pacer = Pacer(flushed.append, min_gap_s=0.05, max_gap_s=0.2)
        pacer.poke({"a"})
        pacer.poke({"b"})  # waits for the gap
        pacer.drop()
        await asyncio.sleep(0.1)
        assert flushed == [{"a"}]

    asyncio.run(main())
