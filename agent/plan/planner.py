"""The planner: each sync's table, made from the claims and the table before it.

What a sync reuses from the last one lives here, read from the previous table,
not on the values: who held a contested name (it keeps it), and the rendered
lines of every entry that is still the same record object (with 10,000 names
and one changing, formatting the other 9,999 again would be the whole sync).

A sync after a few objects changed (the store lists them: model/change.py)
is a patch of the last table: only the names those objects claimed before or
claim now are decided again, and the rest of the table is copied in C (a dict
copy, tuple slices). Its cost follows the change, not the table: planning every
name for one container start was most of a sync's CPU at 10,000 names, and on
a busy machine that CPU is what made the name late. Anything the patch cannot
vouch for (a batch not listed, a table planned at another generation, a claim
not where the last plan put it) is planned from every snapshot instead, which
gives the same table.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, compress, count, islice
from operator import attrgetter, is_not

from agent.model.change import Changes, ObjectChange
from agent.model.record import PEER_KIND, Record, Rejection
from agent.plan.render import entry_line
from agent.plan.table import Conflict, Entry, Holder, Table, _holder, build, decide, standing

_END = (chr(0x10FFFF), None)  # sorts after every name (names are ASCII)


class Planner:
    def __init__(self) -> None:
        self.table = Table()
        # The names whose entry the last plan changed, in order; None: it planned
        # every name (observers then compare the tables whole).
        self.changed: tuple[str, ...] | None = None
        self._generation: int | None = None  # of the store, when self.table was planned
        self._names: list[str] = []  # self.table's names, in order
        self._multi: dict[str, list[Record]] = {}  # names claimed more than once: all claims
        self._peer_held: set[str] = set()  # names a user agent's record holds

    def plan(self, records: Iterable[Record], rejections: Iterable[Rejection],
             changes: Changes | None = None) -> Table:
        """The table for these claims; with ``changes`` (what changed since the
        last plan) a patch of the last table where it can be."""
        since, self._generation = self._generation, None  # until this plan is done
        table = None
        if changes is not None and changes.objects is not None and changes.since == since:
            table = self._patched(changes.objects, rejections)
        if table is None:
            table = self._full(records, rejections)
        self.table = table
        self._generation = None if changes is None else changes.upto
        return table

    def _full(self, records: Iterable[Record], rejections: Iterable[Rejection]) -> Table:
        table, self._multi = build(records, rejections, self._kept, self._lines)
        self._names = list(table.entries)
        self._peer_held = {n for n, e in table.entries.items() if e.provenance.kind == PEER_KIND}
        self.changed = None
        return table

    def _patched(self, changes: tuple[ObjectChange, ...],
                 rejections: Iterable[Rejection]) -> Table | None:
        """The last table with the names ``changes`` touch decided again; None when
        planning every name is as cheap, or the changes do not fit the last table."""
        old = self.table
        touched = _Touched(changes)
        if len(touched.names) > len(old.entries) // 8 + 16:  # a reload: plan it all
            return None
        decided = self._decide(touched)
        if decided is None:
            return None
        patch, conflicts, multi = decided
        changed = sorted(n for n, e in patch.items() if old.entries.get(n) is not e)
        peers_moved = self._peers_moved(patch)
        entries, lines = old.entries, old.lines
        if changed:
            entries, names = self._entries(old, patch, changed)
            lines = _spliced(old, self._names, entries, changed)
            self._names = names
        self._remember(patch, multi)
        self.changed = tuple(changed)
        if not changed and not touched.rejections:
            return old
        refused = old.rejections
        if touched.rejections or peers_moved:
            refused = standing(rejections, [entries[n] for n in self._peer_held])
        kept = [c for c in old.conflicts if c.name not in patch]
        return Table(entries, tuple(sorted(kept + conflicts, key=_conflict_name)), refused, lines)

    def _peers_moved(self, patch: Mapping[str, Entry | None]) -> bool:
        """Whether a touched name was or is a user agent's (refusals may turn moot)."""
        return any(n in self._peer_held or (e is not None and _peer(e)) for n, e in patch.items())

    def _remember(self, patch: Mapping[str, Entry | None],
                  multi: Mapping[str, list[Record] | None]) -> None:
        """What the next patch needs to know of the touched names: their claims
        (where more than one) and whether a user agent holds them."""
        for name, claims in multi.items():
            if claims is None:
                self._multi.pop(name, None)
            else:
                self._multi[name] = claims
        for name, e in patch.items():
            if e is not None and _peer(e):
                self._peer_held.add(name)
            else:
                self._peer_held.discard(name)

    def _decide(self, touched: _Touched) -> tuple[
            dict[str, Entry | None], list[Conflict], dict[str, list[Record] | None]] | None:
        """Each touched name's entry (None: no claim is left), its conflict, its claims."""
        old = self.table.entries
        patch: dict[str, Entry | None] = {}
        conflicts: list[Conflict] = []
        multi: dict[str, list[Record] | None] = {}
        for name in touched.names:
            claims = list(self._multi.get(name) or ((old[name],) if name in old else ()))
            for rec in touched.gone.get(name, ()):
                at = next((i for i, c in enumerate(claims) if c is rec), None)
                if at is None:  # not where the last plan had it: plan it all
                    return None
                del claims[at]
            claims += touched.came.get(name, ())
            multi[name] = claims if len(claims) > 1 else None
            if not claims:
                patch[name] = None
            elif len(claims) == 1:
                patch[name] = claims[0]  # a name claimed once: its record is the entry
            else:
                entry, conflict = decide(name, claims, self._kept(name))
                patch[name] = entry
                if conflict is not None:
                    conflicts.append(conflict)
        return patch, conflicts, multi

    def _entries(self, old: Table, patch: Mapping[str, Entry | None],
                 changed: list[str]) -> tuple[dict[str, Entry], list[str]]:
        """The patched entries, in name order, and their names."""
        if all(n in old.entries for n in changed):  # replaced or gone: the order holds
            entries = dict(old.entries)  # a copy in C
            for name in changed:
                e = patch[name]
                if e is None:
                    del entries[name]
                else:
                    entries[name] = e
            gone = len(entries) != len(old.entries)
            return entries, list(entries) if gone else self._names
        # A new name goes to its place in the order: the dict is made once, from
        # runs of the old items (sliced in C) with the changed ones between them.
        names = self._names
        items = iter(old.entries.items())
        runs: list[Iterable[tuple[str, Entry]]] = []
        done = 0
        for name in changed:  # in order
            i = bisect_left(names, name)
            runs.append(islice(items, i - done))
            done = i
            if i < len(names) and names[i] == name:  # its old entry goes
                runs.append(_skip_one(items))
                done = i + 1
            e = patch[name]
            if e is not None:
                runs.append(((name, e),))
        runs.append(items)
        entries = dict(chain.from_iterable(runs))
        return entries, list(entries)

    def _kept(self, name: str) -> Holder | None:
        entry = self.table.entries.get(name)
        return None if entry is None else _holder(entry.provenance)

    def _lines(self, entries: dict[str, Entry]) -> tuple[bytes, ...]:
        """Each entry's lines, from the previous table where it is the same object there."""
        old = self.table
        if list(entries) != list(old.entries):
            return self._walk(entries)
        # The same names (a reload that changed some addresses, or none): find the
        # entries that are new objects, in C, and format only those.
        changed = list(compress(count(), map(is_not, old.entries.values(), entries.values())))
        if not changed:
            return old.lines
        lines = list(old.lines)
        names = list(entries)
        values = list(entries.values())
        for i in changed:
            lines[i] = entry_line(names[i], values[i])
        return tuple(lines)

    def _walk(self, entries: dict[str, Entry]) -> tuple[bytes, ...]:
        """Names came or went: walk both tables (both in name order) side by side."""
        old = zip(self.table.entries.items(), self.table.lines, strict=True)
        (old_name, old_entry), old_line = next(old, (_END, b""))
        out: list[bytes] = []
        for name, entry in entries.items():
            while old_name < name:
                (old_name, old_entry), old_line = next(old, (_END, b""))
            if old_entry is entry and old_name == name:
                out.append(old_line)
            else:
                out.append(entry_line(name, entry))
        return tuple(out)


class _Touched:
    """The records ``changes`` took away and brought, by name."""

    def __init__(self, changes: tuple[ObjectChange, ...]) -> None:
        self.gone: dict[str, list[Record]] = {}
        self.came: dict[str, list[Record]] = {}
        self.rejections = False  # some object had or has refusals
        for change in changes:
            for state, into in ((change.before, self.gone), (change.after, self.came)):
                if state is None:
                    continue
                for rec in state.records:
                    into.setdefault(rec.name, []).append(rec)
                self.rejections = self.rejections or bool(state.rejections)
        self.names = self.gone.keys() | self.came.keys()


def _skip_one(items: Iterator[tuple[str, Entry]]) -> Iterator[tuple[str, Entry]]:
    """Drops the next item of ``items`` when reached (lazily, in its run's turn)."""
    next(items, None)
    yield from ()


def _peer(e: Entry) -> bool:
    return e.provenance.kind == PEER_KIND


_conflict_name = attrgetter("name")


def _spliced(old: Table, old_names: list[str], entries: Mapping[str, Entry],
             changed: list[str]) -> tuple[bytes, ...]:
    """``old.lines`` with the lines of the ``changed`` names (in order) made anew;
    the runs between them are sliced from the old tuple, by position, in C."""
    parts: list[Iterable[bytes]] = []
    done = 0  # entries of ``old`` already accounted for
    for name in changed:
        i = bisect_left(old_names, name)
        parts.append(old.lines[done:i])
        done = i + 1 if i < len(old_names) and old_names[i] == name else i  # its old line goes
        e = entries.get(name)
        if e is not None:
            parts.append((entry_line(name, e),))
    parts.append(old.lines[done:])
    return tuple(chain.from_iterable(parts))
