"""What namesync needs from a domain's XML: its identity and its NICs, in XML order.

The XML comes from libvirtd (the host owner's definitions), but it is still
parsed into typed values here and nothing from it is written anywhere raw.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
# libvirt requires user-chosen device aliases to start with "ua-"; the rest
# (net0, ...) are assigned by the hypervisor and say nothing a user chose.
USER_ALIAS_PREFIX = "ua-"


class DomainXMLError(ValueError):
    pass


def normalise_mac(raw: object) -> str | None:
    """Lowercase colon form, or None if ``raw`` is not a MAC address."""
    if not isinstance(raw, str):
        return None
    mac = raw.strip().lower().replace("-", ":")
    return mac if _MAC_RE.match(mac) else None


@dataclass(frozen=True, slots=True)
class Nic:
    index: int  # position among the domain's <interface> elements
    mac: str | None
    kind: str  # network | bridge | direct | user | ...
    network: str | None  # libvirt network name (type='network')
    bridge: str | None  # host bridge, where the XML says (live XML of a running domain)
    alias: str | None  # the user alias without its "ua-" prefix
    # User-mode networking (type='user', passt): <portForward> rules that the host
    # publishes, e.g. "tcp 0.0.0.0:2222->22"; what makes such a VM reachable.
    forwards: tuple[str, ...] = ()

    @property
    def reachable_forwards(self) -> tuple[str, ...]:
        return tuple(f for f in self.forwards if not f.split(" ", 1)[1].startswith(
            ("127.", "[::1]", "localhost")))


@dataclass(frozen=True, slots=True)
class Domain:
    uuid: str
    name: str
    active: bool
    nics: tuple[Nic, ...]


def _forwards(iface: ET.Element) -> tuple[str, ...]:
    """A user-mode NIC's port forwards (libvirt's passt backend), as shown in status."""
    if iface.get("type") != "user":
        return ()
    out = []
    for fwd in iface.findall("portForward"):
        proto = fwd.get("proto", "tcp")
        address = fwd.get("address") or "0.0.0.0"
        host = f"[{address}]" if ":" in address else address
        for rng in fwd.findall("range"):
            start, end, to = rng.get("start"), rng.get("end"), rng.get("to")
            if not start or rng.get("exclude") == "yes":
                continue
            ports = f"{start}-{end}" if end else start
            out.append(f"{proto} {host}:{ports}->{to or start}")
    return tuple(out)


def parse_domain(xml: str, *, active: bool) -> Domain:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DomainXMLError(f"domain XML does not parse: {e}") from None
    if root.tag != "domain":
        raise DomainXMLError(f"expected <domain>, got <{root.tag}>")
    uuid = (root.findtext("uuid") or "").strip().lower()
    name = root.findtext("name") or ""
    if not uuid:
        raise DomainXMLError("domain XML has no <uuid>")
    nics = []
    for index, iface in enumerate(root.findall("./devices/interface")):
        mac_el = iface.find("mac")
        src = iface.find("source")
        alias_el = iface.find("alias")
        alias = alias_el.get("name") if alias_el is not None else None
        user_alias = (
            alias[len(USER_ALIAS_PREFIX) :]
            if alias and alias.startswith(USER_ALIAS_PREFIX) and len(alias) > 3
            else None
        )
        kind = iface.get("type", "")
        bridge = src.get("bridge") if src is not None else None
        nics.append(
            Nic(
                index=index,
                mac=normalise_mac(mac_el.get("address")) if mac_el is not None else None,
                kind=kind,
                network=src.get("network") if src is not None and kind == "network" else None,
                bridge=bridge,
                alias=user_alias,
                forwards=_forwards(iface),
            )
        )
    return Domain(uuid=uuid, name=name, active=active, nics=tuple(nics))
