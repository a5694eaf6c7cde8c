"""Snapshots of what every source currently observes.

The store never patches the output: it holds snapshots, tells the pipeline
that something changed, and lists which objects did (``take_batch``). The
planner patches its last table with those; the table can always be planned
again from all snapshots (plan.table), which is what keeps files from rotting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from itertools import chain, compress
from operator import attrgetter, ne

from agent.model.change import Changes, ObjectChange
from agent.model.record import ObjectState, Record, Rejection

# Changed objects listed per batch. Past this (a config reload of a big static
# table, a source dropped) the batch says "everything", and the planner starts
# from the snapshots: listing more would cost what planning them all does.
MAX_LISTED = 4096

_records = attrgetter("records")
_rejections = attrgetter("rejections")


def _keep_equal(
    old: dict[str, ObjectState], objects: Mapping[str, ObjectState]
) -> tuple[dict[str, ObjectState], list[str]]:
    """``objects``, holding the old state object wherever it equals the new one,
    and the ids of the objects that came, went or changed.

    A resync or a config reload hands over a whole new snapshot in which nearly
    every object is unchanged. Keeping the old objects frees the new copies at
    once (no second table in memory during a reload), and lets the planner see
    the same records as last time, so their entries and lines are reused.
    """
    if len(old) == len(objects) and old.keys() == objects.keys():
        # The same objects (the usual resync): compare in C, rebuild only if needed.
        olds = list(map(old.__getitem__, objects))
        differ = list(compress(objects, map(ne, olds, objects.values())))
        if not differ:
            return old, []
        new = dict(zip(objects, olds, strict=True))
        for oid in differ:
            new[oid] = objects[oid]
        return new, differ
    get = old.get
    new = {}
    changed = []
    for oid, state in objects.items():
        prev = get(oid)
        if prev is not None and prev == state:
            new[oid] = prev
        else:
            new[oid] = state
            changed.append(oid)
    changed += [oid for oid in old if oid not in new]  # the new dict: never the lazy mapping
    return new, changed


class StateStore:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._snapshots: dict[str, dict[str, ObjectState]] = {}
        # source -> how many of its objects carry rejections. Usually none, and every
        # sync asks for all rejections: this lets it skip those sources instead of
        # visiting every object (10,000 and more) to find nothing.
        self._rejecting: dict[str, int] = {}
        self._on_change = on_change
        self.generation = 0
        self._coming: dict[str, int] = {}  # source -> changes it says are on their way
        self._changed_sources: set[str] = set()  # since the pipeline last took a batch
        # (source, object id) -> its state when the last batch was taken, for every
        # object changed since; None in ``_was`` = it was not there.
        self._was: dict[tuple[str, str], ObjectState | None] = {}
        self._unlisted = False  # more changed than MAX_LISTED: the batch is "everything"
        self._taken = 0  # the generation the last batch was taken at

    def expect(self, source: str, count: int) -> None:
        """``source`` knows ``count`` more changes are on their way (Podman: containers
        created, not started yet). Sources that never say are taken to not know."""
        self._coming[source] = count

    def more_coming(self) -> bool:
        """False only if every source with a change pending said nothing more is coming."""
        return any(self._coming.get(s, 1) > 0 for s in self._changed_sources)

    def take_batch(self) -> Changes:
        """The pipeline starts a sync: what changed so far is in it, and listed here."""
        self._changed_sources.clear()
        objects: tuple[ObjectChange, ...] | None = None
        if not self._unlisted:
            snaps = self._snapshots
            objects = tuple(ObjectChange(was, snaps.get(source, {}).get(oid))
                            for (source, oid), was in self._was.items())
        changes = Changes(self._taken, self.generation, objects)
        self._was = {}
        self._unlisted = False
        self._taken = self.generation
        return changes

    def _note(self, source: str, oid: str, before: ObjectState | None) -> None:
        """``source``'s object ``oid``, ``before`` now, is about to change."""
        if self._unlisted or (source, oid) in self._was:
            return  # the batch keeps the state it had when the last one was taken
        if len(self._was) >= MAX_LISTED:
            self._unlisted = True
            self._was = {}
            return
        self._was[(source, oid)] = before

    def _note_all(self, source: str, old: Mapping[str, ObjectState], oids: list[str]) -> None:
        if self._unlisted:
            return
        if len(oids) + len(self._was) > MAX_LISTED:
            self._unlisted = True
            self._was = {}
            return
        for oid in oids:
            self._note(source, oid, old.get(oid))

    def _changed_by(self, source: str) -> None:
        self._changed_sources.add(source)
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._on_change()

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        old = self._snapshots.get(source)
        new, changed = _keep_equal(old, objects) if old else (dict(objects), list(objects))
        if not changed:
            return
        self._note_all(source, old or {}, changed)
        self._snapshots[source] = new
        self._rejecting[source] = sum(1 for obj in new.values() if obj.rejections)
        self._changed_by(source)

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        snap = self._snapshots.setdefault(source, {})
        if state is None or (not state.records and not state.rejections):
            old = snap.get(object_id)
            if old is None:
                return
            self._note(source, object_id, old)
            del snap[object_id]
        else:
            old = snap.get(object_id)
            if old == state:
                return
            self._note(source, object_id, old)
            snap[object_id] = state
            if state.rejections:
                self._rejecting[source] = self._rejecting.get(source, 0) + 1
        if old is not None and old.rejections:
            self._rejecting[source] -= 1
        self._changed_by(source)

    def drop(self, source: str) -> None:
        self._rejecting.pop(source, None)
        self._coming.pop(source, None)
        old = self._snapshots.pop(source, None)
        if old is not None:
            self._note_all(source, old, list(old))
            self._changed_by(source)

    def object_count(self, source: str) -> int:
        return len(self._snapshots.get(source, {}))

    def sources(self) -> list[str]:
        return sorted(self._snapshots)

    def _objects(self) -> Iterator[ObjectState]:
        return chain.from_iterable(snap.values() for snap in self._snapshots.values())

    # Every sync walks all objects (10,000 and more): iterate in C (chain, map)
    # rather than with a nested generator, same order, still lazy.
    def records(self) -> Iterator[Record]:
        return chain.from_iterable(map(_records, self._objects()))

    def rejections(self) -> Iterator[Rejection]:
        rejecting = self._rejecting
        objects = chain.from_iterable(
            snap.values() for source, snap in self._snapshots.items() if rejecting.get(source)
        )
        return chain.from_iterable(map(_rejections, objects))
