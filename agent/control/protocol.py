"""Wire format, version 1: one JSON object per line over a Unix stream socket.

Request:   {"v": 1, "id": <any>, "method": "status", "params": {...}}
Response:  {"v": 1, "id": <same>, "result": {...}}
       or  {"v": 1, "id": <same>, "error": {"code": "...", "message": "..."}}

The peer's identity is taken from SO_PEERCRED, never from the message, so a
later "publish" method for user-session agents can scope what a peer may
publish by its uid. Unknown request fields are ignored (forward compatible);
a request with a different major ``v`` gets an ``unsupported_version`` error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_LINE = 1 << 20  # a status of 10k names fits with room to spare


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def decode_request(line: bytes) -> Request:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_request", f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "request must be a JSON object")
    if obj.get("v") != VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {obj.get('v')!r} not supported; this daemon speaks {VERSION}",
        )
    method = obj.get("method")
    if not isinstance(method, str):
        raise ProtocolError("bad_request", "missing method")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("bad_request", "params must be an object")
    return Request(obj.get("id"), method, params)


def result(req_id: Any, value: dict[str, Any]) -> bytes:
    return encode({"v": VERSION, "id": req_id, "result": value})


def error(req_id: Any, code: str, message: str) -> bytes:
    return encode({"v": VERSION, "id": req_id, "error": {"code": code, "message": message}})
