"""When the Podman source hands changed containers to the store.

A lone change goes at once: one ``podman run`` must answer as soon as netavark
has written its line. But a burst (a compose stack, a script starting twenty
containers) reaches netavark one container at a time, 40-120 ms apart:
longer than the daemon's coalescing window, so each would cost a render, a
write and a dnsmasq reload. So after each hand-over the next one waits a
little longer (50 ms, doubling up to 0.5 s) while changes keep coming, and
everything that arrives meanwhile goes in one batch; a quiet spell as long as
the longest wait makes the next change immediate again. In a burst no name
waits longer than the event stream would have made it wait anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

MIN_GAP_S = 0.05
MAX_GAP_S = 0.5


class Pacer:
    def __init__(self, flush: Callable[[set[str]], None], *, min_gap_s: float = MIN_GAP_S,
                 max_gap_s: float = MAX_GAP_S) -> None:
        self._flush = flush
        self.min_gap_s = min_gap_s
        self.max_gap_s = max_gap_s
        self._pending: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._last: float | None = None
        self._gap = min_gap_s
        self.flushes = 0

    def poke(self, ids: set[str]) -> None:
        if not ids:
            return
        self._pending |= ids
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._last is None or now - self._last >= self.max_gap_s:
            self._gap = self.min_gap_s  # quiet for a while: this is a lone change
            self._fire()
            return
        due = self._last + self._gap
        if due <= now:
            self._fire()
        else:
            self._timer = loop.call_at(due, self._fire)

    def drop(self) -> None:
        """Forget pending changes (a full snapshot is about to replace everything)."""
        self._pending.clear()
        self.cancel()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        ids, self._pending = self._pending, set()
        now = asyncio.get_running_loop().time()
        if self._last is not None and now - self._last < self.max_gap_s:
            self._gap = min(self._gap * 2, self.max_gap_s)
        self._last = now
        self.flushes += 1
        self._flush(ids)
