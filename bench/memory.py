"""RSS of a real namesync-agent at 0 / 10k / 100k static names, and its peak during a reload.

Run as root from the repo root:  .venv/bin/python bench/memory.py [N ...]

Each count runs its own agent process in the tests' private namespaces with
the default sources on (host, NetworkManager, libvirt, Podman) but their
services absent, as on a laptop without libvirtd or Podman: that is the case
issue 11's targets are set for. Steady RSS is read from /proc/PID/status once
the agent is ready and has settled (its post-sync heap freeze runs 1 s after
a sync); the reload peak is VmHWM after ``clear_refs`` reset it, across a
SIGHUP reload of a config in which one name changed its address.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import ADDR_A, ADDR_B, addresses
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.wait import until

COUNTS = (0, 10_000, 100_000)
SETTLE_S = 2.5  # the heap freeze runs 1 s after a sync; let RSS settle after it
TIMEOUT_S = 300


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _config(root: Path, agent: Agent, n: int, addr: str) -> str:
    table = addresses(n, addr)
    return toml_config(
        socket=agent.socket, addn_hosts=root / "addn-hosts", pid_file=root / "dnsmasq.pid",
        hosts_file=None, static=table, coalesce_ms=20,
        host='enabled = true\ninterfaces = ["virbr0"]',
        networkmanager="enabled = true",
        libvirt="enabled = true",
        podman=f'enabled = true\nsocket = "{root}/absent/podman.sock"\n'
               f'aardvark_dir = "{root}/absent/aardvark-dns"',
    ).replace('log_level = "debug"', 'log_level = "info"')


def _start(agent: Agent) -> None:
    """Agent.start, with a timeout for 100,000 names on a busy machine."""
    log = agent.log.open("ab")
    agent.proc = subprocess.Popen(agent.command(), stdout=log, stderr=log,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    agent._log = log
    until(agent._ready, timeout=TIMEOUT_S, what="namesync-agent ready")


def measure(root: Path, n: int, say: Callable[[str], object] | None = None
            ) -> tuple[float, float, float, float]:
    """(steady, startup peak, peak during reload, steady after reload) in MiB for n names;
    ``say`` hears which source libraries the agent loaded (status daemon.libraries)."""
    agent = Agent(root / f"agent-{n}")
    agent.set_config(_config(root, agent, n, ADDR_A))
    try:
        _start(agent)
        assert agent.proc is not None
        pid = agent.proc.pid
        time.sleep(SETTLE_S)
        steady = _kib(pid, "VmRSS")
        startup_peak = _kib(pid, "VmHWM")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        daemon = agent.status()["daemon"]
        if say is not None:
            say(f"  ({n} names: libraries loaded {daemon['libraries']})")
        agent.set_config(_config(root, agent, n, ADDR_B))
        agent.proc.send_signal(signal.SIGHUP)
        until(lambda: agent.status()["daemon"]["config_loaded"] != daemon["config_loaded"],
              timeout=TIMEOUT_S, what="config reload")
        until(lambda: agent.status()["daemon"]["syncs"] > daemon["syncs"] or n == 0,
              timeout=TIMEOUT_S, what="sync after reload")
        peak = _kib(pid, "VmHWM")
        time.sleep(SETTLE_S)
        after = _kib(pid, "VmRSS")
        return steady / 1024, startup_peak / 1024, peak / 1024, after / 1024
    finally:
        agent.stop()


def main() -> int:
    if not isolate("memory.py", ()):
        return 1
    counts = tuple(int(a) for a in sys.argv[1:]) or COUNTS
    print(f"{'names':>8} {'steady MiB':>11} {'startup peak':>13} {'reload peak MiB':>16} "
          f"{'peak/steady':>12} {'after MiB':>10}")
    with bench_root() as root:
        for n in counts:
            steady, startup, peak, after = measure(root, n, say=print)
            print(f"{n:>8} {steady:>11.1f} {startup:>13.1f} {peak:>16.1f} "
                  f"{peak / steady:>12.2f} {after:>10.1f}   (steady {steady * 1.048576:.1f} MB)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
