"""DHCPACK frames made and put on a bridge by a test: forged ones arriving from a
port (what a guest can do), and ones the host itself sends (what only root can).

The frame is the real ACK libvirt's dnsmasq sent (tests/unit/data/dhcp/ack.hex)
with its addresses replaced, so everything but the fields a test chooses is
what dnsmasq really puts in one.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
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

    def wait_for(self, frame: bytes, timeout: float, pkttype: int | None = None) -> int:
        """The packet type ``frame`` was seen with (its UDP payload compared); with
        ``pkttype``, only a copy of that type counts."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                break
            data, addr = self.sock.recvfrom(4096)
            if data[_IHL + 8:len(frame)] == frame[_IHL + 8:] and pkttype in (None, addr[2]):
                return int(addr[2])
        raise TimeoutError(f"frame not seen within {timeout}s")

    def close(self) -> None:
        self.sock.close()


# --- a guest's own DHCP messages, from a network namespace on a bridge port ----------


def _sum16(b: bytes) -> int:
    return _checksum(b + b"\0" * (len(b) % 2))


def bootp(kind: int, mac: str, xid: int, server: str, *, ciaddr: str = "0.0.0.0",
          yiaddr: str = "0.0.0.0", requested: str | None = None) -> bytes:
    """A client's DHCP message of type ``kind`` (3 REQUEST, 7 RELEASE, 8 INFORM), with
    whatever chaddr/ciaddr/yiaddr the (hostile) guest likes."""
    msg = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                      IPv4Address(ciaddr).packed, IPv4Address(yiaddr).packed, bytes(4),
                      bytes(4), bytes.fromhex(mac.replace(":", "")) + bytes(10), bytes(64),
                      bytes(128))
    opts = b"\x63\x82\x53\x63" + bytes([53, 1, kind, 54, 4]) + IPv4Address(server).packed
    if requested:
        opts += bytes([50, 4]) + IPv4Address(requested).packed
    return msg + opts + b"\xff"


def ether_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, payload: bytes, *,
                sport: int = 68, dport: int = 67) -> bytes:
    """An Ethernet frame carrying ``payload`` over UDP (no UDP checksum)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                               IPv4Address(src_ip).packed, IPv4Address(dst_ip).packed))
    ip[10:12] = struct.pack("!H", _sum16(bytes(ip)))
    return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
            + struct.pack("!H", ETH_P_IP) + bytes(ip) + udp)


def link_mac(ifname: str, netns: str | None = None) -> str:
    cmd = ["ip", "-j", "link", "show", ifname]
    if netns:
        cmd[1:1] = ["-n", netns]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


@dataclass
class GuestNs:
    """A network namespace whose veth end is a port of a bridge, with an address of
    the bridge's subnet: a hostile guest with a real IP stack (for unicast replies)."""

    ns: str
    ifname: str
    address: str
    mac: str

    def send(self, *frames: bytes) -> None:
        """Each whole Ethernet frame out of the guest's interface, in order."""
        script = ("import socket, sys; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                  "s.bind((sys.argv[1], 0))\n"
                  "for f in sys.argv[2:]: s.send(bytes.fromhex(f))\n")
        subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-c", script,
                        self.ifname, *(f.hex() for f in frames)], check=True)


@contextlib.contextmanager
def guest_ns(bridge: str, name: str, address: str, prefix: int) -> Iterator[GuestNs]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "link", "add", f"{name}g", "type", "veth", "peer", "name",
                        f"{name}p"], check=True)
        subprocess.run(["ip", "link", "set", f"{name}p", "master", bridge, "up"], check=True)
        subprocess.run(["ip", "link", "set", f"{name}g", "netns", name], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{address}/{prefix}", "dev",
                        f"{name}g"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", f"{name}g", "up"], check=True)
        yield GuestNs(name, f"{name}g", address, link_mac(f"{name}g", name))
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def packet_sockets(pid: int) -> int:
    """How many AF_PACKET sockets process ``pid`` holds (its fds' inodes that
    /proc/net/packet lists, in the current network namespace)."""
    rows = Path("/proc/net/packet").read_text().splitlines()[1:]
    inodes = {row.split()[-1] for row in rows if row.split()}
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[8:-1])
    return len(held & inodes)
