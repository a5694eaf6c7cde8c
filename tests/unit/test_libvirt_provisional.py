"""Leases from DHCPACKs until the lease file confirms them: the merge rules, and the
libvirt source using them (on libvirt's in-process test driver, as
test_libvirt_source.py does; the ACKs are handed to the source as its packet
socket would, the socket itself is tests/integration/test_libvirt_dhcp_ack.py)."""

from __future__ import annotations

import dataclasses
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
        r = await start(tmp_path, dhcp_trigger=True)
        # The bridge of test:///default's network and its DHCP address, from its XML.
        assert no_sockets[-1] == {"virbr0": (IPv4Interface("192.168.122.1/24"),)}
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}, "ARP")
        before = r.sink.replaced
        r.source._on_ack("virbr0", ack("192.168.122.50"))
        r.source._on_ack("virbr0", ack("192.168.122.50"))  # the same grant again
        # At the loop's next turn: the ACK is the next thing published, once, with no
        # libvirt call between.
        await until(lambda: r.sink.replaced > before, "published")
        assert r.sink.replaced == before + 1
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.50"]}
        write_leases(tmp_path, "virbr0", [lease("192.168.122.50")])
        await until(lambda: len(r.source._provisional) == 0, "confirmed by the file")
        assert r.sink.names() == {"test.dns.libvirt": ["192.168.122.50"]}
        await stop(r)
    run(body)


def test_an_ack_for_a_mac_no_domain_has_publishes_nothing(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    async def body() -> None:
        r = await start(tmp_path, dhcp_trigger=True)
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
    # ``known``: (bridge, MAC) of the known domains' NICs. An ACK that came before its
    # domain was listed waits (its few seconds) instead of being lost.
    p = Provisional(confirm_s=5)
    assert p.add(mk("10.0.0.5"), now=100, ours=False) is False
    known: set[tuple[str, str]] = set()
    merged, _ = p.merge([], now=101, wall=WALL, known=known)
    assert merged == [] and len(p) == 0 and p.foreign() == 1
    assert p.next_deadline() is None  # a foreign entry wakes nothing
    known.add(("virbr0", MAC))
    merged, _ = p.merge([], now=102, wall=WALL, known=known)
    assert merged == [mk("10.0.0.5")] and len(p) == 1 and p.next_deadline() == 105


def test_a_foreign_ack_waits_only_its_few_seconds() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100, ours=False)
    p.merge([], now=105, wall=WALL, known=set())
    assert p.foreign() == 0
    merged, _ = p.merge([], now=106, wall=WALL, known={("virbr0", MAC)})
    assert merged == []


def test_a_flood_of_foreign_acks_never_displaces_ours_nor_arms_the_timer() -> None:
    """Review F4: a guest's DHCP flood (a made-up MAC per request) filled the one cap
    and evicted our own entries first; each entry then armed the withdrawal timer."""
    p = Provisional(confirm_s=5, foreign_limit=8)
    p.add(mk("10.0.0.5"), now=100)
    for i in range(10_000):
        p.add(mk(f"10.0.{i // 250}.{i % 250}", mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"),
              now=100 + i / 10_000, ours=False)
    assert p.foreign() == 8 and len(p) == 1 and p.next_deadline() == 105
    for i in range(3):
        p.add(mk("10.9.0.1", mac=f"02:00:00:00:00:{i:02x}", bridge=f"br{i}"), now=101,
              ours=False)
    assert p.foreign() == 11  # per bridge: one guest's flood fills its own bucket only
    merged, _ = p.merge([], now=101, wall=WALL, known={("virbr0", MAC)})
    assert merged == [mk("10.0.0.5")]


def test_an_address_a_live_file_lease_gives_another_nic_is_not_published() -> None:
    p = Provisional(confirm_s=5)
    p.add(mk("10.0.0.5"), now=100)
    theirs = mk("10.0.0.5", mac="52:54:00:00:00:09", expiry=int(WALL) + 60)
    merged, _ = p.merge([theirs], now=101, wall=WALL)
    assert merged == [theirs]
    expired = mk("10.0.0.5", mac="52:54:00:00:00:09", expiry=int(WALL) - 60)
    merged, _ = p.merge([expired], now=101, wall=WALL)
    assert merged == [expired, mk("10.0.0.5")]


def test_the_file_wins_and_an_unconfirmed_ack_is_withdrawn(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    async def body() -> None:
        write_leases(tmp_path, "virbr0", [lease("192.168.122.5")])
        r = await start(tmp_path, dhcp_trigger=True)
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


def test_the_trigger_is_off_by_default_and_status_says_so(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    """Review F2/F3: frames leaving the bridge from the host may be a guest's NATed by a
    MASQUERADE rule, or a local process's on port 67; nothing tells them from libvirt's
    dnsmasq yet, so by default no ACK is read and the lease file alone publishes."""
    from agent.config.schema import LibvirtConfig

    assert LibvirtConfig().dhcp_trigger is False

    async def body() -> None:
        r = await start(tmp_path)
        await until(lambda: "DHCPACK trigger off ([libvirt] dhcp_trigger = false)"
                    in (r.source.health.detail or ""), "status")
        assert r.source._acks is None and no_sockets == []  # no packet socket at all
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
        r = await start(tmp_path, dhcp_trigger=True)
        await until(lambda: "DHCPACK trigger off: no CAP_NET_RAW (Operation not permitted)"
                    in (r.source.health.detail or ""), "status")
        await stop(r)
    run(body)


def test_a_flood_and_acks_that_are_not_libvirt_s_decision_publish_nothing(
        tmp_path: Path, no_sockets: list[dict[str, Any]]) -> None:
    """Review F1/F4 in the source: 5000 ACKs for made-up MACs (a guest's DHCP flood),
    an ACK giving our NIC an address the lease file gives another NIC, and one for an
    address outside the network's DHCP range: none publishes, none arms the timer;
    our own ACK after them publishes once."""
    other = dict(lease("192.168.122.5"), **{"mac-address": "52:54:00:00:00:09"})
    write_leases(tmp_path, "virbr0", [other])

    async def body() -> None:
        r = await start(tmp_path, dhcp_trigger=True)
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.3"]}, "ARP")
        before = r.sink.replaced
        for i in range(5000):
            r.source._on_ack("virbr0", ack(f"192.168.122.{10 + i % 200}",
                                           mac=f"02:00:00:00:{i // 256:02x}:{i % 256:02x}"))
        r.source._on_ack("virbr0", ack("192.168.122.5"))  # the file's, for another MAC
        r.source._pools["virbr0"] = dataclasses.replace(
            r.source._pools["virbr0"],
            ranges=((IPv4Address("192.168.122.2"), IPv4Address("192.168.122.199")),))
        r.source._on_ack("virbr0", ack("192.168.122.230"))  # outside that range
        assert r.source._withdraw is None and r.source._soon is None
        assert r.source._provisional.foreign() <= 64 and len(r.source._provisional) == 0
        r.source._on_ack("virbr0", ack("192.168.122.77"))  # ours, in range: publishes
        await until(lambda: r.sink.names() == {"test.dns.libvirt": ["192.168.122.77"]}, "ours")
        assert r.sink.replaced == before + 1
        assert "2 ACKs refused" in (r.source.health.detail or "")
        await stop(r)
    run(body)
