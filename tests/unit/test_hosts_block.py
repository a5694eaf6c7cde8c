"""The managed block in a hosts file: only bytes between the markers ever change."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.sinks.hosts_block import BEGIN, END, MarkerError, compose, split


def has_marker_like_line(data: bytes) -> bool:
    return any(
        line.startswith((b"# BEGIN namesync", b"# END namesync")) for line in data.split(b"\n")
    )


# Outside bytes: CRLF, lone CR, tabs, non-UTF-8, no final newline, comments.
FRAGMENTS = [
    b"\n",
    b"\r\n",
    b"\r",
    b"\t",
    b" ",
    b"\xff\xfe",
    b"\x00",
    b"#",
    b"# BEGIN",
    b"127.0.0.1 localhost",
    b"::1\tlocalhost6",
    b"# END namesyn",
    b"\xc3\xa9",
]
outside = (
    st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12)), max_size=25)
    .map(b"".join)
    .filter(lambda d: not has_marker_like_line(d))
)
# Text that ends a line (or is empty): what can sit before a BEGIN marker.
outside_lines = outside.map(lambda d: d if not d or d.endswith(b"\n") else d + b"\n")
block_line = (
    st.binary(max_size=40)
    .map(lambda b: b.replace(b"\n", b"").replace(b"\r", b""))
    .filter(lambda b: not has_marker_like_line(b))
)
block_lines = st.lists(block_line, max_size=8)
newline = st.sampled_from([b"\n", b"\r\n"])


def block(lines: list[bytes], nl: bytes = b"\n", end_nl: bytes | None = None) -> bytes:
    return BEGIN + nl + b"".join(x + nl for x in lines) + END + (nl if end_nl is None else end_nl)


@given(outside, block_lines)
def test_body_reads_back_exactly(data: bytes, lines: list[bytes]) -> None:
    out = compose(data, lines)
    if lines:
        assert split(out).body == tuple(lines)
    else:
        assert out == data  # no block and nothing to write: no empty block is added


@given(outside, st.lists(block_line, min_size=1, max_size=8), block_lines)
def test_rewriting_the_block_changes_nothing_outside_it(
    data: bytes, first: list[bytes], second: list[bytes]
) -> None:
    once = compose(data, first)
    twice = compose(once, second)
    a, b = split(once), split(twice)
    assert b.prefix == a.prefix
    assert b.suffix == a.suffix
    assert b.body == tuple(second)
    # The user's bytes come first, untouched; the one documented addition is a
    # line end when the file's last line had none, so the marker starts a line.
    assert a.prefix[: len(data)] == data
    added = a.prefix[len(data) :]
    assert added == b"" or (not data.endswith(b"\n") and added in (b"\n", b"\r\n"))


@given(outside, block_lines)
def test_compose_is_idempotent(data: bytes, lines: list[bytes]) -> None:
    once = compose(data, lines)
    assert compose(once, lines) == once


@given(outside_lines, block_lines, block_lines, outside, newline)
def test_block_in_the_middle_keeps_bytes_before_and_after(
    before: bytes, old: list[bytes], new: list[bytes], after: bytes, nl: bytes
) -> None:
    data = before + block(old, nl) + after
    assert compose(data, new) == before + block(new, nl) + after


@given(outside_lines, block_lines, newline)
def test_block_at_end_of_file_without_final_newline_stays_so(
    before: bytes, lines: list[bytes], nl: bytes
) -> None:
    data = before + block([b"10.0.0.1 old.dns.libvirt"], nl, end_nl=b"")
    assert compose(data, lines) == before + block(lines, nl, end_nl=b"")


@given(outside)
def test_empty_compose_on_file_without_block_is_unchanged(data: bytes) -> None:
    assert compose(data, []) == data


def test_existing_block_emptied_stays_in_place() -> None:
    data = b"127.0.0.1 localhost\n" + block([b"10.0.0.5 web.dns.podman"]) + b"10.1.1.1 mine\n"
    assert compose(data, []) == b"127.0.0.1 localhost\n" + block([]) + b"10.1.1.1 mine\n"


def test_appended_block_exact_bytes() -> None:
    data = b"127.0.0.1 localhost\n::1 localhost"
    out = compose(data, [b"192.168.122.10 fedora.dns.libvirt"])
    assert out == (
        b"127.0.0.1 localhost\n::1 localhost\n"
        b"# BEGIN namesync managed block: do not edit, changes are overwritten\n"
        b"192.168.122.10 fedora.dns.libvirt\n"
        b"# END namesync managed block\n"
    )


def test_crlf_file_gets_crlf_block_lines() -> None:
    data = b"127.0.0.1 localhost\r\n::1 localhost\r\n"
    out = compose(data, [b"10.0.0.1 a.dns.host", b"10.0.0.2 b.dns.host"])
    assert out == data + (
        b"# BEGIN namesync managed block: do not edit, changes are overwritten\r\n"
        b"10.0.0.1 a.dns.host\r\n10.0.0.2 b.dns.host\r\n"
        b"# END namesync managed block\r\n"
    )
    # No bare LF anywhere: every line of the file ends in CRLF.
    assert out.count(b"\n") == out.count(b"\r\n")
    # Rewriting the block keeps CRLF.
    again = compose(out, [b"10.0.0.3 c.dns.host"])
    assert again == data + block([b"10.0.0.3 c.dns.host"], b"\r\n")


def test_crlf_file_without_final_newline_gets_crlf_before_block() -> None:
    out = compose(b"127.0.0.1 localhost\r\n::1 localhost", [b"10.0.0.1 a.dns.host"])
    assert out == b"127.0.0.1 localhost\r\n::1 localhost\r\n" + block(
        [b"10.0.0.1 a.dns.host"], b"\r\n"
    )


def test_line_break_inside_a_block_line_is_refused() -> None:
    # A name can never smuggle a second hosts line into the file.
    with pytest.raises(ValueError):
        compose(b"", [b"10.0.0.1 a.dns.host\n6.6.6.6 bank.example"])
    with pytest.raises(ValueError):
        compose(b"", [b"10.0.0.1 a.dns.host\r6.6.6.6 bank.example"])


def line_numbers(message: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d+", message)}


MALFORMED = {
    "two BEGINs": (
        b"127.0.0.1 localhost\n" + BEGIN + b"\n" + BEGIN + b"\n" + END + b"\n",
        {2, 3, 4},
    ),
    "END before BEGIN": (END + b"\nx\n" + BEGIN + b"\n", {1, 3}),
    "BEGIN without END": (b"a\n" + BEGIN + b"\n10.0.0.1 a\n", {2}),
    "END without BEGIN": (b"a\nb\n10.0.0.1 a\n" + END + b"\n", {4}),
    "two blocks": (block([b"x"]) + block([b"y"]), {1, 3, 4, 6}),
    "altered BEGIN": (b"a\n# BEGIN namesync managed blok\n10.0.0.1 a\n" + END + b"\n", {2}),
    "altered END": (b"a\n" + BEGIN + b"\n10.0.0.1 a\n# END namesync block\n", {4}),
    "altered BEGIN CRLF": (b"a\r\n# BEGIN namesync\r\n" + END + b"\r\n", {2}),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_markers_are_refused_naming_the_lines(case: str) -> None:
    data, lines = MALFORMED[case]
    with pytest.raises(MarkerError) as err:
        split(data)
    assert line_numbers(str(err.value)) == lines
    with pytest.raises(MarkerError):
        compose(data, [b"10.0.0.9 new.dns.host"])


@given(outside_lines, outside, block_lines)
def test_a_second_begin_anywhere_is_refused(
    before: bytes, after: bytes, lines: list[bytes]
) -> None:
    assume(lines)
    data = before + BEGIN + b"\n" + block(lines) + after
    with pytest.raises(MarkerError):
        compose(data, lines)
