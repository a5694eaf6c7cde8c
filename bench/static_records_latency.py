"""Change -> answer through systemd-resolved 262: /etc/hosts, static.d alone, static.d + SIGHUP.

    sudo .venv/bin/python -m bench.static_records_latency [--changes N]

Boots the Debian sid rootfs (tests/harness/rootfs.SID_IMAGE, systemd 262) with
systemd-nspawn and, inside it, changes one name's address N times through each
of the three ways resolved can learn it, asking resolved after each change the
way glibc's nss-resolve does (its varlink socket, io.systemd.Resolve
ResolveHostname) until the new address comes back:

- hosts:      a line in /etc/hosts, replaced by rename (resolved re-reads at most every 2 s)
- rr:         a static.d .rr file, replaced by rename (the same 2 s re-check)
- rr+sighup:  the same file, then SIGHUP to resolved: what agent/sinks/static_rr.py does

Before each change one lookup is made and then a random 0-2 s pause, so the
change lands at a random point of resolved's 2 s re-check window, as it does
for a user whose programs look names up now and then. Times are from the
rename (and signal) to the first current answer; one lookup costs ~0.1 ms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.harness import nspawn, rootfs

PROBE = r'''
import json, os, random, signal, socket, statistics, subprocess, sys, time
NAME = "web.dns.test"
RR_DIR = "/run/systemd/resolve/static.d"
VARLINK = "/run/systemd/resolve/io.systemd.Resolve"

def ask():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(VARLINK)
    s.sendall(json.dumps({"method": "io.systemd.Resolve.ResolveHostname",
                          "parameters": {"name": NAME, "family": socket.AF_INET}}).encode() + b"\0")
    data = b""
    while not data.endswith(b"\0"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    reply = json.loads(data.rstrip(b"\0"))
    addrs = reply.get("parameters", {}).get("addresses", [])
    return ".".join(map(str, addrs[0]["address"])) if addrs else None

def replace(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)

def set_hosts(addr):
    replace("/etc/hosts", BASE_HOSTS + f"{addr} {NAME}\n")

def set_rr(addr):
    rr = {"key": {"name": NAME, "type": 1}, "address": [int(b) for b in addr.split(".")]}
    replace(RR_DIR + "/bench.rr", json.dumps([rr]) + "\n")

def resolved_pid():
    return int(subprocess.run(["systemctl", "show", "-p", "MainPID", "--value",
                               "systemd-resolved"], capture_output=True, text=True).stdout)

BASE_HOSTS = open("/etc/hosts").read()
os.makedirs(RR_DIR, exist_ok=True)
mode, changes = sys.argv[1], int(sys.argv[2])
pid = resolved_pid()
times = []
for i in range(changes):
    addr = f"10.9.{i // 250}.{i % 250 + 1}"
    ask()
    time.sleep(random.uniform(0, 2))
    t0 = time.monotonic()
    if mode == "hosts":
        set_hosts(addr)
    else:
        set_rr(addr)
        if mode == "rr+sighup":
            os.kill(pid, signal.SIGHUP)
    while ask() != addr:
        if time.monotonic() - t0 > 10:
            sys.exit(f"{mode}: {addr} not answered after 10 s")
    times.append((time.monotonic() - t0) * 1000)
for path in ("/etc/hosts", RR_DIR + "/bench.rr"):
    if path == "/etc/hosts":
        replace(path, BASE_HOSTS)
    elif os.path.exists(path):
        os.unlink(path)
os.kill(pid, signal.SIGHUP)
print(json.dumps(times))
'''


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    for why in (rootfs.unavailable(), nspawn.unavailable()):
        if why:
            raise SystemExit(why)
    with tempfile.TemporaryDirectory(prefix="namesync-bench-") as tmp:
        c = nspawn.Container(rootfs.build(rootfs.SID_IMAGE), Path(tmp), unified=True)
        c.boot()
        try:
            version = c.run("/usr/lib/systemd/systemd-resolved", "--version").stdout.split()[1]
            c.write("/root/probe.py", PROBE)
            print(f"systemd-resolved {version}, {args.changes} changes each "
                  "(ms from the change to the first current answer)")
            print(f"{'way':<11} {'median':>8} {'p90':>8} {'max':>8}")
            for mode in ("hosts", "rr", "rr+sighup"):
                out = c.run("python3", "/root/probe.py", mode, str(args.changes),
                            timeout=30 * args.changes).stdout
                times = json.loads(out)
                print(f"{mode:<11} {percentile(times, 50):8.1f} {percentile(times, 90):8.1f} "
                      f"{max(times):8.1f}")
        finally:
            c.stop()


if __name__ == "__main__":
    main()
