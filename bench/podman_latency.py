"""How fast a container's name answers after ``podman run -d`` returns, next to aardvark-dns.

Run as root from the repo root:  .venv/bin/python bench/podman_latency.py

Inside a private mount + network namespace (as the tests are) it starts a real
dnsmasq, a private rootful Podman (tests/harness/podman.py: its own storage and
network configs, ``podman system service``) with one DNS-enabled network, and
the real namesync-agent watching that service. With one container already on
the network (so its bridge and aardvark-dns run), N times (default 20), one
container at a time, ``podman run -d --name benchN --network benchnet ...`` and,
all on one monotonic clock, measured from the moment ``podman run`` returns:

* (a) host: dnsmasq answers ``benchN.dns.podman`` (namesync's addn-hosts file);
* (b) aardvark-dns: the container network's own DNS server, asked from the
  host at the network's gateway (it listens there on port 53), answers the
  same name;
* (c) event: a podman-py client on the same service receives the
  container's ``start`` event (the file events backend is polled).

The addn-hosts file is on /run (a tmpfs, as on a workstation). Both DNS servers
are asked from threads started before ``podman run``, over UDP,
one query in flight each, 200 us apart, so an answer that comes before
``podman run`` returns counts as negative. Every answer is checked against the
address ``podman inspect`` reports. Between runs the container is removed, its
name waited out, and the bench stays idle for a second: each run is a lone
change, as one ``podman run`` at a terminal is (bursts are paced by the
daemon's coalescer, agent/daemon/coalesce.py). Everything started is stopped
by pid on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dnspoll import Poller, p95, summary, wait_nxdomain
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.podman import AARDVARK_DIR, IMAGE, Podman

ZONE = "dns.podman"
NETWORK = "benchnet"
SUBNET = "10.89.100.0/24"
GATEWAY = "10.89.100.1"
POLL_S = 0.0002


def question(name: str) -> bytes:
    """The question section of an A/IN query for ``name``."""
    labels = name.rstrip(".").encode("ascii").split(b".")
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0" + struct.pack("!HH", 1, 1)


def first_answer(poller: Poller, name: str, stop: threading.Event,
                 out: dict[str, tuple[float, tuple[str, ...]]]) -> None:
    """Ask until ``name`` has an A record; record when and what (in a thread)."""
    asked = question(name)
    while not stop.is_set():
        try:
            got = poller.ask(asked)
        except ConnectionRefusedError:
            # aardvark-dns re-binds its sockets on every reload (SIGHUP from
            # netavark): the port is briefly closed and ICMP says so.
            got = None
        if got is not None and got[1] == 0 and got[2]:
            out[name] = (got[0], got[2])
            return
        time.sleep(POLL_S)


class EventClock:
    """A podman-py event stream in a thread: when each container's start event arrived."""

    def __init__(self, socket: Path) -> None:
        from podman import PodmanClient

        self.client = PodmanClient(base_url=f"unix://{socket}")
        self.response = self.client.api.get("/events", params={"stream": True}, stream=True)
        self.seen: dict[str, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response.iter_lines():
                at = time.monotonic()
                event = json.loads(line)
                if event.get("Type") == "container" and event.get("Action") == "start":
                    name = event.get("Actor", {}).get("Attributes", {}).get("name")
                    self.seen.setdefault(name, at)
        except Exception:
            return  # closed

    def close(self) -> None:
        sock = self.response.raw.connection.sock
        if sock is not None:
            sock.shutdown(2)
        self.thread.join(5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--coalesce-ms", type=int, default=20)
    p.add_argument("--timeout", type=float, default=15.0)
    args = p.parse_args()
    if not isolate("podman_latency", ("dnsmasq", "podman", "runc", "conmon", "busybox")):
        return 2

    with bench_root() as root:
        # addn-hosts where the product keeps it: /run (here the namespace's private
        # tmpfs), not on /tmp's disk, whose fsync would be most of the time measured.
        run_dir = Path(tempfile.mkdtemp(prefix="namesync-bench-", dir="/run"))
        run_dir.chmod(0o755)
        dnsmasq = Dnsmasq(run_dir / "dnsmasq", zones=(ZONE,)).start()
        podman = Podman(root / "podman")
        agent = Agent(root / "agent")
        clock: EventClock | None = None
        try:
            podman.setup().start_service()
            podman.network_create(NETWORK, SUBNET)
            agent.set_config(toml_config(
                socket=agent.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
                hosts_file=None, coalesce_ms=args.coalesce_ms,
                podman=f'socket = "{podman.socket}"\naardvark_dir = "{AARDVARK_DIR}"'))
            agent.start()
            version = podman.cli("version", "--format", "{{.Client.Version}}").stdout.strip()
            print(f"namesync podman latency: podman {version}; Python "
                  f"{platform.python_version()}; {os.cpu_count()} CPUs; {args.runs} runs, one "
                  f"container at a time; coalesce_ms = {args.coalesce_ms}")
            # One container stays up throughout: the network's bridge (the gateway
            # address aardvark-dns listens on) and aardvark-dns itself exist only
            # while a container uses the network, and the first start of
            # aardvark-dns is not what is being measured.
            podman.run("warmup", "--network", NETWORK)
            clock = EventClock(podman.socket)
            host = Poller(dnsmasq.port, POLL_S)
            aardvark = Poller(53, POLL_S)
            aardvark.sock.connect((GATEWAY, 53))  # the network's gateway, not loopback
            for pl in (host, aardvark):
                # A query lost while aardvark-dns re-binds must cost a re-ask,
                # not the poller's default half-second wait: same for both.
                pl.sock.settimeout(0.005)
            lags: dict[str, list[float]] = {"host": [], "aardvark": [], "event": []}
            for i in range(args.runs):
                name = f"bench{i}"
                fqdn = f"{name}.{ZONE}"
                stop = threading.Event()
                got: dict[str, tuple[float, tuple[str, ...]]] = {}
                pollers = [threading.Thread(target=first_answer, args=(pl, q, stop, got))
                           for pl, q in ((host, fqdn), (aardvark, f"{name}.{ZONE}."))]
                for t in pollers:
                    t.start()
                try:
                    podman.cli("run", "-d", "--name", name, "--network", NETWORK, IMAGE,
                               "sleep", "1000")
                except BaseException:
                    stop.set()
                    raise
                returned = time.monotonic()
                deadline = returned + args.timeout
                while (len(got) < 2 or name not in clock.seen) and time.monotonic() < deadline:
                    time.sleep(0.001)
                stop.set()
                for t in pollers:
                    t.join()
                if len(got) < 2 or name not in clock.seen:
                    raise TimeoutError(f"{name}: answers {got}, event {name in clock.seen}")
                ip = podman.addresses(name)[NETWORK][0]
                for what, (_, addrs) in got.items():
                    if addrs != (ip,):
                        raise AssertionError(f"{what} answered {addrs}, inspect says {ip}")
                lags["host"].append((got[fqdn][0] - returned) * 1000)
                lags["aardvark"].append((got[f"{name}.{ZONE}."][0] - returned) * 1000)
                lags["event"].append((clock.seen[name] - returned) * 1000)
                podman.rm(name)
                wait_nxdomain(host, fqdn, args.timeout)
                time.sleep(1.0)  # idle: the next run is a lone change again
            host.close()
            aardvark.close()
            print("  time from `podman run -d` returning (negative: answered before it returned)")
            print(summary("(a) host: dnsmasq answers (namesync)", lags["host"], 42))
            print(summary("(b) aardvark-dns answers at the gateway", lags["aardvark"], 42))
            print(summary("(c) podman-py receives the start event", lags["event"], 42))
            ok = p95(lags["host"]) <= p95(lags["aardvark"])
            print(f"  target: host p95 <= aardvark-dns p95: {'met' if ok else 'NOT met'}")
        finally:
            if clock is not None:
                clock.close()
            agent.stop()
            podman.teardown()
            dnsmasq.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
