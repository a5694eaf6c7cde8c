"""Names from the config answer at a real dnsmasq, and follow every config change."""

from __future__ import annotations

import time

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration


def answers(d: Dnsmasq, name: str, rtype: str = "A") -> tuple[str, ...]:
    return d.query(name, rtype).records


def test_added_name_answers_after_reload(dnsmasq: Dnsmasq, agent: Agent,
                                         write_config: WriteConfig) -> None:
    write_config({"db.dns.host": ["192.168.122.10"]})
    agent.start()
    until(lambda: answers(dnsmasq, "db.dns.host") == ("192.168.122.10",), what="db answers")
    assert dnsmasq.query("web.dns.host").status == "NXDOMAIN"

    write_config({"db.dns.host": ["192.168.122.10"], "web.dns.host": ["192.168.122.20"]})
    agent.reload()
    until(lambda: answers(dnsmasq, "web.dns.host") == ("192.168.122.20",), what="web answers")
    assert answers(dnsmasq, "db.dns.host") == ("192.168.122.10",)


def test_changed_address_answers_new_one_removed_name_is_nxdomain(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config({"db.dns.host": ["192.168.122.10"], "old.dns.host": ["192.168.122.30"]})
    agent.start()
    until(lambda: answers(dnsmasq, "old.dns.host") == ("192.168.122.30",), what="old answers")

    write_config({"db.dns.host": ["192.168.122.11"]})
    agent.reload()
    # SIGHUP clears dnsmasq's cache: no stale answer survives the change.
    until(lambda: answers(dnsmasq, "db.dns.host") == ("192.168.122.11",), what="new address")
    until(lambda: dnsmasq.query("old.dns.host").status == "NXDOMAIN", what="old gone")


def test_aaaa_nodata_for_ipv4_only_and_dual_stack_and_ptr(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config({"v4.dns.test": ["10.20.30.40"], "dual.dns.test": ["10.20.30.41", "fd00::41"]})
    agent.start()
    until(lambda: answers(dnsmasq, "v4.dns.test") == ("10.20.30.40",), what="v4 answers")

    aaaa = dnsmasq.query("v4.dns.test", "AAAA")
    assert aaaa.status == "NOERROR" and aaaa.records == ()  # NODATA, answered locally
    assert answers(dnsmasq, "dual.dns.test", "AAAA") == ("fd00::41",)
    assert answers(dnsmasq, "10.20.30.40", "PTR") == ("v4.dns.test.",)
    assert answers(dnsmasq, "fd00::41", "PTR") == ("dual.dns.test.",)


def test_no_write_and_no_sighup_when_nothing_changed(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"], "b.dns.test": ["10.0.0.2"]})
    agent.start()
    until(lambda: answers(dnsmasq, "a.dns.test") == ("10.0.0.1",), what="a answers")
    reads_before = dnsmasq.reads()
    inode_before = dnsmasq.addn_hosts.stat().st_ino
    writes_before = {s["kind"]: s["writes"] for s in agent.status()["sinks"]}

    # Same names in another order, another log level: the table is identical.
    write_config({"b.dns.test": ["10.0.0.2"], "a.dns.test": ["10.0.0.1"]}, coalesce_ms=21)
    agent.reload()
    # A real change afterwards is the fence: its reload must be the only new one.
    write_config({"b.dns.test": ["10.0.0.2"], "a.dns.test": ["10.0.0.9"]})
    agent.reload()
    until(lambda: answers(dnsmasq, "a.dns.test") == ("10.0.0.9",), what="a moves")

    assert dnsmasq.reads() == [*reads_before, 2]
    writes = {s["kind"]: s["writes"] for s in agent.status()["sinks"]}
    assert writes == {k: v + 1 for k, v in writes_before.items()}
    assert dnsmasq.addn_hosts.stat().st_ino != inode_before  # the one real change: renamed in


def test_each_reload_is_served_on_return_with_one_write_each(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    # Until issue 14 this test sent three reloads inside one 1 s coalescing
    # window and expected one write: a reload now returns only once its names
    # are served (systemctl reload is synchronous), so three reloads are three
    # writes, and the coalescer must not add a fourth. Coalescing of bursts of
    # source changes is pinned by the Podman and libvirt burst tests.
    write_config({"a.dns.test": ["10.0.0.1"]}, coalesce_ms=1000)
    agent.start()
    until(lambda: answers(dnsmasq, "a.dns.test") == ("10.0.0.1",), what="a answers")
    reads_before = len(dnsmasq.reads())
    from agent.control.client import Client
    client = Client(agent.socket)
    for i in range(2, 5):
        write_config({"a.dns.test": [f"10.0.0.{i}"]}, coalesce_ms=1000)
        assert client.call("reload")["reloaded"]
        assert answers(dnsmasq, "a.dns.test") == (f"10.0.0.{i}",)  # no waiting
    assert len(dnsmasq.reads()) == reads_before + 3
    # Absence cannot be polled for: wait out the 1 s coalescing window once and
    # see that it adds no write of the same table.
    time.sleep(1.2)
    assert len(dnsmasq.reads()) == reads_before + 3


def test_invalid_static_entry_refuses_start_with_key_and_reason(agent: Agent,
                                                                write_config: WriteConfig) -> None:
    import subprocess

    write_config({"bad_name.dns.test": ["10.0.0.1"], "ok.dns.test": ["10.0.0.300"]})
    run = subprocess.run(agent.command(), capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "static[0].name: label 'bad_name'" in run.stderr
    assert "static[1].addresses[0]: not an IPv4 or IPv6 address (in '10.0.0.300')" in run.stderr
    assert not agent.socket.exists()


def test_reload_with_errors_keeps_running_config(dnsmasq: Dnsmasq, agent: Agent,
                                                 write_config: WriteConfig) -> None:
    write_config({"keep.dns.test": ["10.0.0.1"]})
    agent.start()
    until(lambda: answers(dnsmasq, "keep.dns.test") == ("10.0.0.1",), what="keep answers")
    reads = dnsmasq.reads()

    write_config({"keep.dns.test": ["10.0.0.2"], "x..dns.test": ["10.0.0.3"]})
    agent.reload()
    status = agent.status()
    assert "static[1].name: empty label" in status["daemon"]["config_error"]
    assert answers(dnsmasq, "keep.dns.test") == ("10.0.0.1",)
    assert dnsmasq.reads() == reads

    write_config({"keep.dns.test": ["10.0.0.2"]})
    agent.reload()
    until(lambda: answers(dnsmasq, "keep.dns.test") == ("10.0.0.2",), what="fixed config")
    assert agent.status()["daemon"]["config_error"] is None
