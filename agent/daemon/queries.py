"""Control handlers for agentctl's list, explain, watch, and reload with a delivery check.

Kept out of app.py: the daemon wires them in with ``Queries(daemon).handlers()``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from agent.control.protocol import ProtocolError
from agent.control.server import Peer
from agent.plan.table import Table
from agent.sinks.base import Sink

from .explain import Explainer, explain
from .history import NameHistory, TooManyWatchers
from .status import provenance, ts

if TYPE_CHECKING:
    from .app import Daemon

MAX_PATTERN = 253 * 2
MAX_NAME = 1024


def _matcher(pattern: str | None) -> Any:
    if not pattern:
        return lambda _: True
    # A plain word finds names containing it; a pattern with wildcards is a shell glob.
    glob = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return lambda text: fnmatch.fnmatchcase(text.lower(), glob)


def list_doc(table: Table, history: NameHistory, pattern: str | None) -> dict[str, Any]:
    match = _matcher(pattern)
    names = [
        {"name": name, "addresses": [str(a) for a in e.addresses],
         "since": ts(history.since.get(name)), **provenance(e.provenance)}
        for name, e in table.entries.items() if match(name)
    ]
    lost = [
        {"name": c.name, "reason": f"conflict: {c.name} is kept by its current holder",
         "winner": provenance(c.winner), **provenance(p)}
        for c in table.conflicts if match(c.name) for p in c.losers
    ]
    refused = [
        {"value": r.value, "reason": r.reason, **provenance(r.provenance)}
        for r in table.rejections
        if match(r.value) or match(r.provenance.display or r.provenance.object_id)
    ]
    return {"pattern": pattern, "names": names, "lost": lost, "refused": refused}


def undelivered(sinks: list[Sink]) -> list[str]:
    """Why the running config's table is not what clients get, per sink; empty if it is."""
    out = []
    for s in sinks:
        st = s.status
        if st.refused:
            out.append(f"{s.kind} {s.path}: refused: {st.refused}")
        r = st.last_reload
        if r is not None and not r.sent:
            out.append(f"{s.kind} {s.path}: dnsmasq not signalled: {r.reason}")
    return out


def _str_param(params: dict[str, Any], key: str, limit: int, required: bool) -> str | None:
    value = params.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise ProtocolError("bad_request", f"{key} must be a string of 1..{limit} characters")
    return value


class Queries:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    @property
    def history(self) -> NameHistory:
        return self.daemon.history

    async def list(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        pattern = _str_param(params, "pattern", MAX_PATTERN, required=False)
        return list_doc(self.daemon.pipeline.table, self.history, pattern)

    async def explain(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        raw = _str_param(params, "name", MAX_NAME, required=True)
        assert raw is not None
        d = self.daemon
        explainer = Explainer(d.config, d.pipeline.table, d.sources.values(), self.history)
        live = params.get("live", True) is not False
        return await explain(explainer, list(d.pipeline.sinks), raw, live)

    async def watch(self, peer: Peer, params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            return self.history.subscribe(self.daemon.pipeline.table)
        except TooManyWatchers as e:
            raise ProtocolError("busy", str(e)) from None

    async def reload(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        res = await self.daemon.reload()
        if res["reloaded"]:
            # The reload's own sync, now rather than after the coalescing window, so
            # the answer says whether the new table reached the files and dnsmasq.
            await self.daemon.pipeline.sync()
            res["undelivered"] = undelivered(self.daemon.pipeline.sinks)
        return res

    def handlers(self) -> dict[str, Any]:
        return {"list": self.list, "explain": self.explain, "watch": self.watch,
                "reload": self.reload}
