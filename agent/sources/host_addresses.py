"""The host's own name, following its addresses on chosen interfaces (netlink).

``host.dns.host`` -> the host's address on the libvirt bridge, so VMs and
containers reach the host by one name. Address add/remove events arrive
over an rtnetlink monitor socket; like every source, an event is only a hint:
the source re-dumps the addresses and replaces its one-object snapshot.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.schema import Config, HostConfig
from agent.model.record import Address, ObjectState, Provenance, Record, Rejection
from agent.sources.base import Objects, ServiceSource, Source
from agent.sources.lifecycle import Awaited, Problem
from agent.sources.netlink import async_iproute

# Only addresses another machine can use: not link-local (needs a zone
# index), not loopback, not tentative/deprecated-for-new-use (IFA_F_* bits).
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08


def usable(addr: Address, flags: int) -> bool:
    if addr.is_link_local or addr.is_loopback or addr.is_multicast or addr.is_unspecified:
        return False
    return not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def _address_of(msg: Any) -> Address | None:
    # IFA_LOCAL is the interface's own address on point-to-point links;
    # IFA_ADDRESS is the peer there, and the same as IFA_LOCAL elsewhere.
    raw = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
    if not isinstance(raw, str):
        return None
    try:
        return ipaddress.ip_address(raw)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Netlink:
    """A monitor socket (bound before any dump) and a socket for the dumps."""

    monitor: Any
    request: Any


_EVENTS = frozenset({"RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK"})
# Only these multicast groups (linux/rtnetlink.h): pyroute2's default adds
# neighbours, routes, rules and qdiscs, and a guest's ARP entry going stale
# would wake the daemon every half minute (issue 11: no wakeups while idle).
_GROUPS = 0x1 | 0x10 | 0x100  # RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR


class HostAddressSource(ServiceSource[Netlink]):
    kind = "host"
    retry_first_s = 1.0
    retry_max_s = 30.0

    def __init__(self, config: HostConfig, netns: str | None = None) -> None:
        super().__init__("host")
        self.config = config
        self.netns = netns
        self._detail: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        return [cls(config.host)] if config.host.enabled else []

    def config_key(self) -> Hashable:
        return (self.config, self.netns)

    async def _read(self, ipr: Any) -> ObjectState:
        """Dump links and addresses now; the one object is the host record."""
        names: dict[int, str] = {}
        async for link in await ipr.link("dump"):
            names[link["index"]] = link.get("IFLA_IFNAME")
        wanted = {i for i, n in names.items() if n in self.config.interfaces}
        addrs: list[Address] = []
        async for msg in await ipr.addr("dump"):
            if msg["index"] not in wanted:
                continue
            addr = _address_of(msg)
            flags = msg.get("IFA_FLAGS") or msg.get("flags") or 0
            if addr is not None and usable(addr, flags):
                addrs.append(addr)
        missing = [n for n in self.config.interfaces if n not in names.values()]
        return self._host_state(addrs, missing)

    def _host_state(self, addrs: list[Address], missing: list[str]) -> ObjectState:
        prov = Provenance(self.name, "host", "host", f"host {self.config.name}")
        detail = f"no interface {', '.join(missing)}" if missing else None
        if not addrs:
            why = detail or f"no usable address on {', '.join(self.config.interfaces)}"
            self._show(f"{self.config.name} not published: {why}")
            return ObjectState(rejections=(Rejection(prov, self.config.name, why),))
        self._show(detail)
        return ObjectState(records=(Record(self.config.name, tuple(addrs), prov),))

    def _show(self, detail: str | None) -> None:
        self._detail = detail
        if self.health.state == "connected":
            self.set_state("connected", detail)

    # --- lifecycle hooks -----------------------------------------------------

    def wait_available(self) -> Awaited | None:
        if self.netns is None:
            return None
        path = Path(self.netns) if "/" in self.netns else Path("/run/netns") / self.netns
        return Awaited((path,), "network namespace", "create it, or leave [host] netns unset")

    async def connect(self) -> Netlink:
        return Netlink(async_iproute(self.netns), async_iproute(self.netns))

    async def subscribe(self, conn: Netlink) -> None:
        await conn.monitor.bind(groups=_GROUPS)

    async def list_all(self, conn: Netlink) -> Objects:
        return {"host": await self._read(conn.request)}

    def connected_detail(self) -> str | None:
        return self._detail

    async def follow(self, conn: Netlink) -> str:
        while True:
            relevant = False
            async for msg in conn.monitor.get():
                relevant |= msg.get("event", "") in _EVENTS
            if relevant:
                self.saw_event()
                self.update("host", await self._read(conn.request))

    async def disconnect(self, conn: Netlink) -> None:
        conn.monitor.close()
        conn.request.close()

    def describe(self, error: BaseException) -> Problem:
        return Problem(f"netlink: {type(error).__name__}: {error}")
