"""qemu:///session domains (the user agent): bridged NICs take the system network's lease,
user-mode NICs answer the host's addresses only through their port forwards."""

from __future__ import annotations

import ipaddress

import pytest

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
        [rej] = state.rejections
        assert rej.value == "vm2" and rej.reason.startswith(USER_MODE_NO_FORWARD)
        assert summary.published == 0


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def slirp(name: str, *args: str, ifaces: str = "") -> str:
    """A session domain whose NIC is QEMU's slirp given by hand: libvirt's own slirp
    backend has no port forwards, so this is how such a VM gets `hostfwd=`."""
    argv = "".join(f"<qemu:arg value='{a}'/>" for a in args)
    return (f"<domain type='qemu' xmlns:qemu='{QEMU_NS}'><name>{name}</name>"
            f"<uuid>aaaaaaaa-2222-3333-4444-555555555556</uuid><devices>{ifaces}</devices>"
            f"<qemu:commandline>{argv}</qemu:commandline></domain>")


DEVICE = ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:aa:00:0a")


def test_slirp_hostfwd_in_the_qemu_commandline_answers_the_hosts_addresses() -> None:
    xml = slirp("boxes", "-netdev", "user,id=n0,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:53-:53",
                "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:AA:00:09")
    dom = parse_domain(xml, active=True)
    [nic] = dom.nics
    assert (nic.kind, nic.mac, nic.index) == ("user", "52:54:00:aa:00:09", 0)
    assert nic.forwards == ("tcp 0.0.0.0:2222->22", "udp 127.0.0.1:53->53")
    objects, summary = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    [state] = objects.values()
    [rec] = state.records
    assert (rec.name, rec.addresses, rec.provenance.kind) == (
        "boxes.alice.dns.libvirt", (), "via-host")
    assert "forwards tcp 0.0.0.0:2222->22" in rec.provenance.display
    assert "127.0.0.1" not in rec.provenance.display
    assert summary.published == 1


@pytest.mark.parametrize(("args", "shown"), [
    (("-nic", "user,hostfwd=tcp:[::1]:2222-:22"), "tcp [::1]:2222->22"),
    (("-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22", *DEVICE),
     "tcp 127.0.0.1:2222->10.0.2.15:22"),
    # ",," is a literal comma: one (unparsable) hostfwd value, not a second forward
    (("-net", "user,hostfwd=tcp::2222-:22,,hostfwd=tcp::80-:80"), None),
])
def test_slirp_without_a_reachable_forward_is_refused_with_the_reason(
        args: tuple[str, str], shown: str | None) -> None:
    dom = parse_domain(slirp("vm3", *args), active=True)
    objects, _ = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    [state] = objects.values()
    [rej] = state.rejections
    assert state.records == () and rej.value == "vm3"
    assert rej.reason == USER_MODE_NO_FORWARD + (f" (only on loopback: {shown})" if shown
                                                 else "")


@pytest.mark.parametrize("rule", ["tcp::0-:22", "tcp::70000-:22", "tcp:evil.example:22-:22",
                                  "sctp::22-:22", "tcp::22-:22;x", "tcp::22"])
def test_a_hostfwd_that_does_not_parse_does_not_count(rule: str) -> None:
    dom = parse_domain(slirp("vm4", "-netdev", f"user,id=n0,hostfwd={rule}", *DEVICE),
                       active=True)
    assert dom.nics[0].forwards == ()


def test_a_bridged_nic_beside_a_commandline_slirp_takes_the_lease() -> None:
    xml = slirp("vm5", "-netdev", "user,id=n0,hostfwd=tcp::2222-:22", *DEVICE,
                ifaces=bridged())
    dom = parse_domain(xml, active=True)
    assert [n.kind for n in dom.nics] == ["bridge", "user"]
    objects, _ = snapshot([dom], SESSION, {}, [lease(MAC, "192.168.122.51")], {}, NOW,
                          report_unmatched=False)
    [state] = objects.values()
    assert [str(a) for r in state.records[:1] for a in r.addresses] == ["192.168.122.51"]


def test_other_netdevs_and_arguments_are_not_nics() -> None:
    xml = slirp("vm6", "-netdev", "tap,id=t0,ifname=tap0", "-device", "virtio-net,netdev=t0",
                "-smbios", "type=1,serial=user", "-object", "user,id=x")
    assert parse_domain(xml, active=True).nics == ()


def test_a_port_forward_without_the_passt_backend_does_not_count() -> None:
    """libvirt 9.0 keeps <portForward> on a plain type='user' NIC but starts QEMU's slirp
    without hostfwd (seen on a real QEMU 7.2 guest): nothing listens on the host port."""
    fwd = "<portForward proto='tcp'><range start='2222' to='22'/></portForward>"
    xml = domain("vm7", f"<interface type='user'><mac address='{MAC}'/>{fwd}</interface>")
    dom = parse_domain(xml, active=True)
    assert (dom.nics[0].forwards, dom.nics[0].unapplied) == ((), ("tcp 0.0.0.0:2222->22",))
    objects, _ = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    [state] = objects.values()
    [rej] = state.rejections
    assert state.records == ()
    assert rej.reason == (USER_MODE_NO_FORWARD + " (<portForward> tcp 0.0.0.0:2222->22 is not "
                          "applied by libvirt without <backend type='passt'/>)")


@pytest.mark.parametrize("netdev", [
    "id=n0,type=user,hostfwd=tcp::2222-:22",  # type=user not first
    '{"type": "user", "id": "n0", "hostfwd": [{"str": "tcp::2222-:22"}]}',  # QEMU's JSON
])
@pytest.mark.parametrize("device", [
    DEVICE[1],
    "netdev=n0,driver=virtio-net-pci,mac=52:54:00:aa:00:0a",  # driver= not first
    '{"driver": "virtio-net-pci", "netdev": "n0", "mac": "52:54:00:aa:00:0a"}',  # JSON
])
def test_every_spelling_of_a_slirp_netdev_is_read(netdev: str, device: str) -> None:
    dom = parse_domain(slirp("vm7", "-netdev", netdev, "-device", device), active=True)
    [nic] = dom.nics
    assert (nic.kind, nic.mac, nic.forwards) == ("user", "52:54:00:aa:00:0a",
                                                 ("tcp 0.0.0.0:2222->22",))


def test_a_slirp_netdev_no_device_uses_is_no_nic_and_its_forward_counts_for_nothing() -> None:
    # QEMU listens on the host port, but the guest has no NIC behind it.
    dom = parse_domain(slirp("vm8", "-netdev", "user,id=n0,hostfwd=tcp::2222-:22",
                             "-device", "virtio-net-pci,netdev=other"), active=True)
    assert dom.nics == ()
    objects, _ = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    assert all(not s.records for s in objects.values())


def test_a_hostfwd_bound_to_one_host_address_answers_only_it() -> None:
    dom = parse_domain(slirp("vm9", "-netdev", "user,id=n0,hostfwd=tcp:192.0.2.7:2222-:22",
                             *DEVICE), active=True)
    objects, _ = snapshot([dom], SESSION, {}, [], {}, NOW, report_unmatched=False)
    [state] = objects.values()
    [rec] = state.records
    assert rec.provenance.kind == "via-host"
    assert [str(a) for a in rec.addresses] == ["192.0.2.7"]
