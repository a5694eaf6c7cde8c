"""How fast a libvirt guest's name follows its lease, and vanishes on destroy.

Run as root from the repo root:  .venv/bin/python bench/libvirt_latency.py

Inside a private mount + network namespace (as the tests are) it starts a real
dnsmasq, a private libvirtd (LXC driver) with a NAT network, and the real
namesync-agent watching lxc:///system. Then, for each of N busybox LXC guests
(default 20), one at a time:

* lease -> answer: from the moment the guest's lease is in libvirt's
  ``<bridge>.status`` file (the file is stat()ed every 100 us and read when it
  changes, so this clock starts within ~0.1 ms of the rename) until dnsmasq
  answers ``<guest>.dns.libvirt`` with the leased address;
* destroy -> NXDOMAIN: from ``virDomainDestroy()`` returning (the guest is
  stopped; its lease stays in the file) until dnsmasq answers NXDOMAIN.

dnsmasq is asked over UDP, one query in flight, 100 us apart. Both include
namesync's coalescing window ([daemon] coalesce_ms, default 20 ms): run with
--coalesce-ms 0 to see the pipeline's own latency. Everything started is
stopped by pid on exit.

``--paired`` (and ``compare_rows`` for bench/compare.py) measures the same
lease side by side with libvirt's own dnsmasq, the physical floor (the
process that hands out the lease answers the guest's DHCP name at once):
two threads started before the guest ask namesync's dnsmasq for
``<guest>.dns.libvirt`` and libvirt's dnsmasq (the network's gateway, port
53) for ``<guest>``; the row is the median of the per-guest differences.
namesync's addn-hosts file lives under /run there, a tmpfs as in the
default config (/run/namesync): on a disk, its two fsyncs alone measured
1-28 ms on this busy machine.

``--paired`` also times, per guest, the DHCPACK libvirt's dnsmasq sends on
the bridge (a packet socket of the bench's own, as the agent's DHCPACK trigger
reads it), and ``--trigger off|on|both`` runs it with ``[libvirt]
dhcp_trigger`` off (the lease file alone: the "before", and the config's
default), on, or both one after the other in the same run.

``--timeline`` shows where libvirt's head start comes from, per guest, in ms
after libvirt's own dnsmasq answers the guest's name: when the lease helper
first touches the lease directory (inotify IN_OPEN of ``<bridge>.status``,
which it reads before writing the new one), when it renames the new file in,
and when namesync's dnsmasq answers. ``--busy N`` runs N busy loops meanwhile
(the load is printed either way).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dnspoll import Poller, summary, wait_nxdomain
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.libvirt import Libvirtd, lease_file

ZONE = "dns.libvirt"


def lease_seen(path: Path, mac: str, timeout: float) -> tuple[float, str]:
    """Monotonic time at which ``path`` first holds a lease for ``mac``, and its address."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = None
        if key is not None and key != last:
            last = key
            at = time.monotonic()
            try:
                entries = json.loads(path.read_bytes())
            except (OSError, ValueError):
                entries = []
            for e in entries:
                if e.get("mac-address") == mac and e.get("expiry-time", 0) > time.time():
                    return at, str(e["ip-address"])
        time.sleep(0.0001)
    raise TimeoutError(f"no lease for {mac} in {path} within {timeout}s")


class AckTimes:
    """When libvirt's dnsmasq sent each DHCPACK on a bridge, by MAC (a thread)."""

    def __init__(self, bridge: str, servers: tuple[Any, ...]) -> None:
        import socket

        from agent.sources.libvirt.dhcp_ack import open_socket

        self.sent: dict[str, float] = {}
        self._servers = servers
        self._sock = open_socket(bridge)  # the agent's own filter: outgoing 67 -> 68 only
        self._sock.setblocking(True)
        self._sock.settimeout(0.2)
        self._timeout = socket.timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from agent.sources.libvirt.dhcp_ack import Refused, parse_ack

        while not self._stop.is_set():
            try:
                data, addr = self._sock.recvfrom(2048)
            except self._timeout:
                continue
            except OSError:
                return
            at = time.monotonic()
            with contextlib.suppress(Refused):
                ack = parse_ack(data, addr[2], self._servers)
                if ack is not None:
                    self.sent.setdefault(ack.mac, at)

    def wait(self, mac: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while mac not in self.sent:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no DHCPACK seen for {mac}")
            time.sleep(0.002)
        return self.sent[mac]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@dataclass
class Paired:
    """Per guest, ms after its lease reached the file: namesync's answer, libvirt's,
    and libvirt's dnsmasq's DHCPACK on the bridge (negative: before the file)."""

    host: list[float] = field(default_factory=list)
    libvirt: list[float] = field(default_factory=list)
    ack: list[float] = field(default_factory=list)

    def lag(self) -> list[float]:
        return [h - v for h, v in zip(self.host, self.libvirt, strict=True)]


def paired(root: Path, guests: int, coalesce_ms: int, timeout: float,
           dhcp_trigger: bool = True) -> Paired:
    """Lease -> answer at namesync's dnsmasq and at libvirt's, guest by guest."""
    from agent.sources.libvirt.dhcp_ack import dhcp_servers
    from bench.compare import Watch

    run_dir = Path("/run") / root.name  # a tmpfs, like the default /run/namesync
    run_dir.mkdir(mode=0o755, exist_ok=True)
    dnsmasq = Dnsmasq(run_dir / "dnsmasq", zones=(ZONE,)).start()
    daemon = Libvirtd(root / "libvirt-paired")
    agent = Agent(root / "agent-paired")
    out = Paired()
    try:
        daemon.start()
        net = daemon.network()
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
            hosts_file=None, coalesce_ms=coalesce_ms,
            libvirt=f'uris = ["lxc:///system"]\ndhcp_trigger = {str(dhcp_trigger).lower()}'))
        agent.start()
        host, lv = Watch(dnsmasq.port), Watch(53, net.gateway)
        acks = AckTimes(net.bridge, dhcp_servers(net.obj().XMLDesc(0)))
        try:
            status = lease_file(net.bridge)
            for i in range(guests):
                guest = daemon.guest(f"pair{i}", [net], start=False)
                mac = guest.macs()[0]
                host.want(f"pair{i}.{ZONE}")
                lv.want(f"pair{i}")
                guest.start()
                at, _ = lease_seen(status, mac, timeout)
                host.wait([f"pair{i}.{ZONE}"], timeout)
                lv.wait([f"pair{i}"], timeout)
                out.host.append((host.answered[f"pair{i}.{ZONE}"][0] - at) * 1000)
                out.libvirt.append((lv.answered[f"pair{i}"][0] - at) * 1000)
                out.ack.append((acks.wait(mac, timeout) - at) * 1000)
                guest.destroy()
        finally:
            acks.close()
            host.close()
            lv.close()
    finally:
        agent.stop()
        daemon.teardown()
        dnsmasq.stop()
    return out


class LeaseDirEvents:
    """Every inotify event in the lease directory, with its monotonic time (a thread)."""

    def __init__(self, directory: Path) -> None:
        from asyncinotify import Inotify, Mask

        self.events: list[tuple[float, Any, str]] = []
        self._inotify = Inotify()
        self._inotify.add_watch(directory, Mask.OPEN | Mask.CREATE | Mask.CLOSE_WRITE
                                | Mask.MOVED_TO)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(Exception):  # closed: the bench is over
            while (event := self._inotify.sync_get()) is not None:
                self.events.append((time.monotonic(), event.mask, str(event.name or "")))

    def wait(self, name: str, mask: Any, timeout: float) -> float:
        """The time of the first ``mask`` event on ``name`` (this thread may lag)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [t for t, m, n in list(self.events) if n == name and m & mask]
            if found:
                return found[0]
            time.sleep(0.01)
        raise TimeoutError(f"no {mask} on {name}")

    def close(self) -> None:
        self._inotify.close()


def timeline(root: Path, guests: int, timeout: float) -> list[tuple[float, float, float]]:
    """Per guest, ms after libvirt's dnsmasq answered: the helper's first look at the
    lease file, the new file renamed in, namesync's answer."""
    from asyncinotify import Mask

    from bench.compare import Watch

    run_dir = Path("/run") / root.name
    run_dir.mkdir(mode=0o755)
    dnsmasq = Dnsmasq(run_dir / "dnsmasq", zones=(ZONE,)).start()
    daemon = Libvirtd(root / "libvirt-timeline")
    agent = Agent(root / "agent-timeline")
    rows = []
    try:
        daemon.start()
        net = daemon.network()
        agent.set_config(toml_config(
            socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
            hosts_file=None, libvirt='uris = ["lxc:///system"]'))
        agent.start()
        status = lease_file(net.bridge)
        seen = LeaseDirEvents(status.parent)
        host, lv = Watch(dnsmasq.port), Watch(53, net.gateway)
        try:
            for i in range(guests):
                guest = daemon.guest(f"tl{i}", [net], start=False)
                host.want(f"tl{i}.{ZONE}")
                lv.want(f"tl{i}")
                seen.events.clear()
                guest.start()
                host.wait([f"tl{i}.{ZONE}"], timeout)
                lv.wait([f"tl{i}"], timeout)
                at = lv.answered[f"tl{i}"][0]
                renamed = seen.wait(status.name, Mask.MOVED_TO, timeout)
                ours = [(t, m) for t, m, n in seen.events if n == status.name]
                # The helper reads the old file before writing the new one: its first look.
                opened = max(t for t, m in ours if m & Mask.OPEN and t <= renamed)
                rows.append(((opened - at) * 1000, (renamed - at) * 1000,
                             (host.answered[f"tl{i}.{ZONE}"][0] - at) * 1000))
                guest.destroy()
        finally:
            host.close()
            lv.close()
            seen.close()
    finally:
        agent.stop()
        daemon.teardown()
        dnsmasq.stop()
    return rows


def compare_rows(root: Path, guests: int = 7) -> list[Any]:
    """bench/compare.py's libvirt row (its ``extra_rows`` hook)."""
    from bench.compare import Row

    rows = []
    # The default config first (the target's), then the opt-in DHCPACK trigger.
    for trigger, what in ((False, "default config"), (True, "dhcp_trigger = true, opt-in")):
        got = paired(root, guests, 20, 15.0, dhcp_trigger=trigger)
        lag = statistics.median(got.lag())
        rows.append(Row(f"libvirt lease -> answer, median of {guests}, {what} "
                        "(ms after the lease file)",
                        f"{statistics.median(got.host):.1f} ms",
                        f"{statistics.median(got.libvirt):.1f} ms (libvirt's dnsmasq)",
                        f"lag {lag:+.1f} ms; target <= +25 ms", lag <= 25))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--guests", type=int, default=20)
    p.add_argument("--coalesce-ms", type=int, default=20)
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--paired", action="store_true",
                   help="side by side with libvirt's own dnsmasq (see above)")
    p.add_argument("--timeline", action="store_true",
                   help="where libvirt's head start comes from (see above)")
    p.add_argument("--busy", type=int, default=0, help="busy loops to run meanwhile")
    p.add_argument("--trigger", choices=("on", "off", "both"), default="on",
                   help="with --paired: [libvirt] dhcp_trigger on (this default; the "
                        "config's is off), off, or off then on in the same run")
    args = p.parse_args()
    if not isolate("libvirt_latency", ("dnsmasq", "libvirtd", "virtlogd", "busybox")):
        return 2
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        return run(args)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    load = f"load {os.getloadavg()[0]:.2f} ({args.busy} busy loops of ours)"
    if args.timeline:
        with bench_root() as root:
            rows = timeline(root, args.guests, args.timeout)
        print(f"lease timeline, ms after libvirt's dnsmasq answers the guest: "
              f"{os.cpu_count()} CPUs; {load} -> {os.getloadavg()[0]:.2f}; "
              f"{args.guests} LXC guests; default config")
        for k, what in enumerate(("lease helper first opens <bridge>.status",
                                  "lease helper renames the new file in",
                                  "namesync's dnsmasq answers")):
            print(summary(what, [r[k] for r in rows]))
        return 0
    if args.paired:
        return run_paired(args, load)

    with bench_root() as root:
        dnsmasq = Dnsmasq(root / "dnsmasq", zones=(ZONE,)).start()
        daemon = Libvirtd(root / "libvirt")
        agent = Agent(root / "agent")
        try:
            daemon.start()
            net = daemon.network()
            agent.set_config(toml_config(
                socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
                hosts_file=None, coalesce_ms=args.coalesce_ms,
                libvirt='uris = ["lxc:///system"]'))
            agent.start()
            version = daemon.conn().getLibVersion()
            print(f"namesync libvirt latency: libvirt {version // 1000000}.{version // 1000 % 1000}"
                  f"; Python {platform.python_version()}; {os.cpu_count()} CPUs; "
                  f"{args.guests} LXC guests, one at a time; coalesce_ms = {args.coalesce_ms}")
            poller = Poller(dnsmasq.port, 0.0001)
            status = lease_file(net.bridge)
            to_answer: list[float] = []
            to_nxdomain: list[float] = []
            destroy_call: list[float] = []
            guests = []
            for i in range(args.guests):
                guest = daemon.guest(f"bench{i}", [net], start=False)
                mac = guest.macs()[0]
                guest.start()
                at, ip = lease_seen(status, mac, args.timeout)
                answered = poller.wait_for(f"bench{i}.{ZONE}", ip, args.timeout)
                to_answer.append((answered - at) * 1000)
                guests.append(guest)
            for i, guest in enumerate(guests):
                t0 = time.monotonic()
                guest.obj().destroy()
                t1 = time.monotonic()
                gone = wait_nxdomain(poller, f"bench{i}.{ZONE}", args.timeout)
                destroy_call.append((t1 - t0) * 1000)
                to_nxdomain.append((gone - t1) * 1000)
            poller.close()
            print(summary("lease in file -> answer", to_answer))
            print(summary("destroy() returned -> NXDOMAIN", to_nxdomain))
            print(summary("(destroy() call itself)", destroy_call))
        finally:
            agent.stop()
            daemon.teardown()
            dnsmasq.stop()
    return 0


def run_paired(args: argparse.Namespace, load: str) -> int:
    modes = {"on": [True], "off": [False], "both": [False, True]}[args.trigger]
    lags: dict[bool, float] = {}
    for trigger in modes:
        with bench_root() as root:
            got = paired(root, args.guests, args.coalesce_ms, args.timeout, trigger)
        print(f"namesync vs libvirt's dnsmasq, dhcp_trigger = {str(trigger).lower()}: "
              f"Python {platform.python_version()}; {os.cpu_count()} CPUs; {load} -> "
              f"{os.getloadavg()[0]:.2f}; {args.guests} LXC guests; coalesce_ms = "
              f"{args.coalesce_ms}; ms after the lease file")
        print(summary("DHCPACK on the bridge", got.ack))
        print(summary("libvirt's dnsmasq answers", got.libvirt))
        print(summary("namesync's dnsmasq answers", got.host))
        print(summary("namesync - libvirt (paired)", got.lag()))
        print(summary("namesync - DHCPACK (paired)",
                      [h - a for h, a in zip(got.host, got.ack, strict=True)]))
        lags[trigger] = statistics.median(got.lag())
    if len(lags) == 2:
        print(f"  lag behind libvirt's dnsmasq, median: {lags[False]:+.1f} ms with the lease "
              f"file alone, {lags[True]:+.1f} ms with the DHCPACK trigger (target <= +25 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
