"""Read config.toml without holding the whole document of a long [[static]] list.

tomllib builds the complete document first: for 100,000 [[static]] names that
is about 50 MB of dicts and strings, more than the config it becomes, and a
reload would hold it beside the running table (a reload's peak; and the RSS
stays there). So a long text is split at its table headers: everything that is
not a [[static]] table is parsed as one document, and the [[static]] tables a
group at a time, as the loader converts them.

The split is only an optimisation, never a second reading of the file: it is
not tried on a text with multi-line strings (where a header-like line may be
string content), and whatever does not parse exactly as expected (a group that
is not only [[static]] tables, a rest that mentions ``static``, any syntax
error) raises ``Unsplit``, and the caller parses the whole text with tomllib,
whose result and error messages (line numbers) are then exactly tomllib's.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

GROUP = 1000  # [[static]] tables parsed at once
# Fewer [[static]] tables than this: parse the whole text. Splitting costs about as
# much time as it saves; below this the document is small enough not to matter.
MIN_SPLIT = 20_000
_HEADER = re.compile(r"^[ \t]*\[", re.M)  # a line that may be a table header
_STATIC = re.compile(r"[ \t]*\[\[[ \t]*static[ \t]*\]\][ \t]*(?:#[^\n]*)?")


class Unsplit(Exception):
    """The text cannot be read a group at a time: parse it whole."""


class Tables:
    """The [[static]] tables of a split text, parsed one group at a time when iterated."""

    def __init__(self, text: str, spans: list[tuple[int, int]]) -> None:
        self._text = text
        self._spans = spans

    def __iter__(self) -> Iterator[object]:
        for start, end in self._spans:
            try:
                group = tomllib.loads(self._text[start:end])
            except (tomllib.TOMLDecodeError, RecursionError):
                raise Unsplit from None
            if group.keys() != {"static"}:
                raise Unsplit
            items = group.pop("static")
            items.reverse()
            while items:  # hand each table over: the group's list no longer holds it
                yield items.pop()


def _is_static(text: str, a: int, b: int, bounds: list[int]) -> bool:
    if a == 0 and (not bounds or bounds[0] != 0):
        return False  # the keys before the first header
    if text.startswith("[[static]]\n", a):  # the usual spelling, without a regex
        return True
    newline = text.find("\n", a, b)
    return _STATIC.fullmatch(text, a, newline if newline >= 0 else b) is not None


def _split(text: str) -> tuple[str, list[tuple[int, int]]]:
    """The text without its [[static]] tables, and their spans, in groups of GROUP."""
    bounds = [m.start() for m in _HEADER.finditer(text)]
    rest: list[str] = []
    spans: list[tuple[int, int]] = []
    in_group = 0
    for a, b in pairwise([0, *bounds, len(text)]):
        if a == b:
            continue
        newline = text.find("\n", a, b)
        header = text[a : newline if newline >= 0 else b]
        if (a == 0 and (not bounds or bounds[0] != 0)) or not _STATIC.fullmatch(header):
            rest.append(text[a:b])
            continue
        if spans and spans[-1][1] == a and in_group < GROUP:
            spans[-1] = (spans[-1][0], b)
            in_group += 1
        else:
            spans.append((a, b))
            in_group = 1
    return "".join(rest), spans


def loads(text: str) -> dict[str, Any]:
    """The document; a long, splittable text's ``static`` is a lazy ``Tables``.

    Raises tomllib's errors when parsed whole, ``Unsplit`` when the split does not
    hold (the caller then calls ``tomllib.loads`` itself).
    """
    if text.count("[[static]]") < MIN_SPLIT or '"""' in text or "'''" in text:
        return tomllib.loads(text)
    rest, spans = _split(text)
    try:
        doc = tomllib.loads(rest)
    except (tomllib.TOMLDecodeError, RecursionError):
        raise Unsplit from None
    if "static" in doc or not spans:
        raise Unsplit
    doc["static"] = Tables(text, spans)
    return doc
