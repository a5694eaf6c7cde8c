"""The systemd-resolved path beside the hosts-file path: change -> answer at resolved's stub.

    sudo .venv/bin/python -m bench.resolved_latency [--changes N] [--coalesce-ms MS]

Inside a private mount + network namespace (as the tests are) it runs a real
systemd-resolved 252 from the tests' cached rootfs (tests/harness/resolved.py,
with a writable /etc of its own so it has an /etc/hosts namesync can edit) and
the real namesync-agent following a bridge's address as ``host.dns.host``, once
per path:

- resolved: namesync's own dnsmasq, the zones routed to it on namesync0
  (what a Fedora host gets);
- hosts:    namesync's /etc/hosts block only ([resolved] enabled = false), which
  resolved re-reads at most every 2 s.

For each path, N times each: an address added to the bridge (``ip addr add``)
-> the first answer with it; the address removed -> the first answer without it
(NXDOMAIN on the resolved path; on the hosts path the name then goes to DNS,
which has nothing); systemd-resolved restarted (SIGTERM, new process) -> the
first current answer, counted from the new process's spawn (on the resolved
path: with namesync done registering the zones again); namesync0 deleted
(resolved path only) -> answered again with namesync done re-registering the
new link (resolved answers REFUSED in between). Before each add and remove one
question is asked, then a random 0-2 s pause, so a change lands anywhere in resolved's 2 s hosts
re-check window, as it does for programs that look names up now and then.

Questions go to 127.0.0.53:53 over UDP, hand-built, one in flight, 0.1 ms apart
(bench/dnspoll.py): a dig process costs 40-50 ms here, more than the path.
Times include one ``ip`` process (its cost is printed) and namesync's
coalescing window ([daemon] coalesce_ms, default 20 ms). Everything started is
stopped by pid on exit.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.dnspoll import Poller
from bench.setup import bench_root, isolate
from tests.harness.agent import toml_config
from tests.harness.nm import SessionNS
from tests.harness.resolved import STUB, NetnsAgent, Resolved
from tests.harness.rootfs import build as build_rootfs
from tests.harness.wait import until

NAME = "host.dns.host"
BRIDGE = "nsbenchbr0"
LINK = "namesync0"
TIMEOUT_S = 15.0
CHANGES = ("add", "remove", "resolved restart", "link deleted")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def ip_cost_ms(n: int = 10) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        ip("-o", "link", "show", "dev", "lo")
        times.append((time.monotonic() - t0) * 1000)
    return statistics.median(times)


def wait(poller: Poller, done: Callable[[int, tuple[str, ...]], bool], what: str) -> float:
    """Monotonic time of the first answer for which ``done`` holds (a restarting resolved
    refusing the port counts as no answer)."""
    return poller.wait_until(NAME, done, what, TIMEOUT_S)


def has(address: str) -> Callable[[int, tuple[str, ...]], bool]:
    return lambda rcode, addrs: rcode == 0 and addrs == (address,)


def lacks(address: str) -> Callable[[int, tuple[str, ...]], bool]:
    return lambda rcode, addrs: address not in addrs


class Run:
    def __init__(self, root: Path, rootfs: Path, path: str, coalesce_ms: int) -> None:
        self.path = path
        self.resolved = Resolved(root / f"resolved-{path}", rootfs, SessionNS(),  # type: ignore[arg-type]
                                 own_etc=True)
        self.agent = NetnsAgent(root / f"agent-{path}", SessionNS(),  # type: ignore[arg-type]
                                {"DBUS_SYSTEM_BUS_ADDRESS": self.resolved.bus_address})
        self.coalesce_ms = coalesce_ms
        self.poller: Poller | None = None
        self.times: dict[str, list[float]] = {c: [] for c in CHANGES}
        self.warnings: list[str] = []

    def start(self) -> None:
        self.resolved.start()
        routed = self.path == "resolved"
        a = self.agent
        a.set_config(toml_config(
            socket=a.socket, addn_hosts=(a.dir / "addn-hosts") if routed else None,
            pid_file=a.dir / "no-such-dnsmasq.pid", hosts_file=self.resolved.hosts_file,
            coalesce_ms=self.coalesce_ms,
            host=f'name = "{NAME}"\ninterfaces = ["{BRIDGE}"]',
            resolved="enabled = true" if routed else "enabled = false"))
        a.start()
        if routed:
            until(lambda: (a.status()["dns_path"]["route"] or {}).get("registered"),
                  timeout=20, what="zones registered with systemd-resolved")
        self.poller = Poller(53, 0.0001, host=STUB)

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.close()
        self.agent.stop()
        self.warnings = self._warnings()
        self.resolved.stop()

    def _record(self, change: str, t0: float, at: float) -> None:
        self.times[change].append((at - t0) * 1000)

    def add_remove(self, i: int) -> None:
        assert self.poller is not None
        address = f"10.77.{i // 250}.{i % 250 + 1}"
        for change, args, done in (("add", ("add",), has(address)),
                                   ("remove", ("del",), lacks(address))):
            self.poller.wait_until(NAME, lambda *_: True, "any answer", TIMEOUT_S)
            time.sleep(random.uniform(0, 2))
            t0 = time.monotonic()
            ip("addr", *args, f"{address}/32", "dev", BRIDGE)
            self._record(change, t0, wait(self.poller, done, change))

    def restart(self, address: str) -> None:
        assert self.poller is not None
        routed = self.path == "resolved"
        before = self._registrations() if routed else 0

        def back(rcode: int, addrs: tuple[str, ...]) -> bool:
            # On the resolved path: and namesync done registering (the next restart
            # must not land in the middle of its six calls).
            return has(address)(rcode, addrs) and (not routed or self._registrations() > before)

        self.resolved.stop_resolved()
        t0 = time.monotonic()
        self.resolved.start_resolved()
        self._record("resolved restart", t0, wait(self.poller, back, "back"))

    def link_deleted(self, address: str) -> None:
        assert self.poller is not None
        before = self._registrations()

        def back(rcode: int, addrs: tuple[str, ...]) -> bool:
            # Current, and namesync done registering the new link: while it pushes the
            # six settings one by one resolved may still answer REFUSED in between.
            return has(address)(rcode, addrs) and self._registrations() > before

        t0 = time.monotonic()
        ip("link", "del", LINK)
        self._record("link deleted", t0, wait(self.poller, back, "back"))

    def _warnings(self) -> list[str]:
        """The agent's warnings that can explain a slow row (retries, reconnects); the
        bench's own setup warnings (no dnsmasq pid file, the address gone) are left out."""
        benign = ("dnsmasq not signalled", "refused to publish", "link was recreated")
        out = []
        for line in self.agent.log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("warning", "error") and not any(
                    b in str(entry.get("event")) for b in benign):
                out.append(f"{entry.get('timestamp')} {entry.get('event')}: "
                           f"{entry.get('error') or entry.get('reason') or ''}")
        return out

    def _registrations(self) -> int:
        route = self.agent.status()["dns_path"]["route"] or {}
        return int(route.get("registrations", 0))

    def measure(self, changes: int) -> None:
        for i in range(changes):
            self.add_remove(i)
        address = "10.77.255.1"
        ip("addr", "add", f"{address}/32", "dev", BRIDGE)
        assert self.poller is not None
        wait(self.poller, has(address), "answered")
        for _ in range(changes):
            self.restart(address)
        if self.path == "resolved":
            for _ in range(changes):
                self.link_deleted(address)
        ip("addr", "del", f"{address}/32", "dev", BRIDGE)


def cell(xs: list[float]) -> str:
    if not xs:
        return "—"
    p90 = statistics.quantiles(xs, n=10, method="inclusive")[8] if len(xs) > 1 else xs[0]
    return f"{statistics.median(xs):.1f} / {p90:.1f} / {max(xs):.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10, help="repetitions of each change")
    parser.add_argument("--coalesce-ms", type=int, default=20,
                        help="namesync's [daemon] coalesce_ms (the default is 20)")
    args = parser.parse_args()
    if not isolate("resolved_latency", ("ip", "dnsmasq", "nsenter", "busctl")):
        return 2
    rootfs = build_rootfs()
    results: dict[str, dict[str, list[float]]] = {}
    warnings: dict[str, list[str]] = {}
    with bench_root() as root:
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("link", "set", BRIDGE, "up")
        try:
            for path in ("resolved", "hosts"):
                run = Run(root, rootfs, path, args.coalesce_ms)
                try:
                    run.start()
                    run.measure(args.changes)
                finally:
                    run.stop()
                results[path] = run.times
                warnings[path] = run.warnings
        finally:
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
        cost = ip_cost_ms()
    print(f"systemd-resolved 252, {args.changes} of each change, coalesce_ms "
          f"{args.coalesce_ms}; ms from the change to the first current answer at "
          f"{STUB} (median / p90 / max); one `ip` run costs {cost:.1f} ms and is included")
    print()
    print("| change | resolved path (namesync's dnsmasq on namesync0) "
          "| hosts-file path (/etc/hosts block) |")
    print("|---|---|---|")
    for change in CHANGES:
        print(f"| {change} | {cell(results['resolved'][change])} "
              f"| {cell(results['hosts'][change])} |")
    for path, lines in warnings.items():
        if lines:
            print(f"\nnamesync warnings on the {path} path:")
            print("\n".join(f"  {ln}" for ln in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
