"""The DHCPACK parser and the kernel filter, on frames captured from a real libvirt
network (tests/unit/data/dhcp/README.md) and on hostile variations of them.

The filter is run here by a small interpreter of classic BPF (the kernel's
semantics for the instructions it uses); tests/integration/test_libvirt_dhcp_ack.py
has it in the kernel, on a real bridge.
"""

from __future__ import annotations

import contextlib
import random
import struct
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from agent.sources.libvirt.dhcp_ack import (
    ETH_P_IP,
    OPT_LEASE_TIME,
    PACKET_OUTGOING,
    SNAP_BYTES,
    Ack,
    Pool,
    Refused,
    _options,
    dhcp_pool,
    dhcp_servers,
    filter_bytes,
    parse_ack,
)

DATA = Path(__file__).parent / "data" / "dhcp"
SERVERS = (IPv4Interface("10.213.0.1/24"),)
MAC = "52:54:00:38:76:4d"
PACKET_HOST, PACKET_BROADCAST, PACKET_OTHERHOST = 0, 1, 3


def frame(name: str) -> bytes:
    return bytes.fromhex((DATA / f"{name}.hex").read_text().strip())


ACK = frame("ack")


def with_ip(packet: bytes, **fields: int) -> bytes:
    """``packet`` with IPv4 header fields changed and its checksum left alone (the
    parser has no business with it: the host's own stack made these)."""
    b = bytearray(packet)
    offsets = {"ihl_byte": (0, "B"), "total": (2, "!H"), "frag": (6, "!H"), "proto": (9, "B")}
    for key, value in fields.items():
        off, fmt = offsets[key]
        struct.pack_into(fmt, b, off, value)
    return bytes(b)


def with_udp(packet: bytes, **fields: int) -> bytes:
    b = bytearray(packet)
    ihl = (b[0] & 15) * 4
    for key, off in (("sport", 0), ("dport", 2), ("length", 4)):
        if key in fields:
            struct.pack_into("!H", b, ihl + off, fields[key])
    return bytes(b)


def dhcp_at(packet: bytes) -> int:
    return (packet[0] & 15) * 4 + 8


def with_dhcp(packet: bytes, offset: int, raw: bytes) -> bytes:
    at = dhcp_at(packet) + offset
    return packet[:at] + raw + packet[at + len(raw):]


def with_src(packet: bytes, src: str) -> bytes:
    return packet[:12] + IPv4Address(src).packed + packet[16:]


def options_at(packet: bytes) -> int:
    return dhcp_at(packet) + 240


# --- the parser ---------------------------------------------------------------------


def test_the_real_ack_gives_the_lease_libvirt_wrote() -> None:
    # The same lease the helper then wrote: 10.213.0.173 for 52:54:00:38:76:4d, 1 h.
    assert parse_ack(ACK, PACKET_OUTGOING, SERVERS) == Ack(MAC, IPv4Address("10.213.0.173"),
                                                           3600)


def test_an_offer_grants_nothing() -> None:
    assert parse_ack(frame("offer"), PACKET_OUTGOING, SERVERS) is None


@pytest.mark.parametrize("pkttype", [PACKET_HOST, PACKET_BROADCAST, 2, PACKET_OTHERHOST])
def test_a_frame_arriving_from_a_port_is_refused_whatever_it_says(pkttype: int) -> None:
    # A guest can put this exact ACK on its bridge: arriving, it decides nothing.
    with pytest.raises(Refused, match="not sent by this host"):
        parse_ack(ACK, pkttype, SERVERS)


@pytest.mark.parametrize("name", ["discover", "request"])
def test_the_guest_s_own_messages_are_refused_even_if_they_looked_outgoing(name: str) -> None:
    with pytest.raises(Refused):
        parse_ack(frame(name), PACKET_OUTGOING, SERVERS)


def test_from_another_address_than_the_bridge_s_is_refused() -> None:
    with pytest.raises(Refused, match="not the bridge's own address"):
        parse_ack(with_src(ACK, "10.213.0.50"), PACKET_OUTGOING, SERVERS)
    with pytest.raises(Refused, match="not the bridge's own address"):
        parse_ack(ACK, PACKET_OUTGOING, (IPv4Interface("10.213.1.1/24"),))
    with pytest.raises(Refused):
        parse_ack(ACK, PACKET_OUTGOING, ())


def test_every_truncation_is_refused_cleanly() -> None:
    for n in range(len(ACK)):
        with pytest.raises(Refused):
            parse_ack(ACK[:n], PACKET_OUTGOING, SERVERS)


@pytest.mark.parametrize("packet, why", [
    (with_ip(ACK, total=len(ACK) + 1), "IPv4 lengths"),
    (with_ip(ACK, total=27), "IPv4 lengths"),
    (with_ip(ACK, ihl_byte=0x44), "IPv4 lengths"),
    (with_ip(ACK, ihl_byte=0x4F), "src|bridge|UDP|lengths"),
    (with_ip(ACK, ihl_byte=0x65), "not an IPv4 header"),
    (with_ip(ACK, frag=0x2000), "a fragment"),
    (with_ip(ACK, frag=0x0001), "a fragment"),
    (with_ip(ACK, proto=6), "not UDP"),
    (with_udp(ACK, sport=68), "UDP 68 -> 68"),
    (with_udp(ACK, dport=67), "UDP 67 -> 67"),
    (with_udp(ACK, length=len(ACK)), "UDP length"),
    (with_udp(ACK, length=7), "UDP length"),
    (with_udp(ACK, length=8 + 239), "not a DHCP message"),
    (with_dhcp(ACK, 236, b"\x63\x82\x53\x64"), "not a DHCP message"),
    (with_dhcp(ACK, 0, b"\x01"), "not an Ethernet BOOTP reply"),
    (with_dhcp(ACK, 2, b"\x10"), "not an Ethernet BOOTP reply"),
    # An option whose length runs past the datagram.
    (with_dhcp(ACK, 240, b"\x35\xff"), "runs past the end"),
    # Options with no end marker: the type option's length swallows the rest.
    (with_dhcp(ACK, 240, b"\x00" * (len(ACK) - options_at(ACK))), "without an end"),
    # No message type at all, or one of the wrong size.
    (with_dhcp(ACK, 240, b"\x00\x00\x00"), "no DHCP message type"),
    (with_dhcp(ACK, 240, b"\x35\x00\x00"), "no DHCP message type"),
])
def test_wrong_lengths_and_wrong_fields_are_refused(packet: bytes, why: str) -> None:
    with pytest.raises(Refused, match=why):
        parse_ack(packet, PACKET_OUTGOING, SERVERS)


def test_a_nak_and_the_ack_of_an_inform_grant_nothing() -> None:
    assert parse_ack(with_dhcp(ACK, 242, b"\x06"), PACKET_OUTGOING, SERVERS) is None
    assert parse_ack(with_dhcp(ACK, 16, bytes(4)), PACKET_OUTGOING, SERVERS) is None


def test_the_ack_dnsmasq_really_sent_to_a_guest_s_inform_grants_nothing() -> None:
    """Review F1: dnsmasq answers a DHCPINFORM with a type-5 ACK that keeps the
    guest's own yiaddr and chaddr (a victim's MAC, an address of its choice) and
    has no lease time: taken as an infinite lease, it published that address."""
    inform = frame("inform_ack")
    opts = _options(inform[28:])
    assert opts[53] == b"\x05" and OPT_LEASE_TIME not in opts
    assert inform[28 + 12:28 + 16] != bytes(4)  # ciaddr: the guest's own
    assert inform[28 + 16:28 + 20] == IPv4Address("10.213.0.66").packed  # as it asked
    assert parse_ack(inform, PACKET_OUTGOING, SERVERS) is None


def without_lease_time(packet: bytes) -> bytes:
    at = packet.index(bytes.fromhex("330400000e10"), options_at(packet))
    return packet[:at] + packet[at + 6:] + bytes(6)  # padding keeps the lengths


def test_an_ack_without_a_4_byte_lease_time_grants_nothing() -> None:
    assert parse_ack(without_lease_time(ACK), PACKET_OUTGOING, SERVERS) is None
    at = ACK.index(bytes.fromhex("330400000e10"), options_at(ACK))
    short = ACK[:at] + bytes.fromhex("3302000e") + bytes(2) + ACK[at + 6:]
    assert parse_ack(short, PACKET_OUTGOING, SERVERS) is None


def test_a_ciaddr_other_than_0_or_yiaddr_grants_nothing() -> None:
    other = with_dhcp(ACK, 12, IPv4Address("10.213.0.30").packed)
    assert parse_ack(other, PACKET_OUTGOING, SERVERS) is None
    renewal = with_dhcp(ACK, 12, IPv4Address("10.213.0.173").packed)  # ciaddr == yiaddr
    assert parse_ack(renewal, PACKET_OUTGOING, SERVERS) == Ack(
        MAC, IPv4Address("10.213.0.173"), 3600)


@pytest.mark.parametrize("yiaddr", ["10.213.1.5", "10.213.0.0", "10.213.0.255", "10.213.0.1"])
def test_an_address_that_is_no_client_s_of_the_network_is_refused(yiaddr: str) -> None:
    packet = with_dhcp(ACK, 16, IPv4Address(yiaddr).packed)
    with pytest.raises(Refused, match="not a client address"):
        parse_ack(packet, PACKET_OUTGOING, SERVERS)


def test_another_server_identifier_is_refused() -> None:
    # Option 54 follows option 53 in dnsmasq's ACK: 35 01 05 | 36 04 0a d5 00 01.
    at = options_at(ACK)
    assert ACK[at:at + 9] == bytes.fromhex("350105" "36040ad50001")[:9]
    packet = with_dhcp(ACK, 245, IPv4Address("10.213.0.9").packed)
    with pytest.raises(Refused, match="server identifier"):
        parse_ack(packet, PACKET_OUTGOING, SERVERS)


def test_an_infinite_lease_has_no_lease_time() -> None:
    at = ACK.index(bytes.fromhex("330400000e10"), options_at(ACK))
    packet = ACK[:at + 2] + b"\xff\xff\xff\xff" + ACK[at + 6:]
    got = parse_ack(packet, PACKET_OUTGOING, SERVERS)
    assert got is not None and got.lease_s is None


def test_random_corruption_only_ever_refuses_or_parses() -> None:
    rng = random.Random(11)
    for _ in range(5000):
        b = bytearray(ACK)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        cut = rng.randint(0, len(b))
        with contextlib.suppress(Refused):
            parse_ack(bytes(b[:cut]), PACKET_OUTGOING, SERVERS)


def test_dhcp_servers_from_the_network_xml() -> None:
    xml = """<network><name>n</name><bridge name='nsvirbr0'/>
      <ip address='10.213.0.1' netmask='255.255.255.0'><dhcp><range start='10.213.0.100'
        end='10.213.0.199'/></dhcp></ip>
      <ip address='10.9.0.1' prefix='16'/>
      <ip family='ipv6' address='fd00::1' prefix='64'><dhcp/></ip>
      <ip address='bogus' prefix='24'><dhcp/></ip></network>"""
    assert dhcp_servers(xml) == (IPv4Interface("10.213.0.1/24"),)
    assert dhcp_servers("<network") == ()


def test_the_dhcp_pool_is_the_ranges_and_hosts_of_the_network_xml() -> None:
    xml = """<network><name>n</name>
      <ip address='10.213.0.1' netmask='255.255.255.0'><dhcp>
        <range start='10.213.0.100' end='10.213.0.199'/>
        <host mac='52:54:00:00:00:01' ip='10.213.0.20'/><host name='x' ip='bogus'/>
      </dhcp></ip>
      <ip family='ipv6' address='fd00::1' prefix='64'><dhcp>
        <range start='fd00::100' end='fd00::1ff'/></dhcp></ip></network>"""
    pool = dhcp_pool(xml)
    assert pool == Pool(((IPv4Address("10.213.0.100"), IPv4Address("10.213.0.199")),),
                        frozenset({IPv4Address("10.213.0.20")}))
    admitted = [a for a in ("10.213.0.99", "10.213.0.100", "10.213.0.199", "10.213.0.200",
                            "10.213.0.20", "10.213.0.21") if pool.admits(IPv4Address(a))]
    assert admitted == ["10.213.0.100", "10.213.0.199", "10.213.0.20"]
    assert dhcp_pool("<network") == Pool() and not Pool().admits(IPv4Address("10.0.0.1"))


# --- the kernel filter, interpreted ---------------------------------------------------


def run_bpf(prog: bytes, packet: bytes, pkttype: int, protocol: int) -> int:
    """Classic BPF as the kernel runs it on a SOCK_DGRAM packet socket: loads past
    the end drop the frame; ancillary loads give the packet type and protocol."""
    insns = [struct.unpack_from("HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        cls, size, mode = code & 0x07, code & 0x18, code & 0xE0
        pc += 1
        if cls in (0x00, 0x01):  # LD, LDX
            width = {0x00: 4, 0x08: 2, 0x10: 1}[size]
            if k >= 0xFFFFF000:
                a = {4: pkttype, 0: protocol}[k - 0xFFFFF000]
                continue
            off = k + x if mode == 0x40 else k
            if off + width > len(packet):
                return 0
            if mode == 0xA0:  # ldxb 4*([k]&0xf)
                x = (packet[off] & 15) * 4
            else:
                a = int.from_bytes(packet[off:off + width], "big")
        elif cls == 0x05:  # JMP
            hit = a == k if code & 0xF0 == 0x10 else bool(a & k)
            pc += jt if hit else jf
        elif cls == 0x06:  # RET
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")


def test_the_filter_passes_the_host_s_dhcp_replies_only() -> None:
    prog = filter_bytes()
    assert run_bpf(prog, ACK, PACKET_OUTGOING, ETH_P_IP) == SNAP_BYTES
    assert run_bpf(prog, frame("offer"), PACKET_OUTGOING, ETH_P_IP) == SNAP_BYTES
    # What a guest sends never wakes the agent, not even a perfect copy of an ACK.
    for pkttype in (PACKET_HOST, PACKET_BROADCAST, 2, PACKET_OTHERHOST):
        assert run_bpf(prog, ACK, pkttype, ETH_P_IP) == 0
    for name in ("discover", "request"):
        assert run_bpf(prog, frame(name), PACKET_BROADCAST, ETH_P_IP) == 0
        assert run_bpf(prog, frame(name), PACKET_OUTGOING, ETH_P_IP) == 0  # 68 -> 67
    assert run_bpf(prog, ACK, PACKET_OUTGOING, 0x86DD) == 0
    assert run_bpf(prog, with_ip(ACK, proto=6), PACKET_OUTGOING, ETH_P_IP) == 0
    assert run_bpf(prog, with_ip(ACK, frag=0x2000), PACKET_OUTGOING, ETH_P_IP) == 0
    assert run_bpf(prog, with_udp(ACK, sport=53), PACKET_OUTGOING, ETH_P_IP) == 0
    assert run_bpf(prog, ACK[:21], PACKET_OUTGOING, ETH_P_IP) == 0
