"""DHCPACK frames made and put on a bridge by a test: forged ones arriving from a
port (what a guest can do), and ones the host itself sends (what only root can).

The frame is the real ACK libvirt's dnsmasq sent (tests/unit/data/dhcp/ack.hex)
with its addresses replaced, so everything but the fields a test chooses is
what dnsmasq really puts in one.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6
ACK_HEX = Path(__file__).resolve().parent.parent / "unit" / "data" / "dhcp" / "ack.hex"
_IHL = 20
_BOOTP = _IHL + 8


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ack_frame(*, src: str, mac: str, address: str, server_id: str | None = None) -> bytes:
    """An IPv4 DHCPACK (IPv4 header first, as a SOCK_DGRAM packet socket sends it)
    from ``src`` granting ``address`` to ``mac``."""
    b = bytearray(bytes.fromhex(ACK_HEX.read_text().strip()))
    b[12:16] = IPv4Address(src).packed
    b[16:20] = IPv4Address(address).packed
    b[_BOOTP + 16:_BOOTP + 20] = IPv4Address(address).packed  # yiaddr
    b[_BOOTP + 28:_BOOTP + 34] = bytes.fromhex(mac.replace(":", ""))  # chaddr
    opts = _BOOTP + 240
    assert b[opts:opts + 5] == bytes.fromhex("3501053604"), "dnsmasq's option order"
    b[opts + 5:opts + 9] = IPv4Address(server_id or src).packed
    b[_IHL + 6:_IHL + 8] = bytes(2)  # no UDP checksum (allowed over IPv4)
    b[10:12] = bytes(2)
    b[10:12] = struct.pack("!H", _checksum(bytes(b[:_IHL])))
    return bytes(b)


def send(ifname: str, frame: bytes) -> None:
    """Broadcast ``frame`` out of ``ifname``. On a bridge's port's peer, the bridge
    receives it from that port (incoming); on the bridge itself, the host sends it."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM) as s:
        s.sendto(frame, (ifname, ETH_P_IP, 0, 0, BROADCAST))


@contextlib.contextmanager
def port_on(bridge: str, name: str) -> Iterator[str]:
    """A veth pair with one end a port of ``bridge``: the other end (returned) is
    where a guest's frames come from. Removed afterwards."""
    peer = f"{name}p"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer],
                   check=True)
    try:
        subprocess.run(["ip", "link", "set", peer, "master", bridge, "up"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


class Capture:
    """Every IPv4 frame on an interface, with its packet type (no filter)."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))

    def wait_for(self, frame: bytes, timeout: float) -> int:
        """The packet type ``frame`` was seen with (its UDP payload compared)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data, addr = self.sock.recvfrom(4096)
            if data[_IHL + 8:len(frame)] == frame[_IHL + 8:]:
                return int(addr[2])
        raise TimeoutError(f"frame not seen within {timeout}s")

    def close(self) -> None:
        self.sock.close()
