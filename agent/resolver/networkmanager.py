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
from dataclasses import dataclass

import structlog
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

log = structlog.get_logger(component="resolver.networkmanager")

NM = "org.freedesktop.NetworkManager"
NM_DNSMASQ = "org.freedesktop.NetworkManager.dnsmasq"
DNS_MANAGER_PATH = "/org/freedesktop/NetworkManager/DnsManager"
DNS_MANAGER_IFACE = "org.freedesktop.NetworkManager.DnsManager"
DBUS = "org.freedesktop.DBus"
RECONNECT_MAX_S = 30.0


@dataclass
class NMState:
    bus: str = "connecting"  # connecting | connected | unavailable
    bus_error: str | None = None
    nm_running: bool = False
    mode: str | None = None  # DnsManager.Mode: "dnsmasq", "systemd-resolved", "default", ...
    dnsmasq_pid: int | None = None
    dnsmasq_since: float | None = None
    last_change: float | None = None

    def advice(self) -> str | None:
        """What the user should know about which path serves the names."""
        if self.bus != "connected":
            return "no system D-Bus: cannot see NetworkManager; using the configured pid file"
        if not self.nm_running:
            return "NetworkManager is not running; using the configured pid file"
        if self.mode != "dnsmasq":
            return (
                f"NetworkManager DNS mode is {self.mode!r}: names reach local lookups "
                "through the hosts-file sink (systemd-resolved and glibc read /etc/hosts). "
                "For the dnsmasq path, set dns=dnsmasq in NetworkManager.conf and run "
                "'agentctl setup'"
            )
        if self.dnsmasq_pid is None:
            return "NetworkManager is in dnsmasq mode but its dnsmasq is not running yet"
        return None


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[object] | None = None,
) -> Message:
    reply = await bus.call(
        Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None  # only None for calls flagged NO_REPLY_EXPECTED
    return reply


async def name_has_owner(bus: MessageBus, name: str) -> bool:
    reply = await call(bus, DBUS, "/org/freedesktop/DBus", DBUS, "NameHasOwner", "s", [name])
    return reply.message_type != MessageType.ERROR and bool(reply.body[0])


async def owner_pid(bus: MessageBus, name: str) -> int | None:
    reply = await call(
        bus, DBUS, "/org/freedesktop/DBus", DBUS, "GetConnectionUnixProcessID", "s", [name]
    )
    if reply.message_type == MessageType.ERROR:
        return None  # NameHasNoOwner
    pid = reply.body[0]
    return int(pid) if isinstance(pid, int) else None


async def dns_mode(bus: MessageBus) -> str | None:
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


class NetworkManagerWatcher:
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.state = NMState()
        self._on_change = on_change or (lambda: None)
        self._bus: MessageBus | None = None
        self.synced = asyncio.Event()

    # --- state -------------------------------------------------------------

    def _set(self, **changes: object) -> None:
        changed = False
        for key, value in changes.items():
            if getattr(self.state, key) != value:
                setattr(self.state, key, value)
                changed = True
        if changed:
            self.state.last_change = time.time()
            log.info(
                "NetworkManager state",
                nm_running=self.state.nm_running,
                mode=self.state.mode,
                dnsmasq_pid=self.state.dnsmasq_pid,
            )
            self._on_change()

    async def _refresh(self, bus: MessageBus) -> None:
        """Re-read everything: an event only says which part to look at again."""
        running = await name_has_owner(bus, NM)
        mode = await dns_mode(bus) if running else None
        pid = await owner_pid(bus, NM_DNSMASQ)
        if pid != self.state.dnsmasq_pid:
            self.state.dnsmasq_since = time.time() if pid else None
        self._set(nm_running=running, mode=mode, dnsmasq_pid=pid)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type != MessageType.SIGNAL:
            return
        relevant = (
            msg.member == "NameOwnerChanged" and msg.body and msg.body[0] in (NM, NM_DNSMASQ)
        ) or (msg.member == "PropertiesChanged" and msg.path == DNS_MANAGER_PATH)
        if relevant and self._bus is not None:
            asyncio.get_running_loop().create_task(self._refresh_safely(self._bus))

    async def _refresh_safely(self, bus: MessageBus) -> None:
        try:
            await self._refresh(bus)
        except Exception as e:  # the bus went away mid-call: run() reconnects
            log.debug("refresh failed", error=str(e))

    async def run(self) -> None:
        delay = 1.0
        while True:
            bus: MessageBus | None = None
            try:
                bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
                self._bus = bus
                bus.add_message_handler(self._on_message)
                # Subscribe first, then read: a change in between is not lost.
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
                    await call(bus, DBUS, "/org/freedesktop/DBus", DBUS, "AddMatch", "s", [rule])
                await self._refresh(bus)
                self.state.bus = "connected"
                self.state.bus_error = None
                self.synced.set()
                delay = 1.0
                await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
                raise ConnectionError("system bus connection closed")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.state.bus = "unavailable"
                self.state.bus_error = f"{type(e).__name__}: {e}"
                # Without the bus, nothing says the cached pid is still NM's dnsmasq.
                self._set(nm_running=False, mode=None, dnsmasq_pid=None)
                self.synced.set()
                log.warning("system D-Bus unavailable; retrying", error=str(e), retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            finally:
                self._bus = None
                if bus is not None:
                    bus.disconnect()
