"""Follow NetworkManager over the system D-Bus: its DNS mode and its dnsmasq's pid.

NetworkManager starts, restarts and replaces its dnsmasq on its own; the bus
name ``org.freedesktop.NetworkManager.dnsmasq`` always belongs to the live
one. The watcher keeps the owner's pid current from NameOwnerChanged, so the
next reload goes to the new process, and never to a pid that has gone. NM
absent, the bus absent, NM restarting: the watcher says so and keeps
retrying; nothing here ever signals anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from agent.resolvers.bus import DBUS, SystemBusWatcher, call, name_has_owner, owner_pid
from agent.resolvers.view import DnsmasqTarget, ResolverView

if TYPE_CHECKING:
    # Imported where used: a machine without a system bus never loads dbus-fast.
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

log = structlog.get_logger(component="resolvers.networkmanager")

RESOLVER = "networkmanager"

NM = "org.freedesktop.NetworkManager"
NM_DNSMASQ = "org.freedesktop.NetworkManager.dnsmasq"
DNS_MANAGER_PATH = "/org/freedesktop/NetworkManager/DnsManager"
DNS_MANAGER_IFACE = "org.freedesktop.NetworkManager.DnsManager"


async def dns_mode(bus: MessageBus) -> str | None:
    from dbus_fast import MessageType

    reply = await call(
        bus,
        NM,
        DNS_MANAGER_PATH,
        "org.freedesktop.DBus.Properties",
        "Get",
        "ss",
        [DNS_MANAGER_IFACE, "Mode"],
    )
    if reply.message_type == MessageType.ERROR:
        return None
    value = reply.body[0].value
    return str(value) if value is not None else None


def _match(**rule: str) -> str:
    return ",".join(f"{k}='{v}'" for k, v in rule.items())


def advise(view: ResolverView) -> str | None:
    """What the user should know about which path serves the names."""
    if not view.reachable:
        return "no system D-Bus: cannot see NetworkManager; using the configured pid file"
    if not view.running:
        return "NetworkManager is not running; using the configured pid file"
    if view.mode != "dnsmasq":
        return (
            f"NetworkManager DNS mode is {view.mode!r}: names reach local lookups "
            "through the hosts-file sink (systemd-resolved and glibc read /etc/hosts). "
            "For the dnsmasq path, set dns=dnsmasq in NetworkManager.conf and run "
            "'agentctl setup'"
        )
    if view.dnsmasq is None:
        return "NetworkManager is in dnsmasq mode but its dnsmasq is not running yet"
    return None


class NetworkManagerWatcher(SystemBusWatcher[ResolverView]):
    """Keeps ``view`` current: NM's DNS mode, and its dnsmasq by bus name."""

    kind = "system D-Bus"
    while_down = "using the configured pid file meanwhile"
    retry_first_s = 1.0
    retry_max_s = 30.0

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        super().__init__("networkmanager")
        self._on_change = on_change or (lambda: None)
        self._view = ResolverView(RESOLVER, advice=advise(ResolverView(RESOLVER)))
        self._bus: MessageBus | None = None
        self._refreshing: set[asyncio.Task[None]] = set()

    @property
    def view(self) -> ResolverView:
        return self._view

    async def run(self) -> None:
        await self.supervise()

    # --- lifecycle hooks -----------------------------------------------------

    async def subscribe(self, conn: MessageBus) -> None:
        self._bus = conn
        conn.add_message_handler(self._on_message)
        for rule in (
            _match(type="signal", sender=DBUS, member="NameOwnerChanged", arg0=NM),
            _match(type="signal", sender=DBUS, member="NameOwnerChanged", arg0=NM_DNSMASQ),
            _match(
                type="signal",
                interface="org.freedesktop.DBus.Properties",
                member="PropertiesChanged",
                path=DNS_MANAGER_PATH,
            ),
        ):
            await call(conn, DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule])

    async def list_all(self, conn: MessageBus) -> ResolverView:
        """Re-read everything: an event only says which part to look at again."""
        running = await name_has_owner(conn, NM)
        mode = await dns_mode(conn) if running else None
        pid = await owner_pid(conn, NM_DNSMASQ)
        old = self._view.dnsmasq
        target = None
        if pid is not None:
            since = old.since if old is not None and old.pid == pid else time.time()
            target = DnsmasqTarget(pid, f"D-Bus name {NM_DNSMASQ}", since)
        return ResolverView(RESOLVER, True, running, mode, target)

    def take(self, snapshot: ResolverView) -> None:
        view = replace(snapshot, advice=advise(snapshot), changed=self._view.changed)
        if view == self._view:
            return
        self._view = replace(view, changed=time.time())
        pid = view.dnsmasq.pid if view.dnsmasq else None
        log.info("NetworkManager state", reachable=view.reachable, nm_running=view.running,
                 mode=view.mode, dnsmasq_pid=pid)
        self._on_change()

    async def disconnect(self, conn: MessageBus) -> None:
        self._bus = None
        for task in list(self._refreshing):
            task.cancel()
        conn.disconnect()

    def on_disconnected(self) -> None:
        # Without the bus, nothing says the cached pid is still NM's dnsmasq.
        self.take(ResolverView(RESOLVER))

    # --- signals ---------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        from dbus_fast import MessageType

        if msg.message_type != MessageType.SIGNAL:
            return
        relevant = (
            msg.member == "NameOwnerChanged" and msg.body and msg.body[0] in (NM, NM_DNSMASQ)
        ) or (msg.member == "PropertiesChanged" and msg.path == DNS_MANAGER_PATH)
        if relevant and self._bus is not None:
            task = asyncio.get_running_loop().create_task(self._refresh(self._bus))
            self._refreshing.add(task)
            task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, bus: MessageBus) -> None:
        self.saw_event()
        try:
            self.take(await self.list_all(bus))
        except Exception as e:  # the bus went away mid-call: the lifecycle reconnects
            log.debug("refresh failed", error=str(e))
