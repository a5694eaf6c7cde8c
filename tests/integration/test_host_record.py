"""host.dns.* follows the host's address on a bridge, live, over netlink."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

BRIDGE = "nsbr-host"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


@pytest.fixture
def bridge() -> Iterator[str]:
    # Created in the test session's private network namespace.
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("link", "set", BRIDGE, "up")
    yield BRIDGE
    subprocess.run(["ip", "link", "del", BRIDGE], check=False)


def host_source(agent: Agent) -> dict[str, object]:
    src: dict[str, object] = next(s for s in agent.status()["sources"] if s["name"] == "host")
    return src


def test_host_record_follows_bridge_address(dnsmasq: Dnsmasq, agent: Agent,
                                            write_config: WriteConfig, bridge: str) -> None:
    write_config(host=f'name = "host.dns.test"\ninterfaces = ["{bridge}", "nsbr-absent"]')
    agent.start()
    # No usable address yet (only link-local): no record, and status says why.
    assert dnsmasq.query("host.dns.test").status == "NXDOMAIN"
    rejected = agent.status()["table"]["rejected"]
    assert [(r["value"], r["reason"]) for r in rejected] == [
        ("host.dns.test", "no interface nsbr-absent")]

    ip("addr", "add", "192.168.150.1/24", "dev", bridge)
    until(lambda: dnsmasq.query("host.dns.test").records == ("192.168.150.1",),
          what="host record after ip addr add")
    ip("addr", "add", "fd00:150::1/64", "dev", bridge, "nodad")
    until(lambda: dnsmasq.query("host.dns.test", "AAAA").records == ("fd00:150::1",),
          what="AAAA after ip addr add")
    assert agent.status()["table"]["rejected"] == []

    ip("addr", "del", "192.168.150.1/24", "dev", bridge)
    until(lambda: dnsmasq.query("host.dns.test").records == (), what="A gone after del")
    assert dnsmasq.query("host.dns.test", "AAAA").records == ("fd00:150::1",)
    ip("addr", "del", "fd00:150::1/64", "dev", bridge)
    until(lambda: dnsmasq.query("host.dns.test").status == "NXDOMAIN", what="name gone")
    assert host_source(agent)["state"] == "connected"


def test_missing_interface_reported(dnsmasq: Dnsmasq, agent: Agent,
                                    write_config: WriteConfig) -> None:
    write_config(host='name = "host.dns.test"\ninterfaces = ["virbr-nope"]')
    agent.start()
    assert host_source(agent)["detail"] == (
        "host.dns.test not published: no interface virbr-nope")
    assert dnsmasq.query("host.dns.test").status == "NXDOMAIN"
