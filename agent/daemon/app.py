"""The daemon: config, sources, pipeline, control socket and signals on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from agent import version
from agent.config.load import load_config
from agent.config.schema import Config, ConfigError, DnsmasqConfig
from agent.control.server import ControlServer, Limits, Peer
from agent.resolvers.networkmanager import NetworkManagerWatcher
from agent.resolvers.path import (
    AddnHostsAndOwn,
    DnsPathController,
    PathLocator,
    RoutedZonesFilter,
)
from agent.sinks.addn_hosts import AddnHostsSink
from agent.sinks.base import Sink
from agent.sinks.dnsmasq_target import Locator, NetworkManagerLocator, PidFileLocator
from agent.sinks.hosts_file import HostsFileSink
from agent.sinks.peer_push import PeerPushSink
from agent.sinks.static_rr import StaticRecordsSink
from agent.sources.base import Source
from agent.sources.lifecycle import Backoff, Observed
from agent.sources.registry import build_sources

from . import status as st
from .health import assess
from .heap import settle_heap
from .history import NameHistory
from .instance import CannotLock, InstanceLock
from .notify import reloading_message, sd_notify
from .pipeline import Pipeline
from .queries import Queries

log = structlog.get_logger(component="daemon")

# A source that cannot reach its service at startup must not hold the first
# sync hostage: after this, the daemon syncs with what it has and says so.
STARTUP_SYNC_TIMEOUT_S = 10.0
# A reload that failed for want of descriptors or memory is tried again.
RELOAD_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
SOURCE_RESTART_MAX_S = 30.0


def build_sinks(
    config: Config,
    nm: NetworkManagerWatcher | None = None,
    paths: DnsPathController | None = None,
) -> list[Sink]:
    sinks: list[Sink] = []
    if config.dnsmasq.enabled:
        locator: Locator = PidFileLocator(config.dnsmasq.pid_file)
        # The bus name finds NetworkManager's dnsmasq; a pid file the user set
        # to something else names another dnsmasq, which must get the signal.
        if nm is not None and config.dnsmasq.pid_file == DnsmasqConfig.pid_file:
            locator = NetworkManagerLocator(nm, locator)
        custom_pid_file = config.dnsmasq.pid_file != DnsmasqConfig.pid_file
        if paths is not None and custom_pid_file:
            # The user's dnsmasq keeps its signal; namesync's own gets one too.
            sinks.append(AddnHostsAndOwn(config.dnsmasq.addn_hosts, locator,
                                         config.dnsmasq.executable, paths))
        else:
            if paths is not None:
                # On the systemd-resolved path the file is namesync's own dnsmasq's.
                locator = PathLocator(paths, locator)
            sinks.append(
                AddnHostsSink(config.dnsmasq.addn_hosts, locator, config.dnsmasq.executable)
            )
    if config.hosts_file.enabled:
        hosts: Sink = HostsFileSink(config.hosts_file.path)
        if paths is not None:
            hosts = RoutedZonesFilter(hosts, paths, config.dnsmasq.local_zones)
        sinks.append(hosts)
    if paths is not None and config.static_records_possible:
        sinks.append(StaticRecordsSink(config.resolved.static_records_file, paths))
    if config.mode == "user" and config.peers.enabled:
        # A user agent publishes through the system agent (agent/peer).
        sinks.append(PeerPushSink(config.peers.socket))
    return sinks


def managed_paths(config: Config) -> list[Path]:
    """The files this agent's sinks write: no second agent may write them too."""
    paths = []
    if config.dnsmasq.enabled:
        paths.append(config.dnsmasq.addn_hosts)
    if config.hosts_file.enabled:
        paths.append(config.hosts_file.path)
    if config.static_records_possible:
        paths.append(config.resolved.static_records_file)
    return paths


def control_limits(config: Config) -> Limits:
    c = config.control
    return Limits(
        max_connections=c.max_connections,
        max_per_uid=c.max_per_uid,
        idle_timeout_s=c.idle_timeout_s,
        request_timeout_s=c.request_timeout_s,
    )


def _sinks_key(config: Config) -> tuple[object, ...]:
    return (config.dnsmasq, config.hosts_file, config.networkmanager.enabled, config.mode,
            config.resolved,
            config.peers.socket, config.peers.enabled)


class Daemon:
    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.started = time.time()
        self.nm: NetworkManagerWatcher | None = None
        self._nm_task: asyncio.Task[None] | None = None
        self.paths: DnsPathController | None = None
        self.pipeline = Pipeline([], config.daemon.coalesce_ms / 1000)
        self.history = NameHistory()
        self.pipeline.observers.append(self.history.observe)
        self.sources: dict[str, Source] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.ready_event = asyncio.Event()
        self.config_error: str | None = None
        self.config_loaded_at = time.time()
        self.control: ControlServer | None = None
        self._instance: InstanceLock | None = None
        self._reloader: asyncio.Task[None] | None = None
        self._reload_pending = False

    # --- sources -----------------------------------------------------------

    async def _supervise(self, unit: Observed, body: Callable[[], Awaitable[None]]) -> None:
        """Keep a source or watcher running; its lifecycle handles reconnects, this
        catches bugs (a crash restarts it with the same backoff)."""
        backoff = Backoff(1.0, SOURCE_RESTART_MAX_S)
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = backoff.next()
                unit.record_error(f"crashed: {type(e).__name__}: {e}")
                unit.set_state("disconnected", f"restarting in {delay:.0f}s")
                unit.mark_synced()  # do not block readiness on a broken source
                log.exception("crashed", unit=unit.name)
                await asyncio.sleep(delay)

    def _start_source(self, src: Source) -> None:
        self.sources[src.name] = src
        self._tasks[src.name] = asyncio.create_task(
            self._supervise(src, lambda: src.run(self.pipeline.store)), name=f"source:{src.name}"
        )

    async def _stop_source(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        src = self.sources.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if src is not None:
            src.set_state("stopped")

    async def _apply_sources(self, config: Config) -> None:
        wanted = {s.name: s for s in build_sources(config)}
        for name in list(self.sources):
            if name not in wanted:
                await self._stop_source(name)
                self.pipeline.store.drop(name)
        for name, src in wanted.items():
            current = self.sources.get(name)
            if current is not None and current.config_key() == src.config_key():
                continue
            if current is not None:
                # The replacement's first snapshot replaces the old one wholesale.
                await self._stop_source(name)
            self._start_source(src)

    async def _apply_networkmanager(self, config: Config) -> None:
        enabled = config.networkmanager.enabled and config.dnsmasq.enabled
        if enabled and self.nm is None:
            self.nm = NetworkManagerWatcher(self._nm_changed)
            nm = self.nm
            self._nm_task = asyncio.create_task(
                self._supervise(nm, nm.supervise), name="networkmanager"
            )
            # The first reload must already go to the right pid.
            try:
                await asyncio.wait_for(self.nm.synced.wait(), STARTUP_SYNC_TIMEOUT_S)
            except TimeoutError:
                log.warning("NetworkManager watcher not synced; using the pid file meanwhile")
        elif not enabled and self.nm is not None:
            await self._stop_networkmanager()

    def _nm_changed(self) -> None:
        if self.paths is not None:
            self.paths.update()

    async def _apply_paths(self, config: Config) -> None:
        """(Re)start the choice of DNS path (and the resolved route) for ``config``."""
        if self.paths is not None:
            await self.paths.stop()
        nm = self.nm
        self.paths = DnsPathController(config, lambda: nm.view if nm is not None else None,
                                       self.pipeline.coalescer.poke)
        await self.paths.start()

    async def _stop_networkmanager(self) -> None:
        if self._nm_task is not None:
            self._nm_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nm_task
        self._nm_task = None
        self.nm = None

    async def _wait_synced(self) -> list[str]:
        pending = [s for s in self.sources.values() if not s.synced.is_set()]
        if pending:
            waits = [asyncio.create_task(s.synced.wait()) for s in pending]
            _, not_done = await asyncio.wait(waits, timeout=STARTUP_SYNC_TIMEOUT_S)
            for t in not_done:
                t.cancel()
        return [s.name for s in self.sources.values() if not s.synced.is_set()]

    # --- config ------------------------------------------------------------

    async def _read_config(self) -> Config:
        """load_config, retried while it fails for a passing reason (EMFILE, ENOMEM)."""
        for attempt, delay in enumerate((*RELOAD_RETRY_S, None)):
            try:
                return await asyncio.to_thread(
                    load_config,
                    self.config_path,
                    socket_default=self.config.control.socket,
                    previous=self.config,
                    mode=self.config.mode,
                )
            except OSError as e:
                if delay is None:
                    raise ConfigError(
                        str(self.config_path), [f"cannot read: {e.strerror or e}"]
                    ) from None
                if attempt == 0:
                    log.warning("config reload failed; retrying", error=e.strerror or str(e))
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def reload(self) -> dict[str, Any]:
        """Apply the config file again; returns once the new names are served (or refused).

        systemd is told RELOADING=1 before and READY=1 after, whatever the
        outcome: `systemctl reload` (ExecReload=agentctl reload, or a SIGHUP
        under Type=notify-reload) returns when the new config is in force.
        """
        notify = self.ready_event.is_set()  # a SIGHUP during startup is not a reload
        if notify:
            sd_notify(reloading_message())
        try:
            return await self._reload()
        finally:
            if notify:
                sd_notify("READY=1")

    async def _reload(self) -> dict[str, Any]:
        try:
            new = await self._read_config()
        except ConfigError as e:
            self.config_error = str(e)
            log.error(
                "config reload refused; keeping the running config",
                config=e.source,
                problems=e.problems,
            )
            return {"reloaded": False, "problems": e.problems, "config": e.source}
        try:
            if self._instance is not None:
                self._instance.extend(managed_paths(new))
        except CannotLock as e:
            self.config_error = str(e)
            log.error("config reload refused; keeping the running config", reason=str(e))
            return {"reloaded": False, "problems": [str(e)], "config": new.origin}
        old = self.config
        self.config = new
        self.config_error = None
        self.config_loaded_at = time.time()
        if new.control != old.control:
            log.warning(
                "control socket settings change on restart only", running=str(old.control.socket)
            )
        self.pipeline.coalescer.window_s = new.daemon.coalesce_ms / 1000
        # Sources first: new sinks then get their first write from the new
        # snapshots, not from the old ones for one window.
        await self._apply_sources(new)
        await self._wait_synced()
        if _sinks_key(new) != _sinks_key(old):
            await self._apply_networkmanager(new)
            await self._apply_paths(new)
            self.pipeline.set_sinks(build_sinks(new, self.nm, self.paths))
        # Written and dnsmasq signalled before the caller hears "reloaded".
        await self.pipeline.sync()
        # After the resulting sync, not before it: a full collection takes a while.
        asyncio.get_running_loop().call_later(1.0, settle_heap)
        log.info("config reloaded", config=new.origin)
        return {"reloaded": True, "problems": [], "config": new.origin}

    # --- control -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        p = self.pipeline
        doc = {
            "status_version": st.STATUS_VERSION,
            "daemon": {
                "version": version(),
                "pid": os.getpid(),
                "started": st.ts(self.started),
                "uptime_s": round(time.time() - self.started, 3),
                "ready": self.ready_event.is_set(),
                "config": self.config.origin,
                "mode": self.config.mode,
                "config_loaded": st.ts(self.config_loaded_at),
                "config_error": self.config_error,
                "coalesce_ms": self.config.daemon.coalesce_ms,
                "syncs": p.syncs,
                # dnsmasq's re-reads since start, as timed from /proc (coalesce.py):
                # what the reload budget is paid from.
                "reread_ms_total": round(p.coalescer.budget.charged_s * 1000, 3),
                "last_sync": st.ts(p.last_sync),
                "last_sync_ok": p.last_sync_ok,
                "watchers": self.history.watchers,
                "libraries": st.libraries_loaded(),
            },
            "sources": [st.source_status(s, p.store, p.table) for s in self.sources.values()],
            "sinks": [st.sink_status(s) for s in p.sinks],
            "networkmanager": st.networkmanager_status(self.nm),
            "dns_path": self.paths.status() if self.paths is not None else None,
            "table": st.table_status(p.table),
        }
        doc["health"] = assess(doc)
        return doc

    async def _h_hello(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "daemon_version": version(),
            "protocol": 1,
            "methods": sorted(self._handlers()),
            "peer": {"uid": peer.uid, "pid": peer.pid},
        }

    async def _h_status(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    async def _h_reload(self, peer: Peer, params: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    def _handlers(self) -> dict[str, Any]:
        return {
            "hello": self._h_hello,
            "status": self._h_status,
            "reload": self._h_reload,
            # list, explain, watch, and reload with its delivery check (queries.py).
            **Queries(self).handlers(),
        }

    # --- lifecycle ---------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _reload_soon(self) -> None:
        # Reloads run one at a time; a SIGHUP during a reload queues one more.
        self._reload_pending = True
        if self._reloader is None or self._reloader.done():
            self._reloader = asyncio.create_task(self._reload_loop(), name="reload")

    async def _reload_loop(self) -> None:
        while self._reload_pending:
            self._reload_pending = False
            await self.reload()

    async def run(self, *, once: bool = False) -> int:
        # Before anything is touched: a second agent on our paths refuses here.
        lock = InstanceLock(self.config.control.socket, managed_paths(self.config))
        lock.acquire()
        self._instance = lock
        try:
            return await self._run_locked(once=once)
        finally:
            self._instance = None
            lock.release()

    async def _run_locked(self, *, once: bool) -> int:
        loop = asyncio.get_running_loop()
        if not once:
            control = ControlServer(
                self.config.control.socket,
                self._handlers(),
                self.config.control.allow_uids,
                control_limits(self.config),
            )
            await control.start()
            self.control = control
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        coalescer: asyncio.Task[None] | None = None
        try:
            await self._apply_networkmanager(self.config)
            if not once:
                await self._apply_paths(self.config)
            self.pipeline.sinks = build_sinks(self.config, self.nm, self.paths)
            for sink in self.pipeline.sinks:
                sink.prepare()
            await self._apply_sources(self.config)
            late = await self._wait_synced()
            if late:
                log.warning("sources not synced at startup; publishing what is known", sources=late)
            ok = await self.pipeline.sync()
            settle_heap()
            self.ready_event.set()
            if once:
                return 0 if ok else 1
            sd_notify("READY=1")
            log.info(
                "ready",
                names=len(self.pipeline.table.entries),
                config=self.config.origin,
                socket=str(self.config.control.socket),
            )
            coalescer = asyncio.create_task(self.pipeline.coalescer.run(), name="coalescer")
            await self._stop.wait()
            sd_notify("STOPPING=1")
            log.info("stopping")
            return 0
        finally:
            if coalescer is not None:
                coalescer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await coalescer
            if self.paths is not None:
                hid = self.paths.hides_zones()
                await self.paths.stop()
                if hid:
                    # The route is gone: the hosts block gets the zones' names back.
                    with contextlib.suppress(Exception):
                        await self.pipeline.sync()
            await self._stop_networkmanager()
            for name in list(self._tasks):
                await self._stop_source(name)
            self.pipeline.close()
            if self.control is not None:
                await self.control.close()
            if not once:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
