"""Which source classes exist; each builds its instances from the config it handles."""

from __future__ import annotations

from collections.abc import Callable

from agent.config.schema import Config
from agent.sources.base import Source
from agent.sources.host_addresses import HostAddressSource
from agent.sources.libvirt.source import LibvirtSource
from agent.sources.peers import PeerSource
from agent.sources.podman import PodmanSource
from agent.sources.static import StaticSource

SourceFactory = Callable[[Config], list[Source]]

# Immutable on purpose: adding a source kind is a code change, not runtime state.
SOURCE_FACTORIES: tuple[SourceFactory, ...] = (
    StaticSource.from_config,
    HostAddressSource.from_config,
    PodmanSource.from_config,
    LibvirtSource.from_config,
    PeerSource.from_config,
)


def build_sources(config: Config) -> list[Source]:
    sources: list[Source] = []
    for factory in SOURCE_FACTORIES:
        sources.extend(factory(config))
    return sources
