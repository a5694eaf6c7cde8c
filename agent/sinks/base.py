"""What every sink has: apply a table (blocking, run in a thread) and report status."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.plan.table import Table
from agent.sinks.reread import Reread


@dataclass
class ReloadInfo:
    at: float  # wall clock
    latency_ms: float  # from the first change of the batch to the signal
    pid: int | None
    via: str
    sent: bool
    reason: str | None
    verified: str | None = None  # what proved the target to be dnsmasq
    # What the re-read this signal started cost dnsmasq (sinks/reread.py), once seen.
    reread_ms: float | None = None  # CPU time
    reread_wall_ms: float | None = None


@dataclass
class SinkStatus:
    path: Path
    names: int = 0
    lines: int = 0
    writes: int = 0
    unchanged: int = 0  # syncs that found the file already right (no write, no reload)
    last_write: float | None = None
    last_write_method: str | None = None
    last_write_ms: float | None = None
    last_reload: ReloadInfo | None = None
    last_error: str | None = None  # the last error ever, kept as history once recovered
    last_error_at: float | None = None
    recovered_at: float | None = None  # first success after last_error; None while failing
    refused: str | None = None  # set while the sink refuses to touch its file
    warning: str | None = None  # works, but something will likely bite the user
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()
        self.recovered_at = None

    @property
    def error_active(self) -> bool:
        return self.last_error is not None and self.recovered_at is None

    def succeeded(self) -> bool:
        """Record a success; True if it ends an error (the caller logs the recovery once)."""
        if not self.error_active:
            return False
        self.recovered_at = time.time()
        return True


class Sink(ABC):
    kind: str = "sink"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.status = SinkStatus(path=path)
        # Told, from any thread, what each re-read this sink's signals started
        # cost the resolver: the pipeline paces reloads by it (coalesce.py).
        self.on_reread: Callable[[Reread], None] | None = None

    def prepare(self) -> None:  # noqa: B027 - optional hook, most sinks need nothing
        """Startup work before the first apply (e.g. removing a killed writer's temp files)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most sinks need nothing
        """The sink is replaced or the daemon stops (e.g. a connection to close)."""

    @abstractmethod
    def apply(self, table: Table, changed_at: float) -> bool:
        """Bring the target in line with ``table``; False if it could not (status says why).

        ``changed_at`` is the monotonic time of the first change in this batch.
        Runs in a worker thread: blocking I/O is fine here, shared state is not.
        """
