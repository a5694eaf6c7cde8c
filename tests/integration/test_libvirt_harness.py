"""The libvirt harness itself: real libvirtd, LXC guests, real DHCP leases, clean teardown.

These tests pin what the libvirt source's tests rely on: a lease shows up in
``<bridge>.status`` and in ``DHCPLeases()`` for the MAC of the domain XML, LXC
guests outlive a libvirtd crash, renew() really moves a guest to a new
address, and nothing of ours keeps running after cleanup or teardown.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.harness.libvirt import (
    ETC_DIR,
    IP_FORWARD,
    LXC_URI,
    STATE_DIRS,
    Libvirtd,
    Network,
    Nic,
    lease_file,
)
from tests.harness.proc import is_mountpoint, process_gone
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]


def test_guest_lease_matches_domain_xml(libvirtd: Libvirtd, libvirt_network: Network) -> None:
    t0 = time.monotonic()
    guest = libvirtd.guest("ct-lease", [libvirt_network], dhcp_hostname="gateway")
    ip = guest.wait_for_lease()
    took = time.monotonic() - t0

    xml = ET.fromstring(guest.obj().XMLDesc(0))
    mac = xml.find("./devices/interface/mac")
    assert mac is not None
    assert guest.macs() == [mac.get("address")]
    entry = libvirt_network.lease_for(mac.get("address", ""))
    assert entry is not None
    assert entry["ip-address"] == ip
    assert entry["hostname"] == "gateway"  # the DHCP hostname, chosen by the guest
    assert entry["client-id"] == "01:" + guest.macs()[0]
    assert lease_file(libvirt_network.bridge) == libvirt_network.status_path

    leases = libvirt_network.dhcp_leases()
    assert [(le["mac"], le["ipaddr"], le["hostname"], le["iface"]) for le in leases] == [
        (guest.macs()[0], ip, "gateway", libvirt_network.bridge)]
    # The guest configured what dnsmasq leased (udhcpc's hook logs it).
    until(lambda: guest.bound_address() == ip, what="the guest to configure its lease")
    assert took < 5, f"guest start to lease took {took:.2f}s"


def test_two_nics_on_two_networks_with_fixed_macs(libvirtd: Libvirtd) -> None:
    a, b = libvirtd.network(), libvirtd.network()
    macs = ["52:54:00:aa:00:01", "52:54:00:aa:00:02"]
    guest = libvirtd.guest("ct-two", [Nic(a, mac=macs[0], alias="ua-front"),
                                      Nic(b, mac=macs[1], alias="ua-back")])
    ips = guest.wait_for_leases()
    assert guest.macs() == macs
    assert ipaddress.ip_address(ips[0]) in a.subnet
    assert ipaddress.ip_address(ips[1]) in b.subnet
    assert a.lease_for(macs[0]) is not None and b.lease_for(macs[1]) is not None
    assert a.lease_for(macs[1]) is None and b.lease_for(macs[0]) is None


def test_guest_survives_libvirtd_kill_and_restart(libvirtd: Libvirtd,
                                                  libvirt_network: Network) -> None:
    guest = libvirtd.guest("ct-survivor", [libvirt_network])
    ip = guest.wait_for_lease()
    controller, init, old_pid = guest.controller_pid, guest.init_pid, libvirtd.pid
    assert controller is not None and init is not None
    dnsmasq = libvirt_network.dnsmasq_pid()

    libvirtd.kill()
    assert process_gone(old_pid)
    assert not process_gone(controller) and not process_gone(init)
    assert dnsmasq is not None and not process_gone(dnsmasq)

    t0 = time.monotonic()
    new_pid = libvirtd.start_daemon()
    took = time.monotonic() - t0
    assert new_pid != old_pid
    assert guest.is_active()
    assert guest.obj().ID() == controller  # reconnected to the same controller
    assert libvirt_network.is_active() and libvirt_network.dnsmasq_pid() == dnsmasq
    assert [le["ipaddr"] for le in libvirt_network.dhcp_leases()] == [ip]
    assert took < 5, f"libvirtd restart took {took:.2f}s"


def test_guest_survives_libvirtd_stop(libvirtd: Libvirtd, libvirt_network: Network) -> None:
    guest = libvirtd.guest("ct-stop", [libvirt_network])
    guest.wait_for_lease()
    assert libvirtd.stop() == 0
    assert not libvirtd.running()
    assert guest.controller_pid is not None and not process_gone(guest.controller_pid)
    libvirtd.start_daemon()
    assert guest.is_active()


def test_renew_moves_guest_to_new_address(libvirtd: Libvirtd, libvirt_network: Network) -> None:
    guest = libvirtd.guest("ct-renew", [libvirt_network])
    old = guest.wait_for_lease()
    mac = guest.macs()[0]

    new = guest.renew()
    assert new != old
    assert [(e["mac-address"], e["ip-address"]) for e in libvirt_network.leases()] == [
        (mac, new)]
    assert [le["ipaddr"] for le in libvirt_network.dhcp_leases()] == [new]
    assert guest.bound_address() == new
    addr = guest.exec("ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"inet {new}/24" in addr

    wanted = libvirt_network.free_address(exclude=[old, new])
    assert guest.renew(new_ip=wanted) == wanted


def test_lease_time_from_network_xml(libvirtd: Libvirtd) -> None:
    short = libvirtd.network(lease_minutes=2)
    forever = libvirtd.network(lease_minutes=0)
    g1 = libvirtd.guest("ct-short", [short])
    g2 = libvirtd.guest("ct-forever", [forever])
    g1.wait_for_lease()
    g2.wait_for_lease()
    e1, e2 = g1.lease(), g2.lease()
    assert e1 is not None and e2 is not None
    assert abs(int(e1["expiry-time"]) - (time.time() + 120)) < 10
    assert e2["expiry-time"] == 0  # infinite lease


def test_no_hostname_sent(libvirtd: Libvirtd, libvirt_network: Network) -> None:
    guest = libvirtd.guest("ct-anon", [libvirt_network], send_hostname=False)
    guest.wait_for_lease()
    entry = guest.lease()
    assert entry is not None and "hostname" not in entry


def test_cleanup_then_teardown_leave_nothing(libvirtd: Libvirtd,
                                             libvirt_network: Network) -> None:
    guest = libvirtd.guest("ct-gone", [libvirt_network])
    guest.wait_for_lease()
    guest.renew()  # a udhcpc started through nsenter, outside the guest's cgroup
    status = libvirt_network.status_path
    controller = guest.controller_pid
    assert controller is not None
    assert libvirtd.leftovers()

    libvirtd.cleanup()
    assert libvirtd.leftovers() == []
    assert process_gone(controller)
    assert not status.exists()
    assert libvirtd.conn().listAllDomains() == [] and libvirtd.conn().listAllNetworks() == []

    forward = libvirtd.original_ip_forward
    # Something for teardown to clean: bridge, dnsmasq, iptables, a running guest.
    libvirtd.guest("ct-gone2", [libvirtd.network()]).wait_for_lease()
    libvirtd.teardown()
    assert libvirtd.leftovers(daemons=True) == []
    assert IP_FORWARD.read_text().strip() == forward
    assert not any(is_mountpoint(d) for d in (*STATE_DIRS, ETC_DIR))
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "LIBVIRT_" not in rules
    assert not list(Path("/sys/fs/cgroup").glob(f"*/nsync-{os.getpid()}.partition"))
    assert subprocess.run(["virsh", "-c", LXC_URI, "version"], capture_output=True,
                          timeout=30).returncode != 0
    # the fixture starts it again for the next test
