"""The daemon's side of systemd's notify protocol around a reload, and a synchronous reload.

systemd is not PID 1 on this machine, so here the test itself plays systemd's
notify socket (an AF_UNIX datagram socket given as NOTIFY_SOCKET, which is all
the protocol is); the same behaviour under a real systemd 252 is in
tests/system/test_units.py. What a user relies on: when `agentctl reload`
(the unit's ExecReload) returns, dig already answers the new name, with no
waiting; a refused reload still ends with READY=1 and the old names served.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent, agentctl
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration


class NotifySocket:
    """What systemd listens on: a datagram socket; each message one datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        """Every datagram received so far (does not wait)."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


@pytest.fixture
def notified_agent(agent_dir: Path, notify: NotifySocket) -> Iterator[Agent]:
    a = Agent(agent_dir, env={"NOTIFY_SOCKET": str(notify.path)})
    yield a
    a.stop()


def _fields(message: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in message.splitlines())


def test_reload_is_synchronous_and_framed_by_reloading_and_ready(
        dnsmasq: Dnsmasq, notified_agent: Agent, notify: NotifySocket,
        write_config: WriteConfig) -> None:
    agent = notified_agent
    write_config({"db.dns.host": ["192.168.122.10"]})
    agent.start()
    until(lambda: "READY=1" in notify.messages(), what="READY=1 at startup")

    write_config({"db.dns.host": ["192.168.122.10"], "web.dns.host": ["192.168.122.20"]})
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    run = agentctl("--socket", str(agent.socket), "reload")
    # No polling: the name is served the moment the reload command returns.
    assert dnsmasq.query("web.dns.host").records == ("192.168.122.20",)
    assert run.returncode == 0, run.stderr

    reloading, ready = notify.messages()
    fields = _fields(reloading)
    assert fields["RELOADING"] == "1"
    assert before_us <= int(fields["MONOTONIC_USEC"]) <= (
        time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
    assert ready == "READY=1"


def test_refused_reload_still_ends_ready_and_keeps_the_old_names(
        dnsmasq: Dnsmasq, notified_agent: Agent, notify: NotifySocket,
        write_config: WriteConfig) -> None:
    agent = notified_agent
    write_config({"keep.dns.test": ["10.0.0.1"]})
    agent.start()
    until(lambda: "READY=1" in notify.messages(), what="READY=1 at startup")
    reads = dnsmasq.reads()

    write_config({"keep.dns.test": ["10.0.0.2"], "x..dns.test": ["10.0.0.3"]})
    run = agentctl("--socket", str(agent.socket), "reload", check=False)
    assert run.returncode != 0 and "empty label" in run.stderr
    assert [m.splitlines()[0] for m in notify.messages()] == ["RELOADING=1", "READY=1"]
    assert dnsmasq.query("keep.dns.test").records == ("10.0.0.1",)
    assert dnsmasq.reads() == reads


def test_sighup_reload_notifies_too(dnsmasq: Dnsmasq, notified_agent: Agent,
                                    notify: NotifySocket, write_config: WriteConfig) -> None:
    """Type=notify-reload (systemd >= 253) reloads by SIGHUP and waits for READY=1."""
    agent = notified_agent
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    until(lambda: "READY=1" in notify.messages(), what="READY=1 at startup")
    write_config({"a.dns.test": ["10.0.0.9"]})
    agent.reload()
    got: list[str] = []
    until(lambda: got.extend(notify.messages()) or len(got) >= 2, what="two notifications")
    assert [m.splitlines()[0] for m in got] == ["RELOADING=1", "READY=1"]
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.9",)
