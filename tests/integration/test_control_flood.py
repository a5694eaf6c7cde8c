"""Local users flooding the control socket (issue 10, defect 2), with real unprivileged users.

The agent runs with systemd's default descriptor limit (1024), the socket is
0666 because ``allow_uids`` names one user, and each flood holds 1,100 idle
connections, more than the agent has descriptors. Throughout, root's
``agentctl status`` answers within 2 s and a SIGHUP reload is applied (dig
shows the new address); afterwards the agent has not spun or flooded its log.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.control.client import Client
from tests.harness.agent import Agent, agentctl, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.users import User
from tests.harness.wait import until
from tests.unit.helpers import python_for

pytestmark = pytest.mark.integration

CONNECTIONS = 1100
IDLE_TIMEOUT_S = 2

# Runs as the flooding user: opens every connection, says so, then watches
# what the agent does with each (an error line, EOF) until told to stop.
FLOOD = textwrap.dedent("""
    import json, selectors, socket, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    socks, connect_errors = [], {}
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(path)
        except OSError as e:
            connect_errors[e.strerror] = connect_errors.get(e.strerror, 0) + 1
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    print(json.dumps({"connected": len(socks), "connect_errors": connect_errors}), flush=True)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    codes, closed_at = {}, []
    start = time.monotonic()
    sel.register(sys.stdin, selectors.EVENT_READ)
    # Until told to finish, then until the agent has closed every connection
    # (the idle timeout), or 20 s.
    deadline = None
    while len(sel.get_map()) > (1 if deadline is None else 0):
        if deadline is not None and time.monotonic() > deadline:
            break
        for key, _ in sel.select(1):
            if key.fileobj is sys.stdin:
                sel.unregister(sys.stdin)
                deadline = time.monotonic() + 20
                continue
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            for line in data.splitlines():
                code = json.loads(line)["error"]["code"]
                codes[code] = codes.get(code, 0) + 1
            if not data:
                closed_at.append(time.monotonic() - start)
                sel.unregister(s)
                s.close()
    print(json.dumps({"codes": codes, "closed": len(closed_at),
                      "closed_at": sorted(closed_at)}), flush=True)
""")


class Flood:
    def __init__(self, user: User, socket: Path, n: int) -> None:
        py = python_for(user.uid)
        if py is None:
            pytest.skip(f"no Python interpreter executable by {user.name}")
        self.proc = subprocess.Popen(
            [py, "-I", "-c", FLOOD, str(socket), str(n)], user=user.uid, group=user.gid,
            extra_groups=[], cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.opened = json.loads(self.proc.stdout.readline())

    def finish(self) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out: dict[str, object] = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flooded_agent(public_tmp: Path, dnsmasq: Dnsmasq,
                  unix_user: Callable[[str], User]) -> Iterator[tuple[Agent, User, User]]:
    allowed, stranger = unix_user("allowed"), unix_user("stranger")
    agent = Agent(public_tmp / "agent", nofile=1024)
    agent.dir.chmod(0o755)
    agent.set_config(config(agent, dnsmasq, allowed, "10.0.0.1"))
    agent.start()
    yield agent, allowed, stranger
    agent.stop()


def config(agent: Agent, dnsmasq: Dnsmasq, allowed: User, address: str) -> str:
    return toml_config(
        socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
        hosts_file=None, static={"a.dns.test": [address]},
        control_extra=f"allow_uids = [{allowed.uid}]\nidle_timeout_s = {IDLE_TIMEOUT_S}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in USER_HZ


def root_status_within_2s(agent: Agent) -> None:
    t0 = time.monotonic()
    doc = Client(agent.socket, timeout=2).call("status")
    assert doc["daemon"]["ready"] is True
    assert time.monotonic() - t0 < 2
    human = agentctl("--socket", str(agent.socket), "status", check=False)
    assert human.returncode in (0, 1), human.stderr


def reload_during_flood(agent: Agent, dnsmasq: Dnsmasq, allowed: User, address: str) -> None:
    agent.set_config(config(agent, dnsmasq, allowed, address))
    assert agent.proc is not None
    agent.proc.send_signal(1)  # SIGHUP, as systemctl reload does
    until(lambda: dnsmasq.query("a.dns.test").records == (address,), timeout=10,
          what=f"dig to answer {address} after the reload")


@pytest.mark.parametrize("who", ["stranger", "allowed"])
def test_flood_of_idle_connections_leaves_root_and_reloads_working(
        flooded_agent: tuple[Agent, User, User], dnsmasq: Dnsmasq, who: str) -> None:
    agent, allowed, stranger = flooded_agent
    flooder = stranger if who == "stranger" else allowed
    assert agent.proc is not None
    assert dnsmasq.query("a.dns.test").records == ("10.0.0.1",)
    cpu_before = cpu_seconds(agent.proc.pid)
    log_before = agent.log.stat().st_size
    flood = Flood(flooder, agent.socket, CONNECTIONS)
    try:
        assert flood.opened["connected"] == CONNECTIONS, flood.opened  # the backlog held them all
        root_status_within_2s(agent)
        reload_during_flood(agent, dnsmasq, allowed, "10.0.0.2")
        root_status_within_2s(agent)
        result = flood.finish()  # returns once the agent closed them all (idle timeout)
    finally:
        flood.kill()
    codes = result["codes"]
    assert isinstance(codes, dict)
    if who == "stranger":
        # Closed at accept, every one, with the reason: nothing of theirs was read.
        assert codes == {"permission_denied": CONNECTIONS}
        assert result["closed"] == CONNECTIONS
    else:
        # A per-uid cap, and the ones it let in are closed when idle.
        served = CONNECTIONS - codes.get("too_many_connections", 0)
        assert 1 <= served <= 16
        assert result["closed"] == CONNECTIONS
    status = Client(agent.socket, timeout=2).call("status")
    assert status["daemon"]["config_error"] is None
    # No spin and no log flood: under a second of CPU for the whole ~6 s episode
    # (0.03-0.04 s measured here; the issue saw 100 % of a CPU)
    # and a few log lines, not one per connection.
    assert cpu_seconds(agent.proc.pid) - cpu_before < 1
    log = agent.log.read_bytes()[log_before:]
    assert log.count(b"control connection refused") <= 2
    assert len(log) < 200_000
