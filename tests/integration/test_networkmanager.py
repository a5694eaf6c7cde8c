"""Against a real NetworkManager (dns=dnsmasq) in its own netns, on a private system bus."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.load import parse_config
from agent.resolvers.setup import render_dropin
from tests.harness.agent import Agent, agentctl, status_text, toml_config
from tests.harness.nm import NetworkManager
from tests.harness.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.networkmanager]


@pytest.fixture
def nm(public_tmp: Path) -> Iterator[NetworkManager]:
    n = NetworkManager(public_tmp / "nm").start()
    yield n
    n.stop()


@pytest.fixture
def nm_agent(nm: NetworkManager, public_tmp: Path, tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "agent", env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    yield a
    a.stop()


def configure(agent: Agent, nm: NetworkManager, public_tmp: Path,
              static: dict[str, list[str]]) -> str:
    text = toml_config(
        socket=agent.socket, addn_hosts=public_tmp / "addn-hosts", pid_file=nm.pid_file,
        hosts_file=None, static=static, dnsmasq_extra='local_zones = ["dns.test"]',
        networkmanager=f'enabled = true\ndnsmasq_dir = "{nm.dnsmasq_d}"')
    agent.set_config(text)
    return text


def setup(agent: Agent, nm: NetworkManager, *args: str, check: bool = True) -> tuple[int, str]:
    run = agentctl("setup", "--config", str(agent.config), *args, check=False,
                   env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    if check:
        assert run.returncode == 0, run.stdout + run.stderr
    return run.returncode, run.stdout


def nm_status(agent: Agent) -> dict[str, object]:
    doc: dict[str, object] = agent.status()["networkmanager"]
    return doc


def last_reload(agent: Agent) -> dict[str, object]:
    sink = next(s for s in agent.status()["sinks"] if s["kind"] == "dnsmasq")
    r: dict[str, object] = sink["last_reload"]
    return r


def test_setup_makes_nm_dnsmasq_serve_names_and_is_idempotent(
        nm: NetworkManager, nm_agent: Agent, public_tmp: Path) -> None:
    text = configure(nm_agent, nm, public_tmp, {"web.dns.test": ["10.0.0.80"]})
    old = nm.wait_dnsmasq()
    rc, out = setup(nm_agent, nm, "--check", check=False)
    assert rc == 1 and "missing  drop-in" in out

    rc, out = setup(nm_agent, nm)
    new = nm.wait_dnsmasq(not_pid=old)
    assert f"wrote    drop-in {nm.dnsmasq_d / 'namesync.conf'}\n" in out
    assert f"restarted NetworkManager's dnsmasq (the drop-in changed): pid {old} -> {new}" in out
    dropin = (nm.dnsmasq_d / "namesync.conf").read_bytes()
    assert dropin == render_dropin(parse_config(text, "t"))
    assert f"addn-hosts={public_tmp / 'addn-hosts'}\n".encode() in dropin
    assert b"local=/dns.test/\n" in dropin
    assert (nm.dnsmasq_d / "namesync.conf").stat().st_mode & 0o777 == 0o644

    nm_agent.start()
    until(lambda: nm.query("web.dns.test").records == ("10.0.0.80",), what="name via NM dnsmasq")
    assert nm.query("nope.dns.test").status == "NXDOMAIN"  # local=, not forwarded
    aaaa = nm.query("web.dns.test", "AAAA")
    assert aaaa.status == "NOERROR" and aaaa.records == ()
    st = nm_status(nm_agent)
    assert (st["running"], st["dns_mode"], st["dnsmasq_pid"], st["advice"]) == (
        True, "dnsmasq", new, None)

    # Second run: nothing to do, no restart.
    rc, out = setup(nm_agent, nm)
    assert out.splitlines() == [
        f"ok       drop-in {nm.dnsmasq_d / 'namesync.conf'} is up to date",
        f"ok       NetworkManager's dnsmasq (pid {new}) serves namesync's names",
    ]
    assert nm.dnsmasq_bus_pid() == new
    assert setup(nm_agent, nm, "--check")[0] == 0

    rc, out = setup(nm_agent, nm, "--remove")
    assert f"removed  drop-in {nm.dnsmasq_d / 'namesync.conf'}" in out
    gone = nm.wait_dnsmasq(not_pid=new)
    until(lambda: nm.query("web.dns.test").status != "NOERROR", what="name gone after remove")
    assert gone != new and not (nm.dnsmasq_d / "namesync.conf").exists()


def test_nm_replacing_its_dnsmasq_is_followed(nm: NetworkManager, nm_agent: Agent,
                                              public_tmp: Path) -> None:
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.1"]})
    setup(nm_agent, nm)
    first = nm.wait_dnsmasq()
    nm_agent.start()
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.1",), what="a answers")

    # NM restarts its dnsmasq (Reload DNS_FULL): a new pid owns the bus name.
    nm.reload()
    second = nm.wait_dnsmasq(not_pid=first)
    until(lambda: nm_status(nm_agent)["dnsmasq_pid"] == second, what="watcher follows")
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.2"]})
    nm_agent.reload()
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.2",), what="answer after reload")
    r = last_reload(nm_agent)
    assert (r["pid"], r["signalled"], r["via"]) == (
        second, True, "D-Bus name org.freedesktop.NetworkManager.dnsmasq")

    # The dnsmasq dies; NM respawns it; the next change still answers at once.
    os.kill(second, signal.SIGKILL)
    third = nm.wait_dnsmasq(not_pid=second)
    until(lambda: nm_status(nm_agent)["dnsmasq_pid"] == third, what="watcher follows respawn")
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.3"]})
    nm_agent.reload()
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.3",), what="answer after respawn")
    assert last_reload(nm_agent)["pid"] == third


def test_nm_stopped_then_started_again(nm: NetworkManager, nm_agent: Agent,
                                       public_tmp: Path) -> None:
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.1"]})
    setup(nm_agent, nm)
    first = nm.wait_dnsmasq()
    nm_agent.start()

    nm.stop_daemon()
    until(lambda: nm_status(nm_agent)["running"] is False, what="status shows NM stopped")
    assert "NetworkManager is not running" in str(nm_status(nm_agent)["advice"])
    # Its dnsmasq lives on (and keeps its bus name): names still update.
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.2"]})
    nm_agent.reload()
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.2",), what="answer, NM stopped")

    nm.start_daemon()
    newest = nm.wait_dnsmasq(not_pid=first)
    until(lambda: nm_status(nm_agent)["running"] is True
          and nm_status(nm_agent)["dnsmasq_pid"] == newest, what="status shows NM back")
    # A dnsmasq started after the last update serves the current names.
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.2",), what="new dnsmasq current")
    configure(nm_agent, nm, public_tmp, {"a.dns.test": ["10.0.0.3"]})
    nm_agent.reload()
    until(lambda: nm.query("a.dns.test").records == ("10.0.0.3",), what="answer, NM back")
    assert nm_agent.proc is not None and nm_agent.proc.poll() is None


def test_no_system_bus_falls_back_to_pid_file(public_tmp: Path, tmp_path: Path) -> None:
    """No bus at all: no crash, status says so, the pid file still finds dnsmasq."""
    from tests.harness.dnsmasq import Dnsmasq

    d = Dnsmasq(public_tmp / "dnsmasq", zones=("dns.test",)).start()
    agent = Agent(tmp_path / "agent",
                  env={"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-such-bus"})
    try:
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=d.addn_hosts, pid_file=d.pid_file, hosts_file=None,
            static={"a.dns.test": ["10.0.0.1"]}, networkmanager="enabled = true"))
        agent.start()
        until(lambda: d.query("a.dns.test").records == ("10.0.0.1",), what="answer via pid file")
        st = nm_status(agent)
        assert (st["watching"], st["bus"], st["running"]) == (True, "unavailable", False)
        assert str(st["advice"]).startswith("no system D-Bus")
        assert last_reload(agent)["via"] == f"pid file {d.pid_file}"
        human = status_text(agent.socket)
        assert "resolver  D-Bus unavailable" in human
    finally:
        agent.stop()
        d.stop()


def test_non_dnsmasq_mode_is_reported_with_what_to_change(public_tmp: Path,
                                                          tmp_path: Path) -> None:
    """NM with dns=none (like systemd-resolved mode, NM runs no dnsmasq): the hosts
    file carries the names, and status says which path serves them and what to change."""
    nm = NetworkManager(public_tmp / "nm", dns="none").start()
    agent = Agent(tmp_path / "agent", env={"DBUS_SYSTEM_BUS_ADDRESS": nm.bus_address})
    hosts = public_tmp / "hosts"
    try:
        assert nm.dns_mode() == "none"
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=public_tmp / "addn-hosts", pid_file=nm.pid_file,
            hosts_file=hosts, static={"a.dns.test": ["10.0.0.1"]},
            networkmanager=f'enabled = true\ndnsmasq_dir = "{nm.dnsmasq_d}"'))
        agent.start()
        st = nm_status(agent)
        assert (st["running"], st["dns_mode"], st["dnsmasq_pid"]) == (True, "none", None)
        assert st["advice"] == (
            "NetworkManager DNS mode is 'none': names reach local lookups through the "
            "hosts-file sink (systemd-resolved and glibc read /etc/hosts). For the dnsmasq "
            "path, set dns=dnsmasq in NetworkManager.conf and run 'agentctl setup'")
        assert b"10.0.0.1 a.dns.test" in hosts.read_bytes()
        r = last_reload(agent)
        assert r["signalled"] is False  # no dnsmasq anywhere: nothing is signalled
        human = status_text(agent.socket)
        assert "resolver  NetworkManager dns=none" in human
        assert "set dns=dnsmasq in NetworkManager.conf" in human
        _, out = setup(agent, nm)
        assert "NetworkManager DNS mode is 'none', not 'dnsmasq'" in out
    finally:
        agent.stop()
        nm.stop()
