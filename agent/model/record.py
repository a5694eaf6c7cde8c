"""Records (what a source wants published) and rejections (what it may not)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r}: {reason}")
        self.value = value
        self.reason = reason


def parse_address(raw: object) -> Address:
    """Parse one host address. Networks, scoped and unspecified addresses are refused.

    A zone index (``fe80::1%eth0``) cannot be written into a hosts file and
    means nothing to a remote resolver, so it is an error, not stripped.
    """
    if not isinstance(raw, str):
        raise AddressError(repr(raw), "not a string")
    try:
        addr = ipaddress.ip_address(raw.strip())
    except ValueError:
        raise AddressError(raw, "not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        raise AddressError(raw, "scoped IPv6 address (zone index) cannot be published")
    if addr.is_unspecified:
        raise AddressError(raw, "unspecified address cannot be published")
    if addr.is_multicast:
        raise AddressError(raw, "multicast address cannot be published")
    return addr


def sort_addresses(addrs: Iterable[Address]) -> tuple[Address, ...]:
    """IPv4 first, then IPv6, each in numeric order: the order files are written in."""
    return tuple(sorted(set(addrs), key=lambda a: (a.version, int(a))))


@dataclass(frozen=True, slots=True, order=True)
class Provenance:
    """Where a record came from; also the deterministic tie-break key for conflicts."""

    source: str  # source instance, e.g. "static", "libvirt:qemu:///system"
    object_id: str  # stable id within the source (domain UUID, container id, ...)
    kind: str  # "static", "domain", "nic", "container", ...
    display: str = field(default="", compare=False)  # human label for status


@dataclass(frozen=True, slots=True)
class Record:
    """One fully qualified, already-validated name and the addresses it resolves to."""

    name: str
    addresses: tuple[Address, ...]
    provenance: Provenance

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", sort_addresses(self.addresses))


@dataclass(frozen=True, slots=True)
class Rejection:
    """Something a source observed but namesync refused to publish, and why."""

    provenance: Provenance
    value: str  # the offending input, as observed (shown escaped, never written)
    reason: str


@dataclass(frozen=True, slots=True)
class ObjectState:
    """Everything one observed object contributes: its records and its refusals."""

    records: tuple[Record, ...] = ()
    rejections: tuple[Rejection, ...] = ()
