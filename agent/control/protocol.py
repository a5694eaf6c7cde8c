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
import math
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_LINE = 1 << 20  # a status of 10k names fits with room to spare
MAX_ID_CHARS = 256
# An id is echoed back verbatim: keep it to what every JSON parser reads the
# same way (a 64-bit integer, a finite number, a short string or null).
MAX_ID_INT = 1 << 63


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, req_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.req_id = req_id  # echoed in the error reply once the request's id is known


@dataclass(frozen=True)
class Request:
    id: Any
    method: str
    params: dict[str, Any]


def encode(obj: dict[str, Any]) -> bytes:
    """Strict JSON only: NaN/Infinity raise ValueError rather than go on the wire."""
    return (
        json.dumps(obj, separators=(",", ":"), sort_keys=True, allow_nan=False).encode() + b"\n"
    )


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(line: bytes) -> Any:
    try:
        return json.loads(line, parse_constant=_no_constants)
    except RecursionError:
        raise ProtocolError("bad_request", "not JSON: nested too deeply") from None
    except ValueError as e:
        # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit
        # limit and NaN/Infinity are all ValueErrors; their text is bounded.
        raise ProtocolError("bad_request", f"not JSON: {str(e)[:200]}") from None


def check_id(value: Any) -> Any:
    """The request id if it can be echoed back safely; ProtocolError otherwise."""
    if value is None or (isinstance(value, str) and len(value) <= MAX_ID_CHARS):
        return value
    if isinstance(value, bool):
        raise ProtocolError("bad_request", "id must be a string, a number or null")
    if isinstance(value, int) and -MAX_ID_INT <= value < MAX_ID_INT:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value  # 1e400 parses as inf: not strict JSON when echoed
    raise ProtocolError(
        "bad_request",
        f"id must be a string of at most {MAX_ID_CHARS} characters, a 64-bit integer, "
        "a number or null",
    )


def decode_request(line: bytes) -> Request:
    obj = _loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "request must be a JSON object")
    req_id = check_id(obj.get("id"))
    try:
        method, params = _method_params(obj)
    except ProtocolError as e:
        e.req_id = req_id
        raise
    return Request(req_id, method, params)


def _method_params(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if obj.get("v") != VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {repr(obj.get('v'))[:40]} not supported; "
            f"this daemon speaks {VERSION}",
        )
    method = obj.get("method")
    if not isinstance(method, str):
        raise ProtocolError("bad_request", "missing method")
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError("bad_request", "params must be an object")
    return method, params


def result(req_id: Any, value: dict[str, Any]) -> bytes:
    return encode({"v": VERSION, "id": req_id, "result": value})


def error(req_id: Any, code: str, message: str) -> bytes:
    return encode({"v": VERSION, "id": req_id, "error": {"code": code, "message": message}})


def event(req_id: Any, value: dict[str, Any]) -> bytes:
    return encode({"v": VERSION, "id": req_id, "event": value})
