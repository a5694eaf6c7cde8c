"""Blocking client for agentctl: one request, one response.

Every failure is a ControlError whose message a user can act on; no socket
exception escapes to be printed by name.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import protocol

# A full listen backlog answers EAGAIN at once: wait a little and try again
# until the timeout instead of failing while the daemon works through a burst.
BUSY_RETRY_S = 0.01


class ControlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Client:
    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._ids = itertools.count(1)

    def _no_daemon(self) -> ControlError:
        return ControlError(
            "no_daemon", f"no agent listening on {self.path} (is namesync running?)"
        )

    def _connect(self, s: socket.socket, deadline: float) -> None:
        while True:
            try:
                s.connect(str(self.path))
                return
            except (FileNotFoundError, ConnectionRefusedError):
                raise self._no_daemon() from None
            except PermissionError:
                raise ControlError(
                    "permission_denied",
                    f"permission denied on {self.path} (the system agent's socket is root-only "
                    "unless [control] allow_uids lists your uid)",
                ) from None
            except (BlockingIOError, TimeoutError) as e:
                if isinstance(e, BlockingIOError) and e.errno != errno.EAGAIN:
                    raise
                if time.monotonic() >= deadline:
                    raise ControlError(
                        "timeout",
                        f"the agent on {self.path} accepted no connection within "
                        f"{self.timeout:g}s (busy?)",
                    ) from None
                time.sleep(BUSY_RETRY_S)

    def _exchange(self, s: socket.socket, msg: bytes) -> bytes:
        # Refused at accept: the agent said why in the line it sent first.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(msg)
        buf = bytearray()
        while not buf.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ControlError("closed", f"the agent on {self.path} closed the connection")
            buf += chunk
            if len(buf) > protocol.MAX_LINE * 16:
                raise ControlError(
                    "too_large", f"the agent on {self.path} sent too large an answer"
                )
        return bytes(buf)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        req_id = next(self._ids)
        msg = protocol.encode(
            {"v": protocol.VERSION, "id": req_id, "method": method, "params": params or {}}
        )
        deadline = time.monotonic() + self.timeout
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                self._connect(s, deadline)
                buf = self._exchange(s, msg)
        except TimeoutError:
            raise ControlError(
                "timeout", f"no answer from the agent on {self.path} within {self.timeout:g}s"
            ) from None
        except OSError as e:
            raise ControlError(
                "io", f"talking to the agent on {self.path}: {e.strerror or e}"
            ) from None
        try:
            resp = json.loads(buf)
        except ValueError:
            raise ControlError(
                "bad_reply", f"unreadable answer from the agent on {self.path}"
            ) from None
        if not isinstance(resp, dict):
            raise ControlError("bad_reply", f"unreadable answer from the agent on {self.path}")
        if "error" in resp:
            err = resp["error"]
            raise ControlError(str(err.get("code")), str(err.get("message")))
        result = resp.get("result")
        if not isinstance(result, dict):
            raise ControlError("bad_reply", f"unreadable answer from the agent on {self.path}")
        return result

    def stream(self, method: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A streaming method (``watch``): yield each event until the agent ends the stream."""
        msg = protocol.encode(
            {"v": protocol.VERSION, "id": next(self._ids), "method": method,
             "params": params or {}}
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            self._connect(s, time.monotonic() + self.timeout)
            s.settimeout(None)  # events come when something changes: no deadline
            try:
                s.sendall(msg)
                yield from self._events(s)
            except OSError as e:
                raise ControlError(
                    "io", f"talking to the agent on {self.path}: {e.strerror or e}"
                ) from None

    def _events(self, s: socket.socket) -> Iterator[dict[str, Any]]:
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    raise ControlError(
                        "bad_reply", f"unreadable event from the agent on {self.path}"
                    ) from None
                if "error" in msg:
                    err = msg["error"]
                    raise ControlError(str(err.get("code")), str(err.get("message")))
                if isinstance(msg.get("event"), dict):
                    yield msg["event"]
            if len(buf) > protocol.MAX_LINE:
                raise ControlError("too_large", f"the agent on {self.path} sent too large an event")
