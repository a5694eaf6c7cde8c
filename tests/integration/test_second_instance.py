"""A second agent on the same paths refuses before touching anything (issue 10, defect 11)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.agent import Agent, agentctl, toml_config
from tests.harness.dnsmasq import Dnsmasq

from .conftest import WriteConfig

pytestmark = pytest.mark.integration


def snapshot(*paths: Path) -> dict[Path, tuple[bytes, int, int] | None]:
    out: dict[Path, tuple[bytes, int, int] | None] = {}
    for p in paths:
        try:
            st = p.stat()
        except FileNotFoundError:
            out[p] = None
            continue
        data = b"<socket>" if stat.S_ISSOCK(st.st_mode) else p.read_bytes()
        out[p] = (data, st.st_ino, st.st_mtime_ns)
    return out


def run_second(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.daemon.main", "--config", str(config), *extra],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("mode", [[], ["--once"]])
def test_second_agent_with_the_same_config_refuses_and_changes_nothing(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig, public_tmp: Path,
        mode: list[str]) -> None:
    hosts = public_tmp / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
    # A temp file the first agent is "in the middle of" writing: the second must
    # not clean it up as stale.
    in_flight = hosts.with_name(".hosts.namesync-inflight")
    in_flight.write_bytes(b"partial")
    watched = (dnsmasq.addn_hosts, dnsmasq.pid_file, hosts, agent.socket, in_flight)
    before = snapshot(*watched)
    reads = dnsmasq.reads()

    second = run_second(agent.config, *mode)

    assert second.returncode == 3, second.stderr
    assert "another namesync-agent" in second.stderr and "already manages" in second.stderr
    assert "nothing was changed" in second.stderr
    assert "Traceback" not in second.stderr
    assert snapshot(*watched) == before
    assert dnsmasq.reads() == reads  # no SIGHUP either
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
    assert agentctl("--socket", str(agent.socket), "status").returncode == 0


def test_second_agent_on_another_socket_but_the_same_files_refuses(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig, public_tmp: Path) -> None:
    hosts = public_tmp / "hosts"
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    other = public_tmp / "other"
    other.mkdir()
    config = other / "config.toml"
    config.write_text(toml_config(
        socket=other / "control.sock", addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
        hosts_file=hosts, static={"b.dns.test": ["10.0.0.9"]}))
    before = snapshot(dnsmasq.addn_hosts, dnsmasq.pid_file, hosts)

    second = run_second(config)

    assert second.returncode == 3, second.stderr
    assert str(dnsmasq.addn_hosts) in second.stderr
    assert snapshot(dnsmasq.addn_hosts, dnsmasq.pid_file, hosts) == before
    assert not (other / "control.sock").exists()
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
    assert dnsmasq.query("b.dns.test").status == "NXDOMAIN"


def test_agent_starts_again_after_the_first_was_killed(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    """The lock dies with its holder: a SIGKILLed agent never blocks its successor."""
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    assert agent.proc is not None
    agent.proc.kill()
    agent.proc.wait()
    agent.proc = None
    agent.start()
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)


def test_reload_onto_another_agents_file_is_refused(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig, public_tmp: Path) -> None:
    """A reload may not point a sink at a file another running agent manages."""
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    other = Agent(public_tmp / "other")
    other_hosts = public_tmp / "other-hosts"
    other.set_config(toml_config(socket=other.socket, addn_hosts=None, pid_file=None,
                                 hosts_file=other_hosts, static={"b.dns.test": ["10.0.0.9"]}))
    try:
        other.start()
        theirs = other_hosts.read_bytes()
        assert b"b.dns.test" in theirs
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
            hosts_file=other_hosts, static={"a.dns.test": ["10.0.0.2"]}))
        run = agentctl("--socket", str(agent.socket), "reload", check=False)
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"already manages {other_hosts}" in run.stdout + run.stderr
        assert other_hosts.read_bytes() == theirs
        assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)  # the old config runs on
    finally:
        other.stop()
