"""libvirt's lease files: ``<lease_dir>/<bridge>.status``, a JSON list written by
libvirt's lease helper on every DHCP event (replaced by rename).

Parsed defensively: the file is input like any other. A file that is not a
JSON list of objects is refused whole (the caller keeps its last good view);
a single entry that makes no sense is skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.model.record import Address, AddressError, parse_address
from agent.sources.libvirt.domain_xml import normalise_mac

STATUS_SUFFIX = ".status"
# A real file holds one entry per client on one bridge; anything this large is
# not libvirt's, and parsing it would only cost memory.
MAX_STATUS_BYTES = 16 * 1024 * 1024


class LeaseFileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Lease:
    bridge: str
    mac: str
    address: Address
    hostname: str | None
    expiry: int  # seconds since the epoch; 0: never expires

    def live(self, now: float) -> bool:
        return self.expiry == 0 or self.expiry > now


@dataclass(frozen=True, slots=True)
class LeaseFile:
    bridge: str
    leases: tuple[Lease, ...]
    skipped: int  # entries that made no sense (no MAC, bad address, ...)


def bridge_of(filename: str) -> str | None:
    """``virbr0.status`` -> ``virbr0``; None for libvirt's other files in the directory."""
    if not filename.endswith(STATUS_SUFFIX) or filename.startswith("."):
        return None
    bridge = filename[: -len(STATUS_SUFFIX)]
    return bridge or None


def _entry(bridge: str, raw: Mapping[str, Any]) -> Lease | None:
    mac = normalise_mac(raw.get("mac-address"))
    if mac is None:
        # DHCPv6 entries carry a DUID and may lack the MAC: they cannot be matched.
        return None
    try:
        address = parse_address(raw.get("ip-address"))
    except AddressError:
        return None
    expiry = raw.get("expiry-time", 0)
    if isinstance(expiry, str) and expiry.isdigit():
        expiry = int(expiry)
    if not isinstance(expiry, int) or isinstance(expiry, bool) or expiry < 0:
        return None
    hostname = raw.get("hostname")
    return Lease(bridge, mac, address, hostname if isinstance(hostname, str) else None, expiry)


def parse_status(bridge: str, data: bytes) -> LeaseFile:
    if len(data) > MAX_STATUS_BYTES:
        raise LeaseFileError(f"{len(data)} bytes, more than any lease file holds")
    if not data.strip():
        # libvirt creates the file empty when it starts the network, and its lease
        # helper replaces it by rename (never torn): empty means no leases yet.
        return LeaseFile(bridge, (), 0)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeaseFileError(f"not JSON: {e}") from None
    if not isinstance(doc, list):
        raise LeaseFileError(f"expected a JSON list, got {type(doc).__name__}")
    leases: list[Lease] = []
    skipped = 0
    for item in doc:
        lease = _entry(bridge, item) if isinstance(item, dict) else None
        if lease is None:
            skipped += 1
        else:
            leases.append(lease)
    return LeaseFile(bridge, tuple(leases), skipped)


def from_dhcp_leases(raw: Iterable[Mapping[str, Any]]) -> dict[str, list[Lease]]:
    """``virNetwork.DHCPLeases()`` entries, grouped by bridge like the files are."""
    out: dict[str, list[Lease]] = {}
    for item in raw:
        bridge = item.get("iface")
        if not isinstance(bridge, str):
            continue
        lease = _entry(
            bridge,
            {
                "mac-address": item.get("mac"),
                "ip-address": item.get("ipaddr"),
                "hostname": item.get("hostname"),
                "expiry-time": item.get("expirytime", 0),
            },
        )
        if lease is not None:
            out.setdefault(bridge, []).append(lease)
    return out


def current(leases: Iterable[Lease], now: float) -> dict[tuple[str, str], list[Lease]]:
    """Live leases by (bridge, mac), keeping per address family the newest one.

    dnsmasq normally holds one lease per client and family; if an old one
    lingers next to a renewal to a new address, the later expiry is the
    newer grant.
    """
    best: dict[tuple[str, str, int], Lease] = {}
    for lease in leases:
        if not lease.live(now):
            continue
        key = (lease.bridge, lease.mac, lease.address.version)
        old = best.get(key)
        if old is None or _newer(lease, old):
            best[key] = lease
    out: dict[tuple[str, str], list[Lease]] = {}
    for (bridge, mac, _), lease in sorted(best.items(), key=lambda kv: kv[0]):
        out.setdefault((bridge, mac), []).append(lease)
    return out


def _newer(a: Lease, b: Lease) -> bool:
    if a.expiry == 0 or b.expiry == 0:
        return a.expiry == 0 and b.expiry != 0
    return a.expiry > b.expiry
