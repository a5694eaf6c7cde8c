"""Native journal entries over the journal socket protocol (systemd.journal-fields(7)).

One datagram per entry to /run/systemd/journal/socket: ``KEY=value\\n`` per
field, or, for a value holding a newline, ``KEY\\n`` + its length as 64-bit
little endian + the value + ``\\n``. An entry too large for a datagram goes
the way sd_journal_send(3) does it: written to a sealed memfd whose
descriptor is sent instead. If even that fails, the entry is cut down to a
truncated MESSAGE, never dropped silently.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
TRUNCATED_BYTES = 8192  # what is kept of MESSAGE when nothing else gets through
_BAD = re.compile(r"[^A-Z0-9_]")
# Fields the entry sets itself; a structured key of the same name is prefixed.
OWN_FIELDS = frozenset({"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"})


def field_name(key: str) -> str:
    """A journal field name: uppercase letters, digits, underscores; no leading '_' or digit."""
    name = _BAD.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit() or name in OWN_FIELDS:
        name = "NAMESYNC_" + name
    return name[:64]


def field_value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    if isinstance(value, bool | int | float) or value is None:
        return str(value).encode()
    return json.dumps(value, sort_keys=True, default=str).encode("utf-8", "replace")


def encode_field(name: str, value: bytes) -> bytes:
    if b"\n" in value:
        return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name.encode() + b"=" + value + b"\n"


def encode_entry(fields: Iterable[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields)


def entry_fields(message: str, priority: int, identifier: str,
                 extra: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    fields = [("MESSAGE", field_value(message)), ("PRIORITY", str(priority).encode()),
              ("SYSLOG_IDENTIFIER", identifier.encode())]
    fields += [(field_name(k), field_value(v)) for k, v in extra.items()]
    return fields


class JournalSocket:
    """A connected datagram socket to journald; reconnects after journald restarts."""

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            s.connect(str(self.path))
            self._sock = s
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send_memfd(self, data: bytes) -> None:
        fd = os.memfd_create("namesync-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            self._socket().sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         struct.pack("i", fd))])
        finally:
            os.close(fd)

    def send(self, fields: list[tuple[str, bytes]]) -> None:
        """Send one entry; OSError if journald cannot be reached at all."""
        data = encode_entry(fields)
        try:
            self._socket().send(data)
            return
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                self.close()  # journald restarted: reconnect on the next entry
                raise
        try:
            self._send_memfd(data)
        except OSError:
            message = dict(fields).get("MESSAGE", b"")[:TRUNCATED_BYTES]
            short = [(k, v) for k, v in fields if k in OWN_FIELDS and k != "MESSAGE"]
            self._socket().send(encode_entry([("MESSAGE", message + b" [truncated]"), *short]))


def stream_is_journal(fileno: int, env: Mapping[str, str]) -> bool:
    """JOURNAL_STREAM is inherited by children; trust it only if it names this stream."""
    dev, _, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    with contextlib.suppress(OSError):
        st = os.fstat(fileno)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    return False
