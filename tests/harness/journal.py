"""A stand-in journald: a real unix datagram socket that reads entries as journald does.

The parser follows systemd.journal-fields / the native protocol: ``KEY=value\\n``, or
``KEY\\n`` + 64-bit little-endian length + value + ``\\n``; an empty datagram carrying a
file descriptor (SCM_RIGHTS) holds the entry in a sealed memfd.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
from pathlib import Path

Entry = dict[str, list[bytes]]


def parse_entry(data: bytes) -> Entry:
    entry: Entry = {}
    pos = 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            if data[nl + 9 + size : nl + 10 + size] != b"\n":
                raise ValueError(f"field {key!r}: no newline after {size} bytes")
            pos = nl + 10 + size
        entry.setdefault(key.decode(), []).append(value)
    return entry


class JournalServer:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)
        self.sealed: list[int] = []  # seals seen on memfds

    def receive(self) -> Entry:
        fds = array.array("i")
        data, ancdata, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fds.itemsize))
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fds.itemsize])
        for fd in fds:
            try:
                self.sealed.append(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        return parse_entry(data)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)
