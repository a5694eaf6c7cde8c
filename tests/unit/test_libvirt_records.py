"""From domains and leases to names: trusted names only, per-NIC names, guest sub-zone."""

from __future__ import annotations

import ipaddress

import pytest

from agent.model.record import ObjectState
from agent.sources.libvirt.domain_xml import DomainXMLError, parse_domain
from agent.sources.libvirt.leases import Lease
from agent.sources.libvirt.records import Naming, snapshot

NOW = 1_800_000_000
NAMING = Naming("libvirt:lxc:///system", "lxc:///system", "dns.libvirt", guest_hostnames=False)
BRIDGES = {"default": "virbr0", "second": "virbr1"}


def domain_xml(name: str, *nics: str, uuid: str = "11111111-2222-3333-4444-555555555555") -> str:
    return (f"<domain type='lxc'><name>{name}</name><uuid>{uuid}</uuid><devices>"
            + "".join(nics) + "</devices></domain>")


def nic(mac: str, network: str = "default", alias: str | None = None,
        bridge: str | None = None) -> str:
    src = f"<source network='{network}'" + (f" bridge='{bridge}'" if bridge else "") + "/>"
    al = f"<alias name='{alias}'/>" if alias else ""
    return f"<interface type='network'><mac address='{mac}'/>{src}{al}</interface>"


def lease(mac: str, ip: str, bridge: str = "virbr0", hostname: str | None = None,
          expiry: int = NOW + 3600) -> Lease:
    return Lease(bridge, mac, ipaddress.ip_address(ip), hostname, expiry)


def names(objects: dict[str, ObjectState]) -> dict[str, list[str]]:
    return {r.name: [str(a) for a in r.addresses]
            for state in objects.values() for r in state.records}


def reasons(objects: dict[str, ObjectState]) -> list[tuple[str, str]]:
    return [(r.value, r.reason) for s in objects.values() for r in s.rejections]


M1, M2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def test_a_running_domain_gets_its_lease_address() -> None:
    dom = parse_domain(domain_xml("Fedora_40", nic(M1)), active=True)
    objects, summary = snapshot([dom], NAMING, BRIDGES, [lease(M1, "192.168.122.10")], {}, NOW)
    assert names(objects) == {"fedora-40.dns.libvirt": ["192.168.122.10"]}
    assert summary.running == 1 and summary.published == 1


def test_a_stopped_domain_has_no_name_although_its_lease_lingers() -> None:
    dom = parse_domain(domain_xml("web", nic(M1)), active=False)
    objects, summary = snapshot([dom], NAMING, BRIDGES, [lease(M1, "192.168.122.10")], {}, NOW)
    assert objects == {}  # and the lease, whose MAC is a known domain's, is no refusal
    assert summary.running == 0


def test_an_expired_lease_gives_no_address() -> None:
    dom = parse_domain(domain_xml("web", nic(M1)), active=True)
    objects, summary = snapshot([dom], NAMING, BRIDGES,
                                [lease(M1, "192.168.122.10", expiry=NOW - 1)], {}, NOW)
    assert objects == {}
    assert summary.waiting == ["web"]


def test_a_lease_on_another_bridge_is_not_this_nics() -> None:
    dom = parse_domain(domain_xml("web", nic(M1, network="second")), active=True)
    objects, _ = snapshot([dom], NAMING, BRIDGES, [lease(M1, "192.168.122.10")], {}, NOW)
    assert names(objects) == {}


def test_two_nics_give_three_names() -> None:
    dom = parse_domain(domain_xml("web", nic(M1), nic(M2, network="second")), active=True)
    leases = [lease(M1, "192.168.122.10"), lease(M2, "10.0.1.10", bridge="virbr1")]
    objects, _ = snapshot([dom], NAMING, BRIDGES, leases, {}, NOW)
    assert names(objects) == {
        "web.dns.libvirt": ["10.0.1.10", "192.168.122.10"],  # numeric order
        "nic0.web.dns.libvirt": ["192.168.122.10"],
        "nic1.web.dns.libvirt": ["10.0.1.10"],
    }


def test_a_user_alias_names_its_nic_and_a_clash_falls_back_to_the_position() -> None:
    dom = parse_domain(domain_xml(
        "web", nic(M1, alias="ua-Front_End"), nic(M2, network="second", alias="ua-front-end"),
    ), active=True)
    leases = [lease(M1, "192.168.122.10"), lease(M2, "10.0.1.10", bridge="virbr1")]
    objects, _ = snapshot([dom], NAMING, BRIDGES, leases, {}, NOW)
    assert set(names(objects)) == {
        "web.dns.libvirt", "front-end.web.dns.libvirt", "nic1.web.dns.libvirt"}


def test_hypervisor_aliases_are_not_names() -> None:
    dom = parse_domain(domain_xml("web", nic(M1, alias="net0"), nic(M2, alias="net1")),
                       active=True)
    objects, _ = snapshot([dom], NAMING, BRIDGES,
                          [lease(M1, "192.168.122.10"), lease(M2, "192.168.122.11")], {}, NOW)
    assert set(names(objects)) == {"web.dns.libvirt", "nic0.web.dns.libvirt",
                                   "nic1.web.dns.libvirt"}


def test_a_domain_name_with_no_dns_spelling_is_refused_not_written() -> None:
    dom = parse_domain(domain_xml("caf\u00e9", nic(M1)), active=True)
    objects, _ = snapshot([dom], NAMING, BRIDGES, [lease(M1, "192.168.122.10")], {}, NOW)
    assert names(objects) == {}
    assert reasons(objects) == [("caf\u00e9", "contains non-ASCII character U+00E9")]


def test_guest_hostnames_are_off_by_default() -> None:
    dom = parse_domain(domain_xml("web", nic(M1)), active=True)
    objects, _ = snapshot([dom], NAMING, BRIDGES,
                          [lease(M1, "192.168.122.10", hostname="gateway")], {}, NOW)
    assert names(objects) == {"web.dns.libvirt": ["192.168.122.10"]}


@pytest.mark.parametrize("hostname", ["gateway", "host", "web", "dns"])
def test_a_guest_hostname_only_ever_lands_under_guest(hostname: str) -> None:
    naming = Naming(NAMING.source, NAMING.uri, NAMING.zone, guest_hostnames=True)
    dom = parse_domain(domain_xml("vm1", nic(M1)), active=True)
    objects, _ = snapshot([dom], naming, BRIDGES,
                          [lease(M1, "192.168.122.10", hostname=hostname)], {}, NOW)
    assert names(objects) == {
        "vm1.dns.libvirt": ["192.168.122.10"],
        f"{hostname}.guest.dns.libvirt": ["192.168.122.10"],
    }


def test_a_hostile_guest_hostname_is_refused() -> None:
    naming = Naming(NAMING.source, NAMING.uri, NAMING.zone, guest_hostnames=True)
    dom = parse_domain(domain_xml("vm1", nic(M1)), active=True)
    objects, _ = snapshot([dom], naming, BRIDGES,
                          [lease(M1, "192.168.122.10", hostname="a\nb 1.2.3.4 evil")], {}, NOW)
    assert names(objects) == {"vm1.dns.libvirt": ["192.168.122.10"]}
    assert reasons(objects) == [("a\nb 1.2.3.4 evil", "contains control character U+000A")]


def test_a_lease_whose_mac_matches_no_domain_is_reported() -> None:
    dom = parse_domain(domain_xml("web", nic(M1)), active=True)
    objects, _ = snapshot([dom], NAMING, BRIDGES,
                          [lease(M1, "192.168.122.10"), lease(M2, "192.168.122.99")], {}, NOW)
    assert names(objects) == {"web.dns.libvirt": ["192.168.122.10"]}
    [(value, why)] = reasons(objects)
    assert value == M2
    assert "192.168.122.99" in why and "matches no domain defined on lxc:///system" in why


def test_probed_addresses_serve_a_nic_without_a_lease() -> None:
    bridged = (f"<interface type='bridge'><mac address='{M1}'/>"
               "<source bridge='br0'/></interface>")
    dom = parse_domain(domain_xml("web", bridged), active=True)
    probed = {dom.uuid: {M1: (ipaddress.ip_address("192.0.2.7"),)}}
    objects, _ = snapshot([dom], NAMING, BRIDGES, [], probed, NOW)
    assert names(objects) == {"web.dns.libvirt": ["192.0.2.7"]}


@pytest.mark.parametrize("xml", ["<domain", "<network/>", "<domain><name>x</name></domain>"])
def test_unusable_domain_xml_is_an_error(xml: str) -> None:
    with pytest.raises(DomainXMLError):
        parse_domain(xml, active=True)
