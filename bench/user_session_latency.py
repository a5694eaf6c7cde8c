"""How fast a rootless container's name answers at the system's dnsmasq, through the user agent.

Run as root from the repo root:  .venv/bin/python bench/user_session_latency.py

Inside a private mount + network namespace (as the tests are) it starts a real
dnsmasq, the real system agent (serving the peer socket, ``[host] interfaces``
on a bridge of the namespace), a real unprivileged user
(tests/harness/users.py) with its rootless Podman service, and the real user
agent (``namesync-agent --mode user``) running as that user. N times (default
20), one container at a time, ``podman run -d -p PORT:80`` as the user and, all
on one monotonic clock, measured from the moment ``podman run`` returns:

* (a) host: the system's dnsmasq answers ``benchN.<user>.dns.podman`` with the
  host's address (Podman event -> user agent -> push -> system agent ->
  addn-hosts -> SIGHUP);
* (b) event: a podman-py client on the same rootless service receives the
  container's ``start`` event: what any consumer of Podman's events could
  know, at the earliest (rootless slirp4netns containers have no aardvark-dns
  to compare with);
* (c) rm: ``podman rm -f`` returning -> NXDOMAIN at the system's dnsmasq.

Between runs the bench stays idle for a second, so each run is a lone change.
Everything started is stopped by pid on exit; the user is removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dnspoll import Poller, p95, summary, wait_nxdomain
from bench.podman_latency import EventClock, first_answer
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.rootless import Session, UserAgent, user_python_problem
from tests.harness.users import ensure_user, remove

BRIDGE = "nsbhost0"
HOST_IP = "10.78.0.1"
POLL_S = 0.0002


def _bridge(up: bool) -> None:
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)
    if up:
        for cmd in (["ip", "link", "add", BRIDGE, "type", "bridge"],
                    ["ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE],
                    ["ip", "link", "set", BRIDGE, "up"]):
            subprocess.run(cmd, check=True)


def _run_once(i: int, s: Session, host: Poller, clock: EventClock, zone: str, timeout: float
              ) -> tuple[float, float, float]:
    name = f"bench{i}"
    fqdn = f"{name}.{zone}"
    stop = threading.Event()
    got: dict[str, tuple[float, tuple[str, ...]]] = {}
    poller = threading.Thread(target=first_answer, args=(host, fqdn, stop, got))
    poller.start()
    try:
        s.container(name, "-p", f"{18000 + i}:80")
    finally:
        returned = time.monotonic()
        deadline = returned + timeout
        while (fqdn not in got or name not in clock.seen) and time.monotonic() < deadline:
            time.sleep(0.001)
        stop.set()
        poller.join()
    if fqdn not in got or name not in clock.seen:
        raise TimeoutError(f"{name}: answer {got}, event {name in clock.seen}")
    if got[fqdn][1] != (HOST_IP,):
        raise AssertionError(f"{fqdn} answered {got[fqdn][1]}, not the host's {HOST_IP}")
    s.podman("rm", "-f", "-t", "0", name)
    removed = time.monotonic()
    gone = wait_nxdomain(host, fqdn, timeout)
    return ((got[fqdn][0] - returned) * 1000, (clock.seen[name] - returned) * 1000,
            (gone - removed) * 1000)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--coalesce-ms", type=int, default=20)
    p.add_argument("--timeout", type=float, default=15.0)
    args = p.parse_args()
    tools = ("dnsmasq", "podman", "runc", "conmon", "busybox", "slirp4netns", "setpriv",
             "useradd")
    if not isolate("user_session_latency", tools):
        return 2
    why = user_python_problem()
    if why:
        print(f"user_session_latency: {why}", file=sys.stderr)
        return 2
    with bench_root() as root:
        user = ensure_user("bench")
        zone = f"{user.name}.dns.podman"
        dnsmasq = Dnsmasq(root / "dnsmasq", zones=("dns.podman", "dns.host")).start()
        system = Agent(root / "system")
        s = Session(user, root / "user")
        agent = UserAgent(s, root / "user-agent")
        clock: EventClock | None = None
        try:
            _bridge(True)
            system.set_config(toml_config(
                socket=system.socket, addn_hosts=dnsmasq.addn_hosts, pid_file=dnsmasq.pid_file,
                hosts_file=None, coalesce_ms=args.coalesce_ms,
                host=f'interfaces = ["{BRIDGE}"]', peers=f'socket = "{root}/system/peer.sock"'))
            system.start()
            s.setup().start_podman()
            agent.set_config(f"[daemon]\ncoalesce_ms = {args.coalesce_ms}\n"
                             f'[peers]\nsocket = "{root}/system/peer.sock"\n'
                             "[libvirt]\nenabled = false\n")
            agent.start()
            version = s.podman("version", "--format", "{{.Client.Version}}").stdout.strip()
            print(f"namesync user-session latency: rootless podman {version} (slirp4netns); "
                  f"Python {platform.python_version()}; {os.cpu_count()} CPUs; {args.runs} "
                  f"runs, one container at a time; coalesce_ms = {args.coalesce_ms} (both agents)")
            s.container("warmup", "-p", "17999:80")  # the pause process and rootlessport up
            clock = EventClock(s.podman_socket)
            host = Poller(dnsmasq.port, POLL_S)
            host.sock.settimeout(0.005)
            lags: dict[str, list[float]] = {"host": [], "event": [], "rm": []}
            for i in range(args.runs):
                answer, event, rm = _run_once(i, s, host, clock, zone, args.timeout)
                lags["host"].append(answer)
                lags["event"].append(event)
                lags["rm"].append(rm)
                time.sleep(1.0)  # idle: the next run is a lone change again
            host.close()
            print("  time from `podman run -d -p` returning, as the user (negative: before)")
            print(summary("(a) system dnsmasq answers the host's address", lags["host"], 46))
            print(summary("(b) podman-py receives the start event", lags["event"], 46))
            print("  time from `podman rm -f` returning")
            print(summary("(c) system dnsmasq says NXDOMAIN", lags["rm"], 46))
            ok = p95(lags["host"]) <= p95(lags["event"]) + 50
            print(f"  target: host p95 within 50 ms of the event's p95: "
                  f"{'met' if ok else 'NOT met'}")
        finally:
            if clock is not None:
                clock.close()
            agent.stop()
            s.teardown()
            system.stop()
            dnsmasq.stop()
            _bridge(False)
            remove(user)
    return 0


if __name__ == "__main__":
    sys.exit(main())
