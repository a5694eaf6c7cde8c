"""A long [[static]] list is parsed a group at a time: always the same result as tomllib's."""

from __future__ import annotations

import tomllib

import pytest

from agent.config import toml
from agent.config.load import parse_config
from agent.config.schema import Config, ConfigError


def entries(n: int, start: int = 0) -> str:
    entry = '[[static]]\nname = "h{0}.dns.test"\naddresses = ["10.0.{1}.{2}"]\n'
    return "".join(entry.format(i, i // 250, i % 250 + 1) for i in range(start, start + n))


@pytest.fixture(autouse=True)
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toml, "GROUP", 3)
    monkeypatch.setattr(toml, "MIN_SPLIT", 2)


def whole(text: str, monkeypatch: pytest.MonkeyPatch) -> Config | list[str]:
    with monkeypatch.context() as m:
        m.setattr(toml, "MIN_SPLIT", 10**9)
        return outcome(text)


def outcome(text: str) -> Config | list[str]:
    try:
        return parse_config(text, "x")
    except ConfigError as e:
        return e.problems


CASES = {
    "plain": entries(10),
    "sections-between": "[daemon]\ncoalesce_ms = 5\n" + entries(4)
    + "[hosts_file]\nenabled = false\n" + entries(5, 4) + "[control]\nallow_uids = [1000]\n",
    "comments-and-spacing": "# hi\n" + entries(3).replace("[[static]]", "  [[ static ]]  # x")
    + entries(4, 3),
    "crlf": entries(7).replace("\n", "\r\n"),
    "multiline-string": '[daemon]\nlog_level = """\n[[static]]\nname = "a.b"\n'
    'addresses = ["10.0.0.1"]\n"""\n' + entries(5),
    "header-in-array": entries(3) + '[host]\ninterfaces = [\n["x"],\n]\n' + entries(3, 3),
    "sub-table": entries(3) + "[static.extra]\nx = 1\n" + entries(3, 3),
    "inline-static": "static = []\n" + entries(4),
    "syntax-error-in-group": entries(4) + '[[static]]\nname = "a.b\n' + entries(3, 4),
    "syntax-error-in-rest": entries(4) + "[daemon]\ncoalesce_ms = = 1\n" + entries(3, 4),
    "bad-entries": entries(5) + '[[static]]\nname = "h1.dns.test"\naddresses = ["nope"]\nttl = 1\n',
    "duplicate-section": "[daemon]\n" + entries(4) + "[daemon]\n",
    "key-after-group": entries(4) + 'name = "x.y"\n' + entries(3, 4),
    "empty-array-header": entries(4) + "[[static]]\n",
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_split_reading_equals_whole_reading(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert outcome(text) == whole(text, monkeypatch)


def test_long_list_is_really_read_in_groups() -> None:
    doc = toml.loads("[daemon]\ncoalesce_ms = 5\n" + entries(10))
    assert isinstance(doc["static"], toml.Tables)
    assert doc["daemon"] == {"coalesce_ms": 5}
    assert list(doc["static"]) == tomllib.loads(entries(10))["static"]


def test_syntax_error_keeps_tomllibs_line_number(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = outcome(entries(4) + '[[static]]\nname = "a.b\n' + entries(3, 4))
    assert isinstance(problems, list) and "line 14" in problems[0], problems
