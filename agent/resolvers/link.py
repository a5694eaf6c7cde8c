"""namesync's own network link: the hook systemd-resolved hangs the zones' routing on.

resolved keeps per-link DNS settings, refuses loopback, and uses a link only
while it has carrier and a routable address. A bridge with no ports has
both once it is up (state UNKNOWN, LOWER_UP), so one interface, named
clearly (``namesync0``), with one host address, is enough. Its address is
also where rootful containers reach namesync's dnsmasq.

The keeper follows rtnetlink: whoever deletes the link, takes it down or
strips its address, it is put back, and the listener hears the (possibly
new) ifindex so the resolved settings are pushed again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import structlog

from agent.sources.lifecycle import Lifecycle
from agent.sources.netlink import async_iproute, netlink_error

log = structlog.get_logger(component="resolvers.link")

IFF_UP = 0x1
ENODEV = 19
EEXIST = 17
# A link deleted again while it is being repaired: made again at once, this often.
VANISHED_RETRIES = 5
RELEVANT = ("RTM_NEWLINK", "RTM_DELLINK", "RTM_NEWADDR", "RTM_DELADDR")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class LinkError(RuntimeError):
    pass


class _Vanished(Exception):
    """The link went away in the middle of a repair (someone deleted it again)."""


def _kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND") if info else None
    return str(kind) if kind is not None else None


async def _get_link(ipr: Any, name: str) -> Any | None:
    found = await ipr.link_lookup(ifname=name)
    if not found:
        return None
    links = await ipr.link("get", index=found[0])
    return links[0] if links else None


async def _has_address(ipr: Any, index: int, address: Address) -> bool:
    async for msg in await ipr.addr("dump", index=index):
        if msg.get("index") == index and msg.get("IFA_ADDRESS") == str(address):
            return True
    return False


async def ensure_link(ipr: Any, name: str, address: Address) -> int:
    """Create (or repair) the port-less bridge ``name`` with ``address``, up; its ifindex.

    A deletion landing between two of its requests (ENODEV) starts it over at once:
    treated as a netlink failure it would cost the lifecycle's 1 s reconnect backoff
    (seen with back-to-back deletions in bench/resolved_latency.py)."""
    for attempt in range(VANISHED_RETRIES):
        try:
            return await _ensure_once(ipr, name, address)
        except _Vanished:
            if attempt == VANISHED_RETRIES - 1:
                raise LinkError(f"link {name} keeps vanishing while it is being made "
                                f"({VANISHED_RETRIES} tries)") from None
        except netlink_error() as e:
            if e.code != ENODEV or attempt == VANISHED_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _ensure_once(ipr: Any, name: str, address: Address) -> int:
    link = await _get_link(ipr, name)
    if link is None:
        try:
            await ipr.link("add", ifname=name, kind="bridge")
        except netlink_error() as e:
            if e.code != EEXIST:  # made by a concurrent event: repair it below
                raise
        link = await _get_link(ipr, name)
        if link is None:
            raise _Vanished()
        log.info("created link", link=name, ifindex=link["index"])
    if _kind(link) != "bridge":
        # Not ours: never reconfigure an interface someone else made.
        raise LinkError(f"an interface named {name} exists and is a {_kind(link)!r}, not "
                        "namesync's bridge; rename it or set resolved.link")
    index = int(link["index"])
    if not await _has_address(ipr, index, address):
        try:
            await ipr.addr("add", index=index, address=str(address),
                           prefixlen=address.max_prefixlen)
        except netlink_error() as e:
            if e.code != EEXIST:
                raise
    if not link["flags"] & IFF_UP:
        await ipr.link("set", index=index, state="up")
    return index


async def delete_link(name: str) -> None:
    ipr = async_iproute()
    try:
        link = await _get_link(ipr, name)
        if link is not None and _kind(link) == "bridge":
            await ipr.link("del", index=link["index"])
    finally:
        ipr.close()


class LinkKeeper(Lifecycle[tuple[Any, Any], int]):
    """Keep the link present and configured; report its ifindex whenever it is (re)made."""

    kind = "netlink (namesync's link)"
    while_down = "repairing it when netlink is back"

    def __init__(self, name: str, address: Address, on_ready: Callable[[int], None]) -> None:
        super().__init__("link")
        self.link = name
        self.address = address
        self.ifindex: int | None = None
        self.recreated = 0
        self._on_ready = on_ready

    async def connect(self) -> tuple[Any, Any]:
        monitor, ipr = async_iproute(), async_iproute()
        try:
            await monitor.bind()  # before the first look: no change in between is lost
        except Exception:
            monitor.close()
            ipr.close()
            raise
        return monitor, ipr

    async def list_all(self, conn: tuple[Any, Any]) -> int:
        return await ensure_link(conn[1], self.link, self.address)

    def take(self, snapshot: int) -> None:
        if self.ifindex is not None and snapshot != self.ifindex:
            self.recreated += 1
            log.warning("link was recreated", link=self.link, old=self.ifindex, new=snapshot)
        self.ifindex = snapshot
        # Every repair is a chance resolved dropped the link's settings: push again.
        self._on_ready(snapshot)

    def connected_detail(self) -> str | None:
        return f"{self.link} ifindex {self.ifindex}, {self.address}"

    async def follow(self, conn: tuple[Any, Any]) -> str:
        monitor, ipr = conn
        while True:
            relevant = False
            async for msg in monitor.get():
                if msg.get("event") in RELEVANT:
                    relevant = True
            if relevant and await self._needs_repair(ipr):
                self.saw_event()
                self.take(await ensure_link(ipr, self.link, self.address))

    async def _needs_repair(self, ipr: Any) -> bool:
        try:
            return await self._differs(ipr)
        except netlink_error() as e:
            if e.code != ENODEV:
                raise
            return True  # deleted while being looked at

    async def _differs(self, ipr: Any) -> bool:
        link = await _get_link(ipr, self.link)
        if link is None or int(link["index"]) != self.ifindex or not link["flags"] & IFF_UP:
            return True
        return not await _has_address(ipr, int(link["index"]), self.address)

    async def disconnect(self, conn: tuple[Any, Any]) -> None:
        for sock in conn:
            sock.close()
