"""The contract every source implements: a snapshot of objects, kept by the store.

A source is level-triggered: on every (re)connect it subscribes first, then
lists, then hands the store its *whole* snapshot with ``replace``; after that
an event is only a hint to re-read the object it names and ``update`` that
one entry (or replace the whole snapshot again). While disconnected it keeps
its last snapshot in the store (a libvirtd restart must not make running VMs
vanish) and says so in ``health``.

Sources that follow a service derive from ``ServiceSource``: the lifecycle
(lifecycle.py) owns connecting, ordering, retries and their wording.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from typing import Protocol, TypeVar

from agent.model.record import ObjectState
from agent.sources.lifecycle import Health, Lifecycle, Observed

# Kept for readers of the old name (status, tests).
SourceHealth = Health

Objects = Mapping[str, ObjectState]
C = TypeVar("C")


class SnapshotSink(Protocol):
    """What a source may do to the state store: replace everything, or one object."""

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None: ...

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None: ...


class Source(Observed, ABC):
    """What the daemon runs: ``run`` until cancelled, ``config_key`` for reloads."""

    kind: str = "source"
    _sink: SnapshotSink | None = None

    @abstractmethod
    async def run(self, sink: SnapshotSink) -> None:
        """Observe until cancelled. Must ``replace`` once, then call ``mark_synced``."""

    @abstractmethod
    def config_key(self) -> Hashable:
        """Equal keys mean a config reload need not restart this source."""

    def replace(self, objects: Objects) -> None:
        if self._sink is not None:
            self._sink.replace(self.name, objects)

    def update(self, object_id: str, state: ObjectState | None) -> None:
        if self._sink is not None:
            self._sink.update(self.name, object_id, state)


class ServiceSource(Lifecycle[C, Objects], Source):
    """A source that follows a service; ``list_all`` returns its whole snapshot."""

    async def run(self, sink: SnapshotSink) -> None:
        self._sink = sink
        await self.supervise()

    def take(self, snapshot: Objects) -> None:
        self.replace(snapshot)
