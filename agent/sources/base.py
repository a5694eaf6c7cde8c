"""The contract every source implements (static now; libvirt, Podman, netlink, peers next).

A source is level-triggered: on every (re)connect it subscribes first, then
lists, then hands the store its *whole* snapshot with ``replace``; after that
an event is only a hint to re-read the object it names and ``update`` that
one entry. While disconnected it keeps its last snapshot in the store (a
libvirtd restart must not make running VMs vanish) and says so in ``health``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agent.model.record import ObjectState


class SnapshotSink(Protocol):
    """What a source may do to the state store: replace everything, or one object."""

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None: ...

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None: ...


@dataclass
class SourceHealth:
    state: str = "starting"  # starting | connected | disconnected | stopped
    since: float = 0.0  # wall-clock time of the last state change
    last_event: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    detail: str | None = None  # e.g. "reconnecting in 4s"


class Source(ABC):
    """Base class: subclasses implement ``run`` and ``config_key``."""

    kind: str = "source"

    def __init__(self, name: str) -> None:
        self.name = name
        self.health = SourceHealth(since=time.time())
        # Set once the first full snapshot is in the store: the daemon reports
        # ready (sd_notify) only when every source has published.
        self.synced = asyncio.Event()

    @abstractmethod
    async def run(self, sink: SnapshotSink) -> None:
        """Observe until cancelled. Must ``replace`` once, then call ``mark_synced``."""

    @abstractmethod
    def config_key(self) -> Hashable:
        """Equal keys mean a config reload need not restart this source."""

    def mark_synced(self) -> None:
        self.synced.set()

    def set_state(self, state: str, detail: str | None = None) -> None:
        if state != self.health.state:
            self.health.since = time.time()
        self.health.state = state
        self.health.detail = detail

    def saw_event(self) -> None:
        self.health.last_event = time.time()

    def record_error(self, message: str) -> None:
        self.health.last_error = message
        self.health.last_error_at = time.time()
