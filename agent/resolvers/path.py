"""Which path serves the names, chosen from what the bus says, and the switch between them.

- NetworkManager in ``dns=dnsmasq`` mode: NM's dnsmasq reads the addn-hosts
  file (``agentctl setup`` points it there); namesync signals it.
- systemd-resolved on the bus (and NM not in dnsmasq mode): namesync's own
  dnsmasq, routed through resolved on namesync's link (route.py).
- systemd-resolved >= 261 and namesync runs no dnsmasq (dnsmasq.enabled = false),
  or resolved.static_records = "prefer": resolved's static records, a static.d
  ``.rr`` file (agent/sinks/static_rr.py), resolved signalled after each change.
- neither: the hosts-file block, plus any dnsmasq the user points at the file.

The choice follows the watchers live: NM switching modes, resolved appearing
or going away move the names to the right path without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from agent.config.schema import Config
from agent.plan.table import Table, select
from agent.resolvers.bus import owner_pid
from agent.resolvers.resolved import RESOLVE1, ResolvedState, ResolvedWatcher
from agent.resolvers.resolved_version import STATIC_RECORDS_SINCE, resolved_version
from agent.resolvers.route import ResolvedRoute
from agent.resolvers.view import ResolverView
from agent.sinks.addn_hosts import AddnHostsSink
from agent.sinks.base import Sink
from agent.sinks.dnsmasq_target import Candidate, Locator, reload_dnsmasq

log = structlog.get_logger(component="resolvers.path")

STARTUP_SYNC_TIMEOUT_S = 10.0


class DnsPath(StrEnum):
    NM_DNSMASQ = "networkmanager-dnsmasq"
    RESOLVED = "systemd-resolved"
    HOSTS = "hosts-file"
    STATIC_RECORDS = "systemd-resolved-static-records"


@dataclass(frozen=True)
class PathChoice:
    path: DnsPath
    reason: str


@dataclass(frozen=True)
class StaticRecordsProbe:
    """What the running systemd-resolved is: static.d needs >= 261."""

    version: int | None = None
    found: str = "not probed"  # how the version was found, or why it was not
    pid: int | None = None
    owner: str | None = None  # the bus owner this was probed for

    @property
    def available(self) -> bool:
        return self.version is not None and self.version >= STATIC_RECORDS_SINCE


def _static_records_path(config: Config, resolved: ResolvedState | None,
                         static: StaticRecordsProbe | None) -> PathChoice | None:
    r = config.resolved
    # Otherwise the routing path: NXDOMAIN for unknown names, containers served too.
    if (not config.static_records_possible or resolved is None or not resolved.running
            or static is None or not static.available):
        return None
    why = ('static_records = "prefer"' if r.static_records == "prefer" else
           "namesync runs no dnsmasq for the routing path (dnsmasq.enabled = false)")
    return PathChoice(DnsPath.STATIC_RECORDS,
                      f"systemd-resolved {static.version} reads static records "
                      f"({r.static_records_file}); {why}")


def choose_path(config: Config, nm: ResolverView | None,
                resolved: ResolvedState | None,
                static: StaticRecordsProbe | None = None) -> PathChoice:
    if nm is not None and nm.running and nm.mode == "dnsmasq":
        return PathChoice(DnsPath.NM_DNSMASQ, "NetworkManager runs its dnsmasq (dns=dnsmasq)")
    by_static = _static_records_path(config, resolved, static)
    if by_static is not None:
        return by_static
    if not config.dnsmasq.enabled:
        return PathChoice(DnsPath.HOSTS, "the dnsmasq sink is disabled (dnsmasq.enabled)")
    if resolved is not None and resolved.running:
        if not config.resolved.enabled:
            return PathChoice(DnsPath.HOSTS, "systemd-resolved runs, but resolved.enabled is false")
        return PathChoice(DnsPath.RESOLVED,
                          "systemd-resolved is the resolver (org.freedesktop.resolve1 on the bus)")
    return PathChoice(DnsPath.HOSTS, "neither NetworkManager's dnsmasq nor systemd-resolved runs")


class DnsPathController:
    """Owns the resolved watcher and, while that path is chosen, the resolved route."""

    def __init__(self, config: Config, nm_state: Callable[[], ResolverView | None],
                 on_route_change: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._nm_state = nm_state
        self._on_route_change = on_route_change
        self.watcher: ResolvedWatcher | None = None
        self._watcher_task: asyncio.Task[None] | None = None
        self.route: ResolvedRoute | None = None
        self._route_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self.static = StaticRecordsProbe()
        self._probe_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.choice = choose_path(config, None, None)

    async def start(self) -> None:
        c = self.config
        # A user agent serves nothing itself (it pushes to the system agent).
        route = c.resolved.enabled and c.dnsmasq.enabled and c.mode != "user"
        if route or c.static_records_possible:
            self.watcher = ResolvedWatcher(self.update)
            self._watcher_task = asyncio.create_task(self.watcher.supervise(), name="resolved")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watcher.synced.wait(), STARTUP_SYNC_TIMEOUT_S)
            if c.static_records_possible and self.watcher.owner is not None:
                # Probed before the first choice: the first sync goes to the right path.
                await self._probe(self.watcher.owner)
        self.update()
        if self.route is not None:
            # The first sync must already signal namesync's dnsmasq, not find it missing.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.route.dnsmasq.synced.wait(), STARTUP_SYNC_TIMEOUT_S)

    def update(self) -> None:
        """Recompute the path; start or stop the resolved route to match."""
        resolved = self.watcher.state if self.watcher else None
        self._probe_if_new(resolved)
        choice = choose_path(self.config, self._nm_state(), resolved, self.static)
        if (self.choice.path == DnsPath.RESOLVED and choice.path == DnsPath.HOSTS
                and resolved is not None and not resolved.running):
            # resolved restarting (or briefly off the bus) forgets the link's settings, not
            # the need for them: keep the dnsmasq and the link, re-register on its return.
            choice = PathChoice(DnsPath.RESOLVED, "systemd-resolved is not on the bus right "
                                "now; the route stays ready and is registered again when it "
                                "returns (the hosts file serves meanwhile)")
        if choice != self.choice:
            log.info("names served through", path=str(choice.path), reason=choice.reason)
        moved = (choice.path != self.choice.path
                 and DnsPath.STATIC_RECORDS in (choice.path, self.choice.path))
        self.choice = choice
        if moved:
            self._on_route_change()  # the static records sink writes or removes its file
        want = self._wanted_route(choice.path)
        have = None if self.route is None else ("forwarder" if self.route.forward_only
                                                else "resolved")
        if want == have:
            return
        if self._route_task is not None:
            self._stopping, self._route_task, self.route = self._route_task, None, None
            self._stopping.cancel()
        if want is not None:
            self.route = ResolvedRoute(self.config,
                                       self.watcher if want == "resolved" else None,
                                       self._on_route_change)
            self._route_task = asyncio.get_running_loop().create_task(
                self._run_route(self.route, self._stopping), name="resolved:route")

    def _probe_if_new(self, resolved: ResolvedState | None) -> None:
        """A new resolved owner (a restart may be an upgrade): probe its version and pid."""
        if (not self.config.static_records_possible or resolved is None
                or resolved.owner == self.static.owner or self._stopped):
            return
        if resolved.owner is None:
            self.static = StaticRecordsProbe(found="systemd-resolved is not on the bus")
            return
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(
                self._probe_and_update(resolved.owner), name="resolved:probe")

    async def _probe_and_update(self, owner: str) -> None:
        await self._probe(owner)
        self.update()

    async def _probe(self, owner: str) -> None:
        bus = self.watcher.bus if self.watcher is not None else None
        pid = None
        if bus is not None:
            with contextlib.suppress(Exception):  # gone again: the next owner is probed
                pid = await owner_pid(bus, RESOLVE1)
        version, found = await asyncio.to_thread(resolved_version)
        self.static = StaticRecordsProbe(version, found, pid, owner)
        log.info("systemd-resolved probed", version=version, found=found, pid=pid,
                 static_records=self.static.available)

    def static_records_serving(self) -> bool:
        return self.choice.path == DnsPath.STATIC_RECORDS and not self._stopped

    def resolved_pid(self) -> int | None:
        return self.static.pid

    def _wanted_route(self, path: DnsPath) -> str | None:
        """resolved: the full route; forwarder: containers only, on NM's dnsmasq path."""
        r = self.config.resolved
        if path == DnsPath.RESOLVED and self.watcher is not None:
            return "resolved"
        if (path == DnsPath.NM_DNSMASQ and r.enabled and r.containers
                and self.config.mode != "user"):
            return "forwarder"
        return None

    @staticmethod
    async def _run_route(route: ResolvedRoute, previous: asyncio.Task[None] | None) -> None:
        # A route being withdrawn still owns the link: let it finish first.
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        await route.run()

    async def _stop_route(self) -> None:
        task, self._route_task, self.route = self._route_task, None, None
        for t in (task, self._stopping):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self._stopping = None

    async def stop(self) -> None:
        # The static records go with namesync (the sync after stop removes the file).
        self._stopped = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        # The route first: withdrawing it still needs the watcher's bus connection.
        await self._stop_route()
        if self._watcher_task is not None:
            self._watcher_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher_task
        self._watcher_task, self.watcher = None, None

    def hides_zones(self) -> bool:
        """True while resolved routes the zones to namesync: the hosts block must not
        carry them then (resolved answers /etc/hosts first, re-read only every 2 s)."""
        if self.static_records_serving():
            return True  # resolved reads /etc/hosts first: a removed name would linger 2 s
        route = self.route
        return route is not None and not route.forward_only and route.registered is not None

    def candidates(self) -> list[Candidate]:
        route = self.route
        return route.candidates() if route is not None else []

    def status(self) -> dict[str, Any]:
        w = self.watcher
        return {
            "path": str(self.choice.path),
            "reason": self.choice.reason,
            "resolved": None if w is None else {
                "bus": w.state.bus,
                "bus_error": w.state.bus_error,
                "running": w.state.running,
            },
            "route": self.route.status() if self.route is not None else None,
            "static_records": None if not self.config.static_records_possible else {
                "available": self.static.available,
                "version": self.static.version,
                "found": self.static.found,
                "pid": self.static.pid,
                "serving": self.static_records_serving(),
            },
        }


class PathLocator:
    """The dnsmasq to signal: namesync's own while the resolved path runs, else ``fallback``."""

    def __init__(self, controller: DnsPathController, fallback: Locator) -> None:
        self._controller = controller
        self._fallback = fallback

    def candidates(self) -> list[Candidate]:
        return self._controller.candidates() + self._fallback.candidates()


class RoutedZonesFilter(Sink):
    """The hosts-file sink, minus the routed zones' names while resolved routes them.

    systemd-resolved answers a name from /etc/hosts before any DNS server, and
    re-reads the file at most every 2 s: a removed or moved container would keep
    its old answer that long. glibc reads /etc/hosts itself on every lookup (Fedora:
    ``files`` before ``resolve``), and finds the names through resolved when they are
    not there. When the route goes (namesync stopping), the next sync puts them back.
    """

    def __init__(self, inner: Sink, controller: DnsPathController,
                 zones: tuple[str, ...]) -> None:
        super().__init__(inner.path)
        self.inner = inner
        self.kind = inner.kind
        self.status = inner.status
        self._controller = controller
        self._suffixes = tuple("." + z for z in zones)
        self._zones = frozenset(zones)

    def _routed(self, name: str) -> bool:
        return name in self._zones or name.endswith(self._suffixes)

    def prepare(self) -> None:
        self.inner.prepare()

    def close(self) -> None:
        self.inner.close()

    def apply(self, table: Table, changed_at: float) -> bool:
        if self._controller.hides_zones():
            table = select(table, lambda n: not self._routed(n))
        return self.inner.apply(table, changed_at)


class _Listed:
    def __init__(self, found: list[Candidate]) -> None:
        self._found = found

    def candidates(self) -> list[Candidate]:
        return self._found


class AddnHostsAndOwn(AddnHostsSink):
    """The addn-hosts sink for a dnsmasq the user named (a non-default pid file), which
    keeps getting the signal, plus namesync's own dnsmasq while the resolved path runs:
    both read the same file, and a reload only ever signals one locator's first."""

    def __init__(self, path: Path, locator: Locator, executable: Path | None,
                 controller: DnsPathController) -> None:
        super().__init__(path, locator, executable)
        self._controller = controller

    def apply(self, table: Table, changed_at: float) -> bool:
        writes = self.status.writes
        ok = super().apply(table, changed_at)
        own = self._controller.candidates()
        if self.status.writes != writes and own and own[0].pid is not None:
            result = reload_dnsmasq(_Listed(own))
            if not result.sent:
                log.warning("namesync's dnsmasq not signalled", reason=result.reason)
        return ok
