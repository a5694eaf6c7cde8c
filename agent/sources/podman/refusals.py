"""aardvark-dns lines that are not believed, as refusals ``agentctl status`` shows.

Two kinds: a line ``vet`` refused (it cannot be tied to one container: see
aardvark.py), and a line whose id Podman says is no container at all.
Neither publishes anything; both are shown so that whoever forged them, or
whatever netavark bug wrote them, is visible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from agent.model.record import ObjectState, Provenance, Rejection

from .aardvark import Entry, LineRefusal, Snapshot

MAX_VALUE = 200  # a line is at most a few names; this one is shown, not parsed

NO_CONTAINER = "Podman has no container with this id"


def _value(e: Entry) -> str:
    text = " ".join((e.container_id[:12], ",".join(map(str, (*e.ipv4, *e.ipv6))),
                     ",".join(e.names)))
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _rejection(source: str, network: str, e: Entry, reason: str) -> Rejection:
    where = f"line {e.line} of network {network}'s aardvark-dns file"
    return Rejection(Provenance(source, e.container_id, "aardvark line", where), _value(e), reason)


def line_refusals(snapshot: Snapshot, *, source: str,
                  removed: Callable[[str], bool]) -> dict[str, ObjectState]:
    """Key -> refusals, one key per (network, container id) with a refused line.

    ``removed(cid)``: Podman answered that ``cid`` does not exist.
    """
    grouped: dict[str, list[Rejection]] = {}

    def add(items: Iterable[LineRefusal]) -> None:
        for r in items:
            key = f"aardvark:{r.network}:{r.entry.container_id}"
            grouped.setdefault(key, []).append(
                _rejection(source, r.network, r.entry, r.reason))

    add(snapshot.refused)
    refused_ids = {r.entry.container_id for r in snapshot.refused}
    add(LineRefusal(net, e, NO_CONTAINER) for net, e in snapshot.lines
        if e.container_id not in refused_ids and removed(e.container_id))
    return {key: ObjectState(rejections=tuple(rs)) for key, rs in sorted(grouped.items())}
