"""The one batching mechanism: leading edge, then paced by what dnsmasq's re-reads cost.

* The first change after a quiet spell is synced at once: a lone ``podman
  run`` or lease must not wait for a window that exists for bursts.
* Whatever arrives while that sync runs, or within the window (``coalesce_ms``)
  after it, forms the next batch, synced when the window ends. No sync ever
  overlaps another.
* Reloads are paced by what they cost the resolver, measured, not guessed:
  after each SIGHUP the sink reads from /proc how much CPU dnsmasq spent
  re-reading (sinks/reread.py) and charges it here (``charge``). The charges
  drain at ``BUDGET`` (a tenth) of the wall time; a batch waits while more
  than ``HORIZON_S`` x ``BUDGET`` (100 ms) of re-reading is owed. So over any
  span of time dnsmasq re-reads for at most a tenth of it, plus 100 ms, plus
  one reload. 100 names cost dnsmasq well under a millisecond: every name goes
  at once, only the window paces them. 10,000 cost ~9 ms: ten reloads back to
  back, then one per ~90 ms, so a burst that starts a container every 130 ms
  gets a reload per name. 100,000 cost hundreds of milliseconds: a reload
  every few seconds at most, however fast changes come.
  A re-read not seen to end (dnsmasq kept busy answering: a query flood) is
  charged at most twice the last one that was (sinks/reread.RereadHistory):
  answering queries is not re-reading, and must not hold names back.
  namesync's own CPU (plan, render, write) does not pace: syncs never overlap,
  and what dnsmasq does not re-read costs nobody a reload.
* Sources may say that more changes are on their way (Podman: containers
  created but not started yet). When every source with a change in the
  batch said nothing more is coming, a batch held back by the budget alone
  goes as soon as the window allows: it is the last of its burst, and waiting
  would only make its names late. A source that says nothing is taken to not
  know.

Identical output is no write and no signal, so it costs no charge.
``action(first_change_at)`` syncs; its result is not looked at.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(component="coalescer")

BUDGET = 0.1  # at most this share of the wall time spent re-reading
HORIZON_S = 1.0  # re-reading owed up to BUDGET x this goes at once (a burst's start)
RECHECK_S = 0.005  # while held by the budget: ask this often (or each window) if more come


class ReloadBudget:
    """Seconds of re-reading owed, paid back at ``share`` seconds per second."""

    def __init__(self, share: float = BUDGET, horizon_s: float = HORIZON_S) -> None:
        self.share = share
        self.allowance_s = share * horizon_s
        self._owed = 0.0
        self._at = 0.0
        self.charged_s = 0.0  # all re-reading ever charged (status, benches)

    def owed(self, now: float) -> float:
        return max(0.0, self._owed - (now - self._at) * self.share)

    def charge(self, cost_s: float, now: float) -> None:
        self._owed = self.owed(now) + max(0.0, cost_s)
        self._at = now
        self.charged_s += max(0.0, cost_s)

    def ready_at(self, now: float) -> float:
        """When what is owed is back within the allowance (``now`` if it is)."""
        excess = self.owed(now) - self.allowance_s
        return now if excess <= 0 else now + excess / self.share


class Coalescer:
    def __init__(self, window_s: float, action: Callable[[float], Awaitable[object]], *,
                 more_coming: Callable[[], bool] = lambda: True,
                 budget: ReloadBudget | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.window_s = window_s
        self._action = action
        self._more_coming = more_coming
        self.budget = budget if budget is not None else ReloadBudget()
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._first_change: float | None = None
        self._quiet_at = 0.0  # clock time the window after the last sync ends
        self.runs = 0

    def poke(self) -> None:
        if self._first_change is None:
            self._first_change = self._clock()
        self._wake.set()

    def charge(self, cost_s: float) -> None:
        """A reload's re-read cost ``cost_s`` seconds (called on the loop)."""
        self.budget.charge(cost_s, self._clock())

    def start_at(self, now: float) -> float:
        """When a pending batch may be synced, as things stand at ``now``."""
        paced = self.budget.ready_at(now)
        if paced > self._quiet_at and self._more_coming():
            return paced
        return self._quiet_at

    async def _hold(self) -> None:
        # This wait *is* the batching, not a sync hack. Re-checked while it lasts:
        # a charge may come in, or the sources may say the burst is over.
        while (now := self._clock()) < (until := self.start_at(now)):
            held_by_budget = until > self._quiet_at
            recheck = max(self.window_s, RECHECK_S) if held_by_budget else until - now
            await self._sleep(min(until - now, recheck))

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await self._hold()
            self._wake.clear()
            first = self._first_change if self._first_change is not None else self._clock()
            self._first_change = None
            self.runs += 1
            try:
                await self._action(first)
            except Exception:
                # A bug in one sync must not end all later ones: log it, keep going.
                log.exception("sync failed")
            self._quiet_at = self._clock() + self.window_s
