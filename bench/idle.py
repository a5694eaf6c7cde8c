"""Idle wakeups of a real namesync-agent whose services are all absent.

Run as root from the repo root:
    .venv/bin/python bench/idle.py [SECONDS] [--libvirtd [--libvirtd-keepalive-off]
                                   [--keep-connected] [--guest]] [--podman] [--bus]
                                   [--no-podman]

The agent runs in the tests' private namespaces (a private /run: no system
bus, no libvirtd, no Podman socket) with every default source on, as on a
laptop without libvirtd or Podman (issue 11: "no wakeups in 60 s"). Counted
are the context switches of all its threads over the window, from
/proc/PID/task/*/status, after it is ready and has settled; and its RSS.
With ``--libvirtd`` a private libvirtd (LXC driver, one NAT network) is
there and watched instead: the case "with the services present";
``--libvirtd-keepalive-off`` runs it with ``keepalive_interval = -1`` in its
libvirtd.conf (its own keepalive probes off, a server setting). With
libvirtd the window starts once the libvirt source has released its idle
connection (``[libvirt] release_idle_s``, default 10 s);
``--keep-connected`` sets ``release_idle_s = 0`` (never released: libvirtd's
pings are counted), ``--guest`` runs one LXC guest with a lease meanwhile.
``--podman``
runs a private ``podman system service`` for the Podman source, ``--bus`` a
private system bus (with no NetworkManager on it).
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
from tests.harness.wait import until


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def quiescent(pid: int, quiet_s: float = 1.0, timeout: float = 30.0) -> int:
    """The context switches of ``pid`` once a ``quiet_s`` span passes without one."""
    deadline = time.monotonic() + timeout
    last = switches(pid)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = switches(pid)
        if now == last:
            return now
        last = now
    return last


def _libvirtd(root: Path, stack: contextlib.ExitStack, config: str) -> str:
    from tests.harness.libvirt import Libvirtd

    daemon = Libvirtd(root / "libvirt")
    stack.callback(daemon.teardown)
    daemon.start()
    if "--libvirtd-keepalive-off" in sys.argv:  # libvirtd's own probes, off
        with (daemon.etc_copy / "libvirtd.conf").open("a") as conf:
            conf.write("\nkeepalive_interval = -1\n")
        daemon.restart()
    net = daemon.network()
    if "--guest" in sys.argv:  # a running domain, named from its lease
        daemon.guest("idler", [net]).wait_for_lease()
    release = 0 if "--keep-connected" in sys.argv else 10
    config = config.replace("[libvirt]\nenabled = true",
                            '[libvirt]\nenabled = true\nuris = ["lxc:///system"]\n'
                            f"release_idle_s = {release}")
    assert "lxc:///system" in config, config
    return config


def _libvirt_state(agent: Agent) -> str:
    return next(s["state"] for s in agent.status()["sources"] if s["kind"] == "libvirt")


def _podman(root: Path, stack: contextlib.ExitStack, config: str) -> str:
    from tests.harness.podman import Podman

    podman = Podman(root / "podman")
    stack.callback(podman.teardown)
    podman.setup().start_service()
    absent = f'socket = "{root}/absent/podman.sock"'
    assert absent in config, config
    return config.replace(absent, f'socket = "{podman.socket}"')


def _services(root: Path, stack: contextlib.ExitStack,
              config: str) -> tuple[str, dict[str, str], list[str]]:
    """The config, the agent's environment and the names of the services present."""
    env: dict[str, str] = {}
    present = []
    if "--libvirtd" in sys.argv:
        config = _libvirtd(root, stack, config)
        present.append("libvirtd" + (" (keepalive_interval = -1)"
                                     if "--libvirtd-keepalive-off" in sys.argv else "")
                       + (" + 1 guest" if "--guest" in sys.argv else "")
                       + (", kept connected" if "--keep-connected" in sys.argv
                          else ", connection released while idle"))
    if "--podman" in sys.argv:
        config = _podman(root, stack, config)
        present.append("Podman")
    if "--bus" in sys.argv:
        from tests.harness.dbus import SystemBus

        bus = SystemBus(root / "bus").start()
        stack.callback(bus.stop)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        present.append("system bus")
    if "--no-podman" in sys.argv:  # to tell one source's wakeups from the rest
        config = config.replace("[podman]\nenabled = true", "[podman]\nenabled = false")
        assert "[podman]\nenabled = false" in config, config
    return config, env, present


def main() -> int:
    if not isolate("idle.py", ()):
        return 1
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    window = float(args[0]) if args else 60.0
    with bench_root() as root, contextlib.ExitStack() as stack:
        config, env, present = _services(root, stack, _config(root, Agent(root / "agent"),
                                                               0, ADDR_A))
        agent = Agent(root / "agent", env=env)
        agent.set_config(config)
        agent.start()
        try:
            assert agent.proc is not None
            pid = agent.proc.pid
            time.sleep(SETTLE_S)
            if "--libvirtd" in sys.argv and "--keep-connected" not in sys.argv:
                until(lambda: _libvirt_state(agent) == "released", timeout=30,
                      interval=0.2, what="the idle libvirt connection released")
            sources = {s["name"]: s["detail"] for s in agent.status()["sources"]}
            nm = agent.status()["networkmanager"]
            # The agent answers those queries and then sees each client hang up: the
            # window starts once its threads are back asleep, not while it closes them.
            before = quiescent(pid)
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
    print(f"  networkmanager: bus {nm['bus']}, {nm['advice']}")
    which = (", ".join(present) + " present") if present else "services absent"
    print(f"context switches in {window:g} s idle, {which}: {after - before}")
    print(f"RSS with 0 names, {which}: {rss:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
