"""Which source classes exist; each builds its instances from the config it handles.

A source's module is imported only when its section is enabled: a machine
with Podman or libvirt switched off never loads podman-py, requests or
libvirt-python (issue 11: about 9 MB for podman-py and requests alone).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol

from agent.config.schema import Config
from agent.sources.base import Source


class _SourceClass(Protocol):
    def from_config(self, config: Config) -> list[Source]: ...


# Immutable on purpose: adding a source kind is a code change, not runtime state.
# (whether the config wants it at all, module, class)
SOURCE_KINDS: tuple[tuple[Callable[[Config], bool], str, str], ...] = (
    (lambda c: True, "agent.sources.static", "StaticSource"),
    (lambda c: c.host.enabled, "agent.sources.host_addresses", "HostAddressSource"),
    (lambda c: c.podman.enabled, "agent.sources.podman", "PodmanSource"),
    (lambda c: c.libvirt.enabled, "agent.sources.libvirt.source", "LibvirtSource"),
    (lambda c: c.peers.enabled, "agent.sources.peers", "PeerSource"),
)


def source_class(module: str, name: str) -> _SourceClass:
    cls: _SourceClass = getattr(importlib.import_module(module), name)
    return cls


def build_sources(config: Config) -> list[Source]:
    sources: list[Source] = []
    for wanted, module, name in SOURCE_KINDS:
        if wanted(config):
            sources.extend(source_class(module, name).from_config(config))
    return sources
