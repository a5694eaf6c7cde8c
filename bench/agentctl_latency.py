"""How long agentctl takes to answer, as a user runs it, at 10 and 10,000 names.

A real namesync-agent with N [[static]] names feeding a real dnsmasq; each
command is run as a subprocess (Python start-up included, as a user sees it)
and timed; median and max of RUNS. Prints numbers, asserts nothing.

    sudo .venv/bin/python bench/agentctl_latency.py [RUNS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq

COMMANDS = (("status",), ("status", "--json"), ("list", "--json"), ("list", "n5.dns.test"),
            ("explain", "n5.dns.test"), ("explain", "missing.dns.test"))


def run(agent: Agent, names: int, runs: int) -> None:
    for cmd in COMMANDS:
        times = []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "agent.cli.agentctl", *cmd, "--socket",
                            str(agent.socket)], capture_output=True, check=False, timeout=60)
            times.append((time.monotonic() - t0) * 1000)
        median = statistics.median(times)
        print(f"{names:>6} names  agentctl {' '.join(cmd):<28} median {median:7.1f} ms"
              f"  max {max(times):7.1f} ms")


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    if not isolate("agentctl_latency", ("dnsmasq",)):
        return 1
    with bench_root() as root:
        for names in (10, 10_000):
            dnsmasq = Dnsmasq(root / f"dnsmasq{names}").start()
            agent = Agent(root / f"agent{names}")
            static = {f"n{i}.dns.test": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"]
                      for i in range(names)}
            agent.set_config(toml_config(socket=agent.socket, addn_hosts=dnsmasq.addn_hosts,
                                         pid_file=dnsmasq.pid_file, hosts_file=None,
                                         static=static))
            try:
                agent.start()
                run(agent, names, runs)
            finally:
                agent.stop()
                dnsmasq.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
