"""The schema is the single truth: default.toml, --print-default-config, README and
namesync.conf(5) are generated from it and cover every section and key."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path

import pytest

from agent.config import reference
from agent.config.load import embedded_default_text, parse_config
from agent.config.schema import Config, StaticEntry, sections
from agent.daemon.main import main as agent_main

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "run: .venv/bin/python -m agent.config.reference --write"


def printed_default() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert agent_main(["--print-default-config"]) == 0
    return out.getvalue()


def test_committed_default_toml_is_the_generated_one() -> None:
    assert embedded_default_text() == reference.default_toml(), REGENERATE


def test_readme_reference_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert reference.marked(readme) == reference.markdown(), REGENERATE


def test_printed_default_round_trips_to_the_defaults() -> None:
    text = printed_default()
    assert text == reference.default_toml()
    cfg = parse_config(text, "<printed>")
    assert dataclasses.replace(cfg, origin=Config().origin) == Config()


def _key_lines(text: str) -> dict[str, dict[str, bool]]:
    """section -> key -> commented, for every `key = value` line of a printed config."""
    found: dict[str, dict[str, bool]] = {}
    current = ""
    for line in text.splitlines():
        head = re.fullmatch(r"(?:# )?\[\[?([a-z_]+)\]\]?", line)
        if head:
            current = head.group(1)
            continue
        m = re.match(r"(# )?([a-z_]+) = ", line)
        if m:
            found.setdefault(current, {})[m.group(2)] = bool(m.group(1))
    return found


def test_printed_default_shows_every_section_and_key() -> None:
    found = _key_lines(printed_default())
    for sec in sections():
        assert sec.name in found, sec.name
        for k in sec.keys:
            assert k.name in found[sec.name], f"{sec.name}.{k.name}"
            # Commented only where the default differs per agent, or in an example table.
            assert found[sec.name][k.name] == bool(sec.array or k.key.per_user), k.name
    assert {"host", "networkmanager", "libvirt", "podman", "control", "daemon", "static"} <= set(
        found
    )
    assert "local_zones" in found["dnsmasq"]


def test_uncommented_default_still_means_the_defaults() -> None:
    text = printed_default()
    # Per-user keys, uncommented, are exactly root's defaults.
    per_user = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", text.split("# [[static]]")[0])
    cfg = parse_config(per_user, "x")
    assert dataclasses.replace(cfg, origin=Config().origin) == Config()
    # The [[static]] example, uncommented, is one valid entry.
    example = re.sub(r"(?m)^# (\[\[static\]\]|[a-z_]+ = )", r"\1", text)
    static = parse_config(example, "x").static
    assert [e.name for e in static] == ["db.dns.host"]
    assert isinstance(static[0], StaticEntry)


def test_every_section_and_key_has_its_own_doc() -> None:
    for sec in sections():
        # A dataclass without a docstring gets "Name(field: type = ...)" as one.
        assert sec.doc and not sec.doc.startswith(sec.cls.__name__ + "("), sec.name
        for k in sec.keys:
            assert k.key.doc.endswith("."), f"{sec.name}.{k.name}"
            assert "\n" not in k.key.doc


def test_every_field_of_every_section_is_a_key() -> None:
    names = {f.name for f in dataclasses.fields(Config)}
    # Not keys: where the config was read from, and the agent's mode (--mode).
    assert names - {s.name for s in sections()} == {"origin", "mode"}
    for sec in sections():
        assert [f.name for f in dataclasses.fields(sec.cls)] == [k.name for k in sec.keys]


def test_each_default_is_printed_as_what_its_kind_parses_back() -> None:
    for sec in sections():
        for k in sec.keys:
            if not k.required:
                doc = parse_config(f"[{sec.name}]\n{k.name} = {k.key.kind.toml(k.default)}\n", "x")
                assert getattr(getattr(doc, sec.name), k.name) == k.default


def test_markdown_and_roff_name_every_key() -> None:
    md, roff = reference.markdown(), reference.roff()
    for sec in sections():
        for k in sec.keys:
            assert f"| `{k.name}` |" in md
            assert f".B {k.name.replace('-', chr(92) + '-')}" in roff
    assert roff.startswith(".SH SECTIONS AND KEYS\n")
    page = reference.man_page("1.0", "2026-12-01")
    assert page.startswith(".TH NAMESYNC.CONF 5 ")
    for line in page.splitlines():
        # Text lines never start with a control character by accident.
        assert not line.startswith("'"), line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[dnsmasq]\naddn_host = "/run/x"\n',
            "dnsmasq.addn_host: unknown key; did you mean 'addn_hosts'?",
        ),
        ("[daemon]\ncoalesce = 20\n", "daemon.coalesce: unknown key; did you mean 'coalesce_ms'?"),
        ("[dnsmask]\nenabled = true\n", "dnsmask: unknown section or key; did you mean 'dnsmasq'?"),
        ("[[statics]]\nname = 'a.b'\n", "statics: unknown section or key; did you mean 'static'?"),
        ("[daemon]\nzzz = 1\n", "daemon.zzz: unknown key"),
    ],
)
def test_unknown_key_says_what_was_meant(text: str, expected: str) -> None:
    from tests.unit.test_config import problems

    assert problems(text) == [expected]
