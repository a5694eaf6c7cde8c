"""The systemd-resolved path while it is the chosen one: own dnsmasq + link + registration.

Three supervised parts run together and stop together: namesync's dnsmasq,
the link keeper, and the registration loop, which (re)pushes the link's
settings to resolved whenever resolved gets a new bus owner (a restart
forgets them) or the link is (re)made. Stopping reverts the link in
resolved, deletes it and stops the dnsmasq, so no routing to a dead server
is left behind; the hosts-file block keeps serving the names meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.config.schema import Config
from agent.resolvers.link import LinkKeeper, delete_link
from agent.resolvers.own_dnsmasq import DnsmasqSpec, OwnDnsmasq
from agent.resolvers.resolved import LinkSettings, ResolvedWatcher, push_link, revert_link
from agent.sinks.dnsmasq_target import Candidate
from agent.sources.lifecycle import Backoff

log = structlog.get_logger(component="resolvers.route")

RETRY_MAX_S = 30.0


def dnsmasq_spec(config: Config) -> DnsmasqSpec:
    r = config.resolved
    return DnsmasqSpec(
        binary=r.dnsmasq,
        listen=(r.listen, r.link_address) if r.containers else (r.listen,),
        port=r.port,
        addn_hosts=config.dnsmasq.addn_hosts,
        zones=config.dnsmasq.local_zones,
        upstream=r.upstream if r.containers else None,
        pid_file=r.pid_file,
    )


# NetworkManager's dnsmasq always listens here (NM passes --listen-address=127.0.0.1).
NM_DNSMASQ_ADDRESS = "127.0.0.1"


def forwarder_spec(config: Config) -> DnsmasqSpec:
    """On the NM dnsmasq path: containers ask the link's address, which forwards every
    name to NM's dnsmasq uncached (so never stale; NM's dnsmasq is signalled as usual)."""
    r = config.resolved
    return DnsmasqSpec(binary=r.dnsmasq, listen=(r.link_address,), port=53, addn_hosts=None,
                       zones=(), upstream=NM_DNSMASQ_ADDRESS, pid_file=r.pid_file, cache_size=0)


class ResolvedRoute:
    """The link and namesync's dnsmasq; registered with resolved unless ``watcher`` is None
    (then a forwarder for containers only, on the NetworkManager dnsmasq path)."""

    def __init__(self, config: Config, watcher: ResolvedWatcher | None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        r = config.resolved
        self._on_change = on_change  # registered or not any more: the hosts block follows
        self.config = r
        self.zones = config.dnsmasq.local_zones
        self.watcher = watcher
        self.forward_only = watcher is None
        self.dnsmasq = OwnDnsmasq(forwarder_spec(config) if watcher is None
                                  else dnsmasq_spec(config))
        self.link = LinkKeeper(r.link, ipaddress.ip_address(r.link_address), self._link_ready)
        self._dirty = asyncio.Event()
        self._link_up = asyncio.Event()
        self.registered: LinkSettings | None = None
        self.registered_owner: str | None = None
        self.registered_at: float | None = None
        self.registrations = 0
        self.error: str | None = None

    def _link_ready(self, ifindex: int) -> None:
        self._link_up.set()
        self._dirty.set()

    async def _run_dnsmasq(self) -> None:
        # dnsmasq binds the link's address at start: the link must exist first.
        await self._link_up.wait()
        await self.dnsmasq.supervise()

    def settings(self) -> LinkSettings | None:
        if self.link.ifindex is None:
            return None
        return LinkSettings(self.link.ifindex, ipaddress.ip_address(self.config.listen),
                            self.config.port, self.zones)

    async def _register_once(self) -> None:
        assert self.watcher is not None
        bus, owner, settings = self.watcher.bus, self.watcher.owner, self.settings()
        if bus is None or owner is None or settings is None:
            return  # the next owner change or link event sets _dirty again
        t0 = time.monotonic()
        await push_link(bus, settings)
        was = self.registered
        self.registered, self.registered_owner = settings, owner
        if was is None:
            self._on_change()
        self.registered_at, self.error = time.time(), None
        self.registrations += 1
        log.info("zones routed through systemd-resolved", link=self.config.link,
                 ifindex=settings.ifindex, server=f"{settings.server}:{settings.port}",
                 domains=[f"~{d}" for d in settings.domains],
                 ms=round((time.monotonic() - t0) * 1000, 2))

    async def _register_loop(self) -> None:
        backoff = Backoff(1.0, RETRY_MAX_S)
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._register_once()
                backoff.reset()
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                self.registered = None
                delay = backoff.next()
                log.warning("cannot register the zones with systemd-resolved; retrying",
                            error=self.error, retry_s=delay)
                # A new owner (resolved back from a restart) or a new link retries at
                # once: a call that raced resolved's exit must not delay its return.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), delay)
                self._dirty.set()

    def _resolved_changed(self) -> None:
        assert self.watcher is not None
        if self.watcher.owner != self.registered_owner and self.registered is not None:
            self.registered = None
            self._on_change()
        self._dirty.set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.link.supervise(), name="resolved:link"),
            asyncio.create_task(self._run_dnsmasq(), name="resolved:dnsmasq"),
        ]
        if self.watcher is not None:
            self.watcher.add_listener(self._resolved_changed)
            tasks.append(asyncio.create_task(self._register_loop(), name="resolved:register"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.watcher is not None:
                self.watcher.remove_listener(self._resolved_changed)
            await self._withdraw()

    async def _withdraw(self) -> None:
        w, ifindex = self.watcher, self.link.ifindex
        if w is not None and w.bus is not None and ifindex is not None and w.owner is not None:
            try:
                await revert_link(w.bus, ifindex)
            except Exception as e:
                log.warning("cannot revert the link in systemd-resolved", error=str(e))
        try:
            await delete_link(self.config.link)
        except Exception as e:
            log.warning("cannot delete the link", link=self.config.link, error=str(e))
        if self.registered is not None:
            self.registered = None
            self._on_change()
        log.info("zones no longer routed through systemd-resolved", link=self.config.link)

    def candidates(self) -> list[Candidate]:
        """Where the addn-hosts sink finds the dnsmasq to SIGHUP on this path."""
        if self.forward_only:
            return []  # it holds no names: NetworkManager's dnsmasq is the one to signal
        via = "namesync's own dnsmasq (systemd-resolved path)"
        pid = self.dnsmasq.pid
        return [Candidate(pid, via, None if pid else "namesync's dnsmasq is not running")]

    def status(self) -> dict[str, Any]:
        reg = self.registered
        return {
            "link": self.config.link,
            "ifindex": self.link.ifindex,
            "link_address": self.config.link_address,
            "link_state": self.link.health.state,
            "link_error": self.link.health.last_error if self.link.health.error_active else None,
            "link_recreated": self.link.recreated,
            "server": f"{self.config.listen}:{self.config.port}",
            "domains": [f"~{d}" for d in self.zones],
            "forward_only": self.forward_only,
            "registered": reg is not None,
            "registered_at": self.registered_at,
            "registrations": self.registrations,
            "registration_error": self.error,
            "dnsmasq_pid": self.dnsmasq.pid,
            "dnsmasq_restarts": self.dnsmasq.restarts,
            "dnsmasq_state": self.dnsmasq.health.state,
            "dnsmasq_last_exit": self.dnsmasq.health.last_error,
            "containers_server": self.config.link_address if self.config.containers else None,
        }
