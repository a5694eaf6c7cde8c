"""What a resolver watcher learned, as a value: which dnsmasq to signal, and why.

Immutable and replaced whole on every change, so the dnsmasq sink (in its
worker thread) reads one consistent value without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class DnsmasqTarget:
    """A dnsmasq that serves namesync's addn-hosts file."""

    pid: int
    via: str  # how it was found, e.g. "D-Bus name org.freedesktop.NetworkManager.dnsmasq"
    since: float | None = None  # wall clock: when this pid was first seen


@dataclass(frozen=True, slots=True)
class ResolverView:
    resolver: str  # the watcher: "networkmanager", ...
    reachable: bool = False  # the watcher's channel (the system bus) answers
    running: bool = False  # the resolver itself is there (NM on the bus)
    mode: str | None = None  # e.g. NM's DnsManager.Mode: "dnsmasq", "systemd-resolved"
    dnsmasq: DnsmasqTarget | None = None  # None: nothing to signal from here
    advice: str | None = None  # what the user should know about the path names take
    changed: float | None = None  # wall clock of the last change


class Resolver(Protocol):
    """Anything that keeps a current ``ResolverView`` (the sink only reads it)."""

    @property
    def view(self) -> ResolverView: ...
