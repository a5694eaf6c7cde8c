"""Blocking libvirt calls, each run in a worker thread by the source.

Every function returns plain values (never a libvirt object the loop would
then call into), so all RPC happens off the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Any

import structlog

from agent.model.record import Address, AddressError, parse_address
from agent.sources.libvirt.dhcp_ack import Pool, dhcp_pool, dhcp_servers
from agent.sources.libvirt.domain_xml import Domain, DomainXMLError, normalise_mac, parse_domain
from agent.sources.libvirt.leases import Lease, from_dhcp_leases

log = structlog.get_logger(component="sources.libvirt")


@dataclass
class Inventory:
    domains: dict[str, Domain] = field(default_factory=dict)  # uuid -> domain
    bridges: dict[str, str] = field(default_factory=dict)  # network -> bridge
    # bridge -> leases as DHCPLeases() reports them (active networks only)
    dhcp: dict[str, list[Lease]] = field(default_factory=dict)
    # bridge -> its DHCP server addresses (active networks only): the DHCPACK trigger
    servers: dict[str, tuple[IPv4Interface, ...]] = field(default_factory=dict)
    # bridge -> the addresses its DHCP may hand out (an ACK for another is refused)
    pools: dict[str, Pool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _no_such(lv: Any, e: Exception, *codes: str) -> bool:
    code = e.get_error_code() if isinstance(e, lv.libvirtError) else None
    return code in tuple(getattr(lv, c) for c in codes)


def read_domain(lv: Any, dom: Any) -> Domain | None:
    """The domain's current view; None when it no longer exists (undefined)."""
    try:
        active = bool(dom.isActive())
        xml = dom.XMLDesc(0)
    except lv.libvirtError as e:
        if _no_such(lv, e, "VIR_ERR_NO_DOMAIN"):
            return None
        raise
    return parse_domain(xml, active=active)


def lookup_domain(lv: Any, conn: Any, uuid: str) -> Domain | None:
    try:
        dom = conn.lookupByUUIDString(uuid)
    except lv.libvirtError as e:
        if _no_such(lv, e, "VIR_ERR_NO_DOMAIN"):
            return None
        raise
    return read_domain(lv, dom)


def read_networks(lv: Any, conn: Any, inv: Inventory, *, leases: bool) -> None:
    for net in conn.listAllNetworks(0):
        try:
            name = net.name()
            bridge = inv.bridges[name] = net.bridgeName()
            if not net.isActive():
                continue
            xml = net.XMLDesc(0)
            inv.servers[bridge] = dhcp_servers(xml)
            inv.pools[bridge] = dhcp_pool(xml)
            if leases:
                for iface, found in from_dhcp_leases(net.DHCPLeases()).items():
                    inv.dhcp.setdefault(iface, []).extend(found)
        except lv.libvirtError as e:
            if _no_such(lv, e, "VIR_ERR_NO_NETWORK"):
                continue  # undefined meanwhile: its lifecycle event follows
            if _no_such(lv, e, "VIR_ERR_NO_SUPPORT", "VIR_ERR_OPERATION_INVALID"):
                continue  # e.g. a network without a bridge (macvtap, hostdev)
            raise


def read_all(lv: Any, conn: Any) -> Inventory:
    inv = Inventory()
    for dom in conn.listAllDomains(0):
        try:
            found = read_domain(lv, dom)
        except DomainXMLError as e:
            inv.problems.append(f"domain {dom.UUIDString()}: {e}")
            continue
        if found is not None:
            inv.domains[found.uuid] = found
    read_networks(lv, conn, inv, leases=True)
    return inv


def probe_addresses(lv: Any, conn: Any, uuid: str) -> dict[str, tuple[Address, ...]]:
    """Addresses of a domain's NICs without a lease: from the guest agent where the
    connection allows it, else from the host's ARP table. MAC -> addresses."""
    try:
        dom = conn.lookupByUUIDString(uuid)
    except lv.libvirtError:
        return {}
    sources = [
        getattr(lv, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT", 1),
        getattr(lv, "VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP", 2),
    ]
    for src in sources:
        try:
            ifaces = dom.interfaceAddresses(src, 0)
        except lv.libvirtError as e:
            # Denied on a read-only connection, no agent, unsupported by the driver.
            log.debug("interfaceAddresses unavailable", uuid=uuid, source=src, error=str(e))
            continue
        return _interface_addresses(ifaces)
    return {}


def _interface_addresses(ifaces: Any) -> dict[str, tuple[Address, ...]]:
    out: dict[str, tuple[Address, ...]] = {}
    if not isinstance(ifaces, dict):
        return out
    for info in ifaces.values():
        if not isinstance(info, dict):
            continue
        mac = normalise_mac(info.get("hwaddr"))
        if mac is None:
            continue
        addrs: list[Address] = []
        for a in info.get("addrs") or ():
            try:
                addr = parse_address(a.get("addr") if isinstance(a, dict) else None)
            except AddressError:
                continue
            if addr.is_loopback or addr.is_link_local:
                continue
            addrs.append(addr)
        if addrs:
            out[mac] = tuple(addrs)
    return out


