"""libvirt NAT networks with DHCP, and the lease files their dnsmasq writes."""

from __future__ import annotations

import contextlib
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from ..proc import read_pid
from .base import DNSMASQ_XMLNS, LEASE_DIR, RUN_DIR, libvirt

if TYPE_CHECKING:
    from .daemon import Libvirtd


def lease_file(bridge: str) -> Path:
    """libvirt's lease file for a network's bridge (written by libvirt_leaseshelper)."""
    return LEASE_DIR / f"{bridge}.status"


def read_leases(path: Path) -> list[dict[str, Any]]:
    """The JSON array in a ``.status`` file; [] if missing, empty or not valid JSON."""
    try:
        data = json.loads(path.read_text() or "[]")
    except (OSError, ValueError):
        return []
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


# --- networks ------------------------------------------------------------------------


class Network:
    """A libvirt NAT network with DHCP, served by libvirt's own dnsmasq on ``bridge``."""

    def __init__(self, daemon: Libvirtd, name: str, bridge: str, subnet: str,
                 lease_minutes: int | None = None, domain: str | None = None,
                 forward: str | None = "nat",
                 dhcp_range: tuple[str, str] | None = None) -> None:
        self.daemon = daemon
        self.name = name
        self.bridge = bridge
        self.subnet = ipaddress.IPv4Network(subnet)
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        # DHCP hands out .100-.199 of a /24 (or the upper half of other sizes).
        lo = min(99, len(hosts) // 2)
        self.range = dhcp_range or (str(hosts[lo]), str(hosts[min(lo + 99, len(hosts) - 1)]))
        self.lease_minutes = lease_minutes
        self.domain = domain
        self.forward = forward

    @property
    def status_path(self) -> Path:
        return lease_file(self.bridge)

    @property
    def xml(self) -> str:
        lease = (f"<lease expiry='{self.lease_minutes}' unit='minutes'/>"
                 if self.lease_minutes is not None else "")
        forward = f"<forward mode={quoteattr(self.forward)}/>" if self.forward else ""
        domain = (f"<domain name={quoteattr(self.domain)} localOnly='yes'/>"
                  if self.domain else "")
        return f"""\
<network xmlns:dnsmasq='{DNSMASQ_XMLNS}'>
  <name>{escape(self.name)}</name>
  {forward}
  <bridge name={quoteattr(self.bridge)} stp='off' delay='0'/>
  {domain}
  <ip address='{self.gateway}' netmask='{self.subnet.netmask}'>
    <dhcp><range start='{self.range[0]}' end='{self.range[1]}'>{lease}</range></dhcp>
  </ip>
  <dnsmasq:options>
    <!-- dnsmasq pings an address before offering it: 3 s per lease without this -->
    <dnsmasq:option value='no-ping'/>
  </dnsmasq:options>
</network>
"""

    def obj(self) -> Any:
        """The virNetwork (on the harness's lxc:///system connection)."""
        return self.daemon.conn().networkLookupByName(self.name)

    def define(self) -> Network:
        self.daemon.conn().networkDefineXML(self.xml)
        return self

    def start(self) -> Network:
        """Start it (defining a transient network if it is not defined)."""
        try:
            net = self.obj()
        except libvirt().libvirtError:
            self.daemon.conn().networkCreateXML(self.xml)
        else:
            if not net.isActive():
                net.create()
        return self

    def destroy(self) -> None:
        with contextlib.suppress(libvirt().libvirtError):
            self.obj().destroy()

    def undefine(self) -> None:
        with contextlib.suppress(libvirt().libvirtError):
            self.obj().undefine()

    def is_active(self) -> bool:
        try:
            return bool(self.obj().isActive())
        except libvirt().libvirtError:
            return False

    def dnsmasq_pid(self) -> int | None:
        """libvirt's dnsmasq for this network, per its pid file."""
        return read_pid(RUN_DIR / "network" / f"{self.name}.pid")

    def leases(self) -> list[dict[str, Any]]:
        """Entries of the .status file ([] if missing or corrupt). Keys: ip-address,
        mac-address, hostname (only if the client sent one), client-id, expiry-time."""
        return read_leases(self.status_path)

    def lease_for(self, mac: str) -> dict[str, Any] | None:
        """The .status entry for ``mac`` with the latest expiry, if any."""
        mac = mac.lower()
        found = [e for e in self.leases() if str(e.get("mac-address", "")).lower() == mac]
        return max(found, key=lambda e: int(e.get("expiry-time", 0))) if found else None

    def dhcp_leases(self) -> list[dict[str, Any]]:
        """virNetwork.DHCPLeases(): libvirt's own reading of the same file."""
        leases: list[dict[str, Any]] = self.obj().DHCPLeases()
        return leases

    def free_address(self, exclude: Sequence[str] = ()) -> str:
        """An address in the DHCP range that no lease holds (nor ``exclude``)."""
        taken = {str(e.get("ip-address")) for e in self.leases()} | set(exclude)
        start, end = (ipaddress.IPv4Address(a) for a in self.range)
        for n in range(int(start), int(end) + 1):
            candidate = str(ipaddress.IPv4Address(n))
            if candidate not in taken:
                return candidate
        raise RuntimeError(f"no free address in {self.range} of {self.name}")

