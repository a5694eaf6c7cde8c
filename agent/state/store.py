"""Snapshots of what every source currently observes.

The store never patches the output: it only holds snapshots and tells the
pipeline that something changed. The desired table is recomputed from all
snapshots each time (plan.table), which is what keeps files from rotting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from agent.model.record import ObjectState, Record, Rejection


class StateStore:
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._snapshots: dict[str, dict[str, ObjectState]] = {}
        self._on_change = on_change
        self.generation = 0

    def _changed(self) -> None:
        self.generation += 1
        self._on_change()

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        new = dict(objects)
        if self._snapshots.get(source) == new:
            return
        self._snapshots[source] = new
        self._changed()

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        snap = self._snapshots.setdefault(source, {})
        if state is None or (not state.records and not state.rejections):
            if snap.pop(object_id, None) is None:
                return
        else:
            if snap.get(object_id) == state:
                return
            snap[object_id] = state
        self._changed()

    def drop(self, source: str) -> None:
        if self._snapshots.pop(source, None) is not None:
            self._changed()

    def object_count(self, source: str) -> int:
        return len(self._snapshots.get(source, {}))

    def sources(self) -> list[str]:
        return sorted(self._snapshots)

    def records(self) -> Iterator[Record]:
        for snap in self._snapshots.values():
            for obj in snap.values():
                yield from obj.records

    def rejections(self) -> Iterator[Rejection]:
        for snap in self._snapshots.values():
            for obj in snap.values():
                yield from obj.rejections
