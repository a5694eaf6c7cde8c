"""Control socket server: callers identified by SO_PEERCRED at accept, bounded in number and time.

Every local user may be able to connect (``allow_uids`` makes the socket
0666, and peers of the user-session service use it too), so nothing a
client does may cost the daemon more than a bounded share of itself:

- the uid is checked the moment a connection is accepted; a uid that is not
  allowed gets one error line and is closed before anything is read. An
  ``identify`` hook (the peer socket: a uid with no passwd entry is refused)
  runs after accept and before anything is read; it decides at once where it
  can, and the connections waiting for a lookup are capped on their own
  (``max_identifying``), so slow passwd lookups cannot take the slots of
  identified users, and a flood of uids needing one cannot turn away those
  that need none;
- an ``on_line`` hook sees each request line's size before it is parsed and
  may refuse it (the peer socket's push rate: a flood costs no JSON parse);
  after a refusal the connection is not read again until the hook's retry
  time, so a flooding sender is stopped by the socket's backpressure, and
  ``MAX_REFUSED_IN_A_ROW`` refusals in a row close it;
- connections are capped per uid and overall, below the descriptor limit;
  root has a reserve of its own, so ``agentctl status`` as root answers
  however many connections others hold;
- an idle connection is closed after ``idle_timeout_s``, a request that has
  started must be complete (and its reply taken) within ``request_timeout_s``;
- when accept fails for lack of descriptors or memory, accepting pauses
  briefly instead of spinning, and each such episode is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import os
import resource
import socket
import stat
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from . import protocol

log = structlog.get_logger(component="control")

# Descriptors the daemon keeps for itself (sources, D-Bus, inotify, files
# being replaced, worker threads' opens) before any client connection.
FD_HEADROOM = 128
ACCEPT_PAUSE_S = 0.5
ACCEPT_BATCH = 64  # accepts per wake-up, so one flood cannot starve the loop
# How long a refusal summary waits before it is logged again for the same uid.
LOG_EPISODE_S = 60.0
# Lines an ``on_line`` hook refused in a row (each after waiting out the last one's
# retry time) before the connection is closed.
MAX_REFUSED_IN_A_ROW = 8
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


Reply = dict[str, Any] | AsyncIterator[dict[str, Any]]
# A handler returns one result, or an async iterator whose items are sent as
# {"v":1,"id":..,"event":{...}} lines until it ends or the client goes away.
Handler = Callable[[Peer, dict[str, Any]], Awaitable[Reply]]
Refusal = tuple[str, str]  # (protocol error code, message)
# An ``on_line`` hook's refusal: (code, message, seconds before the next line is read).
LineRefusal = tuple[str, str, float]


@dataclass(frozen=True)
class Limits:
    max_connections: int = 256  # all uids but root together
    max_per_uid: int = 16
    root_reserve: int = 32  # root's own connections, beyond everyone else's
    max_identifying: int = 16  # connections accepted but not yet through ``identify``
    idle_timeout_s: float = 60.0
    request_timeout_s: float = 10.0


class SocketInUse(RuntimeError):
    pass


def peer_credentials(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _claim_path(path: Path) -> None:
    """Remove a stale socket left by a killed daemon; refuse to steal a live one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        return
    except PermissionError:
        raise SocketInUse(f"{path} belongs to someone else (permission denied)") from None
    finally:
        probe.close()
    raise SocketInUse(f"another namesync-agent is listening on {path}")


def effective_limits(limits: Limits, nofile: int | None = None) -> Limits:
    """``limits`` shrunk so that every client together stays below the descriptor limit."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = max(2, nofile - FD_HEADROOM)
    root = max(1, min(limits.root_reserve, budget // 4))
    others = max(1, min(limits.max_connections, budget - root))
    return Limits(
        max_connections=others,
        max_per_uid=max(1, min(limits.max_per_uid, others)),
        root_reserve=root,
        max_identifying=max(1, min(limits.max_identifying, others)),
        idle_timeout_s=limits.idle_timeout_s,
        request_timeout_s=limits.request_timeout_s,
    )


class _Episodes:
    """One log line per kind of trouble per episode, with the count of what was suppressed."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}
        self._count: Counter[str] = Counter()

    def note(self, key: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        self._count[key] += 1
        started = self._since.get(key)
        if started is not None and now - started < LOG_EPISODE_S:
            return
        self._since[key] = now
        log.warning(event, times=self._count.pop(key), **fields)

    def end(self, key: str, event: str, **fields: Any) -> None:
        if self._since.pop(key, None) is not None:
            log.info(event, suppressed=self._count.pop(key, 0), **fields)


class ControlServer:
    """One socket, one handler table. ``open_to_all``: every uid is admitted (the peer
    socket, whose handlers scope by uid); ``max_line`` bounds one request;
    ``on_open``/``on_close`` see each admitted connection (the peer source's grace
    period starts when a user agent's last one closes)."""

    def __init__(
        self,
        path: Path,
        handlers: Mapping[str, Handler],
        allow_uids: tuple[int, ...] = (),
        limits: Limits | None = None,
        *,
        open_to_all: bool = False,
        max_line: int = protocol.MAX_LINE,
        on_open: Callable[[Peer], None] | None = None,
        on_close: Callable[[Peer], None] | None = None,
        on_refused: Callable[[Peer, str, str], None] | None = None,
        identify: Callable[[Peer], Refusal | Awaitable[Refusal | None] | None] | None = None,
        on_line: Callable[[Peer, int], LineRefusal | None] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.allowed = {0, os.geteuid(), *allow_uids}
        self.open_to_all = open_to_all
        self.open_to_others = open_to_all or bool(set(allow_uids) - {0, os.geteuid()})
        self.max_line = max_line
        self._on_open = on_open
        self._on_close = on_close
        self._on_refused = on_refused  # (peer, code, message) of a line refused unread
        self._identify = identify
        self._on_line = on_line
        self._identifying = 0
        self.limits = effective_limits(limits or Limits())
        self._listener: socket.socket | None = None
        self._per_uid: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused: asyncio.TimerHandle | None = None
        self._episodes = _Episodes()
        self.refused = 0  # connections closed at accept (uid not allowed, over a cap)
        # The last of them: (when, uid, reason), for status.
        self.last_refused: tuple[float, int, str] | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _claim_path(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Created with a tight umask so there is no window where others can connect.
            old = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            # The kernel caps this at net.core.somaxconn (4096 by default).
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        if self.open_to_others:
            # Other uids are let through the file mode, then checked by SO_PEERCRED.
            os.chmod(self.path, 0o666)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_ready)
        log.debug("control socket listening", path=str(self.path), limits=str(self.limits))

    async def close(self) -> None:
        if self._listener is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._listener.fileno())
            if self._paused is not None:
                self._paused.cancel()
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- accepting ------------------------------------------------------------

    def _accept_ready(self) -> None:
        assert self._listener is not None
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _RESOURCE_ERRNOS:
                    self._pause_accepting(e)
                    return
                raise
            self._episodes.end("accept", "control socket accepting again")
            self._admit(conn)

    def _pause_accepting(self, err: OSError) -> None:
        """Out of descriptors: stop asking until some are back, rather than spin on EMFILE."""
        assert self._listener is not None
        self._episodes.note(
            "accept",
            "control socket cannot accept; pausing",
            error=err.strerror,
            connections=sum(self._per_uid.values()),
        )
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._listener.fileno())
        self._paused = loop.call_later(ACCEPT_PAUSE_S, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._paused = None
        if self._listener is not None:
            asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept_ready)

    def _refusal(self, peer: Peer) -> tuple[str, str] | None:
        if not self.open_to_all and peer.uid not in self.allowed:
            return "permission_denied", f"uid {peer.uid} may not use this socket"
        lim = self.limits
        if peer.uid == 0:
            if self._per_uid[0] >= lim.root_reserve:
                return "too_many_connections", f"root already holds {lim.root_reserve}"
            return None
        others = sum(n for uid, n in self._per_uid.items() if uid != 0)
        if self._per_uid[peer.uid] >= lim.max_per_uid:
            return "too_many_connections", f"uid {peer.uid} already holds {lim.max_per_uid}"
        if others >= lim.max_connections:
            return "too_many_connections", f"{others} connections open; try again later"
        return None

    def _turn_away(self, conn: socket.socket, peer: Peer, refusal: Refusal) -> None:
        """One error line, nothing read; the caller closes ``conn``."""
        self.refused += 1
        self.last_refused = (time.time(), peer.uid, refusal[1])
        # On a socket open to all, one episode per kind of refusal, whatever the uid: a
        # rootless user can come from each of 65,536 subordinate uids, and one log line
        # (and one remembered episode) per uid would be theirs to multiply.
        who = "any" if self.open_to_all else peer.uid
        self._episodes.note(
            f"refused:{who}:{refusal[0]}",
            "control connection refused",
            uid=peer.uid,
            pid=peer.pid,
            reason=refusal[1],
        )
        # One short line fits any fresh socket's buffer: this never blocks.
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(protocol.error(None, *refusal))

    def _admit(self, conn: socket.socket) -> None:
        try:
            peer = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        refusal = self._refusal(peer)
        if refusal is not None:
            self._turn_away(conn, peer, refusal)
            conn.close()
            return
        pending: asyncio.Future[Refusal | None] | None = None
        if self._identify is not None:
            verdict = self._identify(peer)
            if inspect.isawaitable(verdict):
                pending = self._look_up(verdict)
                if pending is None:
                    self._turn_away(conn, peer, ("too_many_connections", (
                        f"{self._identifying} connections are being identified; "
                        "try again later")))
                    conn.close()
                    return
            elif verdict is not None:
                self._turn_away(conn, peer, verdict)
                conn.close()
                return
        self._per_uid[peer.uid] += 1
        task = asyncio.create_task(self._connection(conn, peer, pending),
                                   name=f"control:{peer.pid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if pending is not None:
            # A connection task cancelled before it ever ran (close()) must not leave
            # its lookup counted, or running for nobody.
            cancel = pending.cancel
            task.add_done_callback(lambda _: cancel())

    def _look_up(self, verdict: Awaitable[Refusal | None]
                 ) -> asyncio.Future[Refusal | None] | None:
        """``verdict`` started, and counted among the lookups in flight until it is
        done; None (and ``verdict`` dropped) when ``max_identifying`` are already.

        Only a uid that ``identify`` could not decide at once counts: the cap bounds
        the lookups, not the users that need none. Counted from accept on, so one
        accept batch sees the count."""
        if self._identifying >= self.limits.max_identifying:
            if inspect.iscoroutine(verdict):
                verdict.close()
            return None
        future = asyncio.ensure_future(verdict)
        self._identifying += 1

        def done(_: object) -> None:
            self._identifying -= 1

        future.add_done_callback(done)
        return future

    # --- serving one connection ---------------------------------------------

    async def _identified(self, peer: Peer, pending: Awaitable[Refusal | None]
                          ) -> Refusal | None:
        try:
            return await asyncio.wait_for(pending, self.limits.request_timeout_s)
        except TimeoutError:
            return "unavailable", f"uid {peer.uid} could not be identified in time"

    async def _connection(self, conn: socket.socket, peer: Peer,
                          pending: Awaitable[Refusal | None] | None = None) -> None:
        writer: asyncio.StreamWriter | None = None
        opened = False
        try:
            if pending is not None:
                refusal = await self._identified(peer, pending)
                if refusal is not None:
                    self._turn_away(conn, peer, refusal)
                    return
            if self._on_open is not None:
                self._on_open(peer)
            opened = True
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=self.max_line)
            await self._serve(reader, writer, peer)
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            if opened and self._on_close is not None:
                self._on_close(peer)
            self._per_uid[peer.uid] -= 1
            if self._per_uid[peer.uid] <= 0:
                del self._per_uid[peer.uid]
            if writer is not None:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _read_line(self, reader: asyncio.StreamReader, buf: bytearray) -> bytes | None:
        """The next request line; None at EOF. Times out idle and slow clients."""
        lim = self.limits
        deadline: float | None = None
        while True:
            nl = buf.find(b"\n")
            # Measured on the line itself: a newline inside the last chunk read
            # must not let a line of max_line + one chunk through.
            if (nl if nl >= 0 else len(buf)) > self.max_line:
                raise protocol.ProtocolError("too_large", "request line too long")
            if nl >= 0:
                line = bytes(buf[: nl + 1])
                del buf[: nl + 1]
                return line
            now = time.monotonic()
            if buf and deadline is None:
                deadline = now + lim.request_timeout_s
            wait = lim.idle_timeout_s if deadline is None else deadline - now
            chunk = await asyncio.wait_for(reader.read(65536), max(wait, 0.001))
            if not chunk:
                return None
            buf += chunk

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.limits.request_timeout_s)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer
    ) -> None:
        buf = bytearray()
        refused_in_a_row = 0
        while True:
            try:
                line = await self._read_line(reader, buf)
            except protocol.ProtocolError as e:
                if self._on_refused is not None:
                    self._on_refused(peer, e.code, e.message)
                await self._send(writer, protocol.error(None, e.code, e.message))
                return
            if line is None:
                return
            if self._on_line is not None:
                refused = self._on_line(peer, len(line))
                if refused is not None:
                    code, message, retry_s = refused
                    await self._send(writer, protocol.error(None, code, message))
                    refused_in_a_row += 1
                    if refused_in_a_row >= MAX_REFUSED_IN_A_ROW:
                        return
                    # Nothing more is read until a line may be served: a flood fills
                    # the socket and stops its sender, instead of costing a reply each.
                    await asyncio.sleep(min(retry_s, self.limits.request_timeout_s))
                    continue
                refused_in_a_row = 0
            reply = await self._dispatch(peer, line)
            if isinstance(reply, bytes):
                await self._send(writer, reply)
                continue
            await self._stream(reader, writer, *reply)
            return

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      req_id: Any, events: AsyncIterator[dict[str, Any]]) -> None:
        """Send events until the stream ends or the client hangs up (or sends anything).

        Watching for the hangup matters when nothing happens: a watcher that quit
        must not hold its place (and its queue) until the next change.
        """
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                item = asyncio.ensure_future(anext(events))
                done, _ = await asyncio.wait({item, hangup}, return_when=asyncio.FIRST_COMPLETED)
                if item not in done:
                    item.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await item
                    return
                try:
                    event = item.result()
                except StopAsyncIteration:
                    return
                await self._send(writer, protocol.event(req_id, event))
        finally:
            hangup.cancel()
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _dispatch(
        self, peer: Peer, line: bytes
    ) -> bytes | tuple[Any, AsyncIterator[dict[str, Any]]]:
        try:
            req = protocol.decode_request(line)
        except protocol.ProtocolError as e:
            return protocol.error(e.req_id, e.code, e.message)
        handler = self.handlers.get(req.method)
        if handler is None:
            return protocol.error(req.id, "unknown_method", f"no method {req.method[:80]!r}")
        try:
            value = await handler(peer, req.params)
            if isinstance(value, dict):
                return protocol.result(req.id, value)
            return req.id, value
        except protocol.ProtocolError as e:
            return protocol.error(req.id, e.code, e.message)
        except Exception as e:
            log.exception("control handler failed", method=req.method)
            # The traceback is in the agent's log; the caller gets a sentence.
            detail = str(e)[:300] or "no detail"
            return protocol.error(
                req.id, "internal", f"the agent failed to answer {req.method[:80]!r}: {detail} "
                "(its log has the details)"
            )
