"""Snapshots of what every source currently observes.

The store never patches the output: it only holds snapshots and tells the
pipeline that something changed. The desired table is recomputed from all
snapshots each time (plan.table), which is what keeps files from rotting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from itertools import chain, compress
from operator import attrgetter, ne

from agent.model.record import ObjectState, Record, Rejection

_records = attrgetter("records")
_rejections = attrgetter("rejections")


def _keep_equal(
    old: dict[str, ObjectState], objects: Mapping[str, ObjectState]
) -> tuple[dict[str, ObjectState], bool]:
    """``objects``, holding the old state object wherever it equals the new one.

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
            return old, False
        new = dict(zip(objects, olds, strict=True))
        for oid in differ:
            new[oid] = objects[oid]
        return new, True
    get = old.get
    new = {}
    for oid, state in objects.items():
        prev = get(oid)
        new[oid] = prev if prev is not None and prev == state else state
    return new, True


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

    def expect(self, source: str, count: int) -> None:
        """``source`` knows ``count`` more changes are on their way (Podman: containers
        created, not started yet). Sources that never say are taken to not know."""
        self._coming[source] = count

    def more_coming(self) -> bool:
        """False only if every source with a change pending said nothing more is coming."""
        return any(self._coming.get(s, 1) > 0 for s in self._changed_sources)

    def take_batch(self) -> None:
        """The pipeline starts a sync: what changed so far is in it."""
        self._changed_sources.clear()

    def _changed_by(self, source: str) -> None:
        self._changed_sources.add(source)
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._on_change()

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        old = self._snapshots.get(source)
        new, changed = _keep_equal(old, objects) if old else (dict(objects), True)
        if not changed:
            return
        self._snapshots[source] = new
        self._rejecting[source] = sum(1 for obj in new.values() if obj.rejections)
        self._changed_by(source)

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        snap = self._snapshots.setdefault(source, {})
        if state is None or (not state.records and not state.rejections):
            old = snap.pop(object_id, None)
            if old is None:
                return
        else:
            old = snap.get(object_id)
            if old == state:
                return
            snap[object_id] = state
            if state.rejections:
                self._rejecting[source] = self._rejecting.get(source, 0) + 1
        if old is not None and old.rejections:
            self._rejecting[source] -= 1
        self._changed_by(source)

    def drop(self, source: str) -> None:
        self._rejecting.pop(source, None)
        self._coming.pop(source, None)
        if self._snapshots.pop(source, None) is not None:
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
