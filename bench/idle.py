"""Idle wakeups of a real namesync-agent whose services are all absent.

Run as root from the repo root:  .venv/bin/python bench/idle.py [SECONDS]

The agent runs in the tests' private namespaces (a private /run: no system
bus, no libvirtd, no Podman socket) with every default source on, as on a
laptop without libvirtd or Podman (issue 11: "no wakeups in 60 s"). Counted
are the context switches of all its threads over the window, from
/proc/PID/task/*/status, after it is ready and has settled; and its RSS.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import ADDR_A
from bench.memory import SETTLE_S, _config, _kib
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def main() -> int:
    if not isolate("idle.py", ()):
        return 1
    window = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    with bench_root() as root:
        agent = Agent(root / "agent")
        agent.set_config(_config(root, agent, 0, ADDR_A))
        agent.start()
        try:
            assert agent.proc is not None
            pid = agent.proc.pid
            time.sleep(SETTLE_S)
            sources = {s["name"]: s["detail"] for s in agent.status()["sources"]}
            before = switches(pid)
            time.sleep(window)
            after = switches(pid)
            rss = _kib(pid, "VmRSS") / 1024
        finally:
            agent.stop()
    for name, detail in sources.items():
        print(f"  {name}: {detail}")
    print(f"context switches in {window:g} s idle, services absent: {after - before}")
    print(f"RSS with 0 names, services absent: {rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
