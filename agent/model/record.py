"""Records (what a source wants published) and rejections (what it may not)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

from agent.model.quote import quote

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{quote(value)}: {reason}")
        self.value = value
        self.reason = reason


def _parse_canonical(text: str) -> Address | None:
    """The address ``text`` spells if it is exactly the canonical spelling, else None.

    A config reload parses every static address again, and ipaddress's pure-Python
    parser is most of that cost. The C parser is fast, but may accept spellings
    ipaddress refuses; text that is the C formatter's output for the parsed bytes is
    a canonical spelling, which ipaddress parses to the same address. Anything else
    returns None and goes to ipaddress, which decides exactly as before.
    """
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return None
    if socket.inet_ntop(family, packed) != text:
        return None
    if family == socket.AF_INET:
        return ipaddress.IPv4Address(packed)
    return ipaddress.IPv6Address(packed)


def parse_address(raw: object) -> Address:
    """Parse one host address. Networks, scoped and unspecified addresses are refused.

    A zone index (``fe80::1%eth0``) cannot be written into a hosts file and
    means nothing to a remote resolver, so it is an error, not stripped.
    """
    if not isinstance(raw, str):
        raise AddressError(quote(raw), "not a string")
    text = raw.strip()
    addr = _parse_canonical(text)
    if addr is None:
        try:
            # What ip_address() does, minus its failed IPv4 attempt (an exception) for
            # every IPv6 address: IPv6 text always has a colon and IPv4 text never does,
            # so the colon picks the only parser that can accept the text.
            addr = ipaddress.IPv6Address(text) if ":" in text else ipaddress.IPv4Address(text)
        except ValueError:
            raise AddressError(raw, "not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise AddressError(raw, "scoped IPv6 address (zone index) cannot be published")
    if addr.is_unspecified:
        raise AddressError(raw, "unspecified address cannot be published")
    if addr.is_multicast:
        raise AddressError(raw, "multicast address cannot be published")
    return addr


def usable(addr: Address) -> bool:
    """An address other machines can reach: what a published name may point at.

    The one rule for every source that drops addresses it observes (Podman's
    networks) and for what a user agent pushes (agent/peer/policy.py refuses
    the push's name): a name pointing at a loopback or link-local address
    sends whoever resolves it to themselves, or to a link they cannot name.
    Reserved covers IPv4's 240/4 and IPv6's unassigned ranges, among them
    ::ffff:0:0/96: ``::ffff:127.0.0.1`` is loopback, which ``is_loopback``
    (Python 3.11) does not see through.
    """
    return not (addr.is_loopback or addr.is_link_local or addr.is_unspecified
                or addr.is_multicast or addr.is_reserved)


def _file_order(a: Address) -> tuple[int, int]:
    return (a.version, int(a))


def sort_addresses(addrs: Iterable[Address]) -> tuple[Address, ...]:
    """IPv4 first, then IPv6, each in numeric order: the order files are written in."""
    items = tuple(addrs)
    # Every Record goes through here, and nearly all hold one address, or addresses
    # already in order (a record rebuilt from another record's): strictly increasing
    # also means no duplicates, so the tuple is already the answer.
    if len(items) < 2:
        return items
    keys = [_file_order(a) for a in items]
    if all(a < b for a, b in pairwise(keys)):
        return items
    return tuple(sorted(set(items), key=_file_order))


@dataclass(frozen=True, slots=True, order=True)
class Provenance:
    """Where a record came from; also the deterministic tie-break key for conflicts."""

    source: str  # source instance, e.g. "static", "libvirt:qemu:///system"
    object_id: str  # stable id within the source (domain UUID, container id, ...)
    kind: str  # "static", "domain", "nic", "container", ...
    label: str = field(default="", compare=False)  # human label for status; see display

    @property
    def display(self) -> str:
        """The human label for status: ``label``, or for a [[static]] entry, made here.

        Configs hold up to 100,000 [[static]] names, and a label string stored with
        each costs 75 bytes a name (issue 11's memory budget is 800 all in).
        """
        if self.label or self.kind != "static":
            return self.label
        return f"[[static]] {self.object_id}"


@dataclass(frozen=True, slots=True)
class Record:
    """One fully qualified, already-validated name and the addresses it resolves to."""

    name: str
    addresses: tuple[Address, ...]
    provenance: Provenance

    def __post_init__(self) -> None:
        addresses = sort_addresses(self.addresses)
        if addresses is not self.addresses:  # usually already a sorted tuple: keep it
            object.__setattr__(self, "addresses", addresses)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something a source observed but namesync refused to publish, and why."""

    provenance: Provenance
    value: str  # the offending input, as observed (shown escaped, never written)
    reason: str
    # The address the refusal is about, where it is about one: a lease the system's
    # libvirt cannot place may be a user's session VM, whose agent publishes it.
    # Such a refusal is moot while a user agent (PEER_KIND) publishes that address.
    address: Address | None = None


PEER_KIND = "peer"  # the provenance kind of what a user agent publishes (sources/peers.py)


@dataclass(frozen=True, slots=True)
class ObjectState:
    """Everything one observed object contributes: its records and its refusals."""

    records: tuple[Record, ...] = ()
    rejections: tuple[Rejection, ...] = ()
