"""The managed block inside a hosts file, as pure functions over bytes.

Everything is bytes: a hosts file may hold CRLF line ends, tabs, no final
newline, or bytes that are not UTF-8, and every one of them outside the
block must come back exactly as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BEGIN = b"# BEGIN namesync managed block: do not edit, changes are overwritten"
END = b"# END namesync managed block"
# A line that starts like a marker but is not exactly one means someone
# edited a marker: refuse rather than guess where the block ends.
_BEGIN_STEM = b"# BEGIN namesync"
_END_STEM = b"# END namesync"


class MarkerError(ValueError):
    """The markers are missing a partner, duplicated, out of order or altered."""


@dataclass(frozen=True)
class Split:
    prefix: bytes  # everything before the BEGIN line
    body: tuple[bytes, ...] | None  # lines inside the block (no line ends); None: no block
    suffix: bytes  # everything after the END line and its line end
    newline: bytes  # line end used for the block
    end_terminator: bytes  # the END line's own line end (b"" if the file ends there)


def _lines(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, content, line end) for each line; only ``\\n`` ends a line."""
    out = []
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            out.append((pos, data[pos:], b""))
            break
        content = data[pos:nl]
        if content.endswith(b"\r"):
            out.append((pos, content[:-1], b"\r\n"))
        else:
            out.append((pos, content, b"\n"))
        pos = nl + 1
    return out


def _detect_newline(data: bytes) -> bytes:
    nl = data.find(b"\n")
    return b"\r\n" if nl > 0 and data[nl - 1 : nl] == b"\r" else b"\n"


def _markers(lines: list[tuple[int, bytes, bytes]]) -> tuple[list[int], list[int]]:
    """Indexes of the BEGIN and END lines; MarkerError for an altered marker."""
    begins: list[int] = []
    ends: list[int] = []
    for i, (_, content, _) in enumerate(lines):
        stripped = content.rstrip(b" \t")
        for stem, exact, found, name in (
            (_BEGIN_STEM, BEGIN, begins, "BEGIN"),
            (_END_STEM, END, ends, "END"),
        ):
            if stripped.startswith(stem):
                if stripped != exact:
                    raise MarkerError(f"line {i + 1}: altered {name} marker {stripped[:80]!r}")
                found.append(i)
    return begins, ends


def split(data: bytes) -> Split:
    lines = _lines(data)
    begins, ends = _markers(lines)
    if not begins and not ends:
        return Split(data, None, b"", _detect_newline(data), b"")
    if len(begins) != 1 or len(ends) != 1:
        where = ", ".join(str(i + 1) for i in begins) or "none"
        where_end = ", ".join(str(i + 1) for i in ends) or "none"
        raise MarkerError(
            f"expected one BEGIN and one END marker, found BEGIN at line(s) {where} "
            f"and END at line(s) {where_end}"
        )
    b, e = begins[0], ends[0]
    if e < b:
        raise MarkerError(f"END marker (line {e + 1}) comes before BEGIN marker (line {b + 1})")
    b_off, _, b_nl = lines[b]
    e_off, e_content, e_nl = lines[e]
    body = tuple(content for _, content, _ in lines[b + 1 : e])
    end_of_block = e_off + len(e_content) + len(e_nl)
    return Split(
        prefix=data[:b_off],
        body=body,
        suffix=data[end_of_block:],
        newline=b_nl or _detect_newline(data),
        end_terminator=e_nl,
    )


def compose(data: bytes, lines: Sequence[bytes]) -> bytes:
    """``data`` with its block's body replaced by ``lines``.

    No block and nothing to write: unchanged (namesync adds no empty block).
    No block yet: the block is appended; if the last line has no line end,
    one is added first so that the marker starts a line of its own.
    An existing block stays in place even when emptied, so the user's
    choice of where it sits is kept.
    """
    for line in lines:
        if b"\n" in line or b"\r" in line:
            raise ValueError(f"line break inside a block line: {line!r}")
    parts = split(data)
    nl = parts.newline
    inner = b"".join(line + nl for line in lines)
    if parts.body is None:
        if not lines:
            return data
        head = data if not data or data.endswith(b"\n") else data + nl
        return head + BEGIN + nl + inner + END + nl
    return parts.prefix + BEGIN + nl + inner + END + parts.end_terminator + parts.suffix
