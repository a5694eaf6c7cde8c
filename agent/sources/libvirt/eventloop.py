"""libvirt's event loop on asyncio (libvirtaio), safe for calls from worker threads.

libvirt calls its event hooks from whichever thread is inside libvirt: a
blocking RPC made from a worker thread (where namesync makes them, to keep
the loop free) disables and re-enables the connection's socket watch and
arms keepalive timers from that thread. libvirtaio acts on the loop directly
(``add_reader``, ``ensure_future``), which asyncio does not allow from
another thread. This subclass queues hook calls made off the loop thread and
runs them on the loop in order; ids are handed out at once, as libvirt needs
them synchronously.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable
from typing import Any

import libvirt
import libvirtaio


class ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):  # type: ignore[misc]
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._queued: collections.deque[Callable[[], object]] = collections.deque()

    def retarget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve a new loop after the old one closed (its watches died with it)."""
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.descriptors.clear()
        for callback in self.callbacks.values():
            if isinstance(callback, libvirtaio.FDCallback):
                callback.descriptor = self.descriptors[callback.descriptor.fd]
                callback.descriptor.add_handle(callback)
            elif isinstance(callback, libvirtaio.TimeoutCallback):
                callback._task = None
                callback.update(timeout=callback.timeout)

    # -- ordering: hook calls run in the order libvirt made them, whatever the thread

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _defer(self, call: Callable[[], object]) -> None:
        with self._lock:
            self._queued.append(call)
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queued:
                    return
                call = self._queued.popleft()
            call()

    def _run(self, call: Callable[[], Any]) -> Any:
        if self._on_loop():
            self._drain()  # earlier calls from other threads first
            return call()
        self._defer(call)
        return 0

    # -- libvirt's six hooks

    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        if self._on_loop():
            self._drain()
            return int(super()._add_handle(fd, event, cb, opaque))
        iden = next(libvirtaio.Callback._iden_counter)
        self._defer(lambda: self._add_handle_as(iden, fd, event, cb, opaque))
        return int(iden)

    def _add_handle_as(self, iden: int, fd: int, event: int, cb: Any, opaque: Any) -> None:
        descriptor = self.descriptors[fd]
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=descriptor, event=event)
        callback.iden = iden
        self.callbacks[iden] = callback
        descriptor.add_handle(callback)
        self._pending_inc()

    def _update_handle(self, watch: int, event: int) -> None:
        self._run(lambda: super(ThreadSafeAsyncIOImpl, self)._update_handle(watch, event))

    def _remove_handle(self, watch: int) -> int:
        return int(self._run(lambda: super(ThreadSafeAsyncIOImpl, self)._remove_handle(watch)))

    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        if self._on_loop():
            self._drain()
            return int(super()._add_timeout(timeout, cb, opaque))
        iden = next(libvirtaio.Callback._iden_counter)
        self._defer(lambda: self._add_timeout_as(iden, timeout, cb, opaque))
        return int(iden)

    def _add_timeout_as(self, iden: int, timeout: int, cb: Any, opaque: Any) -> None:
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)
        callback.iden = iden
        self.callbacks[iden] = callback
        callback.update(timeout=timeout)
        self._pending_inc()

    def _update_timeout(self, timer: int, timeout: int) -> None:
        self._run(lambda: super(ThreadSafeAsyncIOImpl, self)._update_timeout(timer, timeout))

    def _remove_timeout(self, timer: int) -> int:
        return int(self._run(lambda: super(ThreadSafeAsyncIOImpl, self)._remove_timeout(timer)))


def ensure_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Register the implementation for ``loop`` before any connection is opened.

    libvirt accepts one event implementation per process, ever. The daemon
    runs one loop for its whole life; a later loop (tests run several, one
    after another) takes over the registered implementation once the earlier
    loop is closed.
    """
    # libvirt prints every error to stderr by default; namesync logs the ones
    # that matter, with context, and handles the rest (a domain gone meanwhile).
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    current = libvirtaio.getCurrentImpl()
    if isinstance(current, ThreadSafeAsyncIOImpl):
        if current.loop is loop:
            return
        if not current.loop.is_closed():
            raise RuntimeError("libvirt's event loop is bound to another running asyncio loop")
        current.retarget(loop)
        return
    impl = ThreadSafeAsyncIOImpl(loop)
    impl.register()
    # libvirtaio.getCurrentImpl() reads this; keep it pointing at the live one.
    libvirtaio._current_impl = impl
