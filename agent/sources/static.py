"""Records written in the config file ([[static]]), for host services and the like."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Iterator, Mapping, ValuesView

from agent.config.schema import Config, StaticEntry
from agent.model.record import ObjectState, Provenance, Record
from agent.sources.base import Objects, ServiceSource, Source


def _state(source: str, entry: StaticEntry) -> ObjectState:
    name = entry.name
    return ObjectState((Record(name, entry.addresses, Provenance(source, name, "static")),))


class StaticObjects(Mapping[str, ObjectState]):
    """The snapshot, each object made when the store reads it (memory, issue 11).

    On a reload the store compares every new object with the running one and keeps
    the running one (StateStore.replace): made one at a time, the 100,000 new
    copies of an unchanged table are never all alive at once.
    """

    def __init__(self, source: str, entries: tuple[StaticEntry, ...]) -> None:
        self._source = source
        self._entries = entries
        self._index: dict[str, StaticEntry] | None = None

    def __getitem__(self, name: str) -> ObjectState:
        if self._index is None:
            self._index = {e.name: e for e in self._entries}
        return _state(self._source, self._index[name])

    def __iter__(self) -> Iterator[str]:
        return (e.name for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def values(self) -> ValuesView[ObjectState]:
        return _Values(self)

    def states(self) -> Iterator[ObjectState]:
        source = self._source
        return (_state(source, e) for e in self._entries)


class _Values(ValuesView[ObjectState]):
    _mapping: StaticObjects

    def __iter__(self) -> Iterator[ObjectState]:
        return self._mapping.states()


class StaticSource(ServiceSource[None]):
    kind = "static"

    def __init__(self, entries: tuple[StaticEntry, ...]) -> None:
        super().__init__("static")
        self.entries = entries

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        # Always present, even with no entries: an empty snapshot is what
        # removes the last static name after a reload.
        return [cls(config.static)]

    def config_key(self) -> Hashable:
        return self.entries

    def snapshot(self) -> dict[str, ObjectState]:
        # Runs for every entry on every config reload (10,000 and more): positional
        # arguments and locals, the same objects as spelling every field out.
        objects: dict[str, ObjectState] = {}
        source = self.name
        for entry in self.entries:
            name = entry.name
            prov = Provenance(source, name, "static")  # its display is made when asked
            objects[name] = ObjectState((Record(name, entry.addresses, prov),))
        return objects

    # The config is the whole "service": there is nothing to connect to or follow.

    async def connect(self) -> None:
        return None

    async def list_all(self, conn: None) -> Objects:
        self.saw_event()
        return StaticObjects(self.name, self.entries)

    async def follow(self, conn: None) -> str:
        await asyncio.Event().wait()  # config changes arrive as a new source
        return "stopped"
