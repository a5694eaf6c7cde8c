"""Ask dnsmasq over UDP with hand-built queries, one in flight: ~0.2 ms resolution.

Shared by the benches; dig would cost a process start (~5 ms) per question.
"""

from __future__ import annotations

import random
import socket
import statistics
import struct
import time
from collections.abc import Callable


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in name.encode("ascii").split(b".")) + b"\0"


def _skip_name(buf: bytes, off: int) -> int:
    while True:
        length = buf[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:  # compression pointer ends the name
            return off + 2
        off += length + 1


def parse_response(buf: bytes) -> tuple[int, int, tuple[str, ...]]:
    """(id, rcode, A addresses) of a DNS response."""
    qid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", buf)
    off = 12
    for _ in range(qd):
        off = _skip_name(buf, off) + 4
    addrs = []
    for _ in range(an):
        off = _skip_name(buf, off)
        rtype, rclass, _, rdlen = struct.unpack_from("!HHIH", buf, off)
        off += 10
        if rtype == 1 and rclass == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(buf[off : off + 4]))
        off += rdlen
    return qid, flags & 0xF, tuple(sorted(addrs))


class Poller:
    """One UDP socket, one query in flight: ask until the answer is what we want."""

    def __init__(self, port: int, sleep_s: float, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect((host, port))
        self.sock.settimeout(0.5)  # dnsmasq busy re-reading a huge file: ask again
        self.sleep_s = sleep_s
        self.qid = random.randrange(0x10000)

    def close(self) -> None:
        self.sock.close()

    def ask(self, question: bytes) -> tuple[float, int, tuple[str, ...]] | None:
        self.qid = (self.qid + 1) & 0xFFFF
        try:
            self.sock.send(struct.pack("!HHHHHH", self.qid, 0x0100, 1, 0, 0, 0) + question)
        except ConnectionRefusedError:  # the ICMP of an earlier query: nobody listening
            return None
        while True:
            try:
                buf = self.sock.recv(4096)
            except (TimeoutError, ConnectionRefusedError):  # server restarting
                return None
            at = time.monotonic()
            qid, rcode, addrs = parse_response(buf)
            if qid == self.qid:  # else a late answer to an earlier query
                return at, rcode, addrs

    def wait_for(self, name: str, want: str, timeout: float) -> float:
        """Monotonic time of the first answer that is exactly ``want``."""
        wanted = (want,)
        return self.wait_until(name, lambda rcode, addrs: rcode == 0 and addrs == wanted,
                               f"answered {want}", timeout)

    def wait_until(self, name: str, done: Callable[[int, tuple[str, ...]], bool], what: str,
                   timeout: float) -> float:
        """Monotonic time of the first answer for which ``done(rcode, addresses)`` holds."""
        question = _qname(name) + struct.pack("!HH", 1, 1)  # A, IN
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            got = self.ask(question)
            if got is not None:
                at, rcode, addrs = got
                if done(rcode, addrs):
                    return at
                last = (rcode, addrs)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never {what} within {timeout}s; last {last}")
            if self.sleep_s:
                time.sleep(self.sleep_s)


def p95(xs: list[float]) -> float:
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=20, method="inclusive")[18]


def wait_nxdomain(poller: Poller, name: str, timeout: float) -> float:
    """Monotonic time of the first NXDOMAIN answer for ``name``."""
    return poller.wait_until(name, lambda rcode, _: rcode == 3, "NXDOMAIN", timeout)


def summary(label: str, xs: list[float], width: int = 31) -> str:
    """One line of a bench's report: median, p95, min, max of ``xs`` (ms)."""
    return (f"  {label:<{width}} median {statistics.median(xs):7.1f} ms   "
            f"p95 {p95(xs):7.1f} ms   min {min(xs):7.1f}   max {max(xs):7.1f}   (n={len(xs)})")
