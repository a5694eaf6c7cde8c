"""qemu:///session domains (the user agent): bridged NICs take the system network's lease,
user-mode NICs answer the host's addresses only through their port forwards."""

from __future__ import annotations

import ipaddress

from agent.sources.libvirt.domain_xml import parse_domain
from agent.sources.libvirt.leases import Lease
from agent.sources.libvirt.records import USER_MODE_NO_FORWARD, Naming, snapshot

NOW = 1_800_000_000
SESSION = Naming("libvirt:qemu:///session", "qemu:///session", "alice.dns.libvirt", False)
MAC = "52:54:00:aa:00:01"


def domain(name: str, *ifaces: str) -> str:
    return (f"<domain type='kvm'><name>{name}</name>"
            f"<uuid>aaaaaaaa-2222-3333-4444-555555555555</uuid><devices>{''.join(ifaces)}"
            "</devices></domain>")


def bridged(mac: str = MAC, bridge: str = "virbr0") -> str:
    # What virt-manager writes for "Bridge device" on a session VM (qemu-bridge-helper).
    return f"<interface type='bridge'><mac address='{mac}'/><source bridge='{bridge}'/></interface>"


def user(*forwards: str) -> str:
    return (f"<interface type='user'><mac address='{MAC}'/><backend type='passt'/>"
            f"{''.join(forwards)}</interface>")


def lease(mac: str, ip: str) -> Lease:
    return Lease("virbr0", mac, ipaddress.ip_address(ip), None, NOW + 3600)


def test_bridged_session_vm_takes_its_lease_from_the_system_network() -> None:
    dom = parse_domain(domain("vm1", bridged()), active=True)
    other = lease("52:54:00:99:99:99", "192.168.122.99")  # a system VM's lease
    objects, summary = snapshot([dom], SESSION, {}, [lease(MAC, "192.168.122.50"), other], {},
                                NOW, report_unmatched=False)
    [state] = objects.values()
    assert [(r.name, [str(a) for a in r.addresses]) for r in state.records] == [
        ("vm1.alice.dns.libvirt", ["192.168.122.50"])]
    assert summary.published == 1  # and the system VM's lease is not reported


def test_user_mode_vm_with_a_port_forward_answers_the_hosts_addresses() -> None:
    fwd = "<portForward proto='tcp'><range start='2222' to='22'/></portForward>"
    lo = "<portForward proto='tcp' address='127.0.0.1'><range start='8080' to='80'/></portForward>"
    dom = parse_domain(domain("Boxes VM", user(fwd, lo)), active=True)
    assert dom.nics[0].forwards == ("tcp 0.0.0.0:2222->22", "tcp 127.0.0.1:8080->80")
    objects, _ = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    [state] = objects.values()
    [rec] = state.records
    assert (rec.name, rec.addresses, rec.provenance.kind) == (
        "boxes-vm.alice.dns.libvirt", (), "via-host")
    assert "tcp 0.0.0.0:2222->22" in rec.provenance.display
    assert "127.0.0.1" not in rec.provenance.display  # loopback forwards reach nobody else


def test_user_mode_vm_without_a_forward_is_refused_with_the_reason() -> None:
    lo = "<portForward proto='tcp' address='127.0.0.1'><range start='8080' to='80'/></portForward>"
    for xml in (domain("vm2", user()), domain("vm2", user(lo))):
        objects, summary = snapshot([parse_domain(xml, active=True)], SESSION, {}, [], {}, NOW,
                                    report_unmatched=False)
        [state] = objects.values()
        assert state.records == ()
        assert [(r.value, r.reason) for r in state.rejections] == [("vm2", USER_MODE_NO_FORWARD)]
        assert summary.published == 0
