"""The libvirt connection released while idle (issue 11: no wakeups with libvirtd present).

A real libvirtd with busybox LXC guests (tests/harness/libvirt), the real agent with
``release_idle_s = 1``, answers checked with dig at the test dnsmasq. While the
source is released it holds no connection (libvirtd's 5 s keepalive pings stop);
everything that changes must still reach DNS: libvirt's own files wake it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network
from tests.harness.wait import until
from tests.integration.test_libvirt import ZONE, answers, ask, libvirt_source, nxdomain

pytestmark = [pytest.mark.integration, pytest.mark.libvirt]

WATCHED = "/run/libvirt/lxc, /etc/libvirt/lxc, /run/libvirt/network, /etc/libvirt/qemu/networks"


@pytest.fixture
def released_agent(write_config: Callable[..., None], agent: Agent,
                   libvirt_network: Network) -> Agent:
    write_config(libvirt='uris = ["lxc:///system"]\nrelease_idle_s = 1\n')
    agent.start()
    released(agent)
    return agent


def listings(agent: Agent) -> int:
    """How often the source listed everything (each wake lists twice: on reconnect and
    just before the next release)."""
    return agent.log.read_text().count('"event": "libvirt listed"')


def released(agent: Agent, after: int | None = None, timeout: float = 15) -> None:
    """Until the source is released (again, having listed more than ``after`` times)."""
    until(lambda: libvirt_source(agent)["state"] == "released"
          and (after is None or listings(agent) >= after + 2),
          timeout=timeout, what="the libvirt connection released")


def test_released_while_idle_status_says_so_and_a_started_guest_still_answers(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq,
        released_agent: Agent) -> None:
    agent = released_agent
    src = libvirt_source(agent)
    assert src["detail"].startswith("0 running, 0 named; "), src
    assert src["detail"].endswith(
        "; idle: connection released after 1s without events; "
        f"reconnects when libvirt's state and config files change ({WATCHED})"), src
    run = agentctl("--socket", str(agent.socket), "status", check=False)
    assert run.returncode == 0, run.stdout  # healthy: released is not degraded
    assert "released" in run.stdout

    # Started while released: its status file wakes the source; its lease names it.
    before = listings(agent)
    guest = libvirtd.guest("waker", [libvirt_network])
    ip = guest.wait_for_lease()
    answers(dnsmasq, f"waker.{ZONE}", ip)
    released(agent, after=before)
    assert "1 running, 1 named" in libvirt_source(agent)["detail"]

    # Stopped while released: the status file's removal wakes it; the name goes.
    before = listings(agent)
    guest.destroy()
    nxdomain(dnsmasq, f"waker.{ZONE}")
    released(agent, after=before)
    assert ask(dnsmasq, f"waker.{ZONE}").status == "NXDOMAIN"


def test_define_undefine_and_network_stop_start_while_released_are_all_followed(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq,
        released_agent: Agent) -> None:
    agent = released_agent
    # Defined while released: its config file wakes the source, which lists it.
    before = listings(agent)
    guest = libvirtd.guest("later", [libvirt_network], start=False)
    released(agent, after=before)
    # Undefined while released: woken again (nothing to unpublish: it never ran).
    before = listings(agent)
    libvirtd.conn().lookupByName("later").undefine()
    released(agent, after=before)
    guest.define()

    # The network stopped and started again while released: each wakes the source,
    # and a guest on the restarted network answers.
    before = listings(agent)
    libvirt_network.destroy()
    released(agent, after=before)
    before = listings(agent)
    libvirt_network.start()
    released(agent, after=before)
    before = listings(agent)
    guest.start()
    answers(dnsmasq, f"later.{ZONE}", guest.wait_for_lease())
    released(agent, after=before)


@pytest.mark.timeout(180)
def test_libvirtd_restarted_or_killed_while_released_keeps_every_name_right(
        libvirtd: Libvirtd, libvirt_network: Network, dnsmasq: Dnsmasq,
        released_agent: Agent) -> None:
    agent = released_agent
    stays = libvirtd.guest("stays", [libvirt_network])
    goes = libvirtd.guest("goes", [libvirt_network])
    ip_stays, ip_goes = stays.wait_for_lease(), goes.wait_for_lease()
    answers(dnsmasq, f"stays.{ZONE}", ip_stays)
    answers(dnsmasq, f"goes.{ZONE}", ip_goes)
    released(agent)

    # A clean restart while released: nothing changed, every name keeps answering,
    # and what happens afterwards is followed again.
    libvirtd.restart()
    until(lambda: libvirt_source(agent)["state"] in ("released", "connected"),
          what="the source settled after the restart")
    released(agent)
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)

    # Killed while released, and a guest dies meanwhile: the name stays (nobody can
    # know yet) until libvirtd, back, finds it gone and removes its status file.
    libvirtd.kill()
    controller = goes.controller_pid
    assert controller is not None
    os.kill(controller, 9)
    until(lambda: not os.path.exists(f"/proc/{controller}"), what="controller gone")
    assert ask(dnsmasq, f"goes.{ZONE}").records == (ip_goes,)
    libvirtd.start_daemon()
    nxdomain(dnsmasq, f"goes.{ZONE}", timeout=20)
    assert ask(dnsmasq, f"stays.{ZONE}").records == (ip_stays,)
    released(agent)
    late = libvirtd.guest("late", [libvirt_network])
    answers(dnsmasq, f"late.{ZONE}", late.wait_for_lease())
