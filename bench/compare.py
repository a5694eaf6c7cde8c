"""namesync next to the runtimes' own DNS, one table, every row measured in this run.

Run as root from the repo root:  .venv/bin/python bench/compare.py

Inside a private mount + network namespace (bench/setup.py) it starts a real
dnsmasq, a private rootful Podman (tests/harness/podman.py) with one
DNS-enabled network, and the real namesync-agent watching that service, with
the default config (``coalesce_ms = 20``). Rows:

* podman run -> answer (single): N times one ``podman run -d`` on an idle
  system; the clock starts when ``podman run`` starts, and two threads started
  before it poll the host's dnsmasq (namesync's addn-hosts) and aardvark-dns
  (at the network's gateway) for the name. The row compares the medians.
* burst: 100 containers, 10 ``podman run -d`` at a time. Per name, the lag of
  the host's first answer behind aardvark-dns's (p95 over the burst), the time
  of the last name at each server, how many times dnsmasq re-read its file,
  and the fraction of the burst's wall time dnsmasq spent re-reading
  (re-reads x the floor's SIGHUP-to-answer at that table size, measured below
  in the same run; and the CPU the agent saw dnsmasq spend re-reading, timed
  from /proc: status daemon.reread_ms_total). Then again with 10,000 other
  (static) names loaded.
* floor: a bare atomic write of the finished addn-hosts bytes + SIGHUP ->
  answer, at 100 / 10k / 100k names (bench/data.py): no tool can be faster
  with dnsmasq and a file.
* RSS of the agent at 0 / 10k / 100k names and its peak during a reload of
  100k (bench/memory.py's measure: default sources on, their services absent).

The libvirt lease row (namesync vs libvirt's own dnsmasq answering the guest's
DHCP name) plugs in at ``extra_rows`` below. Everything started is stopped by
pid on exit.

``--first-cpu agent`` / ``--first-cpu dnsmasq`` (an experiment, not the
default): run that process at nice -10, to see how much of a lag is waiting
for a CPU. The table's first line says when it was used.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import ADDR_A, ADDR_C, addresses, hosts_bytes, target_name
from bench.data import ZONE as STATIC_ZONE
from bench.dnspoll import Poller, _qname, p95
from bench.memory import measure
from bench.reload_latency import atomic_write
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent, toml_config
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.podman import AARDVARK_DIR, IMAGE, Podman

ZONE = "dns.podman"
NETWORK = "cmpnet"
SUBNET = "10.89.110.0/23"  # room for 100 burst containers and then some
GATEWAY = "10.89.110.1"
POLL_S = 0.0002
QUERY_TIMEOUT_S = 0.005  # aardvark-dns re-binds on reload: re-ask soon, same for both


@dataclass
class Row:
    what: str
    namesync: str
    peer: str
    target: str = ""
    met: bool | None = None


# THE HOOK for rows measured elsewhere in the same run (the libvirt lease row,
# namesync vs libvirt's own dnsmasq): append a callable that gets the bench's
# root directory and returns its rows; they print in the same table.
extra_rows: list[Callable[[Path], list[Row]]] = []


def ms(x: float) -> str:
    return f"{x:.1f} ms"


# --- asking two DNS servers for many names at once ------------------------------


class Watch:
    """One thread per server asks every name it is told about until it answers."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.poller = Poller(port, 0)
        self.poller.sock.connect((host, port))
        self.poller.sock.settimeout(QUERY_TIMEOUT_S)
        self.wanted: dict[str, bytes] = {}
        self.answered: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def want(self, name: str) -> None:
        with self._lock:
            self.wanted[name] = _qname(name.rstrip(".")) + b"\0\1\0\1"

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                todo = [(n, q) for n, q in self.wanted.items() if n not in self.answered]
            for name, q in todo:
                try:
                    got = self.poller.ask(q)
                except OSError:
                    # aardvark-dns re-binds on every reload (refused meanwhile), and
                    # the bridge can be briefly unreachable while netavark rewires it.
                    got = None
                if got is not None and got[1] == 0 and got[2]:
                    self.answered[name] = (got[0], got[2])
            time.sleep(POLL_S)

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(n not in self.answered for n in names):
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in self.answered]
                raise TimeoutError(f"no answer for {missing[:5]} ({len(missing)})")
            time.sleep(0.002)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poller.close()


# --- the Podman rows ------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, run_dir: Path, args: argparse.Namespace) -> None:
        self.root = root
        self.args = args
        self.dnsmasq = Dnsmasq(run_dir / "dnsmasq", zones=(ZONE, STATIC_ZONE))
        self.podman = Podman(root / "podman")
        self.agent = Agent(root / "agent")
        self.floor_ms: dict[int, float] = {}

    def configure(self, static: int) -> None:
        text = toml_config(
            socket=self.agent.socket, addn_hosts=self.dnsmasq.addn_hosts,
            pid_file=self.dnsmasq.pid_file, hosts_file=None,
            static=addresses(static, ADDR_A) if static else None,
            podman=f'socket = "{self.podman.socket}"\naardvark_dir = "{AARDVARK_DIR}"')
        self.agent.set_config(text.replace('log_level = "debug"', 'log_level = "info"'))

    def start_agent(self) -> None:
        self.agent.start()
        if "agent" in self.args.first_cpu and self.agent.proc is not None:
            first_cpu(self.agent.proc.pid)

    def restart_agent(self, static: int) -> None:
        self.agent.stop()
        self.configure(static)
        self.start_agent()

    def reread_ms_total(self) -> float:
        """dnsmasq's re-reads as the agent timed them from /proc (status)."""
        return float(self.agent.status()["daemon"].get("reread_ms_total") or 0.0)

    def single(self, host: Watch, aardvark: Watch) -> list[Row]:
        lag_host: list[float] = []
        lag_aard: list[float] = []
        for i in range(self.args.runs):
            name = f"one{i}"
            fqdn = f"{name}.{ZONE}"
            time.sleep(1.0)  # idle: a lone change, as one `podman run` at a terminal
            started = time.monotonic()
            host.want(fqdn)
            aardvark.want(fqdn + ".")
            self.podman.cli("run", "-d", "--name", name, "--network", NETWORK, IMAGE,
                            "sleep", "1000")
            host.wait([fqdn], self.args.timeout)
            aardvark.wait([fqdn + "."], self.args.timeout)
            lag_host.append((host.answered[fqdn][0] - started) * 1000)
            lag_aard.append((aardvark.answered[fqdn + "."][0] - started) * 1000)
            self.podman.rm(name)
        h, a = statistics.median(lag_host), statistics.median(lag_aard)
        # Each run's own difference too: a `podman run` itself varies by tens of
        # milliseconds, which the two medians alone carry into their difference.
        paired = statistics.median(x - y for x, y in zip(lag_host, lag_aard, strict=True))
        return [Row(f"podman run -> answer, single (median of {self.args.runs})",
                    ms(h), ms(a), "host <= aardvark + 5 ms", h <= a + 5),
                Row("podman run -> answer, single: median of each run's lag", ms(paired), "0")]

    def burst(self, host: Watch, aardvark: Watch, label: str, floor_ms: float) -> list[Row]:
        names = [f"{label}{i}" for i in range(self.args.burst)]
        reads_before = len(self.dnsmasq.reads())
        timed_before = self.reread_ms_total()
        time.sleep(1.0)
        started: dict[str, float] = {}

        def run(name: str) -> None:
            host.want(f"{name}.{ZONE}")
            aardvark.want(f"{name}.{ZONE}.")
            for attempt in (1, 2):
                started[name] = time.monotonic()
                try:
                    self.podman.cli("run", "-d", "--name", name, "--network", NETWORK,
                                    IMAGE, "sleep", "1000")
                    return
                except AssertionError as e:
                    # runc on a loaded machine sometimes fails a start ("cannot
                    # start a container that has stopped"): once more, and say so.
                    print(f"  ({name}: {str(e).splitlines()[-1][:100]}; retried)",
                          file=sys.stderr)
                    self.podman.cli("rm", "-f", "-t", "0", name, check=False)
                    if attempt == 2:
                        raise

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(self.args.parallel) as pool:
            list(pool.map(run, names))
        host.wait([f"{n}.{ZONE}" for n in names], self.args.timeout)
        aardvark.wait([f"{n}.{ZONE}." for n in names], self.args.timeout)
        at_host = [host.answered[f"{n}.{ZONE}"][0] for n in names]
        at_aard = [aardvark.answered[f"{n}.{ZONE}."][0] for n in names]
        lags = [(h - a) * 1000 for h, a in zip(at_host, at_aard, strict=True)]
        wall = max(at_host) - t0
        reloads = len(self.dnsmasq.reads()) - reads_before
        share = reloads * floor_ms / 1000 / wall
        timed = (self.reread_ms_total() - timed_before) / 1000 / wall
        self.podman.cli("rm", "-f", "-t", "0", *names, timeout=300)
        n = self.args.burst
        what = f"burst {n} x podman run, {self.args.parallel} at a time{label_note(label)}"
        return [
            Row(f"{what}: last name", ms((max(at_host) - t0) * 1000),
                ms((max(at_aard) - t0) * 1000)),
            Row(f"{what}: median lag behind aardvark", ms(statistics.median(lags)), "0"),
            Row(f"{what}: p95 lag behind aardvark", ms(p95(lags)), "0", "<= 50 ms",
                p95(lags) <= 50),
            Row(f"{what}: dnsmasq re-reads", str(reloads), "-"),
            Row(f"{what}: wall time re-reading", f"{share:.1%}", "-", "<= 10%", share <= 0.10),
            Row(f"{what}: ... as namesync timed dnsmasq's CPU", f"{timed:.1%}", "-", "<= 10%",
                timed <= 0.10),
        ]

    def podman_rows(self) -> list[Row]:
        self.podman.start_service()
        self.podman.network_create(NETWORK, SUBNET)
        self.configure(0)
        self.start_agent()
        # The network's bridge and aardvark-dns exist only while a container uses it.
        self.podman.run("warmup", "--network", NETWORK)
        host = Watch(self.dnsmasq.port)
        aardvark = Watch(53, GATEWAY)
        try:
            rows = self.single(host, aardvark)
            rows += self.burst(host, aardvark, "b", self.floor_ms.get(100, 0.4))
            self.restart_agent(10_000)
            rows += self.burst(host, aardvark, "k", self.floor_ms.get(10_000, 9.0))
        finally:
            host.close()
            aardvark.close()
        return rows


def first_cpu(pid: int) -> None:
    """Every thread of ``pid`` at nice -10 (threads it makes later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, int(task.name), -10)


def label_note(label: str) -> str:
    return ", 10k other names" if label == "k" else ""


# --- the floor and memory rows --------------------------------------------------


def floor(run_dir: Path, n: int, rounds: int, timeout: float) -> float:
    """Median ms from starting the write to dnsmasq answering the changed name."""
    dns = Dnsmasq(run_dir / f"floor{n}", zones=(STATIC_ZONE,)).start()
    poller = Poller(dns.port, 0.0001)
    try:
        name = target_name(n)
        # Loaded after the start: at 100k names a busy machine takes seconds.
        atomic_write(dns.addn_hosts, hosts_bytes(n, ADDR_A))
        os.kill(dns.pid, signal.SIGHUP)
        poller.wait_for(name, ADDR_A, timeout)
        out = []
        for i in range(rounds):
            addr = ADDR_C if i % 2 == 0 else ADDR_A
            data = hosts_bytes(n, addr)
            t0 = time.monotonic()
            atomic_write(dns.addn_hosts, data)
            os.kill(dns.pid, signal.SIGHUP)
            out.append((poller.wait_for(name, addr, timeout) - t0) * 1000)
        return statistics.median(out)
    finally:
        poller.close()
        dns.stop()


def memory_rows(root: Path) -> list[Row]:
    """bench/memory.py's measurement: default sources on, their services absent (the
    case issue 11's targets are set for); steady RSS settled, VmHWM across a reload."""
    out = {n: measure(root / "rss", n) for n in (0, 10_000, 100_000)}
    steady, _, peak, _ = out[100_000]  # (steady, startup peak, reload peak, after)
    return [
        Row("agent RSS, 0 names (sources on, services absent)", f"{out[0][0]:.1f} MB", "-"),
        Row("agent RSS, 10k names", f"{out[10_000][0]:.1f} MB", "-", "<= 45 MB",
            out[10_000][0] <= 45),
        Row("agent RSS, 100k names", f"{steady:.1f} MB", "-", "<= 120 MB", steady <= 120),
        Row("agent RSS peak, reload of 100k", f"{peak:.1f} MB", "-", "<= 1.5 x steady",
            peak <= 1.5 * steady),
    ]


def floor_rows(bench: Bench, run_dir: Path, args: argparse.Namespace) -> list[Row]:
    rows = []
    for n in (100, 10_000, 100_000):
        bench.floor_ms[n] = floor(run_dir, n, args.floor_rounds, args.timeout)
        rows.append(Row(f"floor: write + SIGHUP -> answer, {n:,} names",
                        ms(bench.floor_ms[n]), "-"))
    return rows


def print_table(rows: list[Row]) -> None:
    w = max(len(r.what) for r in rows)
    print(f"  {'':<{w}}  {'namesync':>10}  {'peer':>10}  target")
    for r in rows:
        verdict = "" if r.met is None else ("met" if r.met else "NOT met")
        print(f"  {r.what:<{w}}  {r.namesync:>10}  {r.peer:>10}  {r.target} {verdict}".rstrip())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=11, help="single podman runs (median of)")
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--parallel", type=int, default=10)
    p.add_argument("--floor-rounds", type=int, default=7)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--first-cpu", action="append", default=[], choices=("agent", "dnsmasq"),
                   help="experiment: run this at nice -10 (repeatable)")
    p.add_argument("--skip", action="append", default=[], choices=("podman", "memory", "libvirt"),
                   help="leave a group of rows out (repeatable)")
    args = p.parse_args()
    if not isolate("compare", ("dnsmasq", "podman", "runc", "conmon", "busybox")):
        return 2
    with bench_root() as root:
        # addn-hosts on /run (the namespace's private tmpfs), as on a workstation.
        run_dir = Path(tempfile.mkdtemp(prefix="namesync-cmp-", dir="/run"))
        run_dir.chmod(0o755)
        bench = Bench(root, run_dir, args)
        try:
            bench.podman.setup()
            version = bench.podman.cli("version", "--format", "{{.Client.Version}}").stdout
            print(f"namesync compare: podman {version.strip()}; Python "
                  f"{platform.python_version()}; {os.cpu_count()} CPUs; load "
                  f"{os.getloadavg()[0]:.2f}; default config (coalesce_ms = 20)"
                  + "".join(f"; EXPERIMENT: {who} at nice -10" for who in args.first_cpu))
            rows = floor_rows(bench, run_dir, args)
            bench.dnsmasq.start()
            if "dnsmasq" in args.first_cpu:
                first_cpu(bench.dnsmasq.pid)
            if "podman" not in args.skip:
                rows = bench.podman_rows() + rows
            for hook in extra_rows:
                rows += hook(root)
            if "libvirt" not in args.skip and shutil.which("libvirtd"):
                from bench.libvirt_latency import compare_rows  # needs libvirtd, virtlogd

                rows += compare_rows(root)
            if "memory" not in args.skip:
                (root / "rss").mkdir()
                rows += memory_rows(root)
            print_table(rows)
        finally:
            bench.agent.stop()
            bench.podman.teardown()
            bench.dnsmasq.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
