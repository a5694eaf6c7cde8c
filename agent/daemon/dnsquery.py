"""A tiny DNS client (stdlib only): ask one server for A/AAAA of one name, once.

``agentctl explain`` ends with what the resolver answers *now*; that needs a
single UDP question and its answer, not a resolver library. Answers are
parsed defensively: a reply that does not match the question is an error,
never a crash.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field

TYPES = {"A": 1, "AAAA": 28}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class DnsError(Exception):
    pass


@dataclass(frozen=True)
class Reply:
    rcode: str
    addresses: tuple[str, ...] = ()
    authoritative: bool = False
    ms: float = 0.0
    cname: tuple[str, ...] = field(default=())


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise DnsError(f"bad label {label!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_query(name: str, qtype: int, qid: int) -> bytes:
    # RD set: a forwarding resolver answers names outside its zones too.
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", qtype, 1
    )


def _skip_name(msg: bytes, pos: int) -> int:
    for _ in range(128):
        if pos >= len(msg):
            raise DnsError("truncated name")
        n = msg[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + n
    raise DnsError("name too long")


def _read_name(msg: bytes, pos: int) -> str:
    labels: list[str] = []
    for _ in range(128):
        if pos >= len(msg):
            raise DnsError("truncated name")
        n = msg[pos]
        if n == 0:
            return ".".join(labels)
        if n & 0xC0 == 0xC0:
            pos = ((n & 0x3F) << 8) | msg[pos + 1]
            continue
        labels.append(msg[pos + 1 : pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    raise DnsError("name loop")


def parse_reply(msg: bytes, qid: int, qtype: int) -> Reply:
    if len(msg) < 12:
        raise DnsError("reply too short")
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", msg[:12])
    if rid != qid or not flags & 0x8000:
        raise DnsError("reply does not match the question")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(msg, pos) + 4
    addrs: list[str] = []
    cnames: list[str] = []
    for _ in range(an):
        pos = _skip_name(msg, pos)
        if pos + 10 > len(msg):
            raise DnsError("truncated answer")
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[pos : pos + 10])
        rdata = msg[pos + 10 : pos + 10 + rdlen]
        if len(rdata) != rdlen:
            raise DnsError("truncated answer")
        if rtype == qtype == 1 and rdlen == 4:
            addrs.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == qtype == 28 and rdlen == 16:
            addrs.append(str(ipaddress.IPv6Address(rdata)))
        elif rtype == 5:
            cnames.append(_read_name(msg, pos + 10))
        pos += 10 + rdlen
    return Reply(RCODES.get(flags & 0xF, f"RCODE{flags & 0xF}"), tuple(addrs),
                 bool(flags & 0x0400), cname=tuple(cnames))


def query(server: str, port: int, name: str, rtype: str = "A", timeout: float = 1.0) -> Reply:
    """One question over UDP; DnsError (timeout, refused, garbage) says why there is no answer."""
    qtype = TYPES[rtype]
    qid = secrets.randbelow(1 << 16)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        t0 = time.monotonic()
        try:
            s.connect((server, port))
            s.send(build_query(name, qtype, qid))
            deadline = t0 + timeout
            while True:
                s.settimeout(max(0.001, deadline - time.monotonic()))
                data = s.recv(4096)
                try:
                    reply = parse_reply(data, qid, qtype)
                except DnsError:
                    if time.monotonic() >= deadline:
                        raise
                    continue  # a stray datagram: keep waiting for ours
                break
        except TimeoutError:
            raise DnsError(f"no answer from {server} port {port} within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise DnsError(f"nothing listens on {server} port {port}") from None
        except OSError as e:
            raise DnsError(f"cannot ask {server} port {port}: {e.strerror or e}") from None
    ms = (time.monotonic() - t0) * 1000
    return Reply(reply.rcode, reply.addresses, reply.authoritative, ms, reply.cname)
