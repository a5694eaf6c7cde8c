"""Records written in the config file ([[static]]), for host services and the like."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from agent.config.schema import Config, StaticEntry
from agent.model.record import ObjectState, Provenance, Record
from agent.sources.base import Objects, ServiceSource, Source


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
            prov = Provenance(source, name, "static", f"[[static]] {name}")
            objects[name] = ObjectState((Record(name, entry.addresses, prov),))
        return objects

    # The config is the whole "service": there is nothing to connect to or follow.

    async def connect(self) -> None:
        return None

    async def list_all(self, conn: None) -> Objects:
        self.saw_event()
        return self.snapshot()

    async def follow(self, conn: None) -> str:
        await asyncio.Event().wait()  # config changes arrive as a new source
        return "stopped"
