"""Who says a container is up: inspect's verdicts over aardvark's provisional entries.

Merge rules (README "Podman", fast path):

1. Inspect is authoritative. Once inspect has a verdict on a container id,
   that verdict alone decides what the id publishes: its records while it
   runs (or is paused), nothing once it is stopping, stopped or removed.
2. aardvark's files only ever ADD: an id inspect has no verdict on yet
   (``podman run`` just wrote it, the start event is still on its way)
   publishes what its lines say, built by the same rules as inspect's
   records (view.py), so confirming it changes nothing.
3. A stopped or removed container is never resurrected by a line that
   lingers in a file: its Down verdict outlives the line. Only inspect
   saying it runs again brings it back (any change to its line makes the
   source inspect it, so a restart is still fast).
4. Tombstones of removed containers (ids never come back) are forgotten once
   no file has listed them for a while.
5. While the Podman service is down (``files_alone``), the files are the
   only witness left: a container inspect said runs, whose lines then vanish
   from every file, was stopped or removed through the CLI (netavark tears
   its lines down). Inspect's word on it is void: it publishes what the
   files say, i.e. nothing, until the service is back and says more.
6. Lines the source refuses (refusals.py) are kept beside the containers,
   under their own keys, so they reach status like any other refusal.

Pure bookkeeping: the source decides when to inspect and when to publish.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from agent.model.record import ObjectState

from .inspect import Down, Live
from .view import ContainerView

TOMBSTONE_S = 60.0


class Ledger:
    def __init__(self, build: Callable[[ContainerView], ObjectState],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._build = build
        self._clock = clock
        self._verdicts: dict[str, Live | Down] = {}
        self._states: dict[str, ObjectState] = {}  # built once per Live view
        self._provisional: dict[str, ContainerView] = {}
        self._provisional_states: dict[str, ObjectState] = {}
        self._unlisted_since: dict[str, float] = {}  # removed ids no file lists
        self._present: frozenset[str] = frozenset()  # ids some file has a line for
        self._refused: dict[str, ObjectState] = {}

    def published(self, cid: str) -> ObjectState | None:
        refused = self._refused.get(cid)
        if refused is not None:
            return refused
        v = self._verdicts.get(cid)
        if isinstance(v, Live):
            return self._states[cid]
        if v is None:
            return self._provisional_states.get(cid)
        return None

    def verdict(self, cid: str) -> Live | Down | None:
        return self._verdicts.get(cid)

    def stopped(self) -> dict[str, Down]:
        """Container id -> verdict, for every container inspect says is stopped."""
        return {cid: v for cid, v in self._verdicts.items()
                if isinstance(v, Down) and not v.gone}

    def names(self) -> dict[str, str]:
        """Container id -> name, for every container inspect says runs."""
        return {cid: v.view.name for cid, v in self._verdicts.items() if isinstance(v, Live)}

    def set_verdict(self, cid: str, verdict: Live | Down) -> bool:
        """Record inspect's word on ``cid``; True if what it publishes changed."""
        before = self.published(cid)
        self._verdicts[cid] = verdict
        if isinstance(verdict, Live):
            old = self._states.get(cid)
            new = self._build(verdict.view)
            self._states[cid] = old if old == new else new
        else:
            self._states.pop(cid, None)
            if verdict.gone and cid not in self._provisional:
                self._unlisted_since.setdefault(cid, self._clock())
        return self.published(cid) != before

    def set_provisional(self, views: Mapping[str, ContainerView],
                        present: frozenset[str] | None = None, *,
                        files_alone: bool = False) -> tuple[set[str], set[str]]:
        """Replace what aardvark's files say; returns (ids whose output changed,
        ids whose lines changed: the hints the source inspects).

        ``present``: every id with a line in some file (None: not known);
        ``files_alone``: the service is down, the files are all there is (rule 5).
        """
        hints = {cid for cid in set(views) | set(self._provisional)
                 if views.get(cid) != self._provisional.get(cid)}
        vanished: set[str] = set()
        if present is not None:
            if files_alone:
                vanished = {cid for cid in self._present - present
                            if isinstance(self._verdicts.get(cid), Live)}
            self._present = present
        before = {cid: self.published(cid) for cid in hints | vanished}
        for cid in vanished:
            del self._verdicts[cid]
            self._states.pop(cid, None)
        hints |= vanished
        self._provisional = dict(views)
        for cid in hints:
            if cid in views:
                self._provisional_states[cid] = self._build(views[cid])
            else:
                self._provisional_states.pop(cid, None)
        self._sweep()
        changed = {cid for cid in hints if self.published(cid) != before[cid]}
        return changed, hints

    def set_refused(self, refused: Mapping[str, ObjectState]) -> set[str]:
        """Replace the refused lines (key -> refusals); returns the keys that changed."""
        keys = {k for k in set(refused) | set(self._refused)
                if refused.get(k) != self._refused.get(k)}
        self._refused = dict(refused)
        return keys

    def resync(self, verdicts: Mapping[str, Live | Down]) -> None:
        """A full listing: its verdicts replace all others (tombstones still listed stay)."""
        keep = {cid: v for cid, v in self._verdicts.items()
                if isinstance(v, Down) and v.gone and cid not in verdicts}
        self._verdicts = {**keep, **verdicts}
        self._states = {cid: self._build(v.view) for cid, v in verdicts.items()
                        if isinstance(v, Live)}
        self._sweep()

    def snapshot(self) -> dict[str, ObjectState]:
        out: dict[str, ObjectState] = dict(self._refused)
        for cid in set(self._verdicts) | set(self._provisional):
            state = self.published(cid)
            if state is not None:
                out[cid] = state
        return out

    def _sweep(self) -> None:
        now = self._clock()
        for cid, v in list(self._verdicts.items()):
            if not (isinstance(v, Down) and v.gone):
                continue
            if cid in self._provisional:
                self._unlisted_since.pop(cid, None)
            elif now - self._unlisted_since.setdefault(cid, now) >= TOMBSTONE_S:
                del self._verdicts[cid]
                del self._unlisted_since[cid]
        for cid in list(self._unlisted_since):
            if cid not in self._verdicts:
                del self._unlisted_since[cid]
