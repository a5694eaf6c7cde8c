"""A libvirt guest's name with the source's connection released vs kept, side by side.

Run as root from the repo root:
    .venv/bin/python bench/libvirt_release_latency.py [--guests N]

In the tests' private namespaces: one private libvirtd (LXC driver, a NAT
network) and two real namesync-agents watching it, each feeding its own
dnsmasq: one with ``[libvirt] release_idle_s = 1`` (released while idle: it
holds no connection and is woken by libvirt's files, see
agent/sources/libvirt/release.py), one with ``release_idle_s = 0`` (always
connected, following libvirt's events). Before each step the releasing
agent is waited for until its source says "released". Then, per guest:

* ``virsh start`` -> answer: from just before ``virDomainCreate()`` until each
  dnsmasq answers ``<guest>.dns.libvirt`` with the leased address (this
  includes the guest's boot and DHCP); lease -> answer from the moment the
  lease is in libvirt's ``<bridge>.status``;
* destroy -> NXDOMAIN: from ``virDomainDestroy()`` returning.

Both dnsmasqs are asked from their own threads, started before the step.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dnspoll import Poller, summary, wait_nxdomain
from bench.libvirt_latency import lease_seen
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, Network, lease_file
from tests.harness.wait import until

ZONE = "dns.libvirt"
MODES = ("released", "connected")


def _state(agent: Agent) -> str:
    return next(s["state"] for s in agent.status()["sources"] if s["kind"] == "libvirt")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guests", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()
    if not isolate("libvirt_release_latency.py", ("dnsmasq", "libvirtd", "virsh")):
        return 1
    with bench_root() as root:
        daemon = Libvirtd(root / "libvirt")
        dns = {m: Dnsmasq(root / f"dnsmasq-{m}", zones=(ZONE,)) for m in MODES}
        agents = {m: Agent(root / f"agent-{m}") for m in MODES}
        try:
            for d in dns.values():
                d.start()
            daemon.start()
            net = daemon.network()
            for mode, agent in agents.items():
                agent.set_config(toml_config(
                    socket=agent.socket, addn_hosts=dns[mode].addn_hosts,
                    pid_file=dns[mode].pid_file, hosts_file=None,
                    libvirt='uris = ["lxc:///system"]\n'
                            f"release_idle_s = {1 if mode == 'released' else 0}"))
                agent.start()
            return _measure(args, daemon, net, dns, agents["released"])
        finally:
            for agent in agents.values():
                agent.stop()
            daemon.teardown()
            for d in dns.values():
                d.stop()


def _measure(args: argparse.Namespace, daemon: Libvirtd, bridge_net: Network,
             dns: dict[str, Dnsmasq], releasing: Agent) -> int:
    pollers = {m: Poller(dns[m].port, 0.0001) for m in MODES}
    start: dict[str, list[float]] = {m: [] for m in MODES}
    lease: dict[str, list[float]] = {m: [] for m in MODES}
    gone: dict[str, list[float]] = {m: [] for m in MODES}
    status = lease_file(bridge_net.bridge)

    def released() -> None:
        until(lambda: _state(releasing) == "released", timeout=30, interval=0.05,
              what="the releasing agent's source released")

    try:
        for i in range(args.guests):
            name = f"rel{i}.{ZONE}"
            guest = daemon.guest(f"rel{i}", [bridge_net], start=False)
            mac = guest.macs()[0]
            released()
            waiters, got = _race(pollers, lambda p, n=name: _answer(p, n, args.timeout))
            t0 = time.monotonic()
            guest.start()
            at, _ = lease_seen(status, mac, args.timeout)
            for t in waiters:
                t.join()
            for m in MODES:
                start[m].append((got[m] - t0) * 1000)
                lease[m].append((got[m] - at) * 1000)
            released()
            waiters, ends = _race(pollers,
                                  lambda p, n=name: wait_nxdomain(p, n, args.timeout))
            guest.obj().destroy()
            t1 = time.monotonic()
            for t in waiters:
                t.join()
            for m in MODES:
                gone[m].append((ends[m] - t1) * 1000)
    finally:
        for p in pollers.values():
            p.close()
    print(f"libvirt name latency, released vs connected: Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}; {args.guests} LXC guests, "
          "one at a time; coalesce_ms = 20; ms")
    for m in MODES:
        print(summary(f"{m}: start() -> answer", start[m], 36))
        print(summary(f"{m}: lease in file -> answer", lease[m], 36))
        print(summary(f"{m}: destroy() -> NXDOMAIN", gone[m], 36))
    return 0


def _race(pollers: dict[str, Poller], wait: Callable[[Poller], float]
          ) -> tuple[list[threading.Thread], dict[str, float]]:
    """One thread per dnsmasq, started now, each recording when ``wait`` returned."""
    out: dict[str, float] = {}
    threads = [threading.Thread(target=lambda m=m: out.__setitem__(m, wait(pollers[m])))
               for m in MODES]
    for t in threads:
        t.start()
    return threads, out


def _answer(poller: Poller, name: str, timeout: float) -> float:
    """When ``name`` first answers with an A record."""
    return poller.wait_until(name, lambda rcode, addrs: rcode == 0 and bool(addrs),
                             f"{name} answers", timeout)


if __name__ == "__main__":
    sys.exit(main())
