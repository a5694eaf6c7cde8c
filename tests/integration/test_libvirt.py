"""libvirt VMs by name: a real libvirtd, busybox LXC guests taking real DHCP leases
from libvirt's own dnsmasq, the real namesync-agent, and answers checked with dig
at the test dnsmasq (tests/harness/libvirt.py has how the guests are run)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.agent import Agent, status_text
from tests.harness.dns import Answer, dig
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network, lease_file
from tests.harness.libvirt.guest import Guest
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

ZONE = "dns.libvirt"
WriteConfig = Callable[..., None]


def ask(dnsmasq: Dnsmasq, name: str, rtype: str = "A") -> Answer:
    return dig(name, rtype, port=dnsmasq.port)


def answers(dnsmasq: Dnsmasq, name: str, *addrs: str, timeout: float = 10) -> None:
    want = tuple(sorted(addrs))
    until(lambda: ask(dnsmasq, name).records == want, timeout=timeout,
          what=f"{name} -> {want}")


def stays_and_goes(libvirtd: Libvirtd, network: Network,
                   dnsmasq: Dnsmasq) -> tuple[str, str, Guest]:
    """Two running guests whose names answer: "stays" outlives the fault a test makes,
    "goes" (returned) is killed during it. Their addresses, and "goes"."""
    stays = libvirtd.guest("stays", [network])
    goes = libvirtd.guest("goes", [network])
    ip_stays, ip_goes = stays.wait_for_lease(), goes.wait_for_lease()
    answers(dnsmasq, f"stays.{ZONE}", ip_stays)
    answers(dnsmasq, f"goes.{ZONE}", ip_goes)
    return ip_stays, ip_goes, goes


def nxdomain(dnsmasq: Dnsmasq, name: str, timeout: float = 10) -> None:
    until(lambda: ask(dnsmasq, name).status == "NXDOMAIN", timeout=timeout,
          what=f"{name} NXDOMAIN")


def libvirt_source(agent: Agent) -> dict[str, Any]:
    [src] = [s for s in agent.status()["sources"] if s["kind"] == "libvirt"]
    return src


@pytest.fixture
def watch_lxc(write_config: WriteConfig) -> Callable[..., None]:
    def configure(extra: str = "") -> None:
        write_config(libvirt='uris = ["lxc:///system"]\n' + extra)
    return configure


def test_a_guest_answers_its_lease_and_vanishes_on_destroy_while_the_lease_lingers(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    guest = libvirtd.guest("Web_Server", [libvirt_network])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"web-server.{ZONE}", ip)
    # PTR too: the reverse answer is the normalised name.
    assert ask(dnsmasq, ip, "PTR").records == (f"web-server.{ZONE}.",)

    guest.destroy()
    nxdomain(dnsmasq, f"web-server.{ZONE}")
    assert libvirt_network.lease_for(guest.macs()[0]) is not None  # still in the file

    guest.start()  # the same MAC, matched to its (renewed) lease again
    ip2 = guest.wait_for_lease()
    answers(dnsmasq, f"web-server.{ZONE}", ip2)


def test_two_nics_on_two_networks_give_three_names(
        libvirtd: Libvirtd, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    net_a, net_b = libvirtd.network(), libvirtd.network()
    watch_lxc()
    agent.start()
    guest = libvirtd.guest("twonic", [net_a, net_b])
    ip_a, ip_b = guest.wait_for_leases()
    answers(dnsmasq, f"twonic.{ZONE}", ip_a, ip_b)
    answers(dnsmasq, f"nic0.twonic.{ZONE}", ip_a)
    answers(dnsmasq, f"nic1.twonic.{ZONE}", ip_b)


def test_a_lease_renewed_to_a_new_address_moves_the_name(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    guest = libvirtd.guest("mover", [libvirt_network])
    old = guest.wait_for_lease()
    answers(dnsmasq, f"mover.{ZONE}", old)
    new = guest.renew()
    assert new != old
    answers(dnsmasq, f"mover.{ZONE}", new)


def test_libvirtd_killed_and_restarted_loses_no_name_and_keeps_none_stale(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    ip_stays, ip_goes, goes = stays_and_goes(libvirtd, libvirt_network, dnsmasq)

    libvirtd.kill()
    until(lambda: libvirt_source(agent)["state"] == "disconnected", what="source disconnected")
    detail = libvirt_source(agent)["detail"]
    # A killed libvirtd shows as a read error or EOF, depending on timing.
    assert detail.startswith(("libvirtd closed the connection; reconnecting in",
                              "connection closed on a read/write error; reconnecting in")), detail
    # Running VMs must not vanish from DNS because libvirtd went away.
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)
    # While libvirtd is down, one guest's controller dies: libvirtd finds it gone.
    controller = goes.controller_pid
    assert controller is not None
    os.kill(controller, 9)
    until(lambda: not os.path.exists(f"/proc/{controller}"), what="controller gone")

    libvirtd.start_daemon()
    until(lambda: libvirt_source(agent)["state"] == "connected", what="source reconnected")
    nxdomain(dnsmasq, f"goes.{ZONE}")
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    # Events flow again on the new connection.
    late = libvirtd.guest("late", [libvirt_network])
    answers(dnsmasq, f"late.{ZONE}", late.wait_for_lease())


def test_a_corrupt_lease_file_keeps_the_last_good_view(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    guest = libvirtd.guest("steady", [libvirt_network])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"steady.{ZONE}", ip)

    status = lease_file(libvirt_network.bridge)
    good = status.read_bytes()
    status.write_bytes(good[: len(good) // 2])  # half-written, in place
    until(lambda: "refused" in (libvirt_source(agent)["detail"] or ""), what="refusal shown")
    assert agent.proc is not None and agent.proc.poll() is None
    assert ask(dnsmasq, f"steady.{ZONE}").records == (ip,)
    text = status_text(agent.socket)
    assert f"{libvirt_network.bridge}.status refused (not JSON" in text

    status.write_bytes(good)
    until(lambda: "refused" not in (libvirt_source(agent)["detail"] or ""), what="recovered")
    assert ask(dnsmasq, f"steady.{ZONE}").records == (ip,)


@pytest.mark.parametrize("hostname", ["gateway", "host"])
def test_a_guest_hostname_never_captures_a_name(
        hostname: str, libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq,
        agent: Agent, watch_lxc: Callable[..., None]) -> None:
    watch_lxc("guest_hostnames = true\n")
    agent.start()
    guest = libvirtd.guest("honest", [libvirt_network], dhcp_hostname=hostname)
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"{hostname}.guest.{ZONE}", ip)
    answers(dnsmasq, f"honest.{ZONE}", ip)
    assert ask(dnsmasq, f"{hostname}.{ZONE}").status == "NXDOMAIN"
    assert ask(dnsmasq, f"{hostname}.dns.host").status == "NXDOMAIN"


def test_guest_hostnames_are_off_by_default(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    watch_lxc()
    agent.start()
    guest = libvirtd.guest("quiet", [libvirt_network], dhcp_hostname="gateway")
    answers(dnsmasq, f"quiet.{ZONE}", guest.wait_for_lease())
    assert ask(dnsmasq, f"gateway.guest.{ZONE}").status == "NXDOMAIN"


def test_an_agent_started_while_guests_run_publishes_them_before_ready(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    guests = [libvirtd.guest(f"early{i}", [libvirt_network]) for i in range(3)]
    ips = [g.wait_for_lease() for g in guests]
    watch_lxc()
    agent.start()  # returns once status says ready
    for i, ip in enumerate(ips):
        assert ask(dnsmasq, f"early{i}.{ZONE}").records == (ip,)


def test_hostile_and_clashing_domain_names_are_reported_not_written(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None], public_tmp: Path) -> None:
    watch_lxc()
    agent.start()
    first = libvirtd.guest("db_1", [libvirt_network])
    ip_first = first.wait_for_lease()
    answers(dnsmasq, f"db-1.{ZONE}", ip_first)
    second = libvirtd.guest("db.1", [libvirt_network])
    bad = libvirtd.guest("caf\u00e9", [libvirt_network])
    second.wait_for_lease()
    bad.wait_for_lease()

    def reported() -> dict[str, Any] | None:
        table = agent.status()["table"]
        conflict = [c for c in table["conflicts"] if c["name"] == f"db-1.{ZONE}"]
        refused = [r for r in table["rejected"] if r["value"] == "caf\u00e9"]
        return {"conflict": conflict, "refused": refused} if conflict and refused else None

    found = until(reported, what="conflict and refusal in status")
    assert found["refused"][0]["reason"] == "contains non-ASCII character U+00E9"
    # The holder keeps the name; nothing of the refused domain is written anywhere.
    assert ask(dnsmasq, f"db-1.{ZONE}").records == (ip_first,)
    assert "caf" not in dnsmasq.addn_hosts.read_text(encoding="utf-8", errors="replace")
    assert "caf" not in (public_tmp / "hosts").read_text(encoding="utf-8", errors="replace")


def test_a_started_network_s_empty_lease_file_is_no_leases_and_a_restart_drops_old_ones(
        libvirtd: Libvirtd, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    """Issue 10, defect 12: libvirt creates ``<bridge>.status`` empty when it starts a
    network. That is no leases, not a refused file; and a restarted (transient)
    network's new, empty file must not leave the previous incarnation's leases
    published. (A persistent network keeps its file across a restart: libvirt's
    dnsmasq takes those leases back, and so does namesync.)"""
    watch_lxc()
    agent.start()
    net = libvirtd.network(persistent=False)  # started after the agent: appears empty
    status = lease_file(net.bridge)
    until(status.exists, what=f"{net.bridge}.status")
    assert status.read_bytes() == b""
    guest = libvirtd.guest("cycled", [net])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"cycled.{ZONE}", ip)

    net.destroy()  # transient: gone, and its lease file with it
    until(lambda: not status.exists(), what="the old incarnation's file removed")
    net.start()  # a new incarnation: a new empty file
    until(status.exists, what="the new incarnation's file")
    # The guest runs on (detached from the new bridge); its old lease is gone.
    nxdomain(dnsmasq, f"cycled.{ZONE}")
    src = libvirt_source(agent)
    assert "refused" not in (src["detail"] or ""), src
    assert "empty file" not in (src["last_error"] or ""), src


def test_an_absent_libvirtd_is_awaited_and_connected_to_when_it_starts(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq, agent: Agent,
        watch_lxc: Callable[..., None]) -> None:
    """Issue 11: with libvirtd stopped its socket is gone, and the source waits for it
    to appear (inotify on /run/libvirt, no retry timer); when libvirtd starts, the
    source connects at once and its guests answer."""
    libvirtd.stop()
    sockets = [Path("/run/libvirt/libvirt-sock-ro"), Path("/run/libvirt/virtlxcd-sock-ro")]
    if any(s.exists() for s in sockets):
        pytest.skip("this libvirtd leaves its socket behind on SIGTERM")
    watch_lxc()
    agent.start()
    src = until(lambda: (s := libvirt_source(agent))["state"] == "disconnected" and s,
                what="the source to say libvirtd is absent")
    assert src["detail"] == (f"libvirtd's socket {sockets[0]} does not exist; "
                             f"waiting for {sockets[0]} to appear"), src
    libvirtd.start_daemon()
    until(lambda: libvirt_source(agent)["state"] == "connected", timeout=10,
          what="connected once the socket appeared")
    guest = libvirtd.guest("latecomer", [libvirt_network])
    answers(dnsmasq, f"latecomer.{ZONE}", guest.wait_for_lease())
