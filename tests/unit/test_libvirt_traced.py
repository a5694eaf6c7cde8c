"""Which libvirt RPC a stuck call waits in (agent/sources/libvirt/traced.py).

The in-process ``test:///default`` driver is real libvirt (its objects, its
errors); a call that hangs is a fake (libvirt's test driver cannot hang), a
class posing as libvirt's whose XMLDesc waits on an event the test sets.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from agent.sources.libvirt import client
from agent.sources.libvirt.traced import Traced
from agent.sources.watchdog import Line, Stalled, Watchdog
from tests.unit.test_lifecycle import until

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.timeout(30)


def test_traced_calls_read_the_same_and_name_the_last_rpc() -> None:
    conn = libvirt.open("test:///default")
    try:
        line = Line()
        traced = client.read_all(libvirt, Traced(conn, line))
        plain = client.read_all(libvirt, conn)
        assert traced.domains == plain.domains and traced.bridges == plain.bridges
        assert line.doing == "DHCPLeases"  # the listing's last RPC (unsupported here)
        uuid = next(iter(plain.domains))
        assert client.lookup_domain(libvirt, Traced(conn, line), uuid) == plain.domains[uuid]
        assert line.doing == "XMLDesc"
        # libvirt's errors pass through as they are: the client's checks still hold.
        with pytest.raises(libvirt.libvirtError):
            Traced(conn, line).lookupByName("no-such-domain")
        assert line.doing == "lookupByName"
    finally:
        conn.close()


class virDomain:  # poses as libvirt's class (the name and module are what count)
    __module__ = "libvirt"

    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def isActive(self) -> int:
        return 1

    def XMLDesc(self, _flags: int) -> str:
        assert self.go.wait(10)
        return "<domain/>"


class virConnect:
    __module__ = "libvirt"

    def __init__(self, go: threading.Event) -> None:
        self.go = go

    def listAllDomains(self, _flags: int) -> list[Any]:
        return [virDomain(self.go)]


def test_a_stuck_listing_is_named_by_the_rpc_it_waits_in() -> None:
    def listing(conn: Any) -> str:
        [dom] = conn.listAllDomains(0)
        dom.isActive()
        return str(dom.XMLDesc(0))

    async def body() -> None:
        go, line = threading.Event(), Line()
        dog = Watchdog("libvirtd", 0.05)
        with pytest.raises(Stalled, match=r"libvirtd not answering: XMLDesc \(no answer"):
            await dog.call("listAllDomains", listing, Traced(virConnect(go), line), line=line)
        [stuck] = dog.stuck
        assert stuck.what == "XMLDesc" and stuck.label == "listAllDomains"
        go.set()
        await until(lambda: not dog.stuck, "the stuck call ended")

    asyncio.run(asyncio.wait_for(body(), 20))
