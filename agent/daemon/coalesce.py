"""Coalescing: the first change arms a timer; everything until it fires is one sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(component="coalescer")


class Coalescer:
    """Runs ``action(first_change_at)`` at most once per window after changes.

    Changes that arrive while the action runs arm the next window, so a
    long write never swallows a change and never runs twice at once.
    """

    def __init__(self, window_s: float, action: Callable[[float], Awaitable[None]]) -> None:
        self.window_s = window_s
        self._action = action
        self._wake = asyncio.Event()
        self._first_change: float | None = None
        self.runs = 0

    def poke(self) -> None:
        if self._first_change is None:
            self._first_change = time.monotonic()
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            if self.window_s > 0:
                # The window itself: this wait *is* the coalescing, not a sync hack.
                await asyncio.sleep(self.window_s)
            self._wake.clear()
            first = self._first_change if self._first_change is not None else time.monotonic()
            self._first_change = None
            self.runs += 1
            try:
                await self._action(first)
            except Exception:
                # A bug in one sync must not end all later ones: log it, keep going.
                log.exception("sync failed")
