"""The desired table: one winner per name, every conflict and refusal kept visible.

Conflict rule (deterministic, no flapping): the object that held a name in
the previous table keeps it for as long as it still claims it. A name with
no previous holder goes to static config first (the user said so
explicitly), then to the smallest (source, object id). Objects are compared
by identity, not by address, so a holder whose address changes keeps its
name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.model.record import Address, Provenance, Record, Rejection, sort_addresses

Holder = tuple[str, str]  # (source, object_id)


def _holder(p: Provenance) -> Holder:
    return (p.source, p.object_id)


@dataclass(frozen=True)
class Entry:
    name: str
    addresses: tuple[Address, ...]
    provenance: Provenance


@dataclass(frozen=True)
class Conflict:
    name: str
    winner: Provenance
    losers: tuple[Provenance, ...]


@dataclass(frozen=True)
class Table:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    rejections: tuple[Rejection, ...] = ()

    def holders(self) -> dict[str, Holder]:
        return {name: _holder(e.provenance) for name, e in self.entries.items()}


def _rank(p: Provenance) -> tuple[int, Provenance]:
    return (0 if p.kind == "static" else 1, p)


def plan(
    records: Iterable[Record],
    rejections: Iterable[Rejection],
    previous: Mapping[str, Holder] | None = None,
) -> Table:
    previous = previous or {}
    # name -> holder -> (provenance, addresses); one object may claim a name
    # through several records (e.g. two NICs), which merge.
    claims: dict[str, dict[Holder, tuple[Provenance, set[Address]]]] = {}
    for rec in records:
        by_holder = claims.setdefault(rec.name, {})
        key = _holder(rec.provenance)
        if key in by_holder:
            by_holder[key][1].update(rec.addresses)
        else:
            by_holder[key] = (rec.provenance, set(rec.addresses))

    entries: dict[str, Entry] = {}
    conflicts: list[Conflict] = []
    for name in sorted(claims):
        by_holder = claims[name]
        kept = previous.get(name)
        if kept is not None and kept in by_holder:
            winner_key = kept
        else:
            winner_key = min(by_holder, key=lambda h: _rank(by_holder[h][0]))
        prov, addrs = by_holder[winner_key]
        entries[name] = Entry(name, sort_addresses(addrs), prov)
        if len(by_holder) > 1:
            losers = tuple(sorted(p for h, (p, _) in by_holder.items() if h != winner_key))
            conflicts.append(Conflict(name, prov, losers))
    ordered_rejections = tuple(sorted(set(rejections), key=lambda r: (r.provenance, r.value)))
    return Table(entries=entries, conflicts=tuple(conflicts), rejections=ordered_rejections)
