"""RFC 1123 labels and names: what a source hands over never reaches a file raw."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agent.model.names import InvalidName, normalise_label, parse_fqdn

LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Inputs a hostile or careless identifier could contain, mixed with plain text.
# fmt: off
HOSTILE = ["\n", "\r", "\x00", "\t", " ", "../", "/", "$(", ")", "`", ";", "|", "&", "'", '"',
           "\\", "*", "?", "<", ">", "é", "\u200b", "\u0130", "\U0001f600", "-", "--", ".",
           "_", "\x7f", "#", "%", "="]
# fmt: on
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE), st.text(string.ascii_letters + string.digits, max_size=8)),
    max_size=12,
).map("".join)
any_identifier = st.one_of(
    st.text(),
    st.text(alphabet=string.printable),
    hostile_text,
    st.text(alphabet=string.ascii_letters + string.digits + "-_. ", min_size=60, max_size=70),
)
label_text = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?", fullmatch=True)


@given(any_identifier)
def test_normalise_label_yields_a_valid_label_or_a_reason(raw: str) -> None:
    try:
        label = normalise_label(raw)
    except InvalidName as e:
        assert e.value == raw
        assert e.reason.strip(), "a refusal must say why"
        return
    assert LABEL.match(label), label


@given(any_identifier)
def test_normalise_label_is_idempotent(raw: str) -> None:
    try:
        label = normalise_label(raw)
    except InvalidName:
        return
    assert normalise_label(label) == label


@given(label_text, label_text)
def test_a_dot_becomes_a_hyphen_so_one_object_is_one_label(a: str, b: str) -> None:
    assume(len(a) + len(b) + 1 <= 63)
    assert normalise_label(f"{a}.{b}") == f"{a}-{b}".lower()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Fedora", "fedora"),
        ("web_server", "web-server"),
        ("nic0.web", "nic0-web"),
        ("my vm", "my-vm"),
        ("-edge-", "edge"),
        ("a" * 63, "a" * 63),
    ],
)
def test_normalise_label_repairs_obvious_spellings(raw: str, expected: str) -> None:
    assert normalise_label(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason_has"),
    [
        ("web\nevil", "U+000A"),
        ("web\x00", "U+0000"),
        ("caf\u00e9", "U+00E9"),
        ("\U0001f600", "U+1F600"),
        ("\u212aVM", "U+212A"),  # KELVIN SIGN lower-cases to an ASCII 'k'
        ("../etc/passwd", "'/'"),
        ("$(reboot)", "'$'"),
        ("a;rm -rf /", "';'"),
        ("`id`", "'`'"),
        ("a" * 64, "64"),
        ("", "nothing left"),
        ("---", "nothing left"),
        ("...", "nothing left"),
    ],
)
def test_normalise_label_refuses_hostile_input_and_says_why(raw: str, reason_has: str) -> None:
    with pytest.raises(InvalidName) as err:
        normalise_label(raw)
    assert reason_has in err.value.reason
    assert err.value.value == raw


def test_normalise_label_calls_del_a_control_character() -> None:
    with pytest.raises(InvalidName) as err:
        normalise_label("web\x7f")
    assert "control" in err.value.reason


# parse_fqdn: names typed into the config are validated, never repaired.

fqdn_labels = st.lists(label_text, min_size=1, max_size=6)


@given(fqdn_labels)
def test_parse_fqdn_accepts_valid_names_case_folded(labels: list[str]) -> None:
    name = ".".join(labels)
    assert parse_fqdn(name) == name.lower()
    assert parse_fqdn(name + ".") == name.lower()


@given(st.one_of(st.text(), hostile_text, st.text(alphabet="abz09-._", max_size=300)))
def test_parse_fqdn_output_is_always_a_valid_name(raw: str) -> None:
    try:
        name = parse_fqdn(raw)
    except InvalidName as e:
        assert e.reason.strip()
        return
    assert len(name) <= 253
    assert all(LABEL.match(label) for label in name.split(".")), name


def test_parse_fqdn_length_limits_are_inclusive() -> None:
    label63 = "a" * 63
    assert parse_fqdn(f"{label63}.example") == f"{label63}.example"
    name253 = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name253) == 253
    assert parse_fqdn(name253) == name253
    assert parse_fqdn(name253 + ".") == name253


@pytest.mark.parametrize(
    ("raw", "reason_has"),
    [
        ("db_1.dns.host", "'db_1'"),
        ("a..b", "empty label"),
        ("db.dns.host..", "empty label"),
        (".db.dns.host", "empty label"),
        ("", "empty name"),
        (".", "empty name"),
        (f"{'a' * 64}.example", "64 characters"),
        (".".join(["a" * 63] * 4), "255 characters"),
        ("-db.dns.host", "'-db'"),
        ("db-.dns.host", "'db-'"),
        ("d\u00e9.dns.host", "U+00E9"),
        ("db dns.host", "U+0020"),
        ("\u212a.dns.host", "U+212A"),
        ("db\n.dns.host", "U+000A"),
    ],
)
def test_parse_fqdn_rejects_with_reason(raw: str, reason_has: str) -> None:
    with pytest.raises(InvalidName) as err:
        parse_fqdn(raw)
    assert reason_has in err.value.reason


def test_parse_fqdn_does_not_repair_what_normalise_label_would() -> None:
    # A typo in the config must be reported, not silently renamed.
    with pytest.raises(InvalidName):
        parse_fqdn("Web Server.dns.host")
    assert parse_fqdn("WEB.DNS.Host.") == "web.dns.host"
