"""What namesync needs from a domain's XML: its identity and its NICs, in XML order.

The XML comes from libvirtd (the host owner's definitions; on qemu:///session
the user's), but it is still parsed into typed values here and nothing from it
is written anywhere raw.

User-mode NICs and their port forwards come in two shapes:

* libvirt's own ``<interface type='user'>`` with ``<portForward>``, which
  libvirt applies only with ``<backend type='passt'/>`` (libvirt >= 9.2: the
  9.0 here refuses to define it, so only the XML is tested, not a running
  passt). Without that backend libvirt 9.0 accepts ``<portForward>`` and keeps
  it in the live XML, yet starts QEMU's slirp with no hostfwd (seen on a real
  QEMU 7.2 guest): nothing listens on the host port, so such a forward does
  not count (``Nic.unapplied``, named in the refusal);
* QEMU's slirp given directly, ``<qemu:commandline>`` arguments such as
  ``-netdev user,id=n0,hostfwd=tcp::2222-:22`` (also ``-nic user,...`` and
  ``-net user,...``): what GNOME Boxes-style setups and hand-written session
  domains use, since libvirt's slirp backend has no port forwards. Each
  ``user`` netdev becomes one user-mode NIC after the ``<interface>`` ones.

A forward counts (makes the VM reachable) only when its host address is not
loopback; forwards that do not parse are left out.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

_MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"
_NETDEV_OPTIONS = frozenset({"-netdev", "--netdev", "-nic", "--nic", "-net", "--net"})
# hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport (hostaddr may be [v6]).
_HOSTFWD = re.compile(r"^(?:(tcp|udp):)?(\[[0-9a-fA-F:.]*\]|[0-9.]*):(\d{1,5})-"
                      r"([0-9.]*):(\d{1,5})$")
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
    # <portForward> on a NIC without the passt backend: libvirt does not apply them.
    unapplied: tuple[str, ...] = ()

    @property
    def reachable_forwards(self) -> tuple[str, ...]:
        return tuple(f for f in self.forwards if not _loopback_forward(f))

    @property
    def loopback_forwards(self) -> tuple[str, ...]:
        return tuple(f for f in self.forwards if _loopback_forward(f))


def forward_host(forward: str) -> str:
    """The host address of a forward as shown ("tcp [::1]:2222->22" -> "::1")."""
    return forward.split(" ", 1)[1].split("->", 1)[0].rsplit(":", 1)[0].strip("[]")


def _loopback_forward(forward: str) -> bool:
    return ipaddress.ip_address(forward_host(forward)).is_loopback


def _host(address: str | None) -> str | None:
    """A forward's host address as shown ("0.0.0.0" for all), None if it is no address."""
    if not address:
        return "0.0.0.0"
    try:
        addr = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    return f"[{addr}]" if addr.version == 6 else str(addr)


def _port(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() and 0 < int(raw) < 65536 else None


@dataclass(frozen=True, slots=True)
class Domain:
    uuid: str
    name: str
    active: bool
    nics: tuple[Nic, ...]


def _passt(iface: ET.Element) -> bool:
    backend = iface.find("backend")
    return backend is not None and backend.get("type") == "passt"


def _forwards(iface: ET.Element) -> tuple[str, ...]:
    """A user-mode NIC's port forwards (libvirt's passt backend), as shown in status."""
    if iface.get("type") != "user":
        return ()
    out = []
    for fwd in iface.findall("portForward"):
        proto = fwd.get("proto", "tcp")
        host = _host(fwd.get("address"))
        if proto not in ("tcp", "udp") or host is None:
            continue
        for rng in fwd.findall("range"):
            start, end = _port(rng.get("start")), _port(rng.get("end"))
            to = _port(rng.get("to")) or start
            if start is None or rng.get("exclude") == "yes":
                continue
            ports = f"{start}-{end}" if end else str(start)
            out.append(f"{proto} {host}:{ports}->{to}")
    return tuple(out)


def _qemu_options(value: str) -> list[str]:
    """QEMU's "a,b=c" option syntax; ",," is a literal comma."""
    return [part.replace("\0", ",") for part in value.replace(",,", "\0").split(",")]


def _fields(parts: list[str]) -> list[tuple[str, str]]:
    return [(key, val) for key, _, val in (p.partition("=") for p in parts)]


def _hostfwd(rule: str) -> str | None:
    m = _HOSTFWD.match(rule)
    if m is None:
        return None
    proto, host_raw, hport, gaddr, gport = m.groups()
    host = _host(host_raw)
    if host is None or _port(hport) is None or _port(gport) is None:
        return None
    guest = f"{gaddr}:{int(gport)}" if gaddr else str(int(gport))
    return f"{proto or 'tcp'} {host}:{int(hport)}->{guest}"


def _netdev(opt: str, value: str) -> tuple[str, str | None, list[str]] | None:
    """(id, mac, hostfwd rules) of a user-mode (slirp) netdev argument, else None.

    QEMU takes "user,id=n0,hostfwd=..." (type first or as ``type=user``
    anywhere) and, for -netdev, the JSON form '{"type": "user", "id": "n0",
    "hostfwd": [{"str": "tcp::2222-:22"}]}'.
    """
    if value.lstrip().startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("type") != "user":
            return None
        rules = obj.get("hostfwd") or []
        rules = [r.get("str") if isinstance(r, dict) else r for r in rules] \
            if isinstance(rules, list) else []
        mac = obj.get("mac")
        return (str(obj.get("id") or ""), mac if isinstance(mac, str) else None,
                [r for r in rules if isinstance(r, str)])
    parts = _qemu_options(value)
    fields = _fields(parts[1:] if "=" not in parts[0] else parts)
    kind = parts[0] if "=" not in parts[0] else next((v for k, v in fields if k == "type"), "")
    if kind != "user" and ("type", "user") not in fields:
        return None
    ident = next((v for k, v in fields if k == "id"), "")
    mac = next((v for k, v in fields if k == "mac"), None)
    return ident, mac, [v for k, v in fields if k == "hostfwd"]


def _device(value: str) -> dict[str, str]:
    """A -device's properties, in QEMU's JSON or "driver,key=value" (driver= anywhere)."""
    if value.lstrip().startswith("{"):
        try:
            obj = json.loads(value)
        except ValueError:
            return {}
        return {k: v for k, v in obj.items() if isinstance(v, str)} if isinstance(obj, dict) \
            else {}
    parts = _qemu_options(value)
    return dict(_fields(parts if "=" in parts[0] else parts[1:]))


def _commandline_nics(root: ET.Element, first_index: int) -> list[Nic]:
    """QEMU user-mode (slirp) netdevs given in ``<qemu:commandline>``, with their hostfwd."""
    args = [a.get("value") or "" for a in root.findall(f"{QEMU_NS}commandline/{QEMU_NS}arg")]
    macs: dict[str, str | None] = {}  # netdev id -> the MAC of the -device using it
    for opt, value in itertools.pairwise(args):
        if opt in ("-device", "--device"):
            device = _device(value)
            if device.get("netdev"):
                macs[device["netdev"]] = normalise_mac(device.get("mac"))
    nics: list[Nic] = []
    for opt, value in itertools.pairwise(args):
        found = _netdev(opt, value) if opt in _NETDEV_OPTIONS else None
        if found is None:
            continue
        ident, mac, rules = found
        # A -netdev is only a backend: without a -device using it the guest has no
        # NIC there, and its forwards lead nowhere (-nic and -net make their own).
        if opt.lstrip("-") == "netdev" and ident not in macs:
            continue
        forwards = tuple(f for f in map(_hostfwd, rules) if f is not None)
        nics.append(Nic(index=first_index + len(nics),
                        mac=normalise_mac(mac) or macs.get(ident),
                        kind="user", network=None, bridge=None, alias=None,
                        forwards=forwards))
    return nics


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
        forwards = _forwards(iface)
        applied = _passt(iface)
        nics.append(
            Nic(
                index=index,
                mac=normalise_mac(mac_el.get("address")) if mac_el is not None else None,
                kind=kind,
                network=src.get("network") if src is not None and kind == "network" else None,
                bridge=bridge,
                alias=user_alias,
                forwards=forwards if applied else (),
                unapplied=() if applied else forwards,
            )
        )
    nics += _commandline_nics(root, len(nics))
    return Domain(uuid=uuid, name=name, active=active, nics=tuple(nics))
