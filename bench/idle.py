"""Idle wakeups of a real namesync-agent whose services are all absent.

Run as root from the repo root:
    .venv/bin/python bench/idle.py [SECONDS] [--libvirtd] [--no-podman]

The agent runs in the tests' private namespaces (a private /run: no system
bus, no libvirtd, no Podman socket) with every default source on, as on a
laptop without libvirtd or Podman (issue 11: "no wakeups in 60 s"). Counted
are the context switches of all its threads over the window, from
/proc/PID/task/*/status, after it is ready and has settled; and its RSS.
With ``--libvirtd`` a private libvirtd (LXC driver, one NAT network) is
there and watched instead: the case "with the services present".
``--no-podman`` turns the Podman source off; IDLE_STRACE=FILE writes an
strace of the window there instead of sleeping through it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
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
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    window = float(args[0]) if args else 60.0
    with bench_root() as root, contextlib.ExitStack() as stack:
        agent = Agent(root / "agent")
        config = _config(root, agent, 0, ADDR_A)
        if "--libvirtd" in sys.argv:
            from tests.harness.libvirt import Libvirtd

            daemon = Libvirtd(root / "libvirt")
            stack.callback(daemon.teardown)
            daemon.start()
            daemon.network()
            config = config.replace("[libvirt]\nenabled = true",
                                    '[libvirt]\nenabled = true\nuris = ["lxc:///system"]')
            assert "lxc:///system" in config, config
        if "--no-podman" in sys.argv:  # to tell one source's wakeups from the rest
            config = config.replace("[podman]\nenabled = true", "[podman]\nenabled = false")
            assert "[podman]\nenabled = false" in config, config
        agent.set_config(config)
        agent.start()
        try:
            assert agent.proc is not None
            pid = agent.proc.pid
            time.sleep(SETTLE_S)
            sources = {s["name"]: s["detail"] for s in agent.status()["sources"]}
            before = switches(pid)
            if os.environ.get("IDLE_STRACE"):  # where the wakeups come from, if any
                subprocess.run(["timeout", str(window), "strace", "-f", "-tt", "-p", str(pid),
                                "-o", os.environ["IDLE_STRACE"]])
            else:
                time.sleep(window)
            after = switches(pid)
            rss = _kib(pid, "VmRSS") / 1024
        finally:
            agent.stop()
    for name, detail in sources.items():
        print(f"  {name}: {detail}")
    which = "libvirtd present" if "--libvirtd" in sys.argv else "services absent"
    print(f"context switches in {window:g} s idle, {which}: {after - before}")
    print(f"RSS with 0 names, {which}: {rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
