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
    region: bytes | None  # the block's lines with their line ends; None: no block
    suffix: bytes  # everything after the END line and its line end
    newline: bytes  # line end used for the block
    end_terminator: bytes  # the END line's own line end (b"" if the file ends there)

    @property
    def body(self) -> tuple[bytes, ...] | None:
        """The lines inside the block (no line ends); None: no block."""
        if self.region is None:
            return None
        return tuple(line[:-1] if line.endswith(b"\r") else line
                     for line in self.region.split(b"\n")[:-1])


# A sync rewrites the block on every change, and /etc/hosts holds one line per
# published address (10,000 and more): the file is searched in C for the lines
# that start like a marker, never walked line by line in Python.


def _starts(data: bytes, stem: bytes) -> list[int]:
    """Offsets of the lines that start with ``stem``; only ``\\n`` ends a line."""
    out = [0] if data.startswith(stem) else []
    needle = b"\n" + stem
    at = data.find(needle)
    while at >= 0:
        out.append(at + 1)
        at = data.find(needle, at + 1)
    return out


def _line_at(data: bytes, off: int) -> tuple[bytes, bytes]:
    """The content and the line end of the line at ``off``."""
    nl = data.find(b"\n", off)
    if nl < 0:
        return data[off:], b""
    content = data[off:nl]
    if content.endswith(b"\r"):
        return content[:-1], b"\r\n"
    return content, b"\n"


def _line_number(data: bytes, off: int) -> int:
    return data.count(b"\n", 0, off) + 1


def _detect_newline(data: bytes) -> bytes:
    nl = data.find(b"\n")
    return b"\r\n" if nl > 0 and data[nl - 1 : nl] == b"\r" else b"\n"


def _markers(data: bytes) -> tuple[list[int], list[int]]:
    """Offsets of the BEGIN and END lines; MarkerError for an altered marker."""
    found = sorted([(off, BEGIN, "BEGIN") for off in _starts(data, _BEGIN_STEM)]
                   + [(off, END, "END") for off in _starts(data, _END_STEM)])
    begins: list[int] = []
    ends: list[int] = []
    for off, exact, name in found:
        stripped = _line_at(data, off)[0].rstrip(b" \t")
        if stripped != exact:
            raise MarkerError(f"line {_line_number(data, off)}: altered {name} marker "
                              f"{stripped[:80]!r}")
        (begins if exact is BEGIN else ends).append(off)
    return begins, ends


def split(data: bytes) -> Split:
    begins, ends = _markers(data)
    if not begins and not ends:
        return Split(data, None, b"", _detect_newline(data), b"")
    if len(begins) != 1 or len(ends) != 1:
        where = ", ".join(str(_line_number(data, o)) for o in begins) or "none"
        where_end = ", ".join(str(_line_number(data, o)) for o in ends) or "none"
        raise MarkerError(
            f"expected one BEGIN and one END marker, found BEGIN at line(s) {where} "
            f"and END at line(s) {where_end}"
        )
    b_off, e_off = begins[0], ends[0]
    if e_off < b_off:
        raise MarkerError(f"END marker (line {_line_number(data, e_off)}) comes before "
                          f"BEGIN marker (line {_line_number(data, b_off)})")
    b_content, b_nl = _line_at(data, b_off)
    e_content, e_nl = _line_at(data, e_off)
    region_start = b_off + len(b_content) + len(b_nl)
    end_of_block = e_off + len(e_content) + len(e_nl)
    return Split(
        prefix=data[:b_off],
        region=data[region_start:e_off],
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
    joined = b"\n".join(lines)
    if b"\r" in joined or joined.count(b"\n") != max(len(lines) - 1, 0):
        bad = next(line for line in lines if b"\n" in line or b"\r" in line)
        raise ValueError(f"line break inside a block line: {bad!r}")
    parts = split(data)
    nl = parts.newline
    inner = joined + b"\n" if lines else b""
    if nl != b"\n":
        inner = inner.replace(b"\n", nl)
    if parts.region is None:
        if not lines:
            return data
        head = data if not data or data.endswith(b"\n") else data + nl
        return head + BEGIN + nl + inner + END + nl
    return parts.prefix + BEGIN + nl + inner + END + parts.end_terminator + parts.suffix
