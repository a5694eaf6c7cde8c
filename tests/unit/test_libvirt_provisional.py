"""Leases from DHCPACKs until the lease file confirms them: the merge rules, and the
libvirt source using them (on libvirt's in-process test driver, as
test_libvirt_source.py does; the ACKs are handed to the source as its packet
socket would, the socket itself is tests/integration/test_libvirt_dhcp_ack.py)."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv4Interface, ip_address
from pathlib import Path
from typing import Any

import pytest

from agent.sources.libvirt.dhcp_ack import Ack, AckTrigger
from agent.sources.libvirt.leases import Lease
from agent.sources.libvirt.provisional import Provisional
from tests.unit.test_libvirt_source import (
    MAC,
    lease,
    run,
    start,
    stop,
    test_domain,  # noqa: F401 (the fixture)
    until,
    write_leases,
)

pytest.importorskip("libvirt")
# The predefined domain "test" running again after every test.
pytestmark = pytest.mark.usefixtures("test_domain")

WALL = 1_800_000_000.0


def mk(address: str, mac: str = MAC, bridge: str = "virbr0", expiry: int = 0) -> Lease:
    return Lease(bridge, mac, ip_address(address), None, expiry)


def test_a_provisional_lease_is_used_while_the_file_says_nothing_of_that_nic() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    other = mk("10.0.0.9", mac="52:54:00:00:00:09")
    merged, withdrawn = p.merge([other], now=101, wall=WALL)
    assert merged == [other, mk("10.0.0.5")] and withdrawn == []
    assert p.next_deadline() == 105


def test_the_file_confirming_it_makes_it_the_file_s() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    file_lease = mk("10.0.0.5", expiry=int(WALL) + 3600)
    merged, withdrawn = p.merge([file_lease], now=100.02, wall=WALL)
    assert merged == [file_lease] and withdrawn == [] and len(p) == 0
    assert p.next_deadline() is None


def test_the_file_wins_when_it_says_another_address_and_unconfirmed_is_withdrawn() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    old = mk("10.0.0.4", expiry=int(WALL) + 60)
    merged, withdrawn = p.merge([old], now=101, wall=WALL)
    assert merged == [old] and withdrawn == [] and len(p) == 1
    merged, withdrawn = p.merge([old], now=105, wall=WALL)
    assert merged == [old] and [w.lease for w in withdrawn] == [mk("10.0.0.5")] and len(p) == 0


def test_an_expired_file_entry_neither_confirms_nor_contradicts() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    stale = mk("10.0.0.5", expiry=int(WALL) - 10)
    merged, _ = p.merge([stale], now=101, wall=WALL)
    assert merged == [stale, mk("10.0.0.5")] and len(p) == 1


def test_a_later_ack_for_the_nic_replaces_the_earlier() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    p.add(mk("10.0.0.6"), now=102)
    merged, _ = p.merge([], now=103, wall=WALL)
    assert merged == [mk("10.0.0.6")] and p.next_deadline() == 107


# --- in the source --------------------------------------------------------------------


@pytest.fixture
def no_sockets(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the source asks the trigger to watch; no packet socket is opened here."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(AckTrigger, "watch", lambda self, servers: seen.append(dict(servers)))
    return seen


def ack(address: str, mac: str = MAC) -> Ack:
    return Ack(mac, IPv4Address(address), 3600)


def test_an_ack_publishes_at_once_and_the_file_then_takes_over(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    async def body() -> None:
        r = await start(tmp_path)
        # The bridge of test:///default's network and its DHCP address, from its XML.
        assert no_sockets[-1] == {"virbr0": (IPv4Interface("192.168.122.1/24"),)}
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}, "ARP")
        r.source._on_ack("virbr0", ack("192.168.122.50"))
        # Synchronously: the ACK is the next thing published, no libvirt call between.
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.50"]}
        write_leases(tmp_path, "virbr0", [lease("192.168.122.50")])
        await until(lambda: len(r.source._provisional) == 0, "confirmed by the file")
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.50"]}
        await stop(r)
    run(body)


def test_an_ack_for_a_mac_no_domain_has_publishes_nothing(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    async def body() -> None:
        r = await start(tmp_path)
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}, "ARP")
        before = r.sink.replaced
        r.source._on_ack("virbr0", ack("192.168.122.51", mac="52:54:00:99:99:99"))
        # Nor for our MAC on another bridge than its NIC's.
        r.source._on_ack("virbr9", ack("192.168.122.52"))
        assert r.sink.replaced == before
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}
        r.source._publish()  # any later rebuild: still not in it, not even as a refusal
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}
        assert not any(rj.name == "52:54:00:99:99:99" for s in r.sink.objects.values()
                       for rj in s.rejections)
        await stop(r)
    run(body)


def test_an_ack_for_a_nic_not_known_yet_counts_once_it_is_known() -> None:
    # The source's ``wanted``: a NIC of a known domain on that bridge. An ACK that came
    # before its domain was listed waits (its few seconds) instead of being lost.
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    known: set[str] = set()
    merged, _ = p.merge([], now=101, wall=WALL, wanted=lambda x: x.mac in known)
    assert merged == [] and len(p) == 1
    known.add(MAC)
    merged, _ = p.merge([], now=102, wall=WALL, wanted=lambda x: x.mac in known)
    assert merged == [mk("10.0.0.5")]


def test_a_flood_of_acks_keeps_only_the_latest() -> None:
    p = Provisional(confirm_s=5, limit=3)
    for i in range(10):
        p.add(mk(f"10.0.0.{i}", mac=f"52:54:00:00:00:{i:02x}"), now=100 + i)
    merged, _ = p.merge([], now=110, wall=WALL)
    assert [str(x.address) for x in merged] == ["10.0.0.7", "10.0.0.8", "10.0.0.9"]


def test_the_file_wins_and_an_unconfirmed_ack_is_withdrawn(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    async def body() -> None:
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        r = await start(tmp_path)
        r.source._provisional.confirm_s = 0.3
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}, "file")
        r.source._on_ack("virbr0", ack("192.168.122.60"))
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.5"]}  # the file's
        write_leases(tmp_path, "virbr0", [])  # the file drops the lease: the ACK's shows
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.60"]},
                    "provisional once the file says nothing")
        t0 = time.monotonic()
        await until(lambda: r.sink.names() != {"test.dns.libvirt": ["192.168.122.60"]},
                    "withdrawn, unconfirmed", within=3)
        assert time.monotonic() - t0 < 2
        assert len(r.source._provisional) == 0
        await stop(r)
    run(body)


def test_status_says_when_the_trigger_is_off(tmp_path: Path) -> None:
    async def body() -> None:
        r = await start(tmp_path, dhcp_trigger=False)
        await until(lambda: "DHCPACK trigger off ([libvirt] dhcp_trigger = false)"
                    in (r.source.health.detail or ""), "status")
        await stop(r)
    run(body)


def test_status_says_why_a_bridge_is_not_followed(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setattr(socket, "if_nametoindex", lambda name: 7)

    def refuse(*_a: Any, **_k: Any) -> Any:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr("agent.sources.libvirt.dhcp_ack.open_socket", refuse)

    async def body() -> None:
        r = await start(tmp_path)
        await until(lambda: "DHCPACK trigger off: no CAP_NET_RAW (Operation not permitted)"
                    in (r.source.health.detail or ""), "status")
        await stop(r)
    run(body)
