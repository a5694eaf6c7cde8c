"""One libvirt connection (one URI) as a source of ``<domain>.<zone>`` records.

Level-triggered throughout. On every (re)connect: register the domain and
network event callbacks, then list domains, networks and ``DHCPLeases()``,
then replace the whole snapshot. After that a lifecycle event only names a
domain to read again. DHCP leases have no libvirt event: the lease directory
is watched with inotify, independently of the connection, and every change
rebuilds the snapshot from the last good view of each lease file.

While libvirtd is away (restart, upgrade) the last snapshot stays published;
the reconnect's resync replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from agent.config.schema import Config, LibvirtConfig
from agent.model.record import Address
from agent.sources.base import SnapshotSink, Source
from agent.sources.dirwatch import RESCAN, watch_dir
from agent.sources.libvirt import client
from agent.sources.libvirt.domain_xml import Domain, DomainXMLError, Nic
from agent.sources.libvirt.leases import (
    Lease,
    LeaseFile,
    LeaseFileError,
    bridge_of,
    parse_status,
)
from agent.sources.libvirt.records import Naming, next_expiry, snapshot

log = structlog.get_logger(component="sources.libvirt")

RECONNECT_FIRST_S = 0.25
RECONNECT_MAX_S = 10.0
# libvirt's keepalive: a probe every 5 s, the connection is dead after 3 unanswered.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3

# Hints queued by libvirt callbacks; the worker reads the named objects again.
_NETWORKS = ("networks", "")
# virConnectCloseReason, as the close callback reports it.
_CLOSE_REASONS = {
    0: "connection closed on a read/write error",
    1: "libvirtd closed the connection",
    2: "libvirtd stopped answering keepalive probes",
    3: "connection closed by the client",
}

# One lease file read: its leases, why it was refused, or None when it is gone.
_LeaseRead = LeaseFile | str | None


def _read_lease_file(lease_dir: Path, bridge: str) -> _LeaseRead:
    """Blocking (runs in a thread); touches no source state."""
    try:
        data = (lease_dir / f"{bridge}.status").read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read: {e.strerror}"
    try:
        return parse_status(bridge, data)
    except LeaseFileError as e:
        return str(e)


def _read_lease_dir(lease_dir: Path) -> dict[str, _LeaseRead]:
    try:
        names = [p.name for p in lease_dir.iterdir()]
    except OSError:
        return {}
    bridges = {b for b in map(bridge_of, names) if b is not None}
    return {b: _read_lease_file(lease_dir, b) for b in bridges}


class LibvirtSource(Source):
    kind = "libvirt"

    def __init__(self, uri: str, config: LibvirtConfig) -> None:
        super().__init__(f"libvirt:{uri}")
        self.uri = uri
        self.config = config
        self._naming = Naming(self.name, uri, config.zone, config.guest_hostnames)
        self._sink: SnapshotSink | None = None
        self._domains: dict[str, Domain] = {}
        self._bridges: dict[str, str] = {}
        self._lease_files: dict[str, tuple[Lease, ...]] = {}  # bridge -> last good view
        self._lease_problems: dict[str, str] = {}  # bridge -> why its file was refused
        self._probed: dict[str, dict[str, tuple[Address, ...]]] = {}
        self._listed = False  # domains known from at least one full listing
        self._hints: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._leases_read = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        if not config.libvirt.enabled:
            return []
        return [cls(uri, config.libvirt) for uri in config.libvirt.uris]

    def config_key(self) -> Hashable:
        return (self.uri, self.config)

    # -- running

    async def run(self, sink: SnapshotSink) -> None:
        self._sink = sink
        try:
            lv = importlib.import_module("libvirt")
        except ImportError as e:
            why = f"libvirt-python is not installed ({e}); install python3-libvirt"
            self.record_error(why)
            self.set_state("disconnected", why)
            log.error("libvirt source unavailable", uri=self.uri, error=why)
            sink.replace(self.name, {})
            self.mark_synced()
            await asyncio.Future()  # nothing to watch; stay until cancelled
            return
        # libvirtaio comes with libvirt-python: imported only once that is known present.
        from agent.sources.libvirt.eventloop import ensure_event_loop

        ensure_event_loop(asyncio.get_running_loop())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch_leases())
                tg.create_task(self._stay_connected(lv))
        finally:
            if self._expiry is not None:
                self._expiry.cancel()

    async def _stay_connected(self, lv: ModuleType) -> None:
        # Subscribe before listing: leases first (the watcher's first rescan).
        await self._leases_read.wait()
        delay = RECONNECT_FIRST_S
        was_connected = False
        while True:
            conn: Any = None
            registered: list[tuple[str, int]] = []
            try:
                conn = await asyncio.to_thread(lv.openReadOnly, self.uri)
                hint = self._hint_threadsafe()
                registered = await asyncio.to_thread(self._register, lv, conn, hint)
                await self._resync(lv, conn)
                delay = RECONNECT_FIRST_S
                was_connected = True
                reason = await self._serve(lv, conn)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
            finally:
                if conn is not None:
                    # Deregistering on a dead connection fails; closing frees it anyway.
                    await asyncio.shield(asyncio.to_thread(self._close, lv, conn, registered))
            self.record_error(f"{self.uri}: {reason}")
            self.set_state("disconnected", f"{reason}; reconnecting in {delay:g}s")
            # One warning per outage; each further failed attempt is in status anyway.
            if was_connected or delay == RECONNECT_FIRST_S:
                log.warning(
                    "libvirt connection lost; keeping the last snapshot"
                    if was_connected else "cannot connect to libvirt; retrying",
                    uri=self.uri, error=reason, retry_s=delay,
                )
            else:
                log.debug("libvirt still unreachable", uri=self.uri, error=reason, retry_s=delay)
            was_connected = False
            self._publish()
            self.mark_synced()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    def _register(
        self, lv: ModuleType, conn: Any, loop_hint: Callable[[tuple[str, str]], None]
    ) -> list[tuple[str, int]]:
        """In a thread: close callback, keepalive, event callbacks."""
        conn.registerCloseCallback(
            lambda _c, why, _o: loop_hint(("closed", _CLOSE_REASONS.get(why, f"closed ({why})"))),
            None,
        )
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except lv.libvirtError as e:
            # Drivers running in this process (test:///) have no connection to probe.
            if e.get_error_code() != lv.VIR_ERR_NO_SUPPORT:
                raise
        registered = []
        domain_cb = lambda _c, dom, _ev, _detail, _o: loop_hint(("domain", dom.UUIDString()))  # noqa: E731
        registered.append((
            "domain",
            conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_cb, None),
        ))
        agent_id = getattr(lv, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE", None)
        if agent_id is not None:
            agent_cb = lambda _c, dom, state, _reason, _o: loop_hint(  # noqa: E731
                ("agent" if state == 1 else "domain", dom.UUIDString())
            )
            try:
                registered.append(
                    ("domain", conn.domainEventRegisterAny(None, agent_id, agent_cb, None))
                )
            except lv.libvirtError as e:
                log.debug("no agent lifecycle events on this driver", uri=self.uri, error=str(e))
        net_cb = lambda _c, _net, _ev, _detail, _o: loop_hint(_NETWORKS)  # noqa: E731
        registered.append((
            "network",
            conn.networkEventRegisterAny(None, lv.VIR_NETWORK_EVENT_ID_LIFECYCLE, net_cb, None),
        ))
        return registered

    def _hint_threadsafe(self) -> Callable[[tuple[str, str]], None]:
        loop = asyncio.get_running_loop()
        hints = self._hints

        def hint(item: tuple[str, str]) -> None:
            loop.call_soon_threadsafe(hints.put_nowait, item)

        return hint

    @staticmethod
    def _close(lv: ModuleType, conn: Any, registered: list[tuple[str, int]]) -> None:
        for kind, cb_id in registered:
            with contextlib.suppress(lv.libvirtError):
                if kind == "domain":
                    conn.domainEventDeregisterAny(cb_id)
                else:
                    conn.networkEventDeregisterAny(cb_id)
        with contextlib.suppress(lv.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(lv.libvirtError):
            conn.close()

    async def _resync(self, lv: ModuleType, conn: Any) -> None:
        # Hints queued before this listing are answered by it.
        while not self._hints.empty():
            self._hints.get_nowait()
        inv = await asyncio.to_thread(client.read_all, lv, conn)
        for problem in inv.problems:
            self.record_error(problem)
            log.warning("domain skipped", uri=self.uri, problem=problem)
        self._domains = inv.domains
        self._bridges = inv.bridges
        self._cross_check(inv.dhcp)
        self._probed = {u: p for u, p in self._probed.items() if u in self._domains}
        self._listed = True
        self.set_state("connected")
        self._publish()
        self.mark_synced()
        log.info("libvirt synced", uri=self.uri, domains=len(inv.domains))
        for uuid in self._needs_probe():
            self._hints.put_nowait(("probe", uuid))

    def _cross_check(self, dhcp: dict[str, list[Lease]]) -> None:
        """DHCPLeases() reads the same files: where it disagrees, an inotify event
        was missed (or the file was unreadable) and libvirt's own reading wins."""
        for bridge, api in dhcp.items():
            ours = self._lease_files.get(bridge, ())
            if {(x.mac, x.address) for x in api} != {(x.mac, x.address) for x in ours}:
                log.info("lease file view differed from DHCPLeases(); using libvirt's",
                         bridge=bridge, file=len(ours), api=len(api))
                self._lease_files[bridge] = tuple(api)

    async def _serve(self, lv: ModuleType, conn: Any) -> str:
        """Follow events until the connection closes; returns why it did."""
        while True:
            batch = [await self._hints.get()]
            while not self._hints.empty():
                batch.append(self._hints.get_nowait())
            self.saw_event()
            closed = [why for kind, why in batch if kind == "closed"]
            if closed:
                return closed[0]
            if _NETWORKS in batch:
                inv = client.Inventory()
                await asyncio.to_thread(client.read_networks, lv, conn, inv, leases=False)
                self._bridges = inv.bridges
            for uuid in dict.fromkeys(u for kind, u in batch if kind == "domain"):
                try:
                    dom = await asyncio.to_thread(client.lookup_domain, lv, conn, uuid)
                except DomainXMLError as e:
                    self.record_error(f"domain {uuid}: {e}")
                    continue
                if dom is None or not dom.active:
                    self._probed.pop(uuid, None)
                if dom is None:
                    self._domains.pop(uuid, None)
                else:
                    started = dom.active and not self._was_active(uuid)
                    self._domains[uuid] = dom
                    if started and uuid in self._needs_probe():
                        batch.append(("probe", uuid))
            self._publish()
            for uuid in dict.fromkeys(u for kind, u in batch if kind in ("probe", "agent")):
                if uuid not in self._domains or not self._domains[uuid].active:
                    continue
                found = await asyncio.to_thread(client.probe_addresses, lv, conn, uuid)
                if found != self._probed.get(uuid, {}):
                    self._probed[uuid] = found
                    self._publish()

    def _was_active(self, uuid: str) -> bool:
        old = self._domains.get(uuid)
        return old is not None and old.active

    def _needs_probe(self) -> list[str]:
        """Running domains with a NIC that no lease explains (bridged, static)."""
        leased = {(x.bridge, x.mac) for leases in self._lease_files.values() for x in leases}
        out = []
        for uuid, dom in self._domains.items():
            if not dom.active:
                continue
            for nic in dom.nics:
                if nic.mac and (self._bridge_of(nic), nic.mac) not in leased:
                    out.append(uuid)
                    break
        return out

    def _bridge_of(self, nic: Nic) -> str | None:
        return nic.bridge or (self._bridges.get(nic.network) if nic.network else None)

    def _drop_superseded_probes(self) -> None:
        """A NIC that has a lease now is served by it: its probed addresses (taken
        when it had none) must not come back when that lease expires."""
        leased = {(x.bridge, x.mac) for leases in self._lease_files.values() for x in leases}
        for uuid, found in list(self._probed.items()):
            dom = self._domains.get(uuid)
            if dom is None:
                del self._probed[uuid]
                continue
            for nic in dom.nics:
                if nic.mac in found and (self._bridge_of(nic), nic.mac) in leased:
                    found = {m: a for m, a in found.items() if m != nic.mac}
            self._probed[uuid] = found

    # -- leases

    async def _watch_leases(self) -> None:
        lease_dir = self.config.lease_dir
        if not lease_dir.is_dir():
            # Nothing to read yet; the watcher follows the directory into existence.
            self._leases_read.set()
        async with contextlib.aclosing(watch_dir(lease_dir)) as changes:
            async for name in changes:
                await self._lease_change(lease_dir, name)

    async def _lease_change(self, lease_dir: Path, name: str) -> None:
        if name == RESCAN:
            found = await asyncio.to_thread(_read_lease_dir, lease_dir)
            changed = False
            for gone in set(self._lease_files) - set(found):
                del self._lease_files[gone]
                changed = True
            for each, result in sorted(found.items(), key=lambda kv: kv[0]):
                changed |= self._apply_lease_file(lease_dir, each, result)
            self._leases_read.set()
        else:
            bridge = bridge_of(name)
            if bridge is None:
                return
            one = await asyncio.to_thread(_read_lease_file, lease_dir, bridge)
            changed = self._apply_lease_file(lease_dir, bridge, one)
        if changed:
            self.saw_event()
            self._publish()

    def _apply_lease_file(self, lease_dir: Path, bridge: str, result: _LeaseRead) -> bool:
        """Take in one file's reading; True if the view (or its problem) changed."""
        if result is None:
            self._lease_problems.pop(bridge, None)
            return self._lease_files.pop(bridge, None) is not None
        if isinstance(result, str):
            path = lease_dir / f"{bridge}.status"
            if self._lease_problems.get(bridge) == result:
                return False
            log.warning("lease file refused; keeping its last good view", file=str(path),
                        reason=result)
            self._lease_problems[bridge] = result
            self.record_error(f"lease file {path} refused: {result}; keeping its last good view")
            return True
        if result.skipped:
            log.warning("lease entries skipped", bridge=bridge, skipped=result.skipped)
        fixed = self._lease_problems.pop(bridge, None) is not None
        if self._lease_files.get(bridge) == result.leases:
            return fixed
        self._lease_files[bridge] = result.leases
        return True

    # -- publishing

    def _publish(self) -> None:
        if self._sink is None or not self._listed:
            return
        self._drop_superseded_probes()
        now = time.time()
        leases = [x for view in self._lease_files.values() for x in view]
        objects, summary = snapshot(
            self._domains.values(), self._naming, self._bridges, leases, self._probed, now,
        )
        self._sink.replace(self.name, objects)
        parts = [f"{summary.running} running, {summary.published} named"]
        if summary.waiting:
            parts.append("no address yet: " + ", ".join(sorted(summary.waiting)))
        for bridge, why in sorted(self._lease_problems.items()):
            parts.append(f"{bridge}.status refused ({why})")
        if self.health.state == "connected":
            self.set_state("connected", "; ".join(parts))
        self._arm_expiry(leases, now)

    def _arm_expiry(self, leases: list[Lease], now: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        when = next_expiry(leases, now)
        if when is not None:
            loop = asyncio.get_running_loop()
            # Expired entries stay in the file until the next DHCP event: rebuild
            # when the next one runs out, so a dead lease stops answering on time.
            self._expiry = loop.call_later(when - now + 0.05, self._publish)
