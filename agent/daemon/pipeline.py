"""State store -> plan -> sinks, batched by coalesce.py, with retry of failed sinks.

Each sink that signals a resolver tells what the re-read cost it (from any
thread: ``Sink.on_reread``); the pipeline hands that to the coalescer on the
loop, which paces reloads by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import structlog

from agent.plan.planner import Planner
from agent.plan.table import Table
from agent.sinks.base import Sink
from agent.sinks.reread import Reread
from agent.sources.lifecycle import Backoff
from agent.state.store import StateStore

from .coalesce import Coalescer

log = structlog.get_logger(component="pipeline")

RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


class Pipeline:
    def __init__(self, sinks: list[Sink], coalesce_s: float) -> None:
        self.sinks = sinks
        self.store = StateStore(on_change=self._on_change)
        self.planner = Planner()
        self.table = Table()
        self.coalescer = Coalescer(coalesce_s, self.sync, more_coming=self.store.more_coming)
        self._loop: asyncio.AbstractEventLoop | None = None  # known from the first sync on
        self._lock = asyncio.Lock()
        self._retry: asyncio.TimerHandle | None = None
        self._retry_backoff = Backoff(RETRY_MIN_S, RETRY_MAX_S)
        self.syncs = 0
        self.last_sync: float | None = None
        self.last_sync_ok = True
        # Called with (old, new, names) after every sync's plan, on the loop:
        # watchers of the table (agentctl list's "since", watch) hook in here.
        # ``names``: those whose entry changed, in order (None: look at every name).
        self.observers: list[Callable[[Table, Table, Sequence[str] | None], None]] = []

    def _on_change(self) -> None:
        self.coalescer.poke()

    def _reread(self, reread: Reread) -> None:
        # From the sink's thread, after a sync (so the loop is known).
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the daemon stops
                self._loop.call_soon_threadsafe(self.coalescer.charge, reread.cpu_s)

    @property
    def sinks(self) -> list[Sink]:
        return self._sinks

    @sinks.setter
    def sinks(self, sinks: list[Sink]) -> None:
        # However they are set (the daemon's startup assigns them): every sink
        # that signals a resolver reports its re-reads here.
        for sink in sinks:
            sink.on_reread = self._reread
        self._sinks = sinks

    def set_sinks(self, sinks: list[Sink]) -> None:
        for sink in sinks:
            sink.prepare()
        for old in self.sinks:
            if old not in sinks:
                old.close()
        self.sinks = sinks
        self.coalescer.poke()

    def _log_differences(self, old: Table, new: Table) -> None:
        for rej in set(new.rejections) - set(old.rejections):
            log.warning(
                "refused to publish",
                source=rej.provenance.source,
                object=rej.provenance.display or rej.provenance.object_id,
                value=rej.value,
                reason=rej.reason,
            )
        old_conflicts = {c.name: c for c in old.conflicts}
        for c in new.conflicts:
            if old_conflicts.get(c.name) != c:
                log.warning(
                    "name conflict",
                    name=c.name,
                    winner=c.winner.display or c.winner.object_id,
                    losers=[p.display or p.object_id for p in c.losers],
                )

    async def sync(self, first_change_at: float | None = None) -> bool:
        """Recompute the table from all snapshots and apply it to every sink."""
        first = time.monotonic() if first_change_at is None else first_change_at
        self._loop = asyncio.get_running_loop()
        async with self._lock:
            changes = self.store.take_batch()
            table = self.planner.plan(self.store.records(), self.store.rejections(), changes)
            self._log_differences(self.table, table)
            old, self.table = self.table, table
            for observe in self.observers:
                observe(old, table, self.planner.changed)
            sinks = list(self.sinks)
            results = await asyncio.gather(
                *(asyncio.to_thread(s.apply, table, first) for s in sinks),
                return_exceptions=True,
            )
            ok = True
            for sink, result in zip(sinks, results, strict=True):
                if isinstance(result, BaseException):
                    sink.status.error(f"internal error: {result!r}")
                    log.error("sink failed", sink=sink.kind, error=repr(result), exc_info=result)
                    ok = False
                elif result is False:
                    ok = False
            self.syncs += 1
            self.last_sync = time.time()
            self.last_sync_ok = ok
            self._schedule_retry(ok)
            return ok

    def _schedule_retry(self, ok: bool) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if ok:
            self._retry_backoff.reset()
            return
        # A failed write (full disk, read-only /etc) is retried with backoff
        # even if no source changes meanwhile.
        loop = asyncio.get_running_loop()
        self._retry = loop.call_later(self._retry_backoff.next(), self.coalescer.poke)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        for sink in self.sinks:
            sink.close()
