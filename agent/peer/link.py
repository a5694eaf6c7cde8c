"""The user agent's connection to the system agent's peer socket.

Holds one connection open (the system agent keeps a peer's names while it is
connected, then for its grace period), pushes the latest table whenever it
changes and again on every reconnect (the system agent may have restarted
and know nothing), and says `hello` while idle, so a system agent that went
away is noticed at once (EOF) or at the next heartbeat at the latest.

Pushes are paced to the system agent's advertised push rate: tables that
arrive faster are coalesced, and only the newest is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.control import protocol
from agent.sources.lifecycle import Awaited, Lifecycle, Problem

from .policy import TokenBucket

log = structlog.get_logger(component="peer.link")

RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 2.0  # a system agent restart is back within this
CALL_TIMEOUT_S = 10.0


class RemoteError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LinkState:
    connected: bool = False
    since: float | None = None
    user: str | None = None
    subzones: tuple[str, ...] = ()
    limits: dict[str, Any] = field(default_factory=dict)
    pushes: int = 0
    last_push: float | None = None
    last_push_ms: float | None = None
    accepted: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)  # names the system refused
    push_refused: str | None = None  # the last push was refused whole: why
    last_error: str | None = None
    last_error_at: float | None = None


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class PeerLink(Lifecycle[Stream, dict[str, Any]]):
    """The connection, on the shared lifecycle (sources/lifecycle.py): while the
    system agent's socket is absent it is awaited with inotify, not polled."""

    kind = "the system agent"
    while_down = "pushing again on reconnect"
    retry_first_s = RECONNECT_MIN_S
    retry_max_s = RECONNECT_MAX_S

    def __init__(self, path: Path) -> None:
        super().__init__(f"peer-link:{path}")
        self.path = path
        self.state = LinkState()
        self._latest: dict[str, Any] | None = None
        self._latest_bytes = 0
        self._dirty = False
        self._wake = asyncio.Event()
        self._ids = itertools.count(1)
        self._bucket: TokenBucket | None = None
        self._hello: dict[str, Any] = {}

    def offer(self, params: dict[str, Any]) -> None:
        """The newest table to publish (called on the loop thread)."""
        self._latest = params
        self._dirty = True
        self._wake.set()

    def _error(self, message: str) -> None:
        self.state.last_error = message
        self.state.last_error_at = time.time()

    async def run(self) -> None:
        await self.supervise()

    # --- lifecycle hooks -----------------------------------------------------

    def wait_available(self) -> Awaited:
        return Awaited((self.path,), "the system agent's peer socket",
                       "start the system agent (namesync.service) with [peers] enabled")

    async def connect(self) -> Stream:
        return await asyncio.open_unix_connection(str(self.path), limit=protocol.MAX_LINE)

    async def list_all(self, conn: Stream) -> dict[str, Any]:
        reader, writer = conn
        return await self._call(reader, writer, "hello", {})

    def take(self, snapshot: dict[str, Any]) -> None:
        self._hello = snapshot

    async def follow(self, conn: Stream) -> str:
        await self._serve(*conn, self._hello)
        return "the session ended"

    async def disconnect(self, conn: Stream) -> None:
        self.state.connected = False
        _, writer = conn
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()

    def describe(self, error: BaseException) -> Problem:
        if isinstance(error, OSError) and not self.state.connected:
            return Problem(f"cannot connect to {self.path}: {error.strerror or error}")
        return Problem(f"connection to the system agent lost: {type(error).__name__}: {error}")

    def record_error(self, message: str) -> None:
        super().record_error(message)
        self._error(message)

    async def _call(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    method: str, params: dict[str, Any]) -> dict[str, Any]:
        req_id = next(self._ids)
        writer.write(protocol.encode({"v": protocol.VERSION, "id": req_id, "method": method,
                                      "params": params}))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), CALL_TIMEOUT_S)
        if not line:
            raise EOFError("the system agent closed the connection")
        resp = json.loads(line)
        if not isinstance(resp, dict):
            raise ValueError("response is not an object")
        if "error" in resp:
            err = resp["error"] if isinstance(resp["error"], dict) else {}
            raise RemoteError(str(err.get("code")), str(err.get("message")))
        result = resp.get("result")
        if not isinstance(result, dict):
            raise ValueError("response has no result")
        return result

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     hello: dict[str, Any]) -> None:
        st = self.state
        st.connected, st.since = True, time.time()
        st.user = hello.get("user") if isinstance(hello.get("user"), str) else None
        st.subzones = tuple(z for z in hello.get("subzones", []) if isinstance(z, str))
        limits = hello.get("limits")
        st.limits = limits if isinstance(limits, dict) else {}
        rate = float(st.limits.get("push_rate") or 5)
        self._bucket = TokenBucket(rate, int(st.limits.get("push_burst") or 1))
        heartbeat = float(hello.get("heartbeat_s") or 20)
        if hello.get("refused"):
            self._error(f"the system agent refuses this user: {hello['refused']}")
        self._dirty = self._latest is not None  # a (re)connect always pushes the whole table
        while True:
            if self._dirty and self._latest is not None:
                await self._push(reader, writer)
                continue
            if await self._idle(reader, heartbeat):
                await self._call(reader, writer, "hello", {})

    async def _idle(self, reader: asyncio.StreamReader, heartbeat: float) -> bool:
        """Wait for a new table; True: time for a heartbeat. EOF ends the session at once
        (the system agent stopped: reconnect now, not at the next heartbeat)."""
        self._wake.clear()
        eof = asyncio.create_task(reader.readline())  # the agent sends nothing unasked
        wake = asyncio.create_task(self._wake.wait())
        try:
            done, _ = await asyncio.wait({eof, wake}, timeout=heartbeat,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (eof, wake):
                task.cancel()
        if eof in done:
            if not eof.cancelled() and eof.exception() is not None:
                raise eof.exception()  # type: ignore[misc]
            raise EOFError("the system agent closed the connection")
        return not done

    async def _push(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._bucket is not None and self._latest is not None
        wait = self._bucket.take()
        if wait:
            await asyncio.sleep(wait)  # newer tables replace _latest meanwhile
            return
        params, self._dirty = self._latest, False
        st = self.state
        size = len(protocol.encode(params))
        limit = st.limits.get("max_message_bytes")
        if isinstance(limit, int) and size > limit - 200:  # the envelope around params
            st.push_refused = (f"the table is {size} bytes, more than the system agent "
                               f"accepts ({limit}, [peers] max_message_bytes)")
            self._error(st.push_refused)
            log.error("table too large to push", bytes=size, limit=limit)
            return
        started = time.monotonic()
        try:
            result = await self._call(reader, writer, "push", params)
        except RemoteError as e:
            if e.code == "rate_limited":
                self._dirty = True
                await asyncio.sleep(1 / self._bucket.rate)
                return
            st.push_refused = e.message
            self._error(f"the system agent refused the push: {e.message}")
            log.error("the system agent refused the push", code=e.code, reason=e.message)
            return  # the next change is pushed again; this one would be refused the same
        st.pushes += 1
        st.last_push = time.time()
        st.last_push_ms = (time.monotonic() - started) * 1000
        st.push_refused = None
        accepted = result.get("accepted")
        st.accepted = accepted if isinstance(accepted, int) else 0
        refused = result.get("refused")
        before = {str(r.get("name")) for r in st.refused}
        st.refused = [r for r in refused if isinstance(r, dict)] if isinstance(refused,
                                                                              list) else []
        for r in st.refused:
            if str(r.get("name")) not in before:
                log.warning("the system agent refused a name", name=r.get("name"),
                            reason=r.get("reason"))
