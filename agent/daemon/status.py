"""The status document served to ``agentctl status --json``.

Its shape is a documented, stable interface (README "Status JSON"): fields
may be added, none renamed or removed within ``status_version`` 1.
Times are RFC 3339 UTC strings, durations milliseconds.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from agent.model.record import Provenance
from agent.plan.table import Table
from agent.resolvers.networkmanager import NetworkManagerWatcher
from agent.sinks.base import Sink
from agent.sources.base import Source
from agent.state.store import StateStore

STATUS_VERSION = 1

# The libraries behind sources that may be off or absent (libvirt-python,
# podman-py and its requests, dbus-fast), and pyroute2's package __init__
# (``pyroute2.ndb`` is loaded only by it: agent/sources/netlink.py imports the
# rtnetlink socket alone). Each costs megabytes of RSS once imported; status shows
# which are, so a source that is off or waiting for its service visibly costs nothing.
LIBRARIES = ("libvirt", "podman", "requests", "dbus_fast", "pyroute2", "pyroute2.ndb")


def libraries_loaded() -> list[str]:
    return [name for name in LIBRARIES if name in sys.modules]


def ts(t: float | None) -> str | None:
    if t is None:
        return None
    return (
        dt.datetime.fromtimestamp(t, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def provenance(p: Provenance) -> dict[str, Any]:
    return {"source": p.source, "object": p.object_id, "kind": p.kind, "display": p.display}


def source_status(src: Source, store: StateStore, table: Table | None = None) -> dict[str, Any]:
    h = src.health
    counts = _source_counts(src.name, table) if table is not None else {}
    fix = getattr(src, "fix_hint", None)
    # A source with more to show than its health (the peer source's peers).
    extra = getattr(src, "status_extra", None)
    # A detail with a clock in it (how long a call has been stuck) is made when asked.
    detail_now = getattr(src, "detail_now", None)
    return {
        "name": src.name,
        "kind": src.kind,
        "state": h.state,
        "since": ts(h.since),
        "synced": src.synced.is_set(),
        "objects": store.object_count(src.name),
        "last_event": ts(h.last_event),
        "last_error": h.last_error,
        "last_error_at": ts(h.last_error_at),
        "error_active": h.error_active,
        "recovered_at": ts(h.recovered_at),
        "detail": detail_now() if callable(detail_now) else h.detail,
        # Fields added in status_version 1 (issue 15): what the source's objects add
        # up to in the table, and the plain fix for its last error, if it knows one.
        **counts,
        "fix": fix() if callable(fix) else None,
        **(extra() if callable(extra) else {}),
    }


def _source_counts(source: str, table: Table) -> dict[str, int]:
    """Names a source has in the table, and how many it was refused or lost.

    ``objects`` alone misleads: a host source holding one object whose only
    record was refused is "1 object" and publishes nothing.
    """
    names = sum(1 for e in table.entries.values() if e.provenance.source == source)
    refused = sum(1 for r in table.rejections if r.provenance.source == source)
    lost = sum(1 for c in table.conflicts for p in c.losers if p.source == source)
    return {"names": names, "refused": refused, "lost": lost}


def sink_status(sink: Sink) -> dict[str, Any]:
    refresh = getattr(sink, "refresh_status", None)  # a sink whose state lives elsewhere
    if callable(refresh):
        refresh()
    s = sink.status
    reload = None
    if s.last_reload is not None:
        r = s.last_reload
        reload = {
            "at": ts(r.at),
            "latency_ms": _ms(r.latency_ms),
            "pid": r.pid,
            "via": r.via,
            "signalled": r.sent,
            "reason": r.reason,
            "verified": r.verified,
            "reread_ms": _ms(r.reread_ms),
            "reread_wall_ms": _ms(r.reread_wall_ms),
        }
    return {
        "kind": sink.kind,
        "path": str(s.path),
        "names": s.names,
        "lines": s.lines,
        "writes": s.writes,
        "unchanged": s.unchanged,
        "last_write": ts(s.last_write),
        "last_write_method": s.last_write_method,
        "last_write_ms": _ms(s.last_write_ms),
        "last_reload": reload,
        "last_error": s.last_error,
        "last_error_at": ts(s.last_error_at),
        "error_active": s.error_active,
        "recovered_at": ts(s.recovered_at),
        "refused": s.refused,
        "warning": s.warning,
        **s.extra,
    }


def table_status(table: Table) -> dict[str, Any]:
    return {
        "names": len(table.entries),
        "conflicts": [
            {
                "name": c.name,
                "winner": provenance(c.winner),
                "losers": [provenance(p) for p in c.losers],
            }
            for c in table.conflicts
        ],
        "rejected": [
            {"value": r.value, "reason": r.reason, **provenance(r.provenance)}
            for r in table.rejections
        ],
    }


def networkmanager_status(nm: NetworkManagerWatcher | None) -> dict[str, Any]:
    if nm is None:
        return {
            "watching": False,
            "bus": None,
            "bus_error": None,
            "running": None,
            "dns_mode": None,
            "dnsmasq_pid": None,
            "dnsmasq_since": None,
            "advice": None,
        }
    v, h = nm.view, nm.health
    bus = {"starting": "connecting", "connected": "connected"}.get(h.state, "unavailable")
    return {
        "watching": True,
        "bus": bus,
        "bus_error": None if bus == "connected" else h.last_error,
        "running": v.running,
        "dns_mode": v.mode,
        "dnsmasq_pid": v.dnsmasq.pid if v.dnsmasq else None,
        "dnsmasq_since": ts(v.dnsmasq.since) if v.dnsmasq else None,
        "advice": v.advice,
    }
