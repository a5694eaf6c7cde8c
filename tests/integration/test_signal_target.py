"""Only a real dnsmasq is ever signalled; anything else is reported, not hit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

# A process that would record any SIGHUP it gets, instead of dying from it.
RECORDER = textwrap.dedent("""
    import signal, sys, time
    out = open(sys.argv[1], "a")
    def hup(*_):
        out.write("HUP\\n"); out.flush()
    signal.signal(signal.SIGHUP, hup)
    print("ready", flush=True)
    while True:
        time.sleep(60)
""")


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    record = tmp_path / "signals"
    record.write_text("")
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(record)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc.pid, record
    proc.kill()
    proc.wait()


def reload_status(agent: Agent) -> dict[str, object]:
    sink = next(s for s in agent.status()["sinks"] if s["kind"] == "dnsmasq")
    reload: dict[str, object] = sink["last_reload"]
    return reload


def test_pid_of_non_dnsmasq_process_is_not_signalled(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig, tmp_path: Path,
        recorder: tuple[int, Path]) -> None:
    pid, record = recorder
    pid_file = tmp_path / "wrong.pid"
    pid_file.write_text(f"{pid}\n")
    write_config({"a.dns.test": ["10.0.0.1"]}, pid_file=pid_file)
    agent.start()
    r = reload_status(agent)
    assert r["signalled"] is False
    assert r["pid"] == pid
    comm = Path(f"/proc/{pid}/comm").read_text().strip()
    assert r["reason"] == f"pid {pid} is {comm!r}, not dnsmasq"
    assert record.read_text() == ""
    # The file was written, but the real dnsmasq was not told: it still has no name.
    assert b"10.0.0.1 a.dns.test" in dnsmasq.addn_hosts.read_bytes()
    assert dnsmasq.reads() == [0]
    assert dnsmasq.query("a.dns.test").status == "NXDOMAIN"


def test_dead_pid_is_not_signalled(dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig,
                                   tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    pid_file = tmp_path / "dead.pid"
    pid_file.write_text(f"{gone.pid}\n")
    write_config({"a.dns.test": ["10.0.0.1"]}, pid_file=pid_file)
    agent.start()
    r = reload_status(agent)
    assert r["signalled"] is False
    assert r["reason"] == f"pid {gone.pid} is not running"
    assert dnsmasq.reads() == [0]


@pytest.mark.parametrize(("content", "reason"), [
    (None, "does not exist (is dnsmasq running?)"),
    ("not-a-pid\n", "holds 'not-a-pid', not a pid"),
    ("1\n", "holds '1', not a pid"),
])
def test_missing_or_garbage_pid_file(dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig,
                                     tmp_path: Path, content: str | None, reason: str) -> None:
    pid_file = tmp_path / "x.pid"
    if content is not None:
        pid_file.write_text(content)
    write_config({"a.dns.test": ["10.0.0.1"]}, pid_file=pid_file)
    agent.start()
    r = reload_status(agent)
    assert r["signalled"] is False
    assert r["reason"] == f"pid file {pid_file} {reason}"
    assert dnsmasq.reads() == [0]


def test_real_dnsmasq_is_signalled_and_status_names_it(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    write_config({"a.dns.test": ["10.0.0.1"]})
    agent.start()
    r = reload_status(agent)
    assert r["signalled"] is True and r["pid"] == dnsmasq.pid and r["reason"] is None
    assert r["via"] == f"pid file {dnsmasq.pid_file}"
    assert isinstance(r["latency_ms"], float) and r["latency_ms"] > 0


def test_status_shows_what_each_reread_cost_the_real_dnsmasq(
        dnsmasq: Dnsmasq, agent: Agent, write_config: WriteConfig) -> None:
    """The coalescer paces reloads by dnsmasq's own re-read time (issue 11), read from
    /proc after the SIGHUP: with 10,000 names it is a real, positive CPU time."""
    static = {f"n{i}.dns.test": [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(10_000)}
    write_config(static, hosts_file=False)
    agent.start()
    assert dnsmasq.query("n9999.dns.test").records == ("10.1.39.250",)

    def measured() -> dict[str, object] | None:
        r = reload_status(agent)
        return r if r.get("reread_ms") is not None else None

    r = until(measured, timeout=30)
    assert r["signalled"] is True
    cpu, wall = r["reread_ms"], r["reread_wall_ms"]
    assert isinstance(cpu, float) and isinstance(wall, float)
    assert 0 < cpu <= wall + 1  # schedstat and the wall clock differ by rounding only
    assert dnsmasq.reads()[-1] == 10_000
    # ... and it is what the reload budget was charged (on the loop, once timed).
    total = until(lambda: agent.status()["daemon"]["reread_ms_total"] or None, timeout=30)
    assert total >= cpu - 0.01
