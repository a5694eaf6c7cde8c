"""How long the libvirt source's blocking calls take on a real libvirtd: what
``[libvirt] call_timeout_s`` must leave room for (a slow but alive libvirtd must
not be reported as hung).

Run as root from the repo root:
    .venv/bin/python bench/libvirt_calls.py [--guests N] [--rounds N] [--busy N]

A private libvirtd (LXC driver, one NAT network, N busybox guests with leases),
in the tests' private namespaces; ``--busy N`` runs N busy loops meanwhile (on
this 2-CPU machine, shared with other jobs). Each round times, in a worker
thread as the source makes them: openReadOnly, the listing (client.read_all:
listAllDomains, XMLDesc, listAllNetworks, DHCPLeases), one domain looked up
again, the networks read again, close. Prints median, p95 and max per call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.setup import bench_root, isolate

URI = "lxc:///system"


def _timed(times: dict[str, list[float]], what: str, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    out = fn(*args)
    times.setdefault(what, []).append((time.perf_counter() - start) * 1000)
    return out


def _round(lv: Any, times: dict[str, list[float]]) -> None:
    from agent.sources.libvirt import client

    conn = _timed(times, "openReadOnly", lv.openReadOnly, URI)
    inv = _timed(times, "listing (read_all)", client.read_all, lv, conn)
    uuid = next(iter(inv.domains))
    _timed(times, "lookupByUUIDString+XMLDesc", client.lookup_domain, lv, conn, uuid)
    _timed(times, "listAllNetworks+XMLDesc",
           functools.partial(client.read_networks, leases=False), lv, conn, client.Inventory())
    _timed(times, "close", conn.close)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--busy", type=int, default=0)
    opts = parser.parse_args()
    if not isolate("libvirt_calls.py", ()):
        return 1
    import libvirt

    from tests.harness.libvirt import Libvirtd

    times: dict[str, list[float]] = {}
    with bench_root() as root, contextlib.ExitStack() as stack:
        daemon = Libvirtd(root / "libvirt")
        stack.callback(daemon.teardown)
        daemon.start()
        net = daemon.network()
        for i in range(opts.guests):
            daemon.guest(f"g{i}", [net]).wait_for_lease()
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(opts.busy)]
        for proc in busy:
            stack.callback(proc.wait)
            stack.callback(proc.kill)
        load = Path("/proc/loadavg").read_text().split()[0]
        for _ in range(opts.rounds):
            _round(libvirt, times)
        load_after = Path("/proc/loadavg").read_text().split()[0]
    print(f"{opts.guests} guests, {opts.busy} busy loops, {opts.rounds} rounds, "
          f"load {load} -> {load_after}")
    print(f"{'call':32} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}")
    for what, ms in times.items():
        ms.sort()
        p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
        print(f"{what:32} {statistics.median(ms):10.1f} {p95:10.1f} {ms[-1]:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
