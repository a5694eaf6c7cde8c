"""The DHCPACK trigger on a real libvirt network: busybox LXC guests lease from
libvirt's own dnsmasq, the real agent reads the ACKs off the bridge, and answers
are checked with dig at the test dnsmasq. Forged ACKs are put on the bridge from
a veth port, as a guest would (tests/harness/dhcp.py)."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import dhcp
from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network, read_leases
from tests.harness.wait import until
from tests.integration.test_libvirt import ZONE, answers, ask, libvirt_source, nxdomain

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


@pytest.fixture
def watch_lxc(write_config: Callable[..., None]) -> Callable[..., None]:
    """The trigger is off by default (review F2/F3): these tests turn it on, except
    where ``trigger=None`` leaves the default."""
    def configure(extra: str = "", trigger: bool | None = True) -> None:
        on = "" if trigger is None else f"dhcp_trigger = {str(trigger).lower()}\n"
        write_config(libvirt='uris = ["lxc:///system"]\n' + on + extra)
    return configure


def detail(agent: Agent) -> str:
    return str(libvirt_source(agent).get("detail") or "")


def test_a_guest_answers_with_the_trigger_on_and_status_says_so(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    until(lambda: f"DHCPACK trigger on {libvirt_network.bridge}" in detail(agent),
          timeout=10, what="status: trigger on")
    guest = libvirtd.guest("acked", [libvirt_network])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"acked.{ZONE}", ip)
    # The file confirms what the ACK published: the same table, so no write, no
    # reload (one re-read with the name in it, whichever came first).
    until(lambda: "awaiting the lease file" not in detail(agent), timeout=10,
          what="confirmed by the lease file")
    assert ask(dnsmasq, f"acked.{ZONE}").records == (ip,)
    assert [n for n in dnsmasq.reads() if n] == [1]


def test_without_the_file_the_ack_alone_publishes_then_is_withdrawn_and_forgeries_are_not(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None], tmp_path: Path) -> None:
    """With ``lease_dir`` pointed at an empty directory the file never confirms: what
    answers came from the ACK alone, and goes 5 s later. Then the same kind of ACK
    is forged from a guest's side of the bridge (publishes nothing) and sent by the
    host itself (publishes), which shows the forged frame would have counted had
    it been the host's."""
    empty = tmp_path / "no-leases"
    empty.mkdir()
    watch_lxc(f'lease_dir = "{empty}"\n')
    agent.start()
    bridge, gateway = libvirt_network.bridge, libvirt_network.gateway
    until(lambda: f"DHCPACK trigger on {bridge}" in detail(agent), timeout=10,
          what="status: trigger on")
    a = libvirtd.guest("forged-for", [libvirt_network])
    b = libvirtd.guest("control", [libvirt_network])
    ip_a, ip_b = a.wait_for_lease(), b.wait_for_lease()
    answers(dnsmasq, f"forged-for.{ZONE}", ip_a)
    answers(dnsmasq, f"control.{ZONE}", ip_b)
    assert list(empty.iterdir()) == []  # not from a file

    nxdomain(dnsmasq, f"forged-for.{ZONE}", timeout=15)
    nxdomain(dnsmasq, f"control.{ZONE}", timeout=15)
    until(lambda: agent.log.read_text().count("the lease file did not confirm it") >= 2,
          timeout=5, what="the withdrawals logged")

    net = libvirt_network.subnet
    # In the network's DHCP range (an ACK outside it is refused), not A's or B's.
    lo, hi = (ipaddress.IPv4Address(a) for a in libvirt_network.range)
    held = {e.get("ip-address") for e in read_leases(libvirt_network.status_path)}
    free = [str(a) for a in net.hosts()
            if lo <= a <= hi and str(a) not in (ip_a, ip_b, *held)]
    forged_ip, wrong_src_ip, control_ip = free[-3:]
    capture = dhcp.Capture(bridge)
    try:
        with dhcp.port_on(bridge, f"nsfk{os.getpid() % 10000}") as port:
            # A guest's forgery: the host's address, port 67, an ACK for A's MAC.
            forged = dhcp.ack_frame(src=gateway, mac=a.macs()[0], address=forged_ip)
            dhcp.send(port, forged)
            assert capture.wait_for(forged, 5) != dhcp.PACKET_OUTGOING  # it reached the bridge
        # The host sending from another address than the bridge's: through the
        # kernel's filter (outgoing, 67 -> 68), refused by the parser.
        wrong_src = dhcp.ack_frame(src=str(net.network_address + 77), mac=a.macs()[0],
                                   address=wrong_src_ip, server_id=gateway)
        dhcp.send(bridge, wrong_src)
        assert capture.wait_for(wrong_src, 5) == dhcp.PACKET_OUTGOING
        # The host's own ACK for B, sent after both: once it answers, the agent has
        # read everything before it on that bridge.
        control = dhcp.ack_frame(src=gateway, mac=b.macs()[0], address=control_ip)
        dhcp.send(bridge, control)
        assert capture.wait_for(control, 5) == dhcp.PACKET_OUTGOING
    finally:
        capture.close()
    answers(dnsmasq, f"control.{ZONE}", control_ip)
    assert ask(dnsmasq, f"forged-for.{ZONE}").status == "NXDOMAIN"
    until(lambda: "1 DHCP frames refused" in detail(agent), timeout=5,
          what="the wrong-source frame counted as refused")
    assert forged_ip not in dnsmasq.addn_hosts.read_text()
    assert wrong_src_ip not in dnsmasq.addn_hosts.read_text()


def test_the_trigger_is_off_by_default_status_says_so_and_the_file_still_publishes(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    """Off by default (review F2/F3: a guest's datagram masqueraded out of the bridge,
    or a local process on port 67, leaves it as the host's; the kernel cannot tell
    libvirt's dnsmasq from them). No packet socket is opened; the file publishes."""
    watch_lxc(trigger=None)
    agent.start()
    guest = libvirtd.guest("fileonly", [libvirt_network])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"fileonly.{ZONE}", ip)
    assert "DHCPACK trigger off ([libvirt] dhcp_trigger = false)" in detail(agent)


def test_the_trigger_survives_its_bridge_going_down_and_follows_a_restarted_network(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None], tmp_path: Path) -> None:
    """No lease file again (``lease_dir`` empty): an answer can only come from an ACK."""
    empty = tmp_path / "no-leases"
    empty.mkdir()
    watch_lxc(f'lease_dir = "{empty}"\n')
    agent.start()
    bridge = libvirt_network.bridge
    until(lambda: f"DHCPACK trigger on {bridge}" in detail(agent), timeout=10,
          what="status: trigger on")
    subprocess.run(["ip", "link", "set", bridge, "down"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    first = libvirtd.guest("after-down", [libvirt_network])
    answers(dnsmasq, f"after-down.{ZONE}", first.wait_for_lease())
    first.destroy()

    old = socket.if_nametoindex(bridge)
    libvirt_network.destroy()
    libvirt_network.start()
    assert socket.if_nametoindex(bridge) != old  # a new link under the same name
    second = libvirtd.guest("after-restart", [libvirt_network])
    answers(dnsmasq, f"after-restart.{ZONE}", second.wait_for_lease())
    assert list(empty.iterdir()) == []
