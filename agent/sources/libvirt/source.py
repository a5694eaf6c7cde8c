"""One libvirt connection (one URI) as a source of ``<domain>.<zone>`` records.

Level-triggered throughout, on the shared lifecycle (sources/lifecycle.py):
on every (re)connect the domain and network event callbacks are registered,
then domains, networks and ``DHCPLeases()`` are listed and the whole snapshot
replaced. After that a lifecycle event only names a domain to read again.

DHCP leases have no libvirt event: the lease directory is followed with
inotify (sources/parsed_dir.py), independently of the connection, and a
lease change is published straight from the file's new reading: no libvirt
call sits between the inotify event and the snapshot the pipeline sees.
Sooner still, the DHCPACK libvirt's dnsmasq sends on the bridge publishes the
lease provisionally until the file confirms it (dhcp_ack.py, provisional.py).

While libvirtd is away (restart, upgrade) the last snapshot stays published;
lease changes still are; the reconnect's resync replaces it all. While its
socket is absent (no libvirtd on this machine) nothing is retried: the
lifecycle waits for the socket to appear.

After ``release_idle_s`` without an event the connection is released (libvirtd
would ping it every 5 s for ever) and libvirt's state and config directories
are watched instead (release.py); the first change there reconnects, lists
and follows again. A domain whose address comes from probing keeps it.

Every blocking call goes through ``self.watchdog`` (sources/watchdog.py): a
libvirtd that hangs without closing its socket is reported after
``call_timeout_s``, its connection abandoned and closed once the stuck call
returns, and the source reconnects; the names stay meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from agent.config.schema import Config, LibvirtConfig
from agent.model.record import Address
from agent.sources.base import Objects, ServiceSource, Source
from agent.sources.libvirt import client
from agent.sources.libvirt.dhcp_ack import Ack, AckTrigger, Pool
from agent.sources.libvirt.domain_xml import Domain, DomainXMLError
from agent.sources.libvirt.leases import Lease, LeaseFile, bridge_of, parse_status
from agent.sources.libvirt.provisional import Provisional
from agent.sources.libvirt.records import (
    Naming,
    known_nics,
    leased_nics,
    needs_probe,
    next_expiry,
    snapshot,
    unsuperseded,
)
from agent.sources.libvirt.release import libvirt_change, release_dirs
from agent.sources.libvirt.traced import Traced
from agent.sources.lifecycle import Awaited, Hints, Idle, Problem, Unavailable
from agent.sources.parsed_dir import DirView, FileFormat, ParsedDir
from agent.sources.watchdog import Line, Stalled, Watchdog

log = structlog.get_logger(component="sources.libvirt")

# libvirt's keepalive, on remote connections only (uses_keepalive): a probe every 5 s,
# the connection is dead after 3 unanswered.
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
# ... and on a local connection abandoned with a call stuck (the watchdog): libvirt
# closes it once a stopped libvirtd missed 2 probes 2 s apart, which fails the
# stuck call and ends its thread. A libvirtd whose event loop still runs answers
# them: then the thread waits for its call, and the probes with it.
STUCK_KEEPALIVE_INTERVAL_S = 2
STUCK_KEEPALIVE_COUNT = 2

# Hints queued by libvirt callbacks; the follower reads the named objects again.
_NETWORKS = ("networks", "")
_LEASES = ("leases", "")  # a lease file changed: the quiet spell starts again
# virConnectCloseReason, as the close callback reports it.
_CLOSE_REASONS = {
    0: "connection closed on a read/write error",
    1: "libvirtd closed the connection",
    2: "libvirtd stopped answering keepalive probes",
    3: "connection closed by the client",
}
# The daemons that may serve a local system URI: monolithic, then modular.
_DAEMONS = {"qemu": "virtqemud", "lxc": "virtlxcd", "network": "virtnetworkd"}

LEASE_FORMAT = FileFormat(key=bridge_of, parse=parse_status)


def _session_sockets(driver: str, env: Mapping[str, str]) -> tuple[Path, ...]:
    """A session daemon's sockets, when namesync must not start one itself.

    With LIBVIRT_AUTOSTART=0 (the user unit sets it: a daemon spawned by namesync
    would die with it, and the user's VMs with it) connecting fails until whoever
    runs the VMs starts the daemon: wait for its socket instead of retrying.
    """
    runtime = env.get("XDG_RUNTIME_DIR")
    if env.get("LIBVIRT_AUTOSTART") != "0" or not runtime:
        return ()  # libvirt starts the session daemon on connect
    run = Path(runtime) / "libvirt"
    names = ["libvirt-sock"]
    if driver in _DAEMONS:
        names.append(f"{_DAEMONS[driver]}-sock")
    return tuple(run / n for n in names)


def uses_keepalive(uri: str) -> bool:
    """Whether namesync runs libvirt's keepalive probes itself on a connection to ``uri``.

    Not on a local socket: when the daemon dies or restarts the kernel closes the
    socket and the close callback hears EOF at once, which is what a reconnect
    needs; our probes would only wake namesync (and libvirtd) every 5 s for ever
    (issue 11: no wakeups when idle). A remote connection can break without EOF
    (a network gone, a host powered off): there the probes are how it is noticed.
    libvirtd's own probes (libvirtd.conf keepalive_interval, 5 s by default) are
    its setting, not ours: docs/benchmarks.md shows both.
    """
    parts = urlsplit(uri)
    _, _, transport = parts.scheme.partition("+")
    return bool(parts.netloc) or transport not in ("", "unix")


def socket_candidates(uri: str, env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """Sockets one of which must exist before connecting to ``uri`` locally is worth
    trying; () for URIs with nothing to watch (remote, test, an autostarted session)."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if parts.netloc or transport not in ("", "unix") or driver == "test":
        return ()
    explicit = parse_qs(parts.query).get("socket")
    if explicit:
        return (Path(explicit[0]),)
    if parts.path == "/session":
        return _session_sockets(driver, os.environ if env is None else env)
    if parts.path != "/system":
        return ()
    run = Path("/run/libvirt")
    names = ["libvirt-sock-ro"]
    if driver in _DAEMONS:
        names.append(f"{_DAEMONS[driver]}-sock-ro")
    return tuple(run / n for n in names)


@dataclass
class _Conn:
    lv: ModuleType
    handle: Any
    hints: Hints[tuple[str, str]]
    registered: list[tuple[str, int]] = field(default_factory=list)
    line: Line = field(default_factory=Line)  # its calls: none while one is stuck


@dataclass
class ApiView:
    """What libvirtd said, as of the last listing and the events since."""

    domains: dict[str, Domain]
    bridges: dict[str, str]  # network -> bridge
    probed: dict[str, dict[str, tuple[Address, ...]]]  # uuid -> mac -> addresses
    # DHCPLeases() for a bridge whose file disagreed at the listing (an inotify
    # event was missed, or the file was unreadable): libvirt's own reading
    # wins until the file changes again.
    dhcp: dict[str, tuple[Lease, ...]]


class LibvirtSource(ServiceSource[_Conn]):
    kind = "libvirt"
    retry_first_s = 0.25
    retry_max_s = 10.0
    watchdog: Watchdog

    def __init__(self, uri: str, config: LibvirtConfig) -> None:
        super().__init__(f"libvirt:{uri}")
        self.uri = uri
        self.config = config
        self._naming = Naming(self.name, uri, config.zone, config.guest_hostnames)
        self._leases = ParsedDir(config.lease_dir, LEASE_FORMAT, self._on_leases)
        self._api: ApiView | None = None  # None until the first listing
        self._expiry: asyncio.TimerHandle | None = None
        self._detail: str | None = None
        # DHCPACKs: a lease published before its file is written (dhcp_ack.py).
        self._acks = AckTrigger(self._on_ack) if config.dhcp_trigger else None
        self._provisional = Provisional()
        self._withdraw: asyncio.TimerHandle | None = None
        self._pools: dict[str, Pool] = {}  # bridge -> what its DHCP may hand out
        self._acks_refused = 0  # host-sent ACKs that were not libvirt's decision
        # (bridge, MAC) of every known domain's NIC, as of the last build: an ACK is
        # checked against it in O(1), whatever a guest's flood holds (review F4).
        self._known: frozenset[tuple[str, str]] = frozenset()
        self._soon: asyncio.Handle | None = None  # one publish for a burst of ACKs
        self._hints: Hints[tuple[str, str]] | None = None  # while following
        self._kept: str | None = None  # why the connection is not released now
        # Every blocking libvirt call goes through it: a hung libvirtd is said (watchdog.py).
        self.watchdog = Watchdog("libvirtd", config.call_timeout_s or None)

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        if not config.libvirt.enabled:
            return []
        return [cls(uri, config.libvirt) for uri in config.libvirt.uris]

    def config_key(self) -> Hashable:
        return (self.uri, self.config)

    # --- lifecycle hooks --------------------------------------------------------

    def wait_available(self) -> Awaited | None:
        paths = socket_candidates(self.uri)
        if not paths:
            return None
        if self.uri.rstrip("/").endswith("/session"):
            return Awaited(paths, "the libvirt session daemon's socket",
                           "start it (virt-manager or `virsh -c qemu:///session list` "
                           "does), or disable [libvirt]")
        return Awaited(paths, "libvirtd's socket",
                       "start libvirtd (systemctl start libvirtd), or disable [libvirt]")

    def companions(self) -> Sequence[Any]:
        return (self._follow_leases(),)

    async def connect(self) -> _Conn:
        try:
            lv = importlib.import_module("libvirt")
        except ImportError as e:
            raise Unavailable(Problem(f"libvirt-python is not installed ({e})",
                                      "install python3-libvirt")) from None
        # libvirtaio comes with libvirt-python: imported only once that is known present.
        from agent.sources.libvirt.eventloop import ensure_event_loop

        ensure_event_loop(asyncio.get_running_loop())
        # Subscribe before listing: leases first (the lease watcher's first read).
        await self._leases.read.wait()
        handle = await self.watchdog.call("openReadOnly", lv.openReadOnly, self.uri,
                                       late=functools.partial(_close, lv, registered=[]))
        return _Conn(lv, handle, Hints())

    async def subscribe(self, conn: _Conn) -> None:
        conn.registered = await self._call(
            conn, "event registration", _register, conn.hints.put, self.uri)

    async def _call(self, conn: _Conn, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(lv, handle, *args)`` in a thread, watched; ``what`` names its first RPC
        (status names the one it waits in: traced.py)."""
        return await self.watchdog.call(what, fn, conn.lv, Traced(conn.handle, conn.line),
                                        *args, line=conn.line)

    async def list_all(self, conn: _Conn) -> Objects:
        conn.hints.clear()  # hints queued before this listing are answered by it
        inv: client.Inventory = await self._call(conn, "listAllDomains", client.read_all)
        for problem in inv.problems:
            self.record_error(problem)
            log.warning("domain skipped", uri=self.uri, problem=problem)
        old = self._api
        probed = {} if old is None else {u: p for u, p in old.probed.items() if u in inv.domains}
        self._api = ApiView(inv.domains, inv.bridges, probed, self._cross_check(inv.dhcp))
        if self._acks is not None:
            self._pools = inv.pools
            self._acks.watch(inv.servers)
        objects, leased = self._build()
        log.info("libvirt listed", uri=self.uri, domains=len(inv.domains))
        for dom in inv.domains.values():
            if needs_probe(dom, inv.bridges, leased):
                conn.hints.put(("probe", dom.uuid))
        return objects

    def release_watch(self) -> Awaited | None:
        watched = release_dirs(self.uri)
        why = watched.why_not or self.release_refused or self._needs_connection()
        if why != self._kept:
            self._kept = why
            self._publish()  # status says why it stays connected
            if why is not None:
                log.info("libvirt connection kept while idle", uri=self.uri, reason=why)
        if why is not None:
            return None
        return Awaited(watched.dirs, "libvirt's state and config files", counts=libvirt_change)

    async def follow(self, conn: _Conn) -> str | Idle:
        self._hints = conn.hints
        try:
            return await self._follow(conn)
        finally:
            self._hints = None

    async def _follow(self, conn: _Conn) -> str | Idle:
        quiet = self.config.release_idle_s
        while True:
            found = await conn.hints.batch_within(quiet) if quiet else await conn.hints.batch()
            if found is None:  # a quiet spell: release, unless something needs the connection
                if self.release_watch() is not None:
                    return Idle(quiet, conn.hints.pending)
                found = await conn.hints.batch()
            closed = await self._handle(conn, found)
            if closed is not None:
                return closed

    async def _handle(self, conn: _Conn, batch: list[tuple[str, str]]) -> str | None:
        """Read again what the hints name; returns why the connection closed, if it did."""
        if all(hint == _LEASES for hint in batch):
            return None  # the lease watcher published it already
        self.saw_event()
        closed = [why for kind, why in batch if kind == "closed"]
        if closed:
            return closed[0]
        if _NETWORKS in batch:
            await self._reread_networks(conn)
        started = await self._reread_domains(conn, [u for k, u in batch if k == "domain"])
        self._publish()
        await self._probe(conn, started + [u for k, u in batch if k in ("probe", "agent")])
        return None

    async def disconnect(self, conn: _Conn) -> None:
        # Deregistering on a dead connection fails; closing frees it anyway.
        close = functools.partial(_close, conn.lv, conn.handle, conn.registered)
        if self.watchdog.idle(conn.line):
            await self.watchdog.call("close", close, line=conn.line)
            return
        # A call is in flight (stuck, or its caller cancelled): closing now would free
        # what that call uses. Close once it returns; libvirt's keepalive makes a stuck
        # one return if libvirtd is stopped (the one call made on a stuck connection:
        # it only arms a timer, no RPC).
        self.watchdog.after(conn.line, close)
        if conn.line.stuck is not None:
            await self.watchdog.call("setKeepAlive", _wake, conn.lv, conn.handle)

    def describe(self, error: BaseException) -> Problem:
        if isinstance(error, Stalled):
            return Problem(f"{self.uri}: {error}",
                           "check libvirtd (systemctl status libvirtd); namesync keeps "
                           "the names and resyncs once it answers")
        text = f"{self.uri}: {type(error).__name__}: {error}"
        if "Permission denied" in str(error):
            return Problem(text, "run namesync as root, or let its user read libvirt's socket")
        return Problem(text)

    def connected_detail(self) -> str | None:
        return self._detail

    async def supervise(self) -> None:
        try:
            await super().supervise()
        finally:
            if self._expiry is not None:
                self._expiry.cancel()
            if self._withdraw is not None:
                self._withdraw.cancel()
            if self._soon is not None:
                self._soon.cancel()
                self._soon = None
            if self._acks is not None:
                self._acks.close()

    # --- following ----------------------------------------------------------------

    async def _reread_networks(self, conn: _Conn) -> None:
        inv = client.Inventory()
        await self._call(conn, "listAllNetworks",
                         functools.partial(client.read_networks, leases=False), inv)
        if self._api is not None:
            self._api.bridges = inv.bridges
        if self._acks is not None:
            self._pools = inv.pools
            self._acks.watch(inv.servers)

    async def _reread_domains(self, conn: _Conn, uuids: list[str]) -> list[str]:
        """Read the named domains again; returns those that just started and need a probe."""
        api = self._api
        assert api is not None  # listed before following
        leased = leased_nics(self._all_leases())
        started: list[str] = []
        for uuid in dict.fromkeys(uuids):
            try:
                dom = await self._call(conn, "lookupByUUIDString", client.lookup_domain, uuid)
            except DomainXMLError as e:
                self.record_error(f"domain {uuid}: {e}")
                continue
            old = api.domains.get(uuid)
            if dom is None or not dom.active:
                api.probed.pop(uuid, None)
            if dom is None:
                api.domains.pop(uuid, None)
                continue
            api.domains[uuid] = dom
            if not (old is not None and old.active) and needs_probe(dom, api.bridges, leased):
                started.append(uuid)
        return started

    async def _probe(self, conn: _Conn, uuids: list[str]) -> None:
        """Ask for the addresses of NICs without a lease (after everything else)."""
        api = self._api
        assert api is not None
        for uuid in dict.fromkeys(uuids):
            dom = api.domains.get(uuid)
            if dom is None or not dom.active:
                continue
            found = await self._call(conn, "interfaceAddresses", client.probe_addresses, uuid)
            if found != api.probed.get(uuid, {}):
                api.probed[uuid] = found
                self._publish()

    # --- leases ---------------------------------------------------------------------

    def _needs_connection(self) -> str | None:
        """Why a domain keeps the connection: addresses no lease file tells of."""
        api = self._api
        if api is None:
            return "not listed yet"
        leased = leased_nics(self._all_leases())
        probed = sorted(d.name for d in api.domains.values()
                        if needs_probe(d, api.bridges, leased))
        if probed:
            return (f"{', '.join(probed)}: addresses from interfaceAddresses(), "
                    "whose changes no file shows")
        return None

    async def _follow_leases(self) -> None:
        await self._leases.run()

    def _on_leases(self, view: DirView[LeaseFile], old: DirView[LeaseFile]) -> None:
        """A lease file changed: publish now, from the file (no libvirt call)."""
        api = self._api
        if api is not None:
            for bridge in list(api.dhcp):
                if view.files.get(bridge) != old.files.get(bridge):
                    del api.dhcp[bridge]
        for bridge, why in view.refused.items():
            if old.refused.get(bridge) != why:
                path = self.config.lease_dir / f"{bridge}.status"
                self.record_error(f"lease file {path} refused: {why}; keeping its last good view")
        for bridge, file in view.files.items():
            if file.skipped and file != old.files.get(bridge):
                log.warning("lease entries skipped", bridge=bridge, skipped=file.skipped)
        self.saw_event()
        self._publish()
        if self._hints is not None:
            self._hints.put(_LEASES)  # e.g. a lease that makes a probe unneeded

    def _cross_check(self, dhcp: dict[str, list[Lease]]) -> dict[str, tuple[Lease, ...]]:
        """DHCPLeases() reads the same files: where it disagrees, libvirt's reading wins."""
        out: dict[str, tuple[Lease, ...]] = {}
        files = self._leases.view.files
        for bridge, api in dhcp.items():
            ours = files[bridge].leases if bridge in files else ()
            if {(x.mac, x.address) for x in api} != {(x.mac, x.address) for x in ours}:
                log.info("lease file view differed from DHCPLeases(); using libvirt's",
                         bridge=bridge, file=len(ours), api=len(api))
                out[bridge] = tuple(api)
        return out

    def _leases_on(self, bridge: str) -> Sequence[Lease]:
        overrides = {} if self._api is None else self._api.dhcp
        if bridge in overrides:
            return overrides[bridge]
        found = self._leases.view.files.get(bridge)
        return () if found is None else found.leases

    def _all_leases(self) -> list[Lease]:
        overrides = {} if self._api is None else self._api.dhcp
        files = self._leases.view.files
        out: list[Lease] = []
        for bridge in sorted(set(files) | set(overrides)):
            out += overrides[bridge] if bridge in overrides else files[bridge].leases
        return out

    # --- DHCPACKs (dhcp_ack.py, provisional.py) ----------------------------------------

    def _on_ack(self, bridge: str, ack: Ack) -> None:
        """libvirt's dnsmasq just granted a lease: publish it now, until the file says.
        Kept (for its few seconds) even for a MAC no known domain has: a domain
        listed meanwhile gets it; published only once one has."""
        why = self._refusal(bridge, ack)
        if why is not None:
            # A guest decides how many of these there are: counted, not logged each.
            self._acks_refused += 1
            log.debug("DHCPACK refused", bridge=bridge, mac=ack.mac,
                      address=str(ack.address), why=why)
            return
        expiry = 0 if ack.lease_s is None else int(time.time()) + ack.lease_s
        ours = (bridge, ack.mac) in self._known
        changed = self._provisional.add(Lease(bridge, ack.mac, ack.address, None, expiry),
                                        time.monotonic(), ours)
        if not ours:
            log.debug("DHCPACK for no NIC of ours", bridge=bridge, mac=ack.mac)
            return
        if changed and self._soon is None:
            # The ACKs read in one wakeup (up to READS_PER_WAKEUP) publish once.
            self.saw_event()
            self._soon = asyncio.get_running_loop().call_soon(self._publish_soon)

    def _refusal(self, bridge: str, ack: Ack) -> str | None:
        """Why an ACK the host sent is still not libvirt's decision (review F1): an
        address the network's DHCP does not hand out, or one a live lease in the
        file gives to another NIC."""
        pool = self._pools.get(bridge)
        if pool is None or not pool.admits(ack.address):
            return "outside the network's DHCP ranges and hosts"
        now = time.time()
        for x in self._leases_on(bridge):
            if x.address == ack.address and x.mac != ack.mac and x.live(now):
                return f"the lease file gives it to {x.mac}"
        return None

    def _publish_soon(self) -> None:
        self._soon = None
        self._publish()

    def _with_provisional(self, leases: list[Lease], now: float) -> list[Lease]:
        merged, withdrawn = self._provisional.merge(
            leases, time.monotonic(), now, self._known)
        for p in withdrawn:
            # Only entries of ours are withdrawn: an ACK for anyone else was never
            # published (it waited apart and just goes).
            log.warning("provisional lease withdrawn: the lease file did not confirm it",
                        bridge=p.lease.bridge, mac=p.lease.mac, address=str(p.lease.address),
                        after_s=self._provisional.confirm_s)
        if self._withdraw is not None:
            self._withdraw.cancel()
            self._withdraw = None
        deadline = self._provisional.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic()) + 0.01
            self._withdraw = asyncio.get_running_loop().call_later(delay, self._publish)
        return merged

    def _ack_state(self) -> str | None:
        if self._acks is None:
            return "DHCPACK trigger off ([libvirt] dhcp_trigger = false)"
        parts = [self._acks.state() or ""]
        if self._acks_refused:
            parts.append(f"{self._acks_refused} ACKs refused (an address the network's "
                         "DHCP does not hand out, or leased to another NIC)")
        if self._provisional:
            parts.append(f"{len(self._provisional)} ACKed, awaiting the lease file")
        return "; ".join(p for p in parts if p) or None

    # --- publishing -------------------------------------------------------------------

    def _build(self) -> tuple[Objects, frozenset[tuple[str, str]]]:
        """The whole snapshot from what is known now; also arms the next expiry."""
        api = self._api
        assert api is not None
        now = time.time()
        leases = self._all_leases()
        leased = leased_nics(leases)
        api.probed = unsuperseded(api.probed, api.domains, api.bridges, leased)
        self._known = known_nics(api.domains.values(), api.bridges)
        leases = self._with_provisional(leases, now)
        objects, summary = snapshot(
            api.domains.values(), self._naming, api.bridges, leases, api.probed, now,
            # A session agent reads the system's lease files for its bridged NICs;
            # the leases of the system's own VMs are none of its business.
            report_unmatched=not self.uri.rstrip("/").endswith("/session"),
        )
        parts = [f"{summary.running} running, {summary.published} named"]
        if summary.waiting:
            parts.append("no address yet: " + ", ".join(sorted(summary.waiting)))
        for bridge, why in sorted(self._leases.view.refused.items()):
            parts.append(f"{bridge}.status refused ({why})")
        ack_state = self._ack_state()
        if ack_state:
            parts.append(ack_state)
        if self._kept is not None and self.config.release_idle_s:
            parts.append(f"kept connected while idle: {self._kept}")
        self._detail = "; ".join(parts)
        self._arm_expiry(leases, now)
        return objects, leased

    def _publish(self) -> None:
        if self._api is None:
            return  # nothing listed yet: the listing publishes everything
        objects, _ = self._build()
        self.replace(objects)
        self.refresh_detail()

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


# --- blocking calls, in worker threads ---------------------------------------------


def _register(lv: ModuleType, conn: Any, hint: Callable[[tuple[str, str]], None],
              uri: str) -> list[tuple[str, int]]:
    """Close callback, keepalive, event callbacks."""
    conn.registerCloseCallback(
        lambda _c, why, _o: hint(("closed", _CLOSE_REASONS.get(why, f"closed ({why})"))),
        None,
    )
    if uses_keepalive(uri):
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except lv.libvirtError as e:
            # Drivers running in this process have no connection to probe.
            if e.get_error_code() != lv.VIR_ERR_NO_SUPPORT:
                raise
    registered = []
    domain_cb = lambda _c, dom, _ev, _detail, _o: hint(("domain", dom.UUIDString()))  # noqa: E731
    registered.append((
        "domain",
        conn.domainEventRegisterAny(None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, domain_cb, None),
    ))
    agent_id = getattr(lv, "VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE", None)
    if agent_id is not None:
        agent_cb = lambda _c, dom, state, _reason, _o: hint(  # noqa: E731
            ("agent" if state == 1 else "domain", dom.UUIDString())
        )
        try:
            cb_id = conn.domainEventRegisterAny(None, agent_id, agent_cb, None)
            registered.append(("domain", cb_id))
        except lv.libvirtError as e:
            log.debug("no agent lifecycle events on this driver", uri=uri, error=str(e))
    # A NIC plugged or unplugged has no lifecycle event: the domain is read again.
    device_cb = lambda _c, dom, _alias, _o: hint(("domain", dom.UUIDString()))  # noqa: E731
    for name in ("VIR_DOMAIN_EVENT_ID_DEVICE_ADDED", "VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED"):
        event_id = getattr(lv, name, None)
        if event_id is None:
            continue
        try:
            registered.append(("domain", conn.domainEventRegisterAny(None, event_id, device_cb,
                                                                     None)))
        except lv.libvirtError as e:
            log.debug("no device events on this driver", uri=uri, event=name, error=str(e))
    net_cb = lambda _c, _net, _ev, _detail, _o: hint(_NETWORKS)  # noqa: E731
    registered.append((
        "network",
        conn.networkEventRegisterAny(None, lv.VIR_NETWORK_EVENT_ID_LIFECYCLE, net_cb, None),
    ))
    return registered


def _wake(lv: ModuleType, conn: Any) -> None:
    with contextlib.suppress(lv.libvirtError):
        conn.setKeepAlive(STUCK_KEEPALIVE_INTERVAL_S, STUCK_KEEPALIVE_COUNT)


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

