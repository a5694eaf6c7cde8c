"""How long from a change to the new answer at a real dnsmasq, next to the floor.

Run as root from the repo root:  .venv/bin/python bench/reload_latency.py

For each record count it starts a real dnsmasq (inside a private network
namespace, so nothing touches the machine's network) and measures the time
until dnsmasq answers a changed name's new address. Every round of a path is
paired with a floor round just before it on the same dnsmasq (the floor sets
the name to a third address, the path flips it between two others, so every
round of either is a real change), and each ratio uses its own paired floor:

* floor: a bare atomic write of the finished addn-hosts bytes (temp file,
  fsync, rename, fsync dir: what namesync's sink does) + SIGHUP. Nothing can
  be faster than this with dnsmasq and a file.
* config reload: a real namesync-agent process; the config file is rewritten
  (not timed), the clock starts at SIGHUP to the agent. Run with
  [daemon] coalesce_ms = 0 for the ratio, then with the default window.
* source update: the Pipeline/StateStore built directly with an
  AddnHostsSink on the same dnsmasq, one object of N changing its address
  (what a libvirt/Podman event does); no config parsing, so this is the
  pipeline's own overhead. It runs in a forked worker so the poller does not
  share a GIL with the pipeline it is timing.

The answer is polled with hand-built UDP DNS queries, one in flight, 100 us
apart by default (--poll-sleep-us): resolution ~0.2 ms. With no sleep at all
the poller and dnsmasq answering it keep two CPUs busy, which on a small
machine slows the very pipeline being timed (measured: +2.5 ms at 10,000 on
2 CPUs), while the floor, which polls only after its write, barely notices.
Everything started is stopped by pid on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.schema import DaemonConfig
from agent.model.record import ObjectState, Provenance, Record
from bench.data import (
    ADDR_A,
    ADDR_C,
    ZONE,
    addresses,
    config_text,
    hosts_bytes,
    other,
    target_index,
    target_name,
)
from bench.dnspoll import Poller, p95
from bench.setup import bench_root, isolate
from tests.harness.agent import Agent
from tests.harness.dnsmasq import Dnsmasq

RATIO_TARGET = 1.5
OWN = "namesync's own: change -> SIGHUP sent"  # the sink's last_reload.latency_ms
WRITE = "of which: the file write (fsync, rename)"
SOURCE = "podman"  # the source-update path pretends to be a container source


class Terminated(BaseException):
    """SIGTERM, turned into an exception so every ``finally`` still stops what it started."""


# --- things the bench starts, always stopped ----------------------------------


@dataclass
class Cleanup:
    stops: list[Callable[[], object]] = field(default_factory=list)

    def add(self, stop: Callable[[], object]) -> None:
        self.stops.append(stop)

    def run(self) -> None:
        while self.stops:
            stop = self.stops.pop()
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print(f"cleanup: {e!r}", file=sys.stderr)


def atomic_write(path: Path, data: bytes) -> None:
    """The floor's write: what replace_file does, with nothing else around it."""
    tmp = path.parent / f".{path.name}.bench-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        done = 0
        while done < len(data):
            done += os.write(fd, view[done:])
        os.fchmod(fd, 0o644)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --- the in-process pipeline (source-update path), in a forked worker ----------


def _objects(n: int, target_addr: str) -> dict[str, ObjectState]:
    objects: dict[str, ObjectState] = {}
    for i, (name, addrs) in enumerate(addresses(n, target_addr).items()):
        oid = f"ctr{i:05d}"
        prov = Provenance(SOURCE, oid, "container", name)
        objects[oid] = ObjectState(records=(Record(name, tuple(map(ip_address, addrs)), prov),))
    return objects


def _worker(conn: multiprocessing.connection.Connection, n: int, addn_hosts: Path,
            pid_file: Path, current: str, log_path: Path) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with log_path.open("a") as log:
        from agent.daemon import logging as nlogging

        nlogging.configure("info", stream=log)  # as the daemon logs: one line per reload
        asyncio.run(_worker_main(conn, n, addn_hosts, pid_file, current))


async def _worker_main(conn: multiprocessing.connection.Connection, n: int, addn_hosts: Path,
                       pid_file: Path, current: str) -> None:
    from agent.daemon.pipeline import Pipeline
    from agent.sinks.addn_hosts import AddnHostsSink
    from agent.sinks.dnsmasq_target import PidFileLocator

    sink = AddnHostsSink(addn_hosts, PidFileLocator(pid_file))
    pipeline = Pipeline([sink], 0.0)
    coalescer = asyncio.create_task(pipeline.coalescer.run())
    pipeline.store.replace(SOURCE, _objects(n, current))
    while pipeline.syncs < 1:  # noqa: ASYNC110 - the pipeline has no "synced" event to await
        await asyncio.sleep(0.005)
    # The bench served exactly these bytes before starting us: the first sync writes nothing.
    conn.send(("ready", sink.status.writes == 0 and sink.status.unchanged == 1))

    i = target_index(n)
    oid, name = f"ctr{i:05d}", target_name(n)
    prov = Provenance(SOURCE, oid, "container", name)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        cmd, arg = conn.recv()
        if cmd == "set":
            t0 = time.monotonic()
            state = ObjectState(records=(Record(name, (ip_address(arg),), prov),))
            pipeline.store.update(SOURCE, oid, state)
            conn.send(t0)
        elif cmd == "stats":
            r = sink.status.last_reload
            conn.send({OWN: math.nan if r is None else r.latency_ms,
                       WRITE: sink.status.last_write_ms or math.nan})
        else:
            done.set()

    loop.add_reader(conn.fileno(), on_command)
    await done.wait()
    loop.remove_reader(conn.fileno())
    coalescer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await coalescer
    pipeline.close()


# --- measurements -------------------------------------------------------------


@dataclass
class Series:
    label: str
    samples: list[float] = field(default_factory=list)  # ms
    parts: dict[str, list[float]] = field(default_factory=dict)  # ms, a breakdown
    floor: list[float] = field(default_factory=list)  # ms, the floor round before each

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        return p95(self.samples)


Round = Callable[[], tuple[float, dict[str, float]]]


@dataclass
class Bench:
    args: argparse.Namespace
    root: Path
    cleanup: Cleanup

    def rounds(self, series: Series, floor: Series, floor_round: Round, one: Round) -> None:
        """Warm-up pairs, then measured ones: a floor round, then a round of the path.

        Pairing puts each path sample next to a floor sample taken a moment
        earlier on the same dnsmasq, so the ratio does not drift with whatever
        else the machine is doing during a long run.
        """
        for k in range(self.args.warmup + self.args.rounds):
            f_total, f_parts = floor_round()
            time.sleep(self.args.pause)
            total, parts = one()
            time.sleep(self.args.pause)
            if k < self.args.warmup:
                continue
            for s, t, ps in ((floor, f_total, f_parts), (series, total, parts)):
                s.samples.append(t * 1000)
                for part, ms in ps.items():
                    s.parts.setdefault(part, []).append(ms)
            series.floor.append(f_total * 1000)

    def count(self, n: int) -> dict[str, Any]:
        work = self.root / f"n{n}"
        work.mkdir(mode=0o755)
        work.chmod(0o755)  # dnsmasq re-reads addn-hosts as nobody: every dir searchable
        name = target_name(n)
        floor_bytes = hosts_bytes(n, ADDR_C)
        timeout = self.args.timeout

        dns = Dnsmasq(work / "dnsmasq", zones=(ZONE,))
        dns.dir.chmod(0o755)
        current = ADDR_A
        dns.addn_hosts.write_bytes(hosts_bytes(n, current))
        self.cleanup.add(dns.stop)
        dns.start()
        poller = Poller(dns.port, self.args.poll_sleep_us / 1e6)
        self.cleanup.add(poller.close)
        poller.wait_for(name, current, timeout)
        out: dict[str, Any] = {"n": n, "lines": floor_bytes.count(b"\n") - 1,
                               "bytes": len(floor_bytes)}

        # The floor: the finished bytes (name -> C), atomically written, SIGHUP.
        def floor_round() -> tuple[float, dict[str, float]]:
            t0 = time.monotonic()
            atomic_write(dns.addn_hosts, floor_bytes)
            written = time.monotonic()
            os.kill(dns.pid, signal.SIGHUP)
            return poller.wait_for(name, ADDR_C, timeout) - t0, {WRITE: (written - t0) * 1000}

        floor = Series("floor")
        out["floor"] = floor

        # A real agent, config reload: coalesce_ms = 0, then the default window.
        agent = Agent(work / "agent")
        texts: dict[tuple[int, str], str] = {}

        def write_config(window: int, addr: str) -> None:
            if (window, addr) not in texts:
                texts[(window, addr)] = config_text(
                    n, addr, socket=agent.socket, addn_hosts=dns.addn_hosts,
                    pid_file=dns.pid_file, coalesce_ms=window)
            tmp = agent.config.with_name(".config.toml.tmp")
            tmp.write_text(texts[(window, addr)])
            os.rename(tmp, agent.config)  # the agent never reads half a file

        window = 0
        write_config(window, current)
        self.cleanup.add(agent.stop)
        agent.start()
        sink0 = agent.status()["sinks"][0]
        out["agent_same_bytes"] = sink0["writes"] == 0 and sink0["unchanged"] >= 1

        def agent_round() -> tuple[float, dict[str, float]]:
            nonlocal current
            current = other(current)
            write_config(window, current)
            assert agent.proc is not None
            t0 = time.monotonic()
            agent.proc.send_signal(signal.SIGHUP)
            t1 = poller.wait_for(name, current, timeout)
            sink = agent.status()["sinks"][0]
            return t1 - t0, {OWN: sink["last_reload"]["latency_ms"],
                             WRITE: sink["last_write_ms"]}

        out["cfg0"] = Series("config reload: agent SIGHUP -> answer, coalesce_ms=0")
        self.rounds(out["cfg0"], floor, floor_round, agent_round)

        window = DaemonConfig.coalesce_ms
        write_config(window, current)
        agent.reload()  # same names: the agent re-reads the config and writes nothing
        out["cfgd"] = Series(f"config reload, default coalesce_ms={window}")
        self.rounds(out["cfgd"], floor, floor_round, agent_round)
        out["agent_errors"] = agent.status()["sinks"][0]["last_error"]
        agent.stop()

        # Source update through the pipeline, in a forked worker.
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        # Its first sync must find the file as it wants it (a bytes check): serve `current`.
        atomic_write(dns.addn_hosts, hosts_bytes(n, current))
        os.kill(dns.pid, signal.SIGHUP)
        poller.wait_for(name, current, timeout)
        worker = ctx.Process(target=_worker, name="bench-pipeline",
                             args=(child, n, dns.addn_hosts, dns.pid_file, current,
                                   work / "pipeline.log"))
        worker.start()

        def stop_worker() -> None:
            if worker.is_alive():
                with contextlib.suppress(OSError):
                    parent.send(("stop", None))
                worker.join(5)
            if worker.is_alive():
                worker.terminate()  # SIGTERM to its pid
                worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join()

        self.cleanup.add(stop_worker)
        if not parent.poll(60):
            raise RuntimeError("pipeline worker did not get ready")
        _, same = parent.recv()
        out["worker_same_bytes"] = same

        def source_round() -> tuple[float, dict[str, float]]:
            nonlocal current
            current = other(current)
            parent.send(("set", current))
            t1 = poller.wait_for(name, current, timeout)
            t0: float = parent.recv()  # taken in the worker just before store.update
            parent.send(("stats", None))
            parts: dict[str, float] = parent.recv()
            return t1 - t0, parts

        out["src"] = Series("source update: store.update -> answer, coalesce 0")
        self.rounds(out["src"], floor, floor_round, source_round)
        stop_worker()

        out["dnsmasq_reads"] = dns.reads()[-1:]
        dns.stop()
        return out


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def row(label: str, s: Series) -> None:
        print(f"  {label:<58} {s.median:8.2f} {s.p95:8.2f}")
        for part, xs in s.parts.items():
            print(f"    {part:<56} {statistics.median(xs):8.2f} {p95(xs):8.2f}")

    for r in results:
        n = r["n"]
        print(f"\n== {n} names ({r['lines']} lines, {r['bytes'] / 1024:.0f} KiB addn-hosts) ==")
        print(f"  {'path':<58} {'median':>8} {'p95':>8}   (ms)")
        row(f"floor: atomic write + SIGHUP -> answer ({len(r['floor'].samples)} rounds)",
            r["floor"])
        for key in ("cfg0", "cfgd", "src"):
            row(f"{r[key].label} ({len(r[key].samples)})", r[key])
        print(f"  ratio to the floor rounds alternating with it (median / median; "
              f"target <= {RATIO_TARGET}):")
        for label, key in (("config reload, coalesce_ms=0", "cfg0"),
                           ("source update, coalesce 0", "src")):
            s = r[key]
            f = statistics.median(s.floor)
            ratio = s.median / f
            ok = "meets" if ratio <= RATIO_TARGET else "misses"
            print(f"    {label:<34} {ratio:6.2f}  ({s.median:.2f} / {f:.2f} ms)  {ok}")
        checks = [
            ("agent wrote the floor's exact bytes", r["agent_same_bytes"]),
            ("pipeline wrote the floor's exact bytes", r["worker_same_bytes"]),
            ("no agent sink error", r["agent_errors"] is None),
            ("dnsmasq read every line", r["dnsmasq_reads"] == [r["lines"]]),
        ]
        print("  checks: " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="100,10000",
                   help="record counts, comma separated (default: 100,10000)")
    p.add_argument("--rounds", type=int, default=15, help="measured rounds per path")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    p.add_argument("--pause", type=float, default=0.05, help="seconds between rounds")
    p.add_argument("--poll-sleep-us", type=float, default=100.0,
                   help="sleep between polls, microseconds (default 100; 0 = none)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-round answer timeout (s)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs) for a look")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]

    if not isolate("reload_latency", ("dnsmasq", "dig", "ip")):
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)
    version = subprocess.run(["dnsmasq", "--version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    print(f"namesync reload latency: {version}; Python {platform.python_version()}; "
          f"{os.cpu_count()} CPUs; private netns; poll: one UDP query in flight, "
          f"sleep {args.poll_sleep_us:g} us")
    print("clock: floor from the write; config reload from SIGHUP to the agent (config "
          "already rewritten); source update from store.update; all until dnsmasq answers.")
    print("each path round follows a floor round on the same dnsmasq; p95 is interpolated")
    cleanup = Cleanup()
    results = []
    try:
        with bench_root() as root:
            try:
                for n in counts:
                    results.append(Bench(args, root, cleanup).count(n))
            finally:
                cleanup.run()
                if args.keep:
                    keep = Path(tempfile.mkdtemp(prefix="namesync-bench-kept-", dir="/tmp"))
                    shutil.copytree(root, keep, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("*.sock"))
                    print(f"work dir copied to {keep}")
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; everything started was stopped", file=sys.stderr)
        return 143
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
