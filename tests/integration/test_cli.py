"""agentctl and namesync-agent as a user runs them: status, --once, logs, errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config.load import parse_config
from agent.daemon.app import Daemon
from agent.daemon.journal import JOURNAL_SOCKET
from agent.model.record import ObjectState, Provenance, Record, Rejection, parse_address
from tests.harness.agent import Agent, agentctl, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.journal import JournalServer
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration


def test_status_json_document(dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    doc = json.loads(agentctl("--socket", str(agent.socket), "status", "--json").stdout)
    assert doc["status_version"] == 1
    d = doc["daemon"]
    assert d["ready"] is True and d["pid"] == agent.proc.pid  # type: ignore[union-attr]
    assert d["config"] == str(agent.config)
    assert d["config_error"] is None
    assert [(s["name"], s["state"], s["objects"]) for s in doc["sources"]] == [
        ("static", "connected", 1)]
    sinks = {s["kind"]: s for s in doc["sinks"]}
    assert set(sinks) == {"dnsmasq", "hosts_file"}
    assert sinks["dnsmasq"]["path"] == str(dnsmasq.addn_hosts)
    assert sinks["dnsmasq"]["names"] == 1 and sinks["dnsmasq"]["lines"] == 1
    assert sinks["dnsmasq"]["last_reload"]["pid"] == dnsmasq.pid
    assert doc["table"] == {"names": 1, "conflicts": [], "rejected": []}


def test_status_without_daemon_says_so() -> None:
    run = agentctl("--socket", "/nonexistent/namesync.sock", "status", check=False)
    assert run.returncode == 3  # systemctl is-active: not running
    assert run.stderr == ("agentctl: no agent listening on /nonexistent/namesync.sock "
                          "(is namesync running?)\n")


def test_once_writes_reloads_and_exits(dnsmasq: Dnsmasq, agent: Agent,
                                       write_config: WriteConfig) -> None:
    write_config({"once.dns.test": ["10.0.0.7"]})
    run = subprocess.run(agent.command("--once"), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    until(lambda: dnsmasq.query("once.dns.test").records == ("10.0.0.7",), what="once answers")
    assert not agent.socket.exists()


def test_once_fails_clearly_when_a_file_cannot_be_written(
        agent: Agent, write_config: WriteConfig, public_tmp: Path) -> None:
    (public_tmp / "hosts").write_bytes(b"# END namesync managed block\n")
    write_config({"once.dns.test": ["10.0.0.7"]})
    run = subprocess.run(agent.command("--once"), capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert "refusing to edit hosts file" in run.stderr
    assert "END marker" in run.stderr or "END at line(s) 1" in run.stderr


def _run_under_journal_stream(agent: Agent, tmp_path: Path) -> list[str]:
    """The agent as systemd runs it: stderr is the journal stream JOURNAL_STREAM names."""
    log = tmp_path / "stream"
    with log.open("wb") as stream:
        st = os.fstat(stream.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run(agent.command("--once"), stderr=stream, env=env, check=True, timeout=30)
    return log.read_text().splitlines()


def test_native_journal_entries_under_systemd(agent: Agent, write_config: WriteConfig,
                                              dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    """A real datagram socket at journald's path (the session's private /run) receives
    the entries; they parse as the journal protocol; nothing goes to the stream."""
    write_config({"j.dns.test": ["10.0.0.7"]})
    journal = JournalServer(JOURNAL_SOCKET)
    try:
        assert _run_under_journal_stream(agent, tmp_path) == []
        entries = []
        journal.sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                entries.append(journal.receive())
    finally:
        journal.close()
    by_message = {e["MESSAGE"][0].split(b":")[0]: e for e in entries}
    start = by_message[b"starting"]
    assert start["PRIORITY"] == [b"6"] and start["SYSLOG_IDENTIFIER"] == [b"namesync-agent"]
    assert start["COMPONENT"] == [b"main"] and start["CONFIG"] == [str(agent.config).encode()]
    reload = by_message[b"dnsmasq reloaded"]
    assert reload["PID"] == [str(dnsmasq.pid).encode()]
    assert reload["PATH"] == [str(dnsmasq.addn_hosts).encode()]


def test_journal_stream_without_journal_socket(agent: Agent, write_config: WriteConfig,
                                               tmp_path: Path) -> None:
    """No journal socket (journald restarting): priority-prefixed lines on the stream."""
    write_config({"j.dns.test": ["10.0.0.7"]})
    assert not JOURNAL_SOCKET.exists()
    lines = _run_under_journal_stream(agent, tmp_path)
    assert lines
    for line in lines:
        assert line[:3] in {"<3>", "<4>", "<6>", "<7>"}, line
    assert any(line.startswith("<6>starting: version=") for line in lines)


def test_conflicts_and_refused_names_in_status(dnsmasq: Dnsmasq, public_tmp: Path,
                                               tmp_path: Path) -> None:
    """Sources that hand over conflicting and refused names (as libvirt/Podman will)."""
    sock = tmp_path / "ctl.sock"
    config = parse_config(toml_config(socket=sock, addn_hosts=dnsmasq.addn_hosts,
                                      pid_file=dnsmasq.pid_file, hosts_file=None,
                                      static={"web.dns.test": ["10.0.0.1"]}), "test")

    async def scenario() -> tuple[str, str]:
        daemon = Daemon(config, None)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready_event.wait(), 15)
        store = daemon.pipeline.store
        vm = Provenance("libvirt:test", "uuid-1", "domain", "domain web")
        bad = Provenance("libvirt:test", "uuid-2", "domain", "domain caf\u00e9")
        store.update("libvirt:test", "uuid-1", ObjectState(
            records=(Record("web.dns.test", (parse_address("10.0.0.2"),), vm),)))
        store.update("libvirt:test", "uuid-2", ObjectState(
            rejections=(Rejection(bad, "caf\u00e9", "contains non-ASCII character U+00E9"),)))
        await daemon.pipeline.sync()
        human = await asyncio.to_thread(agentctl, "--socket", str(sock), "status")
        js = await asyncio.to_thread(agentctl, "--socket", str(sock), "status", "--json")
        daemon.request_stop()
        await task
        return human.stdout, js.stdout

    human, js = asyncio.run(scenario())
    doc = json.loads(js)
    assert doc["table"]["conflicts"] == [{
        "name": "web.dns.test",
        "winner": {"source": "static", "object": "web.dns.test", "kind": "static",
                   "display": "[[static]] web.dns.test"},
        "losers": [{"source": "libvirt:test", "object": "uuid-1", "kind": "domain",
                    "display": "domain web"}],
    }]
    assert doc["table"]["rejected"] == [{
        "source": "libvirt:test", "object": "uuid-2", "kind": "domain",
        "display": "domain caf\u00e9", "value": "caf\u00e9",
        "reason": "contains non-ASCII character U+00E9"}]
    assert ("  NAME          KEPT BY                         REFUSED FOR\n"
            "  web.dns.test  static [[static]] web.dns.test  libvirt:test domain web\n") in human
    assert ("  FROM                      VALUE   REASON\n"
            "  libvirt:test domain caf\u00e9  'caf\u00e9'  contains non-ASCII character U+00E9\n"
            ) in human
    # The static holder keeps the name at dnsmasq.
    assert dnsmasq.query("web.dns.test").records == ("10.0.0.1",)


def test_help_matches_readme_flags() -> None:
    run = subprocess.run([sys.executable, "-m", "agent.daemon.main", "--help"],
                         capture_output=True, text=True, check=True)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for flag in ("--config", "--once", "--check-config", "--print-default-config", "--log-level"):
        assert flag in run.stdout
        assert flag in readme, f"{flag} is not documented in README.md"
