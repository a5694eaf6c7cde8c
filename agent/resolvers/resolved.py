"""systemd-resolved over the system D-Bus: is it there, and route namesync's zones to a link.

``org.freedesktop.resolve1`` on the bus means resolved is the host's
resolver. Per-link settings (server, routing domains) live only in
resolved's memory: a restart of resolved forgets them, so the watcher tells
its listener every time the name gets a new owner and the settings are
pushed again. Calls need CAP_NET_ADMIN (or polkit): namesync runs as root.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from agent.resolvers.bus import DBUS, SystemBusWatcher, call
from agent.resolvers.view import ResolverView

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

log = structlog.get_logger(component="resolvers.resolved")

RESOLVER = "systemd-resolved"

RESOLVE1 = "org.freedesktop.resolve1"
RESOLVE1_PATH = "/org/freedesktop/resolve1"
MANAGER = "org.freedesktop.resolve1.Manager"


class ResolvedError(RuntimeError):
    pass


@dataclass(frozen=True)
class LinkSettings:
    """What namesync tells resolved about its link: one local server, routing-only domains."""

    ifindex: int
    server: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    domains: tuple[str, ...]


async def _manager_call(bus: MessageBus, member: str, signature: str, body: list[object]) -> None:
    from dbus_fast import MessageType

    reply = await call(bus, RESOLVE1, RESOLVE1_PATH, MANAGER, member, signature, body)
    if reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply.body else ""
        raise ResolvedError(f"resolved refused {member}: {reply.error_name}: {detail}")


async def push_link(bus: MessageBus, s: LinkSettings) -> None:
    """Make resolved send ``~domain`` queries, and only those, to the server on this link."""
    family = socket.AF_INET6 if s.server.version == 6 else socket.AF_INET
    await _manager_call(
        bus, "SetLinkDNSEx", "ia(iayqs)", [s.ifindex, [[family, s.server.packed, s.port, ""]]]
    )
    # (domain, True): a routing-only domain, used to pick the link, never as a search suffix.
    domains = [[d, True] for d in s.domains]
    await _manager_call(bus, "SetLinkDomains", "ia(sb)", [s.ifindex, domains])
    # Without this, resolved would send every other name to our dnsmasq too.
    await _manager_call(bus, "SetLinkDefaultRoute", "ib", [s.ifindex, False])
    # Our zones are unsigned local data; validation would only make them fail.
    await _manager_call(bus, "SetLinkDNSSEC", "is", [s.ifindex, "no"])
    # Nothing but unicast DNS on this link: no LLMNR/mDNS traffic on it.
    await _manager_call(bus, "SetLinkLLMNR", "is", [s.ifindex, "no"])
    await _manager_call(bus, "SetLinkMulticastDNS", "is", [s.ifindex, "no"])


async def revert_link(bus: MessageBus, ifindex: int) -> None:
    await _manager_call(bus, "RevertLink", "i", [ifindex])


@dataclass(frozen=True)
class ResolvedState:
    bus: str = "connecting"  # connecting | connected | unavailable
    bus_error: str | None = None
    running: bool = False  # org.freedesktop.resolve1 has an owner
    owner: str | None = None  # its unique bus name: a new one means resolved restarted


class ResolvedWatcher(SystemBusWatcher["str | None"]):
    """Follow org.freedesktop.resolve1 on the system bus and lend the connection for calls."""

    kind = "system D-Bus (systemd-resolved)"
    while_down = "the link's settings are pushed again when it is back"

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        super().__init__("systemd-resolved")
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self.bus: MessageBus | None = None
        self.owner: str | None = None

    @property
    def state(self) -> ResolvedState:
        h = self.health
        bus = {"starting": "connecting", "connected": "connected"}.get(h.state, "unavailable")
        return ResolvedState(bus, None if bus == "connected" else h.last_error,
                             self.owner is not None, self.owner)

    @property
    def view(self) -> ResolverView:
        s = self.state
        return ResolverView(RESOLVER, s.bus == "connected", s.running)

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- lifecycle hooks -----------------------------------------------------

    async def subscribe(self, conn: MessageBus) -> None:
        conn.add_message_handler(self._on_message)
        rule = f"type='signal',sender='{DBUS}',member='NameOwnerChanged',arg0='{RESOLVE1}'"
        await call(conn, DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule])
        self.bus = conn

    async def list_all(self, conn: MessageBus) -> str | None:
        from dbus_fast import MessageType

        reply = await call(
            conn, DBUS, "/org/freedesktop/DBus", DBUS, "GetNameOwner", "s", [RESOLVE1]
        )
        return None if reply.message_type == MessageType.ERROR else str(reply.body[0])

    def take(self, snapshot: str | None) -> None:
        if snapshot == self.owner:
            return
        self.owner = snapshot
        log.info("systemd-resolved", running=snapshot is not None, owner=snapshot)
        for listener in list(self._listeners):
            listener()

    async def disconnect(self, conn: MessageBus) -> None:
        self.bus = None
        conn.disconnect()

    def on_disconnected(self) -> None:
        self.bus = None
        self.take(None)

    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType

        if (
            msg.message_type == MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.body
            and msg.body[0] == RESOLVE1
        ):
            self.saw_event()
            self.take(str(msg.body[2]) or None)
