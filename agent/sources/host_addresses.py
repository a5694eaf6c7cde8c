"""The host's own name, following its addresses on chosen interfaces (netlink).

``host.dns.host`` -> the host's address on the libvirt bridge, so VMs and
containers reach the host by one name. Address add/remove events arrive
over an rtnetlink monitor socket; like every source, an event is only a hint:
the source re-dumps the addresses and replaces its one-object snapshot.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Hashable
from typing import Any

import structlog
from pyroute2 import AsyncIPRoute

from agent.config.schema import Config, HostConfig
from agent.model.record import Address, ObjectState, Provenance, Record, Rejection
from agent.sources.base import SnapshotSink, Source

log = structlog.get_logger(component="sources.host")

RECONNECT_MAX_S = 30.0
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


class HostAddressSource(Source):
    kind = "host"

    def __init__(self, config: HostConfig, netns: str | None = None) -> None:
        super().__init__("host")
        self.config = config
        self.netns = netns

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
        prov = Provenance(self.name, "host", "host", f"host {self.config.name}")
        detail = None
        if missing:
            detail = f"no interface {', '.join(missing)}"
        if not addrs:
            why = detail or f"no usable address on {', '.join(self.config.interfaces)}"
            self.set_state("connected", f"{self.config.name} not published: {why}")
            return ObjectState(rejections=(Rejection(prov, self.config.name, why),))
        self.set_state("connected", detail)
        return ObjectState(records=(Record(self.config.name, tuple(addrs), prov),))

    async def run(self, sink: SnapshotSink) -> None:
        delay = 1.0
        while True:
            monitor = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
            request = AsyncIPRoute(netns=self.netns) if self.netns else AsyncIPRoute()
            try:
                # Subscribe before listing, so no change between the two is lost.
                await monitor.bind()
                sink.replace(self.name, {"host": await self._read(request)})
                self.mark_synced()
                delay = 1.0
                while True:
                    relevant = False
                    async for msg in monitor.get():
                        event = msg.get("event", "")
                        if event in ("RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWLINK", "RTM_DELLINK"):
                            relevant = True
                    if relevant:
                        self.saw_event()
                        sink.update(self.name, "host", await self._read(request))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.record_error(f"netlink: {type(e).__name__}: {e}")
                self.set_state("disconnected", f"reconnecting in {delay:.0f}s")
                self.mark_synced()
                log.warning("netlink monitor failed; keeping the last host record", error=str(e))
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
            finally:
                monitor.close()
                request.close()
