"""The user agent's sink: its whole table, pushed to the system agent (agent/peer).

A user agent cannot write the system's files or signal root's dnsmasq, so it
does not try: the system agent publishes for it, confined to the user's
sub-zone. ``apply`` only hands the newest table to the link (on the loop);
the link pushes it, reconnects and re-pushes by itself, and its outcome is
what this sink's status shows.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agent.peer.link import PeerLink
from agent.peer.wire import push_params
from agent.plan.table import Table

from .base import Sink


class PeerPushSink(Sink):
    kind = "peer-push"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.link = PeerLink(path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def prepare(self) -> None:
        # Called on the loop (daemon start, sink rebuild after a reload).
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = self._loop.create_task(self.link.run(), name="peer-push")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def apply(self, table: Table, changed_at: float) -> bool:
        params = push_params(table)  # in the worker thread: the table is immutable
        self.status.names = len(params["records"])
        self.status.lines = self.status.names
        loop = self._loop
        if loop is None:
            self.status.error("not started")
            return False
        with contextlib.suppress(RuntimeError):  # the loop is closing: shutdown
            loop.call_soon_threadsafe(self.link.offer, params)
        return True

    def refresh_status(self) -> None:
        """Copy the link's state into the sink status (read on the loop, at status time)."""
        st, s = self.link.state, self.status
        s.writes = st.pushes
        s.last_write = st.last_push
        s.last_write_method = "push"
        s.last_write_ms = st.last_push_ms
        s.last_error, s.last_error_at = st.last_error, st.last_error_at
        s.refused = st.push_refused
        extra: dict[str, Any] = {
            "connected": st.connected,
            "user": st.user,
            "subzones": list(st.subzones),
            "accepted": st.accepted,
            "refused_names": st.refused,
            "limits": st.limits,
        }
        s.extra = extra
