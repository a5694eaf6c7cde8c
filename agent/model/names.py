"""DNS name validation and normalisation (RFC 1123 host names).

Two entry points with different trust:

* ``normalise_label`` maps an identifier the host's owner chose (a libvirt
  domain name, a Podman container name) onto one RFC 1123 label. It repairs
  what has an obvious DNS spelling (case, ``_``, ``.``, spaces) and rejects
  what has none (non-ASCII, control characters, empty, too long), so that
  nothing a source hands over is ever copied into a file as a raw string.
* ``parse_fqdn`` validates a name a user typed in the config. It never
  repairs: a typo in a config file is better reported than silently renamed.
"""

from __future__ import annotations

import re

from agent.model.quote import quote

MAX_LABEL = 63
MAX_FQDN = 253

_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# A whole valid FQDN in either case, with at most one trailing dot. parse_fqdn runs
# once per [[static]] entry on every config reload; a name this matches passes every
# check of the character-by-character path below (only ASCII letters, digits, hyphens
# and dots; every label valid), so only the total length is left to check. Explicit
# A-Z, not IGNORECASE: that would also match non-ASCII letters whose lowercase is ASCII
# (U+212A KELVIN SIGN), which the slow path rejects.
_LABEL_ANY_CASE = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_FQDN_RE = re.compile(rf"(?:{_LABEL_ANY_CASE}\.)*{_LABEL_ANY_CASE}\.?")
# Characters with an obvious one-to-one DNS spelling. A dot becomes a hyphen
# (not a label separator) so that one object always owns exactly one label:
# a VM called "nic0.web" must not land inside the per-NIC subtree of "web".
_REPAIRABLE = re.compile(r"[_.\s~+:@]")


class InvalidName(ValueError):
    """A name that cannot be made into a valid DNS name; ``reason`` says why."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{quote(value)}: {reason}")
        self.value = value
        self.reason = reason


def _describe_char(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def normalise_label(raw: str) -> str:
    """Return the RFC 1123 label for a trusted identifier, or raise InvalidName."""
    for ch in raw:
        if ord(ch) > 0x7E or ord(ch) < 0x20:
            kind = "non-ASCII" if ord(ch) > 0x7F else "control"
            raise InvalidName(raw, f"contains {kind} character {_describe_char(ch)}")
    label = _REPAIRABLE.sub("-", raw.lower()).strip("-")
    if not label:
        raise InvalidName(raw, "nothing left after normalisation")
    bad = re.search(r"[^a-z0-9-]", label)
    if bad:
        raise InvalidName(raw, f"contains character {bad.group()!r} with no DNS spelling")
    if len(label) > MAX_LABEL:
        raise InvalidName(raw, f"label is {len(label)} characters, the limit is {MAX_LABEL}")
    return label


def check_label(label: str) -> str | None:
    """Return why ``label`` is not a valid lowercase RFC 1123 label, or None."""
    if not label:
        return "empty label"
    if len(label) > MAX_LABEL:
        return f"label {quote(label)} is {len(label)} characters, the limit is {MAX_LABEL}"
    if not _LABEL_RE.match(label):
        return (
            f"label {quote(label)} must be letters, digits and inner hyphens "
            "(RFC 1123), not starting or ending with a hyphen"
        )
    return None


def parse_fqdn(raw: str) -> str:
    """Validate a user-written fully qualified name; returns it lowercased.

    A single trailing dot is accepted (``db.dns.host.``) and dropped.
    """
    if not isinstance(raw, str):
        raise InvalidName(quote(raw), "not a string")
    if _FQDN_RE.fullmatch(raw):
        name = raw.lower()
        if name.endswith("."):
            name = name[:-1]
        if len(name) <= MAX_FQDN:
            return name
        # Too long: the path below says so, with the same message as always.
    for ch in raw:
        if not (0x20 < ord(ch) < 0x7F):
            raise InvalidName(raw, f"contains character {_describe_char(ch)}")
    name = raw.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise InvalidName(raw, "empty name")
    for label in name.split("."):
        why = check_label(label)
        if why:
            raise InvalidName(raw, why)
    if len(name) > MAX_FQDN:
        raise InvalidName(raw, f"name is {len(name)} characters, the limit is {MAX_FQDN}")
    return name


def join(*parts: str) -> str:
    """Join already-valid labels/zones into an FQDN, enforcing the total length."""
    name = ".".join(parts)
    if len(name) > MAX_FQDN:
        raise InvalidName(name, f"name is {len(name)} characters, the limit is {MAX_FQDN}")
    return name
