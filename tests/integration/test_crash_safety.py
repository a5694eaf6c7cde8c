"""SIGKILL the daemon while it rewrites large files: readers only ever see whole files."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path

import pytest

from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.wait import until

pytestmark = pytest.mark.integration

N = 10_000


def big_config(agent: Agent, dnsmasq: Dnsmasq, hosts: Path, variant: int) -> str:
    static = "".join(
        f'[[static]]\nname = "h{i}.dns.test"\naddresses = ["10.{variant}.{i // 256}.{i % 256}"]\n'
        for i in range(N)
    )
    return toml_config(socket=agent.socket, addn_hosts=dnsmasq.addn_hosts,
                       pid_file=dnsmasq.pid_file, hosts_file=hosts, coalesce_ms=0) + static


def test_sigkill_mid_rewrite_never_leaves_partial_file(dnsmasq: Dnsmasq, public_tmp: Path,
                                                       tmp_path: Path) -> None:
    hosts = public_tmp / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    agent = Agent(tmp_path / "agent")
    configs = {v: big_config(agent, dnsmasq, hosts, v) for v in (1, 2)}
    files = (dnsmasq.addn_hosts, hosts)

    # Learn the two complete versions of each file from the daemon itself.
    versions: dict[Path, set[bytes]] = {f: set() for f in files}
    agent.set_config(configs[1])
    agent.start()
    for f in files:
        versions[f].add(f.read_bytes())
    agent.set_config(configs[2])
    agent.reload()
    until(lambda: all(f.read_bytes() not in versions[f] for f in files), timeout=30,
          what="second version written")
    for f in files:
        versions[f].add(f.read_bytes())
    agent.stop()
    assert all(len(v) == 2 for v in versions.values())

    seen_bad: list[str] = []
    stop_reader = threading.Event()

    def reader() -> None:
        while not stop_reader.is_set():
            for f in files:
                data = f.read_bytes()
                if data not in versions[f]:
                    seen_bad.append(f"{f.name}: {len(data)} bytes")

    rng = random.Random(1234)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for round_no in range(6):
            variant = 1 + round_no % 2
            agent.set_config(configs[variant])
            agent.start()
            # Keep it rewriting: flip the config and SIGHUP, then kill at a random moment.
            kill_after = rng.uniform(0.05, 1.0)
            flips = 0
            assert agent.proc is not None
            deadline = threading.Event()
            timer = threading.Timer(kill_after, deadline.set)
            timer.start()
            while not deadline.is_set():
                variant = 3 - variant
                agent.set_config(configs[variant])
                agent.proc.send_signal(signal.SIGHUP)
                flips += 1
                deadline.wait(0.02)
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait()
            agent.stop()
            for f in files:
                assert f.read_bytes() in versions[f], f"round {round_no}: {f.name} is partial"
    finally:
        stop_reader.set()
        thread.join()
    assert seen_bad == []

    # A killed writer may leave its temp file; the next start removes it.
    agent.start()
    assert not list(public_tmp.rglob(".*.namesync-*"))
    agent.stop()
