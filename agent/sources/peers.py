"""User agents as a source of the system agent: one snapshot per peer, replaced whole.

A user agent (agent/sinks/peer_push.py) connects to ``[peers] socket`` and
pushes its whole table on every change and on every (re)connect. The peer is
whoever SO_PEERCRED says; policy.py decides what of the push it may publish.
Each peer's accepted names are one snapshot in the state store, under
``peer:<uid>``, replaced by every push (level-triggered, like every source).

Who a peer is comes from agent/peer/identity.py (uid -> login -> label),
resolved once per connection (cached briefly), before anything is read: a
uid with no passwd entry is turned away at accept, so the subordinate uids
a rootless user can become cannot hold connection slots. Every request line
is charged to its uid's rate bucket before it is parsed; the bucket outlives
the connection (a reconnect does not refill it).

A peer whose last connection closes keeps its names for ``grace_s`` (a
user-agent restart must not blink); then its snapshot is dropped. A push
refused whole (over quota, too fast) changes nothing that is published; the
refusal shows in ``agentctl status`` under this source, with the uid.

Names that answer "the host's addresses" (rootless containers publishing
ports, wire.py) take them from a host-address watcher of this source's own,
on the same ``[host] interfaces`` as the host record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.config.schema import Config, HostConfig, PeersConfig
from agent.control import protocol
from agent.control.server import ControlServer, Limits, LineRefusal, Peer
from agent.control.server import Refusal as Refused
from agent.daemon.status import ts
from agent.model.record import PEER_KIND, Address, ObjectState, Provenance, Record, Rejection
from agent.peer.identity import Directory, Identity
from agent.peer.policy import Push, PushRefused, Refusal, Scope, TokenBucket, decode_push
from agent.sources.base import Objects, ServiceSource, SnapshotSink, Source
from agent.sources.host_addresses import HostAddressSource

log = structlog.get_logger(component="sources.peers")

PROTOCOL = 1
# The user agent sends a `hello` this often while idle, so a dead system
# agent is noticed and an idle-timeout on the socket never hits a live peer.
HEARTBEAT_S = 20.0
MAX_REFUSALS_SHOWN = 20
# Refusals of one peer kept in the table (status): every local user may push
# them, so each one's share of the status document is bounded; the rest are
# counted in one summary line.
MAX_REFUSALS_KEPT = 32
PER_UID = 4


@dataclass
class PeerState:
    ident: Identity  # as of its newest connection
    started: int = 0  # pushes begun: the newest applied wins, whatever finishes first
    applied: int = 0
    pid: int | None = None
    connections: int = 0
    connected_since: float | None = None
    disconnected_at: float | None = None
    pushes: int = 0
    last_push: float | None = None
    refused_pushes: int = 0
    last_code: str | None = None
    last_refusal: str | None = None
    last_refusal_at: float | None = None
    push: Push | None = None  # the last accepted push
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def uid(self) -> int:
        return self.ident.uid

    @property
    def user(self) -> str | None:
        """The sub-zone label, if this uid may publish."""
        return self.ident.label if self.ident.why_not is None else None


class _HostCapture:
    """The SnapshotSink the private host watcher writes to: keeps the host's addresses."""

    def __init__(self, on_change: Any) -> None:
        self.addresses: tuple[Address, ...] = ()
        self.why: str | None = "host addresses not read yet"
        self._on_change = on_change

    def _take(self, state: ObjectState | None) -> None:
        addrs = tuple(a for r in (state.records if state else ()) for a in r.addresses)
        why = None if addrs else (state.rejections[0].reason if state and state.rejections
                                  else "no host address")
        if (addrs, why) != (self.addresses, self.why):
            self.addresses, self.why = addrs, why
            self._on_change()

    def replace(self, source: str, objects: Mapping[str, ObjectState]) -> None:
        self._take(objects.get("host"))

    def update(self, source: str, object_id: str, state: ObjectState | None) -> None:
        self._take(state)


class PeerSource(ServiceSource[ControlServer]):
    kind = "peers"

    def __init__(self, config: PeersConfig, zones: tuple[str, ...], host: HostConfig) -> None:
        super().__init__("peers")
        self.config = config
        self.zones = zones
        self.host = host
        self._peers: dict[int, PeerState] = {}
        # Rate buckets by uid, kept after a peer's state goes: a reconnect must not
        # refill one. A full bucket is the same as a new one, so those are dropped.
        self._buckets: dict[int, TokenBucket] = {}
        self._dir = Directory()
        # passwd lookups get a thread of their own: a slow directory must not take
        # the threads every other source's blocking calls run in.
        self._lookups: ThreadPoolExecutor | None = None
        self._server: ControlServer | None = None
        # uids looked up again behind their connection (held: the loop keeps only weak refs)
        self._refreshing: dict[int, asyncio.Future[Refused | None]] = {}
        self._store: SnapshotSink | None = None
        self._host = _HostCapture(self._republish_all)

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        if config.mode != "system" or not config.peers.enabled:
            return []
        return [cls(config.peers, (config.podman.zone, config.libvirt.zone), config.host)]

    def config_key(self) -> Hashable:
        return (self.config, self.zones, self.host)

    # --- identity ----------------------------------------------------------

    def _identify(self, peer: Peer) -> Refused | Awaitable[Refused | None] | None:
        """At accept, before anything is read: who the uid is, or why it is turned away;
        decided at once for a uid looked up lately, else once passwd answered (it may be
        LDAP/sssd: in a thread, never on the loop)."""
        if not self._dir.needs_lookup(peer.uid):
            return self._verdict(peer)
        if self._dir.known(peer.uid):
            # A user that connected before, or that the listing shows, is decided from
            # its last known login and looked up again behind it: a flood of unknown
            # uids filling the lookups must not keep a known user's agent from
            # connecting.
            if peer.uid not in self._refreshing:
                task = asyncio.ensure_future(self._look_up(peer))
                self._refreshing[peer.uid] = task
                task.add_done_callback(lambda _: self._refreshing.pop(peer.uid, None))
            return self._verdict(peer)
        if self._dir.subordinate(peer.uid):
            # Not listed and in /etc/subuid: no login, no lookup (a rootless user can
            # become 65,536 of these, each of which would be one).
            return self._verdict(peer)
        return self._look_up(peer)

    async def _look_up(self, peer: Peer) -> Refused | None:
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._lookups, self._dir.lookup, peer.uid,
                                           self._dir.remembered())
        if self._dir.learn(found):
            self._owners_changed()
        else:
            # Which labels are whose did not change (the listing may still show the
            # old login), but these uids' own logins may have: renamed or gone, their
            # names must not stay published (or pushable) under the old label.
            owned = self._dir.owned_labels()
            for uid in (found.uid, *(u for u, _ in found.rechecked)):
                state = self._peers.get(uid)
                if state is not None and state.ident != self._dir.identity(uid):
                    self._reidentify(state, owned)
        return self._verdict(peer)

    def _verdict(self, peer: Peer) -> Refused | None:
        ident = self._dir.identity(peer.uid)
        if not ident.admitted:
            return "permission_denied", (f"{ident.why_not}: it cannot publish, so it may "
                                         "not connect")
        return None

    def _peer(self, peer: Peer) -> PeerState:
        state = self._peers.get(peer.uid)
        if state is None:
            state = PeerState(self._dir.identity(peer.uid))
            self._peers[peer.uid] = state
        state.pid = peer.pid
        return state

    def _trusted(self, ident: Identity) -> bool:
        trusted = self.config.trusted_users
        return ident.login in trusted or str(ident.uid) in trusted

    def _scope(self, state: PeerState) -> Scope:
        assert state.user is not None
        return Scope(state.user, self.zones, self._trusted(state.ident),
                     self._dir.owned_labels())

    def _withdraw(self, state: PeerState) -> None:
        state.push = None
        if self._store is not None:
            self._store.replace(self._key(state.uid), {})

    def _owners_changed(self) -> None:
        """Someone's sub-zone label appeared (or now collides): nobody keeps a name there
        that is no longer theirs to have."""
        owned = self._dir.owned_labels()
        for state in self._peers.values():
            self._reidentify(state, owned)

    def _reidentify(self, state: PeerState, owned: frozenset[str]) -> None:
        """``state`` as its uid is known now: names it may no longer have go."""
        old, state.ident = state.ident, self._dir.identity(state.uid)
        if state.push is None:
            return
        if state.user is None or state.ident.label != old.label:
            log.warning("peer's names withdrawn", uid=state.uid,
                        reason=state.ident.why_not or "its user name changed")
            self._withdraw(state)
            return
        push = self._reconfined(state, state.push, owned)
        if push is not state.push:
            state.push = push
            self._publish(state)

    def _reconfined(self, state: PeerState, push: Push, owned: frozenset[str]) -> Push:
        """``push`` without the claims that are now in someone else's sub-zone."""
        assert state.user is not None
        scope = Scope(state.user, self.zones, self._trusted(state.ident), owned)
        keep = tuple(c for c in push.claims if scope.confine(c.name) is None)
        if len(keep) == len(push.claims):
            return push
        lost = tuple(Refusal(c.name, scope.confine(c.name) or "", c.what)
                     for c in push.claims if c not in keep)
        return Push(keep, push.refused + lost, push.reported)

    def _bucket(self, uid: int) -> TokenBucket:
        bucket = self._buckets.get(uid)
        if bucket is None:
            bucket = self._buckets[uid] = TokenBucket(self.config.push_rate,
                                                      self.config.push_burst)
        return bucket

    def _charge(self, peer: Peer, size: int) -> LineRefusal | None:
        """Every request line, before it is parsed: the push rate applies to all of them.
        The connection is not read again before ``wait`` (control/server.py)."""
        wait = self._bucket(peer.uid).take()
        if not wait:
            return None
        state = self._peer(peer)
        refused = self._refuse(state, "rate_limited",
                              f"more than {self.config.push_rate:g} requests per second "
                              f"([peers] push_rate); retry in {wait * 1000:.0f} ms")
        return refused.code, refused.message, wait

    # --- connections -------------------------------------------------------

    def _opened(self, peer: Peer) -> None:
        for uid in [u for u, b in self._buckets.items() if b.full() and u not in self._peers]:
            del self._buckets[uid]
        state = self._peer(peer)
        ident = self._dir.identity(peer.uid)
        if ident != state.ident:
            # Renamed (or now colliding) since its last connection: its names were
            # confined to the old label and go.
            state.ident = ident
            if state.push is not None:
                self._withdraw(state)
        state.connections += 1
        if state.connections == 1:
            state.connected_since = time.time()
        if state.expiry is not None:
            state.expiry.cancel()
            state.expiry = None
        self._show()

    def _closed(self, peer: Peer) -> None:
        state = self._peers.get(peer.uid)
        if state is None:
            return
        state.connections = max(0, state.connections - 1)
        if state.connections == 0:
            state.disconnected_at = time.time()
            if state.push is not None:
                loop = asyncio.get_running_loop()
                state.expiry = loop.call_later(self.config.grace_s, self._expire, peer.uid)
                log.info("user agent disconnected; keeping its names for the grace period",
                         uid=peer.uid, user=state.user, grace_s=self.config.grace_s)
            else:
                # Nothing published, nothing to keep: a user can connect from each
                # of its 65,536 subordinate uids, and none may leave state behind.
                del self._peers[peer.uid]
        self._show()

    def _expire(self, uid: int) -> None:
        state = self._peers.get(uid)
        if state is None or state.connections:
            return
        log.info("user agent gone for the grace period; its names go", uid=uid, user=state.user)
        self._peers.pop(uid, None)
        if self._store is not None:
            self._store.replace(self._key(uid), {})
        self._show()

    @staticmethod
    def _key(uid: int) -> str:
        return f"peer:{uid}"

    # --- the methods peers call --------------------------------------------

    def _limits(self) -> dict[str, Any]:
        c = self.config
        return {"max_names": c.max_names, "max_addresses": c.max_addresses,
                "max_message_bytes": c.max_message_bytes,
                "push_rate": c.push_rate, "push_burst": c.push_burst, "grace_s": c.grace_s}

    async def _h_hello(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        state = self._peer(peer)
        scope = None if state.user is None else self._scope(state)
        return {
            "protocol": PROTOCOL,
            "methods": ["hello", "push"],
            "uid": peer.uid,
            "login": state.ident.login,
            "user": state.user,
            "refused": state.ident.why_not,
            "subzones": list(scope.subzones) if scope else [],
            "trusted": bool(scope and scope.trusted),
            "limits": self._limits(),
            "heartbeat_s": HEARTBEAT_S,
        }

    def _refuse(self, state: PeerState, code: str, reason: str) -> protocol.ProtocolError:
        state.refused_pushes += 1
        # Once per kind of refusal in a row: a peer repeating itself must not flood the log.
        if code != state.last_code:
            log.warning("push refused", uid=state.uid, user=state.user, reason=reason)
        state.last_code = code
        state.last_refusal = reason
        state.last_refusal_at = time.time()
        self._show()
        return protocol.ProtocolError(code, reason)

    def _line_refused(self, peer: Peer, code: str, message: str) -> None:
        if code == "too_large":
            message = (f"a message larger than {self.config.max_message_bytes} bytes "
                       "([peers] max_message_bytes); connection closed")
        self._refuse(self._peer(peer), code, message)

    async def _h_push(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        state = self._peer(peer)
        if state.user is None:
            raise self._refuse(state, "permission_denied", state.ident.why_not or "refused")
        state.started += 1
        ticket = state.started
        ident, generation = state.ident, self._dir.generation
        try:
            # No I/O (owners come with the scope), but up to max_names records: a thread.
            push = await asyncio.to_thread(decode_push, params, self._scope(state),
                                           self.config.max_names, self.config.max_addresses)
        except PushRefused as e:
            raise self._refuse(state, e.code, e.reason) from None
        if state.ident != ident:
            raise self._refuse(state, "permission_denied",
                               state.ident.why_not or "this uid's sub-zone changed meanwhile")
        if self._dir.generation != generation:
            # A sub-zone appeared while this push was decoded against the older owners.
            push = self._reconfined(state, push, self._dir.owned_labels())
        if ticket < state.applied:
            # A later push (another connection of this uid) was applied meanwhile.
            return {"accepted": 0, "refused": [], "superseded": True}
        state.applied = ticket
        state.last_code = None
        state.push = push
        state.pushes += 1
        state.last_push = time.time()
        self.saw_event()
        self._publish(state)
        return {"accepted": len(push.claims),
                "refused": [{"name": r.value, "reason": r.reason} for r in push.refused]}

    # --- publishing --------------------------------------------------------

    def _objects(self, state: PeerState) -> dict[str, ObjectState]:
        assert state.push is not None
        source, who = self._key(state.uid), f"uid {state.uid} ({state.ident.login})"
        objects: dict[str, ObjectState] = {}
        for claim in state.push.claims:
            prov = Provenance(source, claim.name, PEER_KIND, f"{who}: {claim.what}")
            addrs = claim.addresses
            if claim.via_host:
                addrs = self._host.addresses
                if claim.addresses:  # bound to some host addresses only
                    addrs = tuple(a for a in addrs if a in claim.addresses)
                if not addrs:
                    why = (f"answers the host's addresses, and the host has none: "
                           f"{self._host.why}" if self.host.enabled else
                           "answers the host's addresses, and [host] is disabled")
                    if claim.addresses and self._host.addresses:
                        bound = ", ".join(str(a) for a in claim.addresses)
                        why = (f"its ports are bound to {bound}, none of the host's "
                               "addresses ([host] interfaces)")
                    objects[claim.name] = ObjectState(rejections=(Rejection(prov, claim.name,
                                                                            why),))
                    continue
            objects[claim.name] = ObjectState((Record(claim.name, addrs, prov),))
        refusals = [(r, r.reason) for r in state.push.refused]
        refusals += [(r, f"refused by the user agent: {r.reason}") for r in state.push.reported]
        for i, (r, reason) in enumerate(refusals[:MAX_REFUSALS_KEPT]):
            prov = Provenance(source, f"refused:{i}", "peer", f"{who}: {r.what}")
            objects[prov.object_id] = ObjectState(rejections=(Rejection(prov, r.value, reason),))
        if len(refusals) > MAX_REFUSALS_KEPT:
            more = len(refusals) - MAX_REFUSALS_KEPT
            prov = Provenance(source, "refused:more", "peer", who)
            objects[prov.object_id] = ObjectState(rejections=(Rejection(
                prov, f"{more} more", f"{more} more refusals of this push not shown"),))
        return objects

    def _publish(self, state: PeerState) -> None:
        if self._store is not None and state.push is not None:
            self._store.replace(self._key(state.uid), self._objects(state))
        self._show()

    def _republish_all(self) -> None:
        for state in self._peers.values():
            if state.push is not None and any(c.via_host for c in state.push.claims):
                self._publish(state)

    # --- status ------------------------------------------------------------

    def _detail(self) -> str:
        live = sum(1 for s in self._peers.values() if s.connections)
        held = sum(1 for s in self._peers.values() if not s.connections and s.push)
        detail = f"listening on {self.config.socket}; {live} user agent(s) connected"
        if held:
            detail += f", {held} in their grace period"
        return detail

    def _show(self) -> None:
        if self.health.state == "connected":
            self.set_state("connected", self._detail())

    def status_extra(self) -> dict[str, Any]:
        peers = []
        for s in sorted(self._peers.values(), key=lambda p: p.uid):
            expires = None
            if s.expiry is not None and s.disconnected_at is not None:
                expires = ts(s.disconnected_at + self.config.grace_s)
            peers.append({
                "uid": s.uid, "login": s.ident.login, "user": s.user, "pid": s.pid,
                "connected": s.connections > 0, "connections": s.connections,
                "since": ts(s.connected_since), "disconnected_at": ts(s.disconnected_at),
                "names_expire": expires,
                "names": len(s.push.claims) if s.push else 0,
                "refused_names": [{"name": r.value, "reason": r.reason}
                                  for r in (s.push.refused if s.push else ())
                                  ][:MAX_REFUSALS_SHOWN],
                "pushes": s.pushes, "last_push": ts(s.last_push),
                "refused_pushes": s.refused_pushes, "last_refusal": s.last_refusal,
                "last_refusal_at": ts(s.last_refusal_at),
                "not_allowed": s.ident.why_not,
            })
        server = self._server
        turned_away: dict[str, Any] = {"connections": server.refused if server else 0}
        if server is not None and server.last_refused is not None:
            at, uid, why = server.last_refused
            turned_away.update(last_at=ts(at), last_uid=uid, last_reason=why)
        return {"socket": str(self.config.socket), "limits": self._limits(), "peers": peers,
                "turned_away": turned_away}

    # --- the lifecycle: "connected" is "listening" ---------------------------

    async def connect(self) -> ControlServer:
        # Every local user may connect: one user agent needs one connection (two
        # while it restarts); idle ones heartbeat well within the idle timeout.
        limits = Limits(max_per_uid=PER_UID, idle_timeout_s=HEARTBEAT_S * 3)
        if self._lookups is None:
            self._lookups = ThreadPoolExecutor(1, thread_name_prefix="peer-passwd")
        server = ControlServer(
            self.config.socket, {"hello": self._h_hello, "push": self._h_push}, (), limits,
            open_to_all=True, max_line=self.config.max_message_bytes,
            on_open=self._opened, on_close=self._closed, on_refused=self._line_refused,
            identify=self._identify, on_line=self._charge)
        await server.start()
        self._server = server
        return server

    async def list_all(self, conn: ControlServer) -> Objects:
        return {}  # this source's own snapshot is empty: each peer has one of its own

    async def follow(self, conn: ControlServer) -> str:
        await asyncio.Event().wait()
        return "stopped"

    async def disconnect(self, conn: ControlServer) -> None:
        # Peers see EOF and reconnect; their names ride out the grace period.
        await conn.close()

    def connected_detail(self) -> str | None:
        return self._detail()

    def companions(self) -> Sequence[Coroutine[Any, Any, None]]:
        if not self.host.enabled:
            self._host.why = "[host] is disabled"
            return ()
        return (HostAddressSource(self.host).run(self._host),)

    async def run(self, sink: SnapshotSink) -> None:
        self._store = sink
        try:
            await super().run(sink)
        finally:
            for uid, state in list(self._peers.items()):
                if state.expiry is not None:
                    state.expiry.cancel()
                sink.replace(self._key(uid), {})
            self._peers.clear()
            for task in self._refreshing.values():
                task.cancel()
            if self._lookups is not None:
                # A lookup stuck in a directory must not hold up the agent's exit.
                self._lookups.shutdown(wait=False, cancel_futures=True)
                self._lookups = None
