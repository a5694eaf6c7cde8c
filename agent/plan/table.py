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
    # render.py's memo of this entry's hosts lines. An entry outlives the sync that
    # made it (it is memoised on its record, see plan), so an unchanged name is
    # formatted once, not on every sync. Not part of the value.
    _lines: tuple[bytes, ...] | None = field(default=None, init=False, repr=False, compare=False)


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
    # Memos, not part of the value; a table is never changed after it is made. plan()
    # fills _holders as it goes (the pipeline asks the last table for its holders on
    # every sync); render.py fills _lines (each sink renders the same table).
    _holders: dict[str, Holder] | None = field(default=None, init=False, repr=False, compare=False)
    _lines: tuple[bytes, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def holders(self) -> dict[str, Holder]:
        if self._holders is not None:
            return dict(self._holders)  # a copy: the caller may change it
        return {name: _holder(e.provenance) for name, e in self.entries.items()}


def _rank(p: Provenance) -> tuple[int, Provenance]:
    return (0 if p.kind == "static" else 1, p)


def _entry_of(rec: Record) -> tuple[Entry, Holder]:
    """The entry (and holder) of a name only ``rec`` claims, made once per record.

    One claimant wins whatever the previous holder was, with the record's own
    addresses (a Record keeps them sorted and unique). That is a function of the
    frozen record alone, so it is memoised on the record and reused by every
    later sync for as long as the record stays in its snapshot.
    """
    prov = rec.provenance
    memo: tuple[Entry, Holder] = (Entry(rec.name, rec.addresses, prov), _holder(prov))
    object.__setattr__(rec, "_plan_memo", memo)
    return memo


def plan(
    records: Iterable[Record],
    rejections: Iterable[Rejection],
    previous: Mapping[str, Holder] | None = None,
) -> Table:
    previous = previous or {}
    # Nearly every name is claimed by exactly one record, and this runs for every
    # name on every sync: keep the first record per name, give every name that
    # record's memoised entry, then decide the few names claimed again with the
    # general merge, in place. (The same record object seen twice is one claim:
    # merging it with itself is a no-op.)
    first: dict[str, Record] = {}
    again: dict[str, list[Record]] = {}
    claim = first.setdefault
    for rec in records:
        if claim(rec.name, rec) is not rec:
            again.setdefault(rec.name, []).append(rec)

    entries: dict[str, Entry] = {}
    holders: dict[str, Holder] = {}
    for name in sorted(first):  # entries in name order, as always
        rec = first[name]
        memo = rec._plan_memo
        if memo is None:
            memo = _entry_of(rec)
        entries[name], holders[name] = memo

    conflicts: list[Conflict] = []
    for name in sorted(again):
        # holder -> (provenance, addresses); one object may claim a name through
        # several records (e.g. two NICs), which merge.
        by_holder: dict[Holder, tuple[Provenance, set[Address]]] = {}
        for r in (first[name], *again[name]):
            key = _holder(r.provenance)
            if key in by_holder:
                by_holder[key][1].update(r.addresses)
            else:
                by_holder[key] = (r.provenance, set(r.addresses))
        kept = previous.get(name)
        if kept is not None and kept in by_holder:
            winner_key = kept
        else:
            winner_key = min(by_holder.items(), key=lambda kv: _rank(kv[1][0]))[0]
        prov, addrs = by_holder[winner_key]
        entries[name] = Entry(name, sort_addresses(addrs), prov)  # keeps its sorted place
        holders[name] = winner_key
        if len(by_holder) > 1:
            losers = tuple(sorted(p for h, (p, _) in by_holder.items() if h != winner_key))
            conflicts.append(Conflict(name, prov, losers))
    ordered_rejections = tuple(sorted(set(rejections), key=lambda r: (r.provenance, r.value)))
    table = Table(entries=entries, conflicts=tuple(conflicts), rejections=ordered_rejections)
    object.__setattr__(table, "_holders", holders)
    return table
