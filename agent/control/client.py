"""Blocking client for agentctl: one request, one response."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any

from . import protocol


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

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        req_id = next(self._ids)
        msg = protocol.encode(
            {"v": protocol.VERSION, "id": req_id, "method": method, "params": params or {}}
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            try:
                s.connect(str(self.path))
            except FileNotFoundError:
                raise ControlError(
                    "no_daemon", f"no control socket at {self.path}: is namesync-agent running?"
                ) from None
            except ConnectionRefusedError:
                raise ControlError(
                    "no_daemon",
                    f"nothing listens on {self.path}: namesync-agent is not running (stale socket)",
                ) from None
            except PermissionError:
                raise ControlError(
                    "permission_denied",
                    f"permission denied on {self.path} (the system daemon's socket is root-only)",
                ) from None
            s.sendall(msg)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    raise ControlError("closed", "the daemon closed the connection")
                buf += chunk
                if len(buf) > protocol.MAX_LINE * 16:
                    raise ControlError("too_large", "response too large")
        resp = json.loads(buf)
        if "error" in resp:
            err = resp["error"]
            raise ControlError(str(err.get("code")), str(err.get("message")))
        result: dict[str, Any] = resp["result"]
        return result
