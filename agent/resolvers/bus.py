"""The system D-Bus: where its socket is, calls, and the base of the bus watchers.

NetworkManager's and systemd-resolved's watchers differ only in what they
follow on the bus; how they reach it, wait for it and notice it going away is
one piece of code, here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.sources.lifecycle import Awaited, Lifecycle, Problem

if TYPE_CHECKING:
    # Imported where used: a machine without a system bus never loads dbus-fast.
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

DBUS = "org.freedesktop.DBus"
DEFAULT_SYSTEM_BUS = "/run/dbus/system_bus_socket"

S = TypeVar("S")


async def call(
    bus: MessageBus,
    destination: str,
    path: str,
    interface: str,
    member: str,
    signature: str = "",
    body: list[object] | None = None,
) -> Message:
    from dbus_fast import Message

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
    from dbus_fast import MessageType

    reply = await call(bus, DBUS, "/org/freedesktop/DBus", DBUS, "NameHasOwner", "s", [name])
    return reply.message_type != MessageType.ERROR and bool(reply.body[0])


async def owner_pid(bus: MessageBus, name: str) -> int | None:
    from dbus_fast import MessageType

    reply = await call(
        bus, DBUS, "/org/freedesktop/DBus", DBUS, "GetConnectionUnixProcessID", "s", [name]
    )
    if reply.message_type == MessageType.ERROR:
        return None  # NameHasNoOwner
    pid = reply.body[0]
    return int(pid) if isinstance(pid, int) else None


def system_bus_socket(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The system bus's socket path, if it is a path (not abstract, not TCP)."""
    address = environ.get("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={DEFAULT_SYSTEM_BUS}")
    for part in address.split(";"):
        transport, _, params = part.partition(":")
        if transport != "unix":
            continue
        for kv in params.split(","):
            key, _, value = kv.partition("=")
            if key == "path":
                return Path(value)
    return None


class SystemBusWatcher(Lifecycle["MessageBus", S]):
    """A lifecycle on the system bus: awaited while its socket is absent (inotify,
    no timer), connected with dbus-fast, followed until the connection closes."""

    def wait_available(self) -> Awaited | None:
        path = system_bus_socket()
        if path is None:
            return None
        return Awaited((path,), "the system D-Bus socket", "start dbus (systemctl start dbus)")

    async def connect(self) -> MessageBus:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        return await MessageBus(bus_type=BusType.SYSTEM).connect()

    async def follow(self, conn: MessageBus) -> str:
        await conn.wait_for_disconnect()  # type: ignore[no-untyped-call]
        return "system bus connection closed"

    def describe(self, error: BaseException) -> Problem:
        return Problem(f"system D-Bus: {type(error).__name__}: {error}")
