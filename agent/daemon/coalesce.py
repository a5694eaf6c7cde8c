"""The one batching mechanism: leading edge, then paced by what a reload costs.

* The first change after a quiet spell is synced at once: a lone ``podman
  run`` or lease must not wait for a window that exists for bursts.
* Whatever arrives while that sync runs, or within the hold after it, forms
  the next batch, synced when the hold ends. A burst therefore costs one
  sync per hold, not one per change, and no sync ever overlaps another.
* The hold is the configured window (``coalesce_ms``), or longer when the
  last sync was expensive: a sync that cost C seconds (render, write,
  signal: the action measures it) holds the next one back by C x 9, so that
  re-reading never takes more than a tenth of the wall time (``BUDGET``).
  100 names cost well under a millisecond: every name goes at once, only the
  window paces them. 100,000 names cost hundreds of milliseconds: the
  resolver is re-read a few times a second at most, however fast changes come.
* Sources may say that more changes are on their way (Podman: containers
  created but not started yet). When every source with a change in the
  batch said nothing more is coming, a batch held back by cost alone goes as
  soon as the window allows: it is the last of its burst, and waiting would
  only make its names late. A source that says nothing is taken to not know.

``action(first_change_at)`` returns what the sync cost in seconds (0 when it
wrote nothing: identical output is no write, no signal, and costs no hold).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(component="coalescer")

BUDGET = 0.1  # at most this share of the wall time spent on syncs that wrote


class Coalescer:
    def __init__(self, window_s: float, action: Callable[[float], Awaitable[float]], *,
                 more_coming: Callable[[], bool] = lambda: True,
                 budget: float = BUDGET) -> None:
        self.window_s = window_s
        self._action = action
        self._more_coming = more_coming
        self._budget = budget
        self._wake = asyncio.Event()
        self._first_change: float | None = None
        self._quiet_at = 0.0  # monotonic time the hold after the last sync ends
        self._paced_at = 0.0  # ... and the part of it the cost asks for
        self.runs = 0
        self.last_cost_s = 0.0

    def poke(self) -> None:
        if self._first_change is None:
            self._first_change = time.monotonic()
        self._wake.set()

    def hold_s(self, cost_s: float) -> float:
        """How long after a sync that cost ``cost_s`` the next one waits."""
        return max(self.window_s, cost_s * (1 / self._budget - 1))

    async def _hold(self) -> None:
        # This wait *is* the batching, not a sync hack. Re-checked after each
        # wake: a source saying nothing more is coming ends a cost hold early.
        while (now := time.monotonic()) < self._quiet_at:
            until = self._quiet_at
            if now >= self._paced_at and not self._more_coming():
                until = self._paced_at
            if now >= until:
                return
            await asyncio.sleep(min(until - now, max(self.window_s, 0.005)))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await self._hold()
            self._wake.clear()
            first = self._first_change if self._first_change is not None else time.monotonic()
            self._first_change = None
            self.runs += 1
            cost = 0.0
            try:
                cost = await self._action(first) or 0.0
            except Exception:
                # A bug in one sync must not end all later ones: log it, keep going.
                log.exception("sync failed")
            end = time.monotonic()
            self.last_cost_s = cost
            self._paced_at = end + self.window_s
            self._quiet_at = end + self.hold_s(cost) if cost else self._paced_at
