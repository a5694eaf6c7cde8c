"""The desired table: one winner per name, every conflict and refusal kept visible.

Conflict rule (deterministic, no flapping): the object that held a name in
the previous table keeps it for as long as it still claims it. A name with
no previous holder goes to static config first (the user said so
explicitly), then to the smallest (source, object id). Objects are compared
by identity, not by address, so a holder whose address changes keeps its
name.

A table is a plain value. What one sync can reuse from the last (the previous
holders, an unchanged entry's rendered lines) is read from the previous table
by the planner (plan/planner.py), never stored on a record or a table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from agent.model.record import (
    PEER_KIND,
    Address,
    Provenance,
    Record,
    Rejection,
    sort_addresses,
)
from agent.plan.render import entry_line

Holder = tuple[str, str]  # (source, object_id)
# A table entry is the record that won its name: a name claimed once (nearly all of
# them) is that record itself, no copy. An object claiming a name through several
# records (two NICs) gets one merged record.
Entry = Record


def _holder(p: Provenance) -> Holder:
    return (p.source, p.object_id)


@dataclass(frozen=True)
class Conflict:
    name: str
    winner: Provenance
    losers: tuple[Provenance, ...]


@dataclass(frozen=True)
class Table:
    """Entries by name, in name order, and their hosts-format ``lines``.

    ``lines`` holds, for each entry in entry order, its ``b"ADDRESS NAME"`` lines
    (one per address, IPv4 before IPv6) joined by newlines: what every sink
    writes. One item per entry, so the lines of entry i are ``lines[i]``: a
    patch of the table slices them by position, never counts addresses.
    Derived from the entries when not given; the planner gives it, reusing the
    previous table's lines.
    """

    entries: Mapping[str, Entry] = field(default_factory=dict)
    conflicts: tuple[Conflict, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    lines: tuple[bytes, ...] = field(default=None, repr=False)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if self.lines is None:
            entries = {name: self.entries[name] for name in sorted(self.entries)}
            lines = tuple(entry_line(name, e) for name, e in entries.items())
            object.__setattr__(self, "entries", entries)
            object.__setattr__(self, "lines", lines)

    def holders(self) -> dict[str, Holder]:
        return {name: _holder(e.provenance) for name, e in self.entries.items()}


def _rank(p: Provenance) -> tuple[int, Provenance]:
    return (0 if p.kind == "static" else 1, p)


_name = attrgetter("name")


def claims(records: Iterable[Record]) -> tuple[dict[str, Record], dict[str, list[Record]]]:
    """The first record per name, and every record of the names claimed more than once.

    Nearly every name is claimed by exactly one record and this runs for every
    name on a full plan, so the usual case is built in C (map, zip, dict) and
    only a table with a name claimed twice takes the loop. (The same record
    object seen twice is two claims of one holder: merging it with itself is a
    no-op, and the planner's patches count claims the same way.)
    """
    recs = list(records)
    first = dict(zip(map(_name, recs), recs, strict=True))
    if len(first) == len(recs):
        return first, {}
    first = {}
    multi: dict[str, list[Record]] = {}
    for rec in recs:
        held = first.get(rec.name)
        if held is None:
            first[rec.name] = rec
        elif rec.name in multi:
            multi[rec.name].append(rec)
        else:
            multi[rec.name] = [held, rec]
    return first, multi


def _in_name_order(first: dict[str, Record]) -> dict[str, Record]:
    names = sorted(first)
    if names == list(first):  # records usually arrive in name order: keep the dict
        return first
    return dict(zip(names, map(first.__getitem__, names), strict=True))


def decide(
    name: str, claims: list[Record], kept: Holder | None
) -> tuple[Entry, Conflict | None]:
    """The entry for a name claimed by several records, whatever their order."""
    # holder -> (provenance, addresses); one object may claim a name through
    # several records (e.g. two NICs), which merge.
    by_holder: dict[Holder, tuple[Provenance, set[Address]]] = {}
    for r in claims:
        key = _holder(r.provenance)
        if key in by_holder:
            prov, addrs = by_holder[key]
            addrs.update(r.addresses)
            if (r.provenance, r.provenance.label) < (prov, prov.label):
                by_holder[key] = (r.provenance, addrs)
        else:
            by_holder[key] = (r.provenance, set(r.addresses))
    if kept is not None and kept in by_holder:
        winner_key = kept
    else:
        winner_key = min(by_holder.items(), key=lambda kv: _rank(kv[1][0]))[0]
    prov, addrs = by_holder[winner_key]
    entry = Record(name, sort_addresses(addrs), prov)
    if len(by_holder) == 1:
        return entry, None
    losers = tuple(sorted(p for h, (p, _) in by_holder.items() if h != winner_key))
    return entry, Conflict(name, prov, losers)


def make_table(
    records: Iterable[Record],
    rejections: Iterable[Rejection],
    kept: Callable[[str], Holder | None],
    lines: Callable[[dict[str, Entry]], tuple[bytes, ...]] | None = None,
) -> Table:
    """The table for these claims; ``kept(name)`` is who held a contested name before."""
    return build(records, rejections, kept, lines)[0]


def build(
    records: Iterable[Record],
    rejections: Iterable[Rejection],
    kept: Callable[[str], Holder | None],
    lines: Callable[[dict[str, Entry]], tuple[bytes, ...]] | None = None,
) -> tuple[Table, dict[str, list[Record]]]:
    """``make_table``'s table, and the claims of every name claimed more than once
    (what the planner needs to patch the table later)."""
    first, multi = claims(records)
    entries = _in_name_order(first)  # name order, as always
    conflicts: list[Conflict] = []
    for name in sorted(multi):
        entry, conflict = decide(name, multi[name], kept(name))
        entries[name] = entry  # keeps its sorted place
        if conflict is not None:
            conflicts.append(conflict)
    refused = set(rejections)
    # Only a refusal about an address can be moot: else no entry needs a look.
    about_addresses = any(r.address is not None for r in refused)
    table = Table(
        entries=entries,
        conflicts=tuple(conflicts),
        rejections=standing(refused, peer_entries(entries) if about_addresses else ()),
        lines=lines(entries) if lines is not None else None,  # type: ignore[arg-type]
    )
    return table, multi


def peer_entries(entries: Mapping[str, Entry]) -> list[Entry]:
    return [e for e in entries.values() if e.provenance.kind == PEER_KIND]


def standing(rejections: Iterable[Rejection], peers: Iterable[Entry]) -> tuple[Rejection, ...]:
    """The refusals that still stand, in display order; ``peers``: the entries a
    user agent holds (the only ones that can make a refusal moot)."""
    return tuple(sorted(_not_moot(set(rejections), peers), key=_rejection_order))


def _rejection_order(r: Rejection) -> tuple[Provenance, str, str, tuple[int, int]]:
    # A total order: one object's refusals of one value (two leases, one bad
    # hostname) must not be left in set order, which a patch would keep from an
    # older plan (and which hash(None) makes differ from run to run).
    a = r.address
    return (r.provenance, r.value, r.reason, (0, 0) if a is None else (a.version, int(a)))


def _not_moot(rejections: set[Rejection], peers: Iterable[Entry]) -> Iterable[Rejection]:
    """The refusals that still stand: one about an address a user agent publishes
    (its session VM on a system bridge) would tell the user "not published" about
    an address that answers. Only a peer's record makes it moot: another of the
    system's own sources holding the address is a conflict worth showing. Display
    only: nothing is written because of it, so a peer claiming an address can at
    most quiet this line, and its name for the address shows in the table."""
    about = [r for r in rejections if r.address is not None]
    if not about:
        return rejections
    wanted = {r.address for r in about}
    holders: dict[Address, set[str]] = {}
    for entry in peers:
        for address in entry.addresses:
            if address in wanted:
                holders.setdefault(address, set()).add(entry.provenance.source)
    return [r for r in rejections
            if r.address is None or not holders.get(r.address, set()) - {r.provenance.source}]


def select(table: Table, keep: Callable[[str], bool]) -> Table:
    """The entries of ``table`` whose name ``keep`` accepts, with their lines as they are.

    For a sink that writes part of the table: its lines are taken, not formatted
    again (with 100,000 names that would be most of every sync).
    """
    entries: dict[str, Entry] = {}
    lines: list[bytes] = []
    for (name, entry), line in zip(table.entries.items(), table.lines, strict=True):
        if keep(name):
            entries[name] = entry
            lines.append(line)
    return Table(entries, table.conflicts, table.rejections, tuple(lines))


def plan(
    records: Iterable[Record],
    rejections: Iterable[Rejection],
    previous: Mapping[str, Holder] | None = None,
) -> Table:
    """One table from scratch; ``previous`` maps each name to its holder before."""
    held = previous or {}
    return make_table(records, rejections, held.get)
