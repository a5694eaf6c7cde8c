"""From what libvirt says (domains, networks, leases) to records: a pure function.

Names come only from what the host's owner chose: the domain name, and a
NIC's user alias. The guest's DHCP hostname is the guest's choice, so it is
published only on request and only under ``guest.<zone>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.model.names import InvalidName, join, normalise_label
from agent.model.record import Address, ObjectState, Provenance, Record, Rejection
from agent.peer.wire import VIA_HOST, bound_addresses
from agent.sources.libvirt.domain_xml import Domain, Nic, forward_host
from agent.sources.libvirt.leases import Lease, current

GUEST_SUBZONE = "guest"


@dataclass(frozen=True)
class Naming:
    source: str  # the source instance, e.g. "libvirt:qemu:///system"
    uri: str
    zone: str
    guest_hostnames: bool


@dataclass
class Summary:
    running: int = 0
    published: int = 0
    waiting: list[str] = field(default_factory=list)  # running, no address yet


def nic_label(nic: Nic) -> str:
    if nic.alias:
        try:
            return normalise_label(nic.alias)
        except InvalidName:
            pass  # an alias with no DNS spelling: fall back to the position
    return f"nic{nic.index}"


def nic_bridge(nic: Nic, bridges: Mapping[str, str]) -> str | None:
    if nic.bridge:
        return nic.bridge
    return bridges.get(nic.network) if nic.network else None


USER_MODE_NO_FORWARD = ("user-mode network (slirp/passt) and no port forward on a "
                        "non-loopback address: unreachable outside the VM")


def user_mode_state(dom: Domain, naming: Naming) -> ObjectState | None:
    """A domain whose NICs are all user-mode (qemu:///session's default): reachable only
    through the ports the host forwards to it, so its name answers the host's own
    addresses if it has any such forward (a "via host" record, agent/peer/wire.py);
    else it is refused with the reason. None: not such a domain."""
    if not dom.nics or any(nic.kind != "user" for nic in dom.nics):
        return None
    forwards = [f for nic in dom.nics for f in nic.reachable_forwards]
    display = f"domain {dom.name!r} on {naming.uri}"
    if not forwards:
        prov = Provenance(naming.source, dom.uuid, "domain", display)
        loopback = [f for nic in dom.nics for f in nic.loopback_forwards]
        unapplied = [f for nic in dom.nics for f in nic.unapplied]
        notes = [f"only on loopback: {', '.join(loopback)}"] if loopback else []
        if unapplied:
            notes.append(f"<portForward> {', '.join(unapplied)} is not applied by libvirt "
                         "without <backend type='passt'/>")
        why = USER_MODE_NO_FORWARD + (f" ({'; '.join(notes)})" if notes else "")
        return ObjectState(rejections=(Rejection(prov, dom.name, why),))
    prov = Provenance(naming.source, dom.uuid, VIA_HOST,
                      f"{display} (user-mode network; the host's addresses, forwards "
                      f"{', '.join(forwards)})")
    try:
        name = join(normalise_label(dom.name), naming.zone)
    except InvalidName as e:
        return ObjectState(rejections=(Rejection(prov, dom.name, e.reason),))
    bound = bound_addresses(forward_host(f) for f in forwards)
    return ObjectState(records=(Record(name, bound, prov),))


NicView = tuple[Nic, tuple[Address, ...], list[Lease]]  # a NIC, its addresses, its leases


def domain_state(
    dom: Domain,
    naming: Naming,
    bridges: Mapping[str, str],
    leases: Mapping[tuple[str, str], list[Lease]],
    probed: Mapping[str, tuple[Address, ...]],
) -> ObjectState:
    """Records of one running domain: its name, per-NIC names, guest hostnames."""
    display = f"domain {dom.name!r} on {naming.uri}"
    prov = Provenance(naming.source, dom.uuid, "domain", display)
    try:
        label = normalise_label(dom.name)
        name = join(label, naming.zone)
    except InvalidName as e:
        return ObjectState(rejections=(Rejection(prov, dom.name, e.reason),))

    per_nic = _per_nic(dom, bridges, leases, probed)
    records: list[Record] = []
    rejections: list[Rejection] = []
    everything = tuple(dict.fromkeys(a for _, addrs, _ in per_nic for a in addrs))
    if everything:
        records.append(Record(name, everything, prov))
    if len(per_nic) > 1:
        records_n, rejected_n = _nic_names(dom, naming, name, per_nic, display)
        records += records_n
        rejections += rejected_n
    if naming.guest_hostnames:
        records_g, rejected_g = _guest_names(dom, naming, per_nic, display)
        records += records_g
        rejections += rejected_g
    return ObjectState(records=tuple(records), rejections=tuple(rejections))


def _per_nic(
    dom: Domain,
    bridges: Mapping[str, str],
    leases: Mapping[tuple[str, str], list[Lease]],
    probed: Mapping[str, tuple[Address, ...]],
) -> list[NicView]:
    out: list[NicView] = []
    for nic in dom.nics:
        bridge = nic_bridge(nic, bridges)
        nic_leases = leases.get((bridge, nic.mac), []) if bridge and nic.mac else []
        addrs = tuple(lease.address for lease in nic_leases)
        if not addrs and nic.mac:
            # No lease (bridged NIC, static address): what the agent or ARP saw.
            addrs = probed.get(nic.mac, ())
        out.append((nic, addrs, nic_leases))
    return out


def _nic_names(
    dom: Domain, naming: Naming, name: str, per_nic: list[NicView], display: str
) -> tuple[list[Record], list[Rejection]]:
    """``<nic>.<domain>.<zone>`` for each NIC of a multi-NIC domain."""
    records: list[Record] = []
    rejections: list[Rejection] = []
    seen: set[str] = set()
    for nic, addrs, _ in per_nic:
        nprov = Provenance(naming.source, dom.uuid, "nic", f"{display}, NIC {nic.index}")
        nic_part = nic_label(nic)
        if nic_part in seen:
            # Two NICs with one alias: the first in XML order keeps it.
            nic_part = f"nic{nic.index}"
        if nic_part in seen:
            rejections.append(Rejection(nprov, nic_part, "another NIC of this domain has it"))
            continue
        seen.add(nic_part)
        try:
            nic_name = join(nic_part, name)
        except InvalidName as e:
            rejections.append(Rejection(nprov, f"{nic_part}.{name}", e.reason))
            continue
        if addrs:
            records.append(Record(nic_name, addrs, nprov))
    return records, rejections


def _guest_names(
    dom: Domain,
    naming: Naming,
    per_nic: list[NicView],
    display: str,
) -> tuple[list[Record], list[Rejection]]:
    by_name: dict[str, list[Address]] = {}
    rejections: list[Rejection] = []
    prov = Provenance(naming.source, dom.uuid, "guest-hostname", f"{display}, DHCP hostname")
    for _, _, nic_leases in per_nic:
        for lease in nic_leases:
            if not lease.hostname:
                continue
            try:
                gname = join(normalise_label(lease.hostname), GUEST_SUBZONE, naming.zone)
            except InvalidName as e:
                rejections.append(Rejection(prov, lease.hostname, e.reason))
                continue
            by_name.setdefault(gname, []).append(lease.address)
    records = [Record(n, tuple(dict.fromkeys(a)), prov) for n, a in sorted(by_name.items())]
    return records, rejections


def snapshot(
    domains: Iterable[Domain],
    naming: Naming,
    bridges: Mapping[str, str],
    all_leases: Iterable[Lease],
    probed: Mapping[str, Mapping[str, tuple[Address, ...]]],
    now: float,
    *,
    report_unmatched: bool = True,
) -> tuple[dict[str, ObjectState], Summary]:
    """The source's whole snapshot: one object per running domain, plus unmatched leases."""
    live = current(all_leases, now)
    objects: dict[str, ObjectState] = {}
    summary = Summary()
    known_macs: set[str] = set()
    for dom in domains:
        known_macs.update(nic.mac for nic in dom.nics if nic.mac)
        if not dom.active:
            continue
        summary.running += 1
        state = user_mode_state(dom, naming) or domain_state(
            dom, naming, bridges, live, probed.get(dom.uuid, {}))
        if state.records:
            summary.published += 1
        elif not state.rejections:
            summary.waiting.append(dom.name)
        if state.records or state.rejections:
            objects[dom.uuid] = state
    if report_unmatched:
        for (bridge, mac), leases in live.items():
            if mac in known_macs:
                continue
            lease = leases[0]
            prov = Provenance(naming.source, f"lease:{bridge}:{mac}", "lease",
                              f"lease on {bridge} for {mac}")
            why = (f"lease {lease.address} on {bridge} for MAC {mac} matches no domain "
                   f"defined on {naming.uri}: not published")
            objects[prov.object_id] = ObjectState(
                rejections=(Rejection(prov, mac, why, lease.address),))
    return objects, summary


def next_expiry(all_leases: Iterable[Lease], now: float) -> float | None:
    """When the next live lease runs out: the snapshot must be rebuilt then."""
    future = [lease.expiry for lease in all_leases if lease.expiry > now]
    return min(future) if future else None


Probed = Mapping[str, Mapping[str, tuple[Address, ...]]]  # uuid -> mac -> addresses


def leased_nics(all_leases: Iterable[Lease]) -> frozenset[tuple[str, str]]:
    """(bridge, mac) of every NIC a lease file speaks for."""
    return frozenset((x.bridge, x.mac) for x in all_leases)


def needs_probe(dom: Domain, bridges: Mapping[str, str],
                leased: frozenset[tuple[str, str]]) -> bool:
    """A running domain with a NIC that no lease explains (bridged, static address).
    A user-mode NIC is not one: what such a VM publishes comes from its forwards
    (user_mode_state), and a probe would find only the guest's own inner address."""
    return dom.active and any(
        nic.mac and nic.kind != "user" and (nic_bridge(nic, bridges), nic.mac) not in leased
        for nic in dom.nics
    )


def unsuperseded(probed: Probed, domains: Mapping[str, Domain], bridges: Mapping[str, str],
                 leased: frozenset[tuple[str, str]]) -> dict[str, dict[str, tuple[Address, ...]]]:
    """Probe results still in force: a NIC that has a lease now is served by it, so
    its probed addresses (taken when it had none) must not come back when that
    lease expires. Domains gone are dropped."""
    out: dict[str, dict[str, tuple[Address, ...]]] = {}
    for uuid, found in probed.items():
        dom = domains.get(uuid)
        if dom is None:
            continue
        superseded = {nic.mac for nic in dom.nics
                      if nic.mac in found and (nic_bridge(nic, bridges), nic.mac) in leased}
        out[uuid] = {m: a for m, a in found.items() if m not in superseded}
    return out


def known_nics(domains: Iterable[Domain], bridges: Mapping[str, str],
               ) -> frozenset[tuple[str, str]]:
    """(bridge, MAC) of every known domain's NIC (running or not: an ACK may come
    before the domain's STARTED event has been read)."""
    out: set[tuple[str, str]] = set()
    for dom in domains:
        for nic in dom.nics:
            bridge = nic_bridge(nic, bridges)
            if bridge is not None and nic.mac is not None:
                out.add((bridge, nic.mac))
    return frozenset(out)
