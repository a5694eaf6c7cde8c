"""Watching a directory that may not exist yet: real inotify on a temp dir."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from agent.sources.dirwatch import RESCAN, Changes, watch_dir


async def _next(changes: asyncio.Queue[str], *want: str) -> None:
    async with asyncio.timeout(5):
        while await changes.get() not in want:
            pass


def test_follows_the_directory_into_existence_and_through_removal(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"

    async def body() -> None:
        changes: asyncio.Queue[str] = asyncio.Queue()

        async def consume() -> None:
            async for name in watch_dir(target):
                changes.put_nowait(name)

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)  # let the watch start on the nearest ancestor
        target.mkdir(parents=True)
        await _next(changes, RESCAN)  # it exists: read everything
        (target / "x.new").write_text("1")
        os.rename(target / "x.new", target / "x.status")
        await _next(changes, "x.status")
        (target / "x.status").unlink()
        await _next(changes, "x.status")
        shutil.rmtree(tmp_path / "a")
        await _next(changes, RESCAN)  # gone: whatever it held is gone too
        target.mkdir(parents=True)
        (target / "y.status").write_text("1")
        # Either the file's own event, or (if the directory reappeared while the
        # watcher was still climbing back down to it) a rescan that will read it.
        await _next(changes, "y.status", RESCAN)
        task.cancel()

    asyncio.run(body())


def test_an_existing_directory_starts_with_a_rescan(tmp_path: Path) -> None:
    (tmp_path / "old.status").write_text("1")

    async def body() -> None:
        gen = watch_dir(tmp_path)
        async with asyncio.timeout(5):
            assert await anext(gen) == RESCAN
        await gen.aclose()

    asyncio.run(body())


def test_changes_sees_what_happens_after_arming_even_before_wait(tmp_path: Path) -> None:
    state, config = tmp_path / "run" / "lxc", tmp_path / "etc" / "lxc"
    state.mkdir(parents=True)
    (tmp_path / "etc").mkdir()

    async def body() -> None:
        with Changes((state, config)) as changes:
            (state / "web.xml.new").write_text("<domstatus/>")  # before wait(): queued
            async with asyncio.timeout(5):
                assert await changes.wait() == state / "web.xml.new"
        with Changes((state, config)) as changes:
            waiting = asyncio.create_task(changes.wait())
            # A missing directory's ancestor: only the awaited component counts.
            (tmp_path / "etc" / "unrelated.conf").write_text("x")
            await asyncio.sleep(0.05)
            assert not waiting.done()
            config.mkdir()
            async with asyncio.timeout(5):
                assert await waiting == config

    asyncio.run(body())
