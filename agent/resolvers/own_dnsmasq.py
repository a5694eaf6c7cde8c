"""namesync's own dnsmasq: serves the zones to systemd-resolved (and to containers).

On a resolved host nothing else reads the addn-hosts file, so namesync runs a
dnsmasq as its child: on a loopback address (resolved does not cache answers
from a localhost server, so the first query after a SIGHUP is current), with
``local=/ZONE/`` per zone (unknown names NXDOMAIN, AAAA of an IPv4-only name
NODATA). It optionally listens on the link's address too (so it is started
once the link exists), for rootful containers, and forwards names outside
the zones to the host's resolver there; resolved never sends it those (the
link is not a default route), so there is no loop.

It runs under the shared lifecycle (agent/sources/lifecycle.py): "connect"
starts it and waits for its ``started`` line (its sockets are bound), "follow"
waits for it to exit, and an exit is reported with dnsmasq's own last words
and retried with the lifecycle's backoff. Its stderr (``--log-facility=-``)
is relayed to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from agent.sources.lifecycle import Lifecycle, Problem, Unavailable

log = structlog.get_logger(component="resolvers.dnsmasq")

STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
LAST_WORDS = 5

Process = asyncio.subprocess.Process


@dataclass(frozen=True)
class DnsmasqSpec:
    binary: str
    listen: tuple[str, ...]  # addresses, the loopback one first
    port: int
    addn_hosts: Path | None  # None: a pure forwarder (the NM dnsmasq path)
    zones: tuple[str, ...]
    upstream: str | None  # "ADDR" or "ADDR#PORT" for names outside the zones
    pid_file: Path
    cache_size: int | None = None  # 0: every answer asked upstream again (never stale)

    def argv(self) -> list[str]:
        args = [
            self.binary,
            "--keep-in-foreground",
            # Never the machine's /etc/dnsmasq.conf (Fedora's reads a conf-dir).
            "--conf-file=/dev/null",
            "--no-hosts",
            "--no-resolv",
            # Sockets bound to exactly these addresses (never a wildcard). A bound
            # socket survives the link being deleted and made again. Not
            # --bind-dynamic: it opens one more socket for a loopback listen
            # address on every netlink event (seen with 2.90), a leak on a busy host.
            "--bind-interfaces",
            f"--port={self.port}",
            f"--pid-file={self.pid_file}",
            "--log-facility=-",
        ]
        if self.addn_hosts is not None:
            args.append(f"--addn-hosts={self.addn_hosts}")
        if self.cache_size is not None:
            args.append(f"--cache-size={self.cache_size}")
        args += [f"--listen-address={a}" for a in self.listen]
        args += [f"--local=/{z}/" for z in self.zones]
        if self.upstream:
            args.append(f"--server={self.upstream}")
        return args


class OwnDnsmasq(Lifecycle[Process, int]):
    kind = "namesync's dnsmasq"
    while_down = "starting it again"

    def __init__(self, spec: DnsmasqSpec) -> None:
        super().__init__("dnsmasq")
        self.spec = spec
        self.pid: int | None = None
        self.since: float | None = None
        self.starts = 0
        self._last_lines: list[str] = []
        self._started = asyncio.Event()
        self._relay: asyncio.Task[None] | None = None

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)

    async def _relay_lines(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self._last_lines = [*self._last_lines[-(LAST_WORDS - 1):], text]
            if "started, version" in text:
                self._started.set()
            log.debug("dnsmasq", line=text)

    def _last_words(self) -> str:
        return " | ".join(self._last_lines[-2:]) or "no output"

    # --- lifecycle hooks -----------------------------------------------------

    async def connect(self) -> Process:
        self._started.clear()
        self._last_lines = []
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise Unavailable(Problem(f"{self.spec.binary} not found",
                                      "install dnsmasq, or set resolved.dnsmasq")) from None
        assert proc.stderr is not None
        self._relay = asyncio.create_task(self._relay_lines(proc.stderr))
        exited = asyncio.create_task(proc.wait())
        started = asyncio.create_task(self._started.wait())
        done, _ = await asyncio.wait({exited, started}, timeout=START_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if started not in done:
            exited.cancel()
            await self.disconnect(proc)
            raise RuntimeError(f"exited {proc.returncode}: {self._last_words()}")
        exited.cancel()
        return proc

    async def list_all(self, conn: Process) -> int:
        # The sink may have written the file after dnsmasq read it and before it could
        # be signalled (no pid yet): one SIGHUP now makes sure it serves the current one.
        with contextlib.suppress(ProcessLookupError):
            conn.send_signal(signal.SIGHUP)
        return conn.pid

    def take(self, snapshot: int) -> None:
        self.pid, self.since = snapshot, time.time()
        self.starts += 1
        log.info("started namesync's dnsmasq", pid=snapshot, listen=self.spec.listen,
                 port=self.spec.port)

    def connected_detail(self) -> str | None:
        return f"pid {self.pid}, listening on {', '.join(self.spec.listen)} port {self.spec.port}"

    async def follow(self, conn: Process) -> str:
        rc = await conn.wait()
        if self._relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._relay), 1.0)
        return f"exited {rc}: {self._last_words()}"

    async def disconnect(self, conn: Process) -> None:
        self.pid = None
        if conn.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                conn.terminate()
            try:
                await asyncio.wait_for(conn.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    conn.kill()
                await conn.wait()
        if self._relay is not None:
            self._relay.cancel()
            self._relay = None

    def on_disconnected(self) -> None:
        self.pid = None
