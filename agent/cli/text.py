"""Small text helpers for agentctl's human output: ages, aligned columns, plain errors."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Sequence

# "FileNotFoundError: [Errno 2] No such file or directory" reads as noise to a user;
# the daemon's messages already say what was being done.
_EXC_NAME = re.compile(r"\b(?:[A-Z][A-Za-z]*\.)*[A-Z][A-Za-z]*(?:Error|Exception|Refused)\b: ?")
_ERRNO = re.compile(r"\[Errno -?\d+\] ")


def plain(message: str) -> str:
    """A daemon message without raw exception class names and errno numbers."""
    return _ERRNO.sub("", _EXC_NAME.sub("", message)).strip()


def parse_ts(iso: str | None) -> float | None:
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def duration(seconds: float) -> str:
    """3s, 4m 05s, 2h 03m, 3d 4h: two units at most, what a user compares at a glance."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def age(iso: str | None, now: float) -> str:
    """'5s ago' for an RFC 3339 time, 'never' for null."""
    t = parse_ts(iso)
    if t is None:
        return "never"
    if now - t < 1:
        return "just now"
    return f"{duration(now - t)} ago"


def columns(rows: Sequence[Sequence[str]], *, right: Collection[int] = (),
            indent: str = "  ", gap: str = "  ") -> list[str]:
    """Aligned columns, the widest cell setting each column's width.

    Columns in ``right`` are right-aligned (counts line up); the last column is
    never padded, so no line ends in spaces.
    """
    if not rows:
        return []
    width = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(map(len, rows)))]
    out = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in right:
                cells.append(cell.rjust(width[i]))
            elif i == len(row) - 1:
                cells.append(cell)
            else:
                cells.append(cell.ljust(width[i]))
        out.append((indent + gap.join(cells)).rstrip())
    return out
