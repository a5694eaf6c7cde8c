"""Podman's event stream, read with podman-py in a thread and delivered on the loop.

podman-py's stream is a blocking HTTP response read line by line. A dedicated
daemon thread (not the loop's default executor: it blocks for as long as the
stream lives, and the executor is joined at shutdown) reads it and hands each
event to the loop with ``call_soon_threadsafe`` (or to the caller's thread-safe
``deliver``, the source's one queue of hints).

Closing is done from the loop side and must be prompt even while the thread
sits in ``recv()`` with no event coming: ``close()`` shuts the response's
socket down, which makes that ``recv()`` return, and the thread ends by
itself. Nothing on the loop ever waits for the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

log = structlog.get_logger(component="sources.podman.events")


class StreamEnded(Exception):
    """The event stream is over: the service went away, or close() was called."""


def _socket_of(response: Any) -> socket.socket | None:
    """The socket under a streaming requests/urllib3 response, where it can be found."""
    raw = getattr(response, "raw", None)
    for conn in (getattr(raw, "connection", None), getattr(raw, "_connection", None)):
        sock = getattr(conn, "sock", None)
        if isinstance(sock, socket.socket):
            return sock
    # http.client's file object over the socket: raw._fp.fp.raw._sock
    fp = getattr(getattr(raw, "_fp", None), "fp", None)
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


class EventStream:
    """``GET /events?stream=true`` on a podman-py client; ``await next()`` per event."""

    def __init__(self, client: Any, *, since: int | None = None,
                 header_timeout_s: float = 10.0,
                 deliver: Callable[[Mapping[str, Any] | BaseException], None] | None = None
                 ) -> None:
        """``deliver``: called from the reading thread with each event and, last, the
        StreamEnded (it must be thread-safe, e.g. ``Hints.put``); None: ``await next()``."""
        self._client = client
        self._since = since
        self._header_timeout_s = header_timeout_s
        self._queue: asyncio.Queue[Mapping[str, Any] | BaseException] = asyncio.Queue()
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self._response: Any = None
        self._closed = False
        self.thread: threading.Thread | None = None

    async def open(self) -> None:
        """Subscribe: returns once the service has answered with the stream's headers."""
        await asyncio.to_thread(self._connect)
        self.thread = threading.Thread(target=self._read, name="podman-events", daemon=True)
        self.thread.start()

    def _connect(self) -> None:
        params: dict[str, Any] = {"stream": True}
        if self._since is not None:
            params["since"] = str(self._since)
        # A service that accepts the connection but never answers must not hang
        # the source: a timeout until the headers arrive, none after (an idle
        # stream is normal: no container changed).
        response = self._client.api.get("/events", params=params, stream=True,
                                        timeout=self._header_timeout_s)
        sock = _socket_of(response)
        if sock is not None:
            sock.settimeout(None)
        with self._lock:
            closed = self._closed
            if not closed:
                self._response = response
        if closed:  # cancelled while connecting: nobody will read it
            response.close()
            raise StreamEnded("closed")
        try:
            response.raise_for_status()
        except Exception:
            response.close()
            raise

    def _read(self) -> None:
        end: BaseException = StreamEnded("the service closed the event stream")
        try:
            for line in self._response.iter_lines():
                if not line:
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("undecodable Podman event skipped", line=line[:200])
                    continue
                if isinstance(event, Mapping):
                    self._post(event)
        except Exception as e:
            end = StreamEnded("closed" if self._closed else f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(Exception):
                self._response.close()
            log.debug("Podman event stream ended", reason=str(end))
            self._post(end)

    def _post(self, item: Mapping[str, Any] | BaseException) -> None:
        # RuntimeError: the loop is closed, nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            if self._deliver is not None:
                self._deliver(item)
            else:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def next(self) -> Mapping[str, Any]:
        """The next event; raises StreamEnded once the stream is over."""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later call ends the same way
            raise item
        return item

    def close(self) -> None:
        """From the loop: end the stream now. Idempotent, never blocks."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            response = self._response
        if response is None or (self.thread is not None and not self.thread.is_alive()):
            return  # never opened, or already ended by itself
        sock = _socket_of(response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        else:
            # Not expected with the urllib3 podman-py uses (a unit test checks);
            # closing the response may not wake a blocked recv(), but the
            # thread is a daemon and exits with the next event or the process.
            log.warning("event stream socket not found; closing the response instead")
            with contextlib.suppress(Exception):
                response.close()
