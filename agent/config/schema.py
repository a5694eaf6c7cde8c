"""Typed configuration. Every field here is documented in README.md's config reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.model.record import Address

DEFAULT_SYSTEM_CONFIG = Path("/etc/namesync/config.toml")
DEFAULT_SYSTEM_SOCKET = Path("/run/namesync/control.sock")
DEFAULT_PODMAN_SOCKET = Path("/run/podman/podman.sock")


class ConfigError(Exception):
    """One or more problems in a config file, each naming its key."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        detail = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid config {source}:\n{detail}")


@dataclass(frozen=True)
class DaemonConfig:
    # 20 ms: see README "Coalescing window" for the measurement behind it.
    coalesce_ms: int = 20
    log_level: str = "info"


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = DEFAULT_SYSTEM_SOCKET
    # uids besides root and the daemon's own that may use the socket.
    allow_uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class DnsmasqConfig:
    enabled: bool = True
    addn_hosts: Path = Path("/run/namesync/addn-hosts")
    pid_file: Path = Path("/run/NetworkManager/dnsmasq.pid")
    # Zones dnsmasq must answer locally (`local=/ZONE/`): unknown names there
    # are NXDOMAIN and AAAA of an IPv4-only name is NODATA instead of being
    # forwarded upstream. Written into NetworkManager's drop-in by `agentctl setup`.
    local_zones: tuple[str, ...] = ("dns.libvirt", "dns.podman", "dns.host")


@dataclass(frozen=True)
class NetworkManagerConfig:
    # Follow NetworkManager over the system D-Bus: its DNS mode and its dnsmasq.
    enabled: bool = True
    dnsmasq_dir: Path = Path("/etc/NetworkManager/dnsmasq.d")

    @property
    def dropin(self) -> Path:
        return self.dnsmasq_dir / "namesync.conf"


@dataclass(frozen=True)
class HostConfig:
    # The host's own name, following its address on these interfaces live.
    enabled: bool = True
    name: str = "host.dns.host"
    interfaces: tuple[str, ...] = ("virbr0",)


@dataclass(frozen=True)
class LibvirtConfig:
    # Domains on these hypervisor connections get `<domain>.<zone>`; lxc:///system
    # works the same way. One read-only connection per URI.
    enabled: bool = True
    uris: tuple[str, ...] = ("qemu:///system",)
    zone: str = "dns.libvirt"
    # The guest's own DHCP hostname is guest-controlled: only ever published as
    # `<hostname>.guest.<zone>`, and only when this is on.
    guest_hostnames: bool = False
    # libvirt's per-network dnsmasq writes `<bridge>.status` lease files here.
    lease_dir: Path = Path("/var/lib/libvirt/dnsmasq")


@dataclass(frozen=True)
class PodmanConfig:
    # Containers of the Podman service on this socket get `<name>.<zone>`.
    enabled: bool = True
    socket: Path = DEFAULT_PODMAN_SOCKET
    zone: str = "dns.podman"
    # netavark writes one file per DNS-enabled network here before `podman run`
    # returns: the fast path, ahead of the (polled) event stream.
    aardvark_dir: Path = Path("/run/containers/networks/aardvark-dns")


@dataclass(frozen=True)
class HostsFileConfig:
    enabled: bool = True
    path: Path = Path("/etc/hosts")


@dataclass(frozen=True)
class StaticEntry:
    name: str
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    dnsmasq: DnsmasqConfig = field(default_factory=DnsmasqConfig)
    hosts_file: HostsFileConfig = field(default_factory=HostsFileConfig)
    networkmanager: NetworkManagerConfig = field(default_factory=NetworkManagerConfig)
    host: HostConfig = field(default_factory=HostConfig)
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    podman: PodmanConfig = field(default_factory=PodmanConfig)
    static: tuple[StaticEntry, ...] = ()
    # Where this config was read from ("<embedded default>" when no file exists).
    origin: str = "<embedded default>"
