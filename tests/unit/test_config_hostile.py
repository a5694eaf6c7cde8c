"""Torn, deep, huge or out-of-range configs are refused with a short, keyed reason
(issue 10 defects 4, 5, 6 and 10)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.config import load
from agent.config.errors import MAX_PROBLEMS
from agent.config.kinds import UID_MAX
from agent.config.load import load_config, parse_config
from agent.config.schema import Config, ConfigError
from agent.model.quote import MAX_CHARS, quote


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_config(path, socket_default=Path("/run/x.sock"))
    return err.value


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\t\n"], ids=["0-bytes", "newline", "blank"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    err = refused(path)
    assert err.source == str(path)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("empty file: refused")


def test_file_of_comments_means_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# nothing set yet\n\n# [daemon]\n")
    cfg = load_config(path, socket_default=Config().control.socket)
    assert dataclasses.replace(cfg, origin=Config().origin) == dataclasses.replace(
        Config(), podman=dataclasses.replace(Config().podman, socket=load.default_podman_socket())
    )


def test_missing_default_file_is_still_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(load, "default_config_path", lambda: tmp_path / "absent.toml")
    assert load_config(None, socket_default=Path("/run/x.sock")).origin == "<embedded default>"


def test_oversized_file_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "config.toml"
    path.write_text("# x\n" * 500)
    assert "larger than" in refused(path).problems[0]


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000 + "\n",
        "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n",
        "[control]\nallow_uids = " + "[" * 300 + "]" * 300 + "\n",
    ],
    ids=["arrays", "inline-tables", "uids"],
)
def test_deeply_nested_toml_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x")
    assert sum(map(len, err.value.problems)) < 1000, err.value.problems


def test_huge_name_is_quoted_short_once() -> None:
    name = "a" * (5 << 20)
    with pytest.raises(ConfigError) as err:
        parse_config(f'[[static]]\nname = "{name}.dns.host"\naddresses = ["10.0.0.1"]\n', "x")
    text = str(err.value)
    assert len(text) < 1000, len(text)
    assert err.value.problems[0].startswith("static[0].name: label 'aaa")
    assert f"({len(name) + 9} characters)" in text


@pytest.mark.parametrize(
    "text",
    [
        '[daemon]\nlog_level = "{v}"\n',
        "[daemon]\ncoalesce_ms = [\"{v}\"]\n",
        '[host]\ninterfaces = ["{v}"]\n',
        '[libvirt]\nuris = ["{v}"]\n',
        '[[static]]\nname = "a.b"\naddresses = ["{v}"]\n',
        '[daemon]\n"{v}" = 1\n',
        '"{v}" = 1\n',
    ],
)
def test_every_quoted_value_is_short(text: str) -> None:
    huge = "x" * (10 << 20)
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace("{v}", huge), "x")
    assert len(str(err.value)) < 1000, str(err.value)[:2000]


def test_many_problems_are_capped_and_counted() -> None:
    entry = '[[static]]\nname = "h{}.dns.test"\naddresses = ["nope"]\n'
    text = "".join(entry.format(i) for i in range(500))
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x")
    assert len(err.value.problems) == MAX_PROBLEMS + 1
    assert err.value.problems[-1] == f"... and {500 - MAX_PROBLEMS} more problems (fix these first)"


@pytest.mark.parametrize("uid", [UID_MAX + 1, 99999999999999999999999, -1, 2**64])
def test_uid_out_of_range_is_refused(uid: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f"[control]\nallow_uids = [1000, {uid}]\n", "x")
    assert err.value.problems == [
        f"control.allow_uids: not uids (integers 0..{UID_MAX}): {quote([uid])}"
    ]


def test_uid_range_is_inclusive() -> None:
    cfg = parse_config(f"[control]\nallow_uids = [0, {UID_MAX}]\n", "x")
    assert cfg.control.allow_uids == (0, UID_MAX)


def test_quote_is_bounded_for_anything() -> None:
    assert quote("abc") == "'abc'"
    assert len(quote("x" * 10_000_000)) < 2 * MAX_CHARS + 40
    assert len(quote([["y" * 1000] * 1000] * 1000)) < 5 * MAX_CHARS
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    assert len(quote(deep)) < 5 * MAX_CHARS
    assert len(quote(b"z" * 10_000)) < 2 * MAX_CHARS + 40
