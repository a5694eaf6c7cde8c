"""The planner: each sync's table, made from the claims and the table before it.

What a sync reuses from the last one lives here, read from the previous table,
not on the values: who held a contested name (it keeps it), and the rendered
lines of every entry that is still the same record object (with 10,000 names
and one changing, formatting the other 9,999 again would be the whole sync).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain, compress, count, islice
from operator import attrgetter, is_not

from agent.model.record import Record, Rejection
from agent.plan.render import entry_lines
from agent.plan.table import Entry, Holder, Table, _holder, make_table

_END = (chr(0x10FFFF), None)  # sorts after every name (names are ASCII)


class Planner:
    def __init__(self) -> None:
        self.table = Table()

    def plan(self, records: Iterable[Record], rejections: Iterable[Rejection]) -> Table:
        self.table = make_table(records, rejections, self._kept, self._lines)
        return self.table

    def _kept(self, name: str) -> Holder | None:
        entry = self.table.entries.get(name)
        return None if entry is None else _holder(entry.provenance)

    def _lines(self, entries: dict[str, Entry]) -> tuple[bytes, ...]:
        """Each entry's lines, from the previous table where it is the same object there."""
        old = self.table
        if list(entries) != list(old.entries):
            return self._walk(entries)
        # The same names (the usual sync: some addresses changed, or nothing did):
        # find the entries that are new objects, in C, and format only those.
        changed = list(compress(count(), map(is_not, old.entries.values(), entries.values())))
        if not changed:
            return old.lines
        if len(changed) > len(entries) // 8:  # a reload of new records: walk, not patch
            return self._walk(entries)
        return _patch(old, entries, changed)

    def _walk(self, entries: dict[str, Entry]) -> tuple[bytes, ...]:
        """Names came or went: walk both tables (both in name order) side by side."""
        old = iter(self.table.entries.items())
        old_lines = self.table.lines
        pos = 0
        old_name, old_entry = next(old, _END)
        out: list[bytes] = []
        for name, entry in entries.items():
            while old_name < name:
                pos += len(old_entry.addresses)  # type: ignore[union-attr]
                old_name, old_entry = next(old, _END)
            if old_entry is entry and old_name == name:
                n = len(entry.addresses)
                if n == 1:
                    out.append(old_lines[pos])
                else:
                    out.extend(old_lines[pos : pos + n])
            else:
                out.extend(entry_lines(name, entry))
        return tuple(out)


_addresses = attrgetter("addresses")


def _patch(old: Table, entries: dict[str, Entry], changed: list[int]) -> tuple[bytes, ...]:
    """``old.lines`` with the lines of the ``changed`` entries (same names) made anew."""
    old_entries = iter(old.entries.values())
    names = list(entries)
    new_entries = list(entries.values())
    parts: list[Iterable[bytes]] = []
    done = pos = 0  # entries and lines of ``old`` already accounted for
    for i in changed:
        # Lines of the unchanged entries before this one, counted and sliced in C.
        n = sum(map(len, map(_addresses, islice(old_entries, i - done))))
        parts.append(old.lines[pos : pos + n])
        pos += n + len(next(old_entries).addresses)
        parts.append(entry_lines(names[i], new_entries[i]))
        done = i + 1
    parts.append(old.lines[pos:])
    return tuple(chain.from_iterable(parts))
