"""What a peer may publish: confinement to its sub-zone, and the per-user quotas.

Pure (no I/O at all: who owns which sub-zone comes in with the Scope, from
identity.py), so every rule is tested directly and a push costs no passwd
lookup however many names it has. The peer's uid comes from SO_PEERCRED;
nothing in the message says who it is.

* A peer publishes only names strictly under ``<user>.<zone>`` for the peer
  zones (the system agent's [podman] and [libvirt] zones), where ``<user>``
  is its login name as one DNS label: ``web.alice.dns.podman``,
  ``vm1.alice.dns.libvirt``, ``nic0.vm1.alice.dns.libvirt``.
* A user in ``[peers] trusted_users`` may also publish directly in the zones
  (``web.dns.podman``), but never in another user's sub-zone: any label that
  is some uid's sub-zone label (identity.py: uid -> login -> label).
* Never: a zone apex, the host's name, anything outside the peer zones.
* Addresses are parsed like every source's; loopback, link-local and the
  like are refused (model.record.usable, the rule Podman's source applies too:
  they would point other machines at themselves).
* A push over ``max_names``, or whose names have more than ``max_addresses``
  addresses together (each one a line of the addn-hosts file dnsmasq re-reads
  on every change: 512 names of 64 addresses were 32,768 lines from one
  user), is refused whole: nothing of it is published,
  the peer keeps what it had, and status says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from agent.model.names import InvalidName, parse_fqdn
from agent.model.record import Address, AddressError, parse_address, usable

from .wire import MAX_TEXT


class PushRefused(Exception):
    """The whole push is refused; ``code`` is the protocol error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claim:
    """One name a peer asks for, validated but not yet confined."""

    name: str
    addresses: tuple[Address, ...]
    via_host: bool  # the host's addresses; with ``addresses``, only those of them
    what: str


@dataclass(frozen=True, slots=True)
class Refusal:
    value: str
    reason: str
    what: str


@dataclass(frozen=True, slots=True)
class Push:
    claims: tuple[Claim, ...]
    refused: tuple[Refusal, ...]  # names refused by this policy
    reported: tuple[Refusal, ...]  # what the peer's own sources refused (shown, never published)


def _printable(ch: str) -> str:
    return ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else (
        f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")


def _text(raw: object, limit: int = MAX_TEXT) -> str:
    """A peer's string as status may show it: cut, and with no control, format or
    other unprintable character left raw (``agentctl status`` is read on root's
    terminal, and an escape sequence there is the peer writing to it)."""
    text = raw if isinstance(raw, str) else ""
    text = text[:limit]
    if not text.isprintable():
        text = "".join(map(_printable, text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Scope:
    """Where one peer may publish."""

    def __init__(self, label: str, zones: tuple[str, ...], trusted: bool,
                 owned: Container[str] = frozenset()) -> None:
        self.label = label
        self.zones = zones
        self.trusted = trusted
        self._owned = owned  # every label that is some uid's sub-zone (identity.py)

    @property
    def subzones(self) -> tuple[str, ...]:
        return tuple(f"{self.label}.{z}" for z in self.zones)

    def confine(self, name: str) -> str | None:
        """Why this peer may not publish ``name``, or None if it may."""
        for sub in self.subzones:
            if name.endswith("." + sub):
                return None
        for zone in self.zones:
            if not name.endswith("." + zone):
                continue
            inside = name[: -len(zone) - 1].rsplit(".", 1)
            # Only a name *inside* <owner>.<zone> is that user's; a trusted
            # user's container named like a system account is just a name.
            if len(inside) == 2 and inside[1] != self.label and inside[1] in self._owned:
                return f"{inside[1]}.{zone} is another user's sub-zone"
            if self.trusted:
                return None
        where = " or ".join(f"*.{s}" for s in self.subzones)
        if self.trusted:
            where += " or " + " or ".join(f"*.{z}" for z in self.zones)
        return f"outside what this user may publish ({where})"


def _claim(item: object, i: int) -> Claim | Refusal:
    if not isinstance(item, Mapping):
        return Refusal(f"records[{i}]", "not an object", "")
    what = _text(item.get("what"))
    raw_name = item.get("name")
    if not isinstance(raw_name, str) or len(raw_name) > 253:
        return Refusal(_text(repr(raw_name), 80), "not a name", what)
    try:
        name = parse_fqdn(raw_name)
    except InvalidName as e:
        return Refusal(_text(raw_name), _text(e.reason), what)
    via_host = item.get("via") == "host"
    # Via the host: "only" narrows the host's addresses to those its ports are bound
    # to (it can never add one: the system agent intersects).
    raw_addrs = item.get("only", []) if via_host else item.get("addresses")
    if via_host and raw_addrs == []:
        return Claim(name, (), True, what)
    if not isinstance(raw_addrs, list) or not raw_addrs or len(raw_addrs) > 64:
        key = "only" if via_host else "addresses"
        return Refusal(name, f"{key}: expected a list of 1 to 64 addresses", what)
    addrs: list[Address] = []
    for raw in raw_addrs:
        try:
            addr = parse_address(raw)
        except AddressError as e:
            return Refusal(name, _text(f"address {_text(e.value, 60)}: {e.reason}"), what)
        if not usable(addr):
            return Refusal(name, f"address {addr} is not reachable from other hosts", what)
        addrs.append(addr)
    return Claim(name, tuple(addrs), via_host, what)


def _list(params: Mapping[str, Any], key: str, limit: int) -> list[Any]:
    value = params.get(key, [])
    if not isinstance(value, list):
        raise PushRefused("bad_request", f"{key}: expected a list")
    if len(value) > limit:
        raise PushRefused("quota", f"{len(value)} {key}, the limit per user is {limit} "
                          "([peers] max_names)")
    return value


def decode_push(params: Mapping[str, Any], scope: Scope, max_names: int,
                max_addresses: int | None = None) -> Push:
    """Validate and confine one push; raise PushRefused to refuse it whole."""
    items = _list(params, "records", max_names)
    reported_raw = _list(params, "rejected", max_names)
    claims: dict[str, Claim] = {}
    refused: list[Refusal] = []
    for i, item in enumerate(items):
        got = _claim(item, i)
        if isinstance(got, Refusal):
            refused.append(got)
            continue
        why = scope.confine(got.name)
        if why is not None:
            refused.append(Refusal(got.name, why, got.what))
        elif got.name in claims:
            refused.append(Refusal(got.name, "listed twice in one push", got.what))
        else:
            claims[got.name] = got
    # A "via host" name is as many lines as the host has addresses: a few; counted as one.
    lines = sum(len(c.addresses) or 1 for c in claims.values())
    if max_addresses is not None and lines > max_addresses:
        raise PushRefused("quota", f"{lines} addresses, the limit per user is {max_addresses} "
                          "([peers] max_addresses)")
    reported = tuple(
        Refusal(_text(r.get("value")), _text(r.get("reason")), _text(r.get("what")))
        for r in reported_raw if isinstance(r, Mapping)
    )
    return Push(tuple(claims.values()), tuple(refused), reported)


class TokenBucket:
    """``rate`` per second after a burst of ``burst``: the push rate quota."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock = clock
        self._at = clock()

    def full(self) -> bool:
        """Refilled to its burst: no different from a new bucket."""
        return self.tokens + (self._clock() - self._at) * self.rate >= self.burst

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        self._at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
