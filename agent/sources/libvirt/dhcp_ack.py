"""The DHCPACKs libvirt's dnsmasq sends on a network's bridge: a lease the moment it
is granted, before libvirt's lease helper writes ``<bridge>.status``.

libvirt's dnsmasq answers the guest's DHCP name as it sends the ACK, then runs
its lease helper (a fork and exec of a program linked against dozens of
libraries), which writes the lease file 15-90 ms later depending on load
(docs/benchmarks.md). The ACK itself is the server's decision, the same one the
helper then writes, so it can publish the lease that much sooner, provisionally
(sources/libvirt/provisional.py: the file confirms or it is withdrawn).

Trust: a guest can put any frame on its bridge, so only what the host itself
transmits counts. One AF_PACKET socket per bridge (ETH_P_ALL: a protocol-bound
packet socket never sees outgoing frames) with a classic BPF filter, so the
kernel wakes us only for the host's own UDP 67 -> 68 frames (nothing while
idle, nothing for a guest's traffic); then, again in Python:
``sll_pkttype == PACKET_OUTGOING`` (frames arriving from a port never are;
one a guest gets the host to route back out would carry a guest's source
address, and the kernel drops frames from outside claiming the host's own
source address as martians), the source address is the bridge's own address
from the network XML, BOOTP reply, DHCP message type 5 and a server
identifier of that network, the address inside its subnet. Every length is
checked against the bytes actually there.

Needs CAP_NET_RAW; without it (or without the bridge) the trigger is off, the
lease file alone publishes (as before) and ``state()`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface

import structlog

log = structlog.get_logger(component="sources.libvirt.dhcp_ack")

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26
SERVER_PORT, CLIENT_PORT = 67, 68
SNAP_BYTES = 1600  # a DHCP message over Ethernet is at most ~1500
RCVBUF_BYTES = 64 * 1024  # ACKs are rare; a burst beyond this is left to the file
READS_PER_WAKEUP = 64  # then back to the loop: the rest waits for the next turn

BOOTREPLY = 2
DHCPACK = 5
OPT_PAD, OPT_END = 0, 255
OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MSG_TYPE, OPT_SERVER_ID = 51, 52, 53, 54
MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTP_FIXED = 236  # op .. file, before the magic cookie
INFINITE_LEASE = 0xFFFFFFFF


class Refused(ValueError):
    """A frame that passed the kernel's filter but is not a DHCPACK the host sent
    (malformed, or from somewhere it must not be trusted)."""


@dataclass(frozen=True, slots=True)
class Ack:
    mac: str  # chaddr, lowercase colon form
    address: IPv4Address  # yiaddr
    lease_s: int | None  # option 51; None: infinite (an ACK without one grants nothing)


# --- the kernel's filter ------------------------------------------------------------

# Classic BPF (linux/filter.h).
_LD, _LDX, _JMP, _RET = 0x00, 0x01, 0x05, 0x06
_W, _H, _B = 0x00, 0x08, 0x10
_ABS, _IND, _MSH = 0x20, 0x40, 0xA0
_JEQ, _JSET = 0x10, 0x40
_SKF_AD_OFF = -0x1000
_SKF_AD_PROTOCOL, _SKF_AD_PKTTYPE = 0, 4

Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _program() -> list[Insn]:
    """Outgoing IPv4 UDP from port 67 to port 68, unfragmented; else drop.

    On a SOCK_DGRAM packet socket the filter sees the IPv4 header at offset 0.
    A conditional jump's false branch is "drop": filled in below.
    """
    drop = -1
    code: list[tuple[int, int, int, int]] = [
        (_LD | _W | _ABS, 0, drop, (_SKF_AD_OFF + _SKF_AD_PKTTYPE) & 0xFFFFFFFF),
        (_JMP | _JEQ, 0, drop, PACKET_OUTGOING),
        (_LD | _W | _ABS, 0, drop, (_SKF_AD_OFF + _SKF_AD_PROTOCOL) & 0xFFFFFFFF),
        (_JMP | _JEQ, 0, drop, ETH_P_IP),
        (_LD | _B | _ABS, 0, drop, 9),  # IPv4 protocol
        (_JMP | _JEQ, 0, drop, socket.IPPROTO_UDP),
        (_LD | _H | _ABS, 0, drop, 6),  # flags + fragment offset
        (_JMP | _JSET, drop, 0, 0x3FFF),  # MF set or an offset: a fragment
        (_LDX | _B | _MSH, 0, drop, 0),  # X = IPv4 header length
        (_LD | _H | _IND, 0, drop, 0),  # UDP source port
        (_JMP | _JEQ, 0, drop, SERVER_PORT),
        (_LD | _H | _IND, 0, drop, 2),  # UDP destination port
        (_JMP | _JEQ, 0, drop, CLIENT_PORT),
        (_RET, 0, 0, SNAP_BYTES),
    ]
    end = len(code)  # the drop instruction's index
    out: list[Insn] = []
    for i, (op, jt, jf, k) in enumerate(code):
        if op & 0x07 == _JMP:
            jt = end - i - 1 if jt == drop else jt
            jf = end - i - 1 if jf == drop else jf
        else:
            jt = jf = 0
        out.append((op, jt, jf, k))
    out.append((_RET, 0, 0, 0))
    return out


def filter_bytes() -> bytes:
    return b"".join(struct.pack("HBBI", *insn) for insn in _program())


def attach_filter(sock: socket.socket) -> None:
    prog = filter_bytes()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_socket(bridge: str) -> socket.socket:
    """A nonblocking packet socket on ``bridge`` that receives only what the filter
    lets through. Created bound to no protocol, so nothing is queued before the
    filter is in place."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, 0)
    try:
        attach_filter(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.bind((bridge, ETH_P_ALL))
    except BaseException:
        sock.close()
        raise
    return sock


# --- parsing ------------------------------------------------------------------------


def _ipv4_payload(packet: bytes, servers: Collection[IPv4Interface]) -> tuple[bytes, IPv4Interface]:
    """The UDP payload of an IPv4 datagram from one of ``servers``, 67 -> 68."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        raise Refused("not an IPv4 header")
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or total < ihl + 8 or total > len(packet):
        raise Refused(f"IPv4 lengths do not fit (header {ihl}, total {total}, "
                      f"{len(packet)} bytes)")
    if int.from_bytes(packet[6:8], "big") & 0x3FFF:
        raise Refused("a fragment")
    if packet[9] != socket.IPPROTO_UDP:
        raise Refused("not UDP")
    src = IPv4Address(packet[12:16])
    server = next((s for s in servers if s.ip == src), None)
    if server is None:
        raise Refused(f"from {src}, not the bridge's own address")
    udp = packet[ihl:total]
    sport, dport, length = struct.unpack_from("!HHH", udp)
    if (sport, dport) != (SERVER_PORT, CLIENT_PORT):
        raise Refused(f"UDP {sport} -> {dport}")
    if length < 8 or length > len(udp):
        raise Refused(f"UDP length {length} with {len(udp)} bytes")
    return udp[8:length], server


def _options(msg: bytes) -> dict[int, bytes]:
    """DHCP options after the magic cookie; the first of each code counts."""
    out: dict[int, bytes] = {}
    i = BOOTP_FIXED + len(MAGIC_COOKIE)
    while i < len(msg):
        code = msg[i]
        if code == OPT_END:
            return out
        if code == OPT_PAD:
            i += 1
            continue
        if i + 2 > len(msg) or i + 2 + msg[i + 1] > len(msg):
            raise Refused(f"option {code} runs past the end")
        out.setdefault(code, msg[i + 2: i + 2 + msg[i + 1]])
        i += 2 + msg[i + 1]
    raise Refused("options without an end")


def _lease_s(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    value = int.from_bytes(raw, "big")
    return None if value == INFINITE_LEASE else value


def _bootp_reply(msg: bytes) -> dict[int, bytes]:
    """The options of an Ethernet BOOTP reply carrying DHCP's magic cookie."""
    if len(msg) < BOOTP_FIXED + len(MAGIC_COOKIE) or msg[236:240] != MAGIC_COOKIE:
        raise Refused(f"not a DHCP message ({len(msg)} bytes)")
    if msg[0] != BOOTREPLY or msg[1] != 1 or msg[2] != 6:
        raise Refused(f"not an Ethernet BOOTP reply (op {msg[0]}, htype {msg[1]}, "
                      f"hlen {msg[2]})")
    return _options(msg)


def _grants(msg: bytes, lease_time: bytes | None) -> bool:
    """Whether an ACK grants a lease. dnsmasq answers a DHCPINFORM with a type-5 ACK
    that keeps the guest's own yiaddr and chaddr but has no lease time: it grants
    nothing, and what it says is the guest's word (issue 11, review F1). A renewal
    has ciaddr == yiaddr; an INFORM's ACK another ciaddr."""
    if lease_time is None or len(lease_time) != 4:
        return False
    ciaddr, yiaddr = msg[12:16], msg[16:20]
    return yiaddr != bytes(4) and ciaddr in (bytes(4), yiaddr)


def parse_ack(packet: bytes, pkttype: int, servers: Collection[IPv4Interface]) -> Ack | None:
    """The lease a DHCPACK the host sent grants, from the bytes a SOCK_DGRAM packet
    socket reads (IPv4 header first). None: the host's, but granting nothing (an
    OFFER, a NAK, the ACK of an INFORM). Raises Refused for anything else."""
    if pkttype != PACKET_OUTGOING:
        raise Refused(f"packet type {pkttype}, not sent by this host")
    msg, server = _ipv4_payload(packet, servers)
    opts = _bootp_reply(msg)
    kind = opts.get(OPT_MSG_TYPE)
    if kind is None or len(kind) != 1:
        # dnsmasq puts the type in the options field; one only in sname/file
        # (option overload) is not worth trusting here: the file follows anyway.
        raise Refused("no DHCP message type")
    if kind[0] != DHCPACK:
        return None
    server_id = opts.get(OPT_SERVER_ID)
    if server_id is None or len(server_id) != 4 or IPv4Address(server_id) != server.ip:
        raise Refused("server identifier is not the bridge's address")
    address = IPv4Address(msg[16:20])
    lease_time = opts.get(OPT_LEASE_TIME)
    if not _grants(msg, lease_time):
        return None
    net = server.network
    if address not in net or address in (net.network_address, net.broadcast_address,
                                         server.ip):
        raise Refused(f"address {address} is not a client address of {net}")
    mac = ":".join(f"{b:02x}" for b in msg[28:34])
    return Ack(mac, address, _lease_s(lease_time))


def dhcp_servers(xml: str) -> tuple[IPv4Interface, ...]:
    """A network XML's IPv4 addresses that serve DHCP (an ``<ip>`` with ``<dhcp>``)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return ()
    out: list[IPv4Interface] = []
    for ip in root.findall("ip"):
        if ip.find("dhcp") is None or ip.get("family", "ipv4") != "ipv4":
            continue
        mask = ip.get("netmask") or ip.get("prefix") or "32"
        try:
            out.append(IPv4Interface(f"{ip.get('address')}/{mask}"))
        except ValueError:
            continue
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Pool:
    """The IPv4 addresses a network's dnsmasq may hand out: its DHCP ``<range>``s
    and ``<host>`` entries. An ACK for anything else was not libvirt's decision."""

    ranges: tuple[tuple[IPv4Address, IPv4Address], ...] = ()
    hosts: frozenset[IPv4Address] = frozenset()

    def admits(self, address: IPv4Address) -> bool:
        return address in self.hosts or any(lo <= address <= hi for lo, hi in self.ranges)


def _addr(text: str | None) -> IPv4Address | None:
    try:
        return IPv4Address(text or "")
    except ValueError:
        return None


def dhcp_pool(xml: str) -> Pool:
    """A network XML's IPv4 DHCP ranges and host addresses (nothing if unreadable)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return Pool()
    ranges: list[tuple[IPv4Address, IPv4Address]] = []
    hosts: set[IPv4Address] = set()
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4":
            continue
        for r in ip.findall("dhcp/range"):
            lo, hi = _addr(r.get("start")), _addr(r.get("end"))
            if lo is not None and hi is not None:
                ranges.append((lo, hi))
        hosts.update(a for h in ip.findall("dhcp/host") if (a := _addr(h.get("ip"))))
    return Pool(tuple(ranges), frozenset(hosts))


# --- the sockets, on the loop ---------------------------------------------------------


@dataclass
class _Watch:
    sock: socket.socket
    ifindex: int
    servers: tuple[IPv4Interface, ...]


def _why_off(e: OSError) -> str:
    if e.errno in (errno.EPERM, errno.EACCES):
        return f"no CAP_NET_RAW ({e.strerror})"
    if e.errno == errno.EAFNOSUPPORT:
        return "AF_PACKET sockets not allowed here (RestrictAddressFamilies?)"
    return f"{type(e).__name__}: {e}"


@dataclass
class AckTrigger:
    """One packet socket per libvirt bridge serving DHCP, read on the loop; each
    DHCPACK the host sent is handed to ``on_ack(bridge, ack)``."""

    on_ack: Callable[[str, Ack], None]
    _watches: dict[str, _Watch] = field(default_factory=dict)
    _absent: dict[str, str] = field(default_factory=dict)  # bridge -> why not watched
    _off: str | None = None  # why no socket can be had at all
    refused: int = 0  # frames through the filter that were not a host's DHCPACK

    def watch(self, servers: Mapping[str, tuple[IPv4Interface, ...]]) -> None:
        """Follow exactly these bridges (bridge -> its DHCP server addresses)."""
        for bridge in list(self._watches):
            if bridge not in servers or not self._same_link(bridge):
                self._drop(bridge)
        self._absent = {b: why for b, why in self._absent.items() if b in servers}
        for bridge, addrs in servers.items():
            if bridge in self._watches:
                self._watches[bridge].servers = addrs
            elif addrs:
                self._open(bridge, addrs)

    def _same_link(self, bridge: str) -> bool:
        """The socket is bound to the bridge of that name now (a network restarted
        recreates its bridge: a socket on the old one hears nothing)."""
        try:
            return socket.if_nametoindex(bridge) == self._watches[bridge].ifindex
        except OSError:
            return False

    def _open(self, bridge: str, addrs: tuple[IPv4Interface, ...]) -> None:
        try:
            ifindex = socket.if_nametoindex(bridge)
        except OSError:
            ifindex = 0
        try:
            if not ifindex:
                raise OSError(errno.ENODEV, "no such bridge")
            sock = open_socket(bridge)
        except OSError as e:
            why = "no such bridge" if e.errno in (errno.ENODEV, errno.ENXIO) else _why_off(e)
            if e.errno in (errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT):
                if self._off != why:
                    log.info("DHCPACK trigger off; the lease files alone publish", why=why)
                self._off = why
            elif self._absent.get(bridge) != why:
                log.info("DHCPACK trigger not on this bridge", bridge=bridge, why=why)
            self._absent[bridge] = why
            return
        self._off = None
        self._absent.pop(bridge, None)
        self._watches[bridge] = _Watch(sock, ifindex, addrs)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, bridge)
        log.debug("DHCPACK trigger on", bridge=bridge)

    def _drop(self, bridge: str) -> None:
        w = self._watches.pop(bridge)
        with contextlib.suppress(Exception):  # the loop may be closing
            asyncio.get_running_loop().remove_reader(w.sock.fileno())
        w.sock.close()

    def close(self) -> None:
        for bridge in list(self._watches):
            self._drop(bridge)

    def _readable(self, bridge: str) -> None:
        w = self._watches.get(bridge)
        if w is None:
            return
        for _ in range(READS_PER_WAKEUP):
            try:
                data, addr = w.sock.recvfrom(SNAP_BYTES)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.ENETDOWN:
                    # The bridge went down (reported once): the kernel hooks the socket
                    # in again when it comes back up; one recreated under the same
                    # name is a new link, replaced at the network's next event (watch).
                    log.info("DHCPACK trigger: bridge down", bridge=bridge)
                    return
                log.warning("DHCPACK trigger lost its bridge", bridge=bridge, error=str(e))
                self._drop(bridge)
                self._absent[bridge] = f"socket error: {e.strerror or e}"
                return
            self._packet(bridge, w, data, int(addr[2]))

    def _packet(self, bridge: str, w: _Watch, data: bytes, pkttype: int) -> None:
        try:
            ack = parse_ack(data, pkttype, w.servers)
        except (Refused, struct.error, ipaddress.AddressValueError) as e:
            self.refused += 1
            log.debug("frame refused", bridge=bridge, why=str(e))
            return
        if ack is not None:
            self.on_ack(bridge, ack)

    def state(self) -> str | None:
        """For status: whether ACKs are followed, and why not; None: no bridge to follow."""
        if self._off is not None:
            return f"DHCPACK trigger off: {self._off}"
        parts = []
        if self._watches:
            parts.append("DHCPACK trigger on " + ", ".join(sorted(self._watches)))
        if self._absent:
            parts.append("DHCPACK trigger off on " + ", ".join(
                f"{b} ({why})" for b, why in sorted(self._absent.items())))
        if self.refused:
            parts.append(f"{self.refused} DHCP frames refused")
        return "; ".join(parts) or None
