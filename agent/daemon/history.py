"""What changed between two tables: since when each name is held, what vanished, who watches.

The pipeline hands every new table here (``observe``). From the difference
this keeps, per name, the time its current holder got it (``agentctl list``'s
"since"), a bounded memory of names that went away (``explain``'s "was
published until 3m ago"), and fans the changes out to ``agentctl watch``
subscribers, each with a bounded queue: a client that does not read is cut
off, never allowed to grow the daemon's memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.model.record import Address, Provenance
from agent.plan.table import Entry, Table

from .status import provenance, ts

GONE_KEPT = 1000  # names remembered after they vanish (explain's nearest miss)
WATCH_QUEUE = 1000  # events a watcher may lag behind before it is cut off
MAX_WATCHERS = 16


@dataclass(frozen=True)
class Gone:
    name: str
    addresses: tuple[Address, ...]
    provenance: Provenance
    since: float
    until: float


class TooManyWatchers(Exception):
    pass


class HeldSince:
    """Per published name, since when its current holder has it.

    Every name of the first table got its holder at that one time: those are not
    stored one by one (a dict entry a name, 3.7 MB at 100,000 names); only names
    that arrived or moved later are. Asked only for names in the current table.
    """

    def __init__(self) -> None:
        self.first: float | None = None
        self._later: dict[str, float] = {}

    def get(self, name: str) -> float | None:
        return self._later.get(name, self.first)

    def set(self, name: str, at: float) -> None:
        self._later[name] = at

    def pop(self, name: str) -> float | None:
        return self._later.pop(name, self.first)


def entry_event(kind: str, e: Entry, at: float, since: float | None = None) -> dict[str, Any]:
    return {
        "event": kind,
        "at": ts(at),
        "name": e.name,
        "addresses": [str(a) for a in e.addresses],
        "since": ts(since),
        **provenance(e.provenance),
    }


class _Watcher:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(WATCH_QUEUE)
        self.overflowed = False

    def put(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True


class NameHistory:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.since = HeldSince()
        self.gone: OrderedDict[str, Gone] = OrderedDict()
        self._watchers: set[_Watcher] = set()

    def observe(self, old: Table, new: Table, changed: Sequence[str] | None = None) -> None:
        """``changed``: the names whose entry differs, in order, if the planner knows
        (a sync after one container start looks at one name, not at 10,000)."""
        now = self._clock()
        first = self.since.first is None
        if first:  # every name of the first table is held since now: kept once, not per name
            self.since.first = now
        # Events are made only for watchers: at startup every name "appears", and a
        # dict per name nobody reads would set the daemon's RSS for good.
        events: list[dict[str, Any]] | None = [] if self._watchers else None
        came = new.entries.keys() if changed is None else [n for n in changed if n in new.entries]
        went = old.entries.keys() if changed is None else [n for n in changed if n in old.entries]
        self._arrivals(old.entries, new.entries, came, now, events, keep_since=not first)
        self._departures(old.entries, new.entries, went, now, events)
        while len(self.gone) > GONE_KEPT:
            self.gone.popitem(last=False)
        if events is None:
            return
        for r in set(new.rejections) - set(old.rejections):
            events.append({"event": "refused", "at": ts(now), "name": None, "value": r.value,
                           "reason": r.reason, **provenance(r.provenance)})
        for w in self._watchers:
            for ev in events:
                w.put(ev)

    def _arrivals(self, before: Mapping[str, Entry], after: Mapping[str, Entry],
                  names: Iterable[str], now: float, events: list[dict[str, Any]] | None,
                  keep_since: bool) -> None:
        for name in names:
            e = after[name]
            o = before.get(name)
            if o is e:  # an unchanged record is the same entry object: the usual case
                continue
            if o is None or (o.provenance.source, o.provenance.object_id) != (
                e.provenance.source, e.provenance.object_id
            ):
                if keep_since:
                    self.since.set(name, now)
                self.gone.pop(name, None)
                if events is not None:
                    events.append(entry_event("appeared" if o is None else "moved", e, now, now))
            elif o.addresses != e.addresses and events is not None:
                events.append(entry_event("changed", e, now, self.since.get(name)))

    def _departures(self, before: Mapping[str, Entry], after: Mapping[str, Entry],
                    names: Iterable[str], now: float,
                    events: list[dict[str, Any]] | None) -> None:
        for name in names:
            o = before[name]
            if name not in after:
                held = self.since.pop(name)
                since = now if held is None else held
                self.gone[name] = Gone(name, o.addresses, o.provenance, since, now)
                self.gone.move_to_end(name)
                if events is not None:
                    events.append(entry_event("vanished", o, now, since))

    def subscribe(self, table: Table) -> AsyncIterator[dict[str, Any]]:
        """The current names (``present`` events), then every change, until cancelled."""
        if len(self._watchers) >= MAX_WATCHERS:
            raise TooManyWatchers(f"{MAX_WATCHERS} watchers already connected")
        w = _Watcher()
        self._watchers.add(w)
        # The current table is a snapshot handed over whole, not queued: 10,000
        # names must not count against the lag allowed for changes.
        return self._drain(w, list(table.entries.values()), self._clock())

    async def _drain(self, w: _Watcher, present: list[Entry],
                     now: float) -> AsyncIterator[dict[str, Any]]:
        try:
            for e in present:
                yield entry_event("present", e, now, self.since.get(e.name))
            yield {"event": "synced", "at": ts(now), "names": len(present)}
            while True:
                if w.overflowed and w.queue.empty():
                    yield {"event": "overflow", "at": ts(self._clock()),
                           "reason": f"more than {WATCH_QUEUE} changes not read; reconnect"}
                    return
                ev = await w.queue.get()
                if ev is None:
                    return
                yield ev
        finally:
            self._watchers.discard(w)

    @property
    def watchers(self) -> int:
        return len(self._watchers)
