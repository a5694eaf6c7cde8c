"""The security review of the DHCPACK trigger (issue 11), its reproducers made tests.

F1: libvirt's dnsmasq answers a guest's DHCPINFORM with a type-5 ACK that keeps the
guest's own yiaddr and chaddr (a victim's MAC, an address of its choice) and has no
lease time. With the trigger on, such an ACK must publish nothing, whether the
victim has no lease (a static guest) or had one the attacker released in its name.

F2: a guest's datagram that a MASQUERADE rule (here netavark's, for a rootful Podman
network on the same host) NATs out of the libvirt bridge leaves it as
PACKET_OUTGOING from <bridge address>:67: the kernel cannot tell it from libvirt's
dnsmasq. Not fixed (docs/benchmarks.md): the trigger is off by default, so on such
a host nothing reads those frames. (F3, a local process allowed to bind port 67, is
the same limit: no socket, nothing read.)

The hostile guest is a network namespace on a bridge port (tests/harness/dhcp.py);
nothing is forged as the host except the control ACKs the tests send themselves.
"""

from __future__ import annotations

import ipaddress
import os
import select
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import dhcp
from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Guest, Libvirtd, Network, read_leases
from tests.harness.podman import Podman
from tests.harness.wait import until
from tests.integration.test_libvirt import ZONE, answers, ask, libvirt_source
from tests.integration.test_libvirt_dhcp_ack import watch_lxc  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

DHCPINFORM, DHCPRELEASE = 8, 7


def detail(agent: Agent) -> str:
    return str(libvirt_source(agent).get("detail") or "")


def waiting(agent: Agent) -> list[str]:
    """The domains status lists under "no address yet"."""
    text = detail(agent)
    if "no address yet: " not in text:
        return []
    return text.split("no address yet: ", 1)[1].split(";")[0].split(", ")


def static_guest(libvirtd: Libvirtd, name: str, net: Network, agent: Agent) -> Guest:
    """A running guest that never asks for a lease (its NIC is known, unaddressed)."""
    g = libvirtd.guest(name, [net], persistent=False, start=False)
    g._udhcpc_command = lambda nic, request=None: ": static"  # type: ignore[method-assign]
    g.start()
    until(lambda: name in waiting(agent), timeout=10, what=f"{name} running, no address")
    return g


def in_range(net: Network, *avoid: str) -> list[str]:
    """Addresses of the DHCP range no lease in the file holds (an ACK giving one that
    a live lease gives another MAC is refused: leases outlive earlier tests' guests)."""
    lo, hi = (ipaddress.IPv4Address(a) for a in net.range)
    held = {e.get("ip-address") for e in read_leases(net.status_path)} | set(avoid)
    # (The guests' names here are used by no other test: a lease an earlier test's
    # guest of the same name left in the file, which outlives it, took the name.)
    return [str(a) for a in net.subnet.hosts() if lo <= a <= hi and str(a) not in held]


def host_replies(cap: dhcp.Capture, macs: set[str], timeout: float) -> set[str]:
    """chaddr of the DHCPACKs the host sent (67 -> 68, outgoing) for ``macs``."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while seen != macs and (left := deadline - time.monotonic()) > 0:
        if not select.select([cap.sock], [], [], left)[0]:
            break
        data, addr = cap.sock.recvfrom(4096)
        if addr[2] != dhcp.PACKET_OUTGOING or data[9] != 17 or data[20:24] != b"\0\x43\0\x44":
            continue
        mac = data[28 + 28:28 + 34].hex(":")
        if mac in macs and b"\x35\x01\x05" in data[28 + 240:]:
            seen.add(mac)
    return seen


def test_a_guest_s_inform_in_a_victim_s_name_publishes_nothing(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:  # noqa: F811
    net = libvirt_network
    watch_lxc()  # the trigger on
    agent.start()
    until(lambda: f"DHCPACK trigger on {net.bridge}" in detail(agent), timeout=10,
          what="trigger on")
    victim = static_guest(libvirtd, "inf-victim", net, agent)
    control = static_guest(libvirtd, "inf-control", net, agent)
    leased = libvirtd.guest("inf-leased", [net])
    real = leased.wait_for_lease()
    answers(dnsmasq, f"inf-leased.{ZONE}", real)
    evil, evil2, ctl = in_range(net, real)[-3:]  # in range: only the lease time stops it
    own = str(net.subnet.network_address + 30)
    vmac, lmac = victim.macs()[0], leased.macs()[0]
    with dhcp.guest_ns(net.bridge, f"nsi{os.getpid() % 10000}", own,
                       net.subnet.prefixlen) as g:
        brmac = dhcp.link_mac(net.bridge)
        inform = dhcp.bootp(DHCPINFORM, vmac, 1, net.gateway, ciaddr=own, yiaddr=evil)
        # The leased guest's lease released in its name (dnsmasq does not check
        # chaddr), then an INFORM with its MAC and an address of the attacker's.
        release = dhcp.bootp(DHCPRELEASE, lmac, 2, net.gateway, ciaddr=real)
        inform2 = dhcp.bootp(DHCPINFORM, lmac, 3, net.gateway, ciaddr=own, yiaddr=evil2)
        cap = dhcp.Capture(net.bridge)
        try:
            g.send(dhcp.ether_frame(g.mac, brmac, own, net.gateway, inform),
                   dhcp.ether_frame(g.mac, brmac, real, net.gateway, release),
                   dhcp.ether_frame(g.mac, brmac, own, net.gateway, inform2))
            # dnsmasq did answer both INFORMs with a type-5 ACK, sent by the host.
            assert host_replies(cap, {vmac, lmac}, 5) == {vmac, lmac}
            # Then the host's own ACK for the control guest: once it answers, the agent
            # has read everything before it on that bridge.
            dhcp.send(net.bridge, dhcp.ack_frame(src=net.gateway, mac=control.macs()[0],
                                                 address=ctl))
        finally:
            cap.close()
    answers(dnsmasq, f"inf-control.{ZONE}", ctl)
    assert ask(dnsmasq, f"inf-victim.{ZONE}").status == "NXDOMAIN"
    assert evil2 not in ask(dnsmasq, f"inf-leased.{ZONE}").records
    hosts = dnsmasq.addn_hosts.read_text()
    assert evil not in hosts and evil2 not in hosts


@pytest.fixture
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    p = Podman(tmp_path_factory.mktemp("podman"))
    try:
        p.setup().start_service()
        p.network_create(f"nsrev{os.getpid() % 10000}", "10.89.91.0/24")
        yield p
    finally:
        p.teardown()


@pytest.mark.podman
def test_by_default_a_masqueraded_guest_datagram_is_not_read(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None], podman: Podman) -> None:  # noqa: F811
    """F2 on a host with Podman beside libvirt: the guest's bytes leave the bridge as
    the host's DHCPACK. With the default config the agent holds no packet socket."""
    net = libvirt_network
    for k in ("all", "default", net.bridge):  # loose (systemd's default): spoofing passes
        with open(f"/proc/sys/net/ipv4/conf/{k}/rp_filter", "w") as f:
            f.write("2")
    watch_lxc(trigger=None)
    agent.start()
    victim = static_guest(libvirtd, "nat-victim", net, agent)
    assert "DHCPACK trigger off ([libvirt] dhcp_trigger = false)" in detail(agent)
    assert agent.proc is not None and dhcp.packet_sockets(agent.proc.pid) == 0
    podman.run("bystander", "--network", f"nsrev{os.getpid() % 10000}")
    own = str(net.subnet.network_address + 32)
    evil = in_range(net)[-1]
    with dhcp.guest_ns(net.bridge, f"nsm{os.getpid() % 10000}", own,
                       net.subnet.prefixlen) as g:
        payload = dhcp.ack_frame(src=net.gateway, mac=victim.macs()[0], address=evil)[28:]
        # A source in the Podman subnet, to its own address via the host: routed back
        # out of the bridge, masqueraded to the bridge's address, port 67 kept.
        raw = dhcp.ether_frame(g.mac, dhcp.link_mac(net.bridge), "10.89.91.77", own,
                               payload, sport=67, dport=68)
        cap = dhcp.Capture(net.bridge)
        try:
            g.send(raw)
            pkttype = cap.wait_for(dhcp.ack_frame(src=net.gateway, mac=victim.macs()[0],
                                                  address=evil), 5, dhcp.PACKET_OUTGOING)
        finally:
            cap.close()
    # The known limit: this host sent the guest's bytes as its own DHCPACK ...
    assert pkttype == dhcp.PACKET_OUTGOING
    # ... and nothing read it: no socket, the victim still has no address.
    assert dhcp.packet_sockets(agent.proc.pid) == 0
    assert "nat-victim" in waiting(agent) and evil not in dnsmasq.addn_hosts.read_text()
