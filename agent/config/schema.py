"""The config schema, the single truth: every key, its type, default and one-line doc.

The loader (load.py) walks these classes; ``namesync-agent
--print-default-config``, agent/config/default.toml, README's config
reference and namesync.conf(5) are generated from them (reference.py).

Adding a key is one line in its section below::

    max_clients: int = setting(64, Int(1, 1024), "Connections the socket accepts at once.")

then ``python -m agent.config.reference --write`` regenerates default.toml and
README's reference (a test fails until you do). Adding a section is a frozen
dataclass with a docstring (the section's comment in default.toml) and one
``section(...)`` field in ``Config``. A check that needs two keys at once goes
in load.py's ``_CROSS_CHECKS``.
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from agent.config.errors import ConfigError
from agent.config.kinds import (
    ADDRESSES,
    BOOL,
    FQDN,
    FQDNS,
    INTERFACE,
    INTERFACES,
    IP_ADDRESS,
    LIBVIRT_URIS,
    PATH,
    PROGRAM,
    SERVER,
    UIDS,
    Choice,
    Int,
    Kind,
    Strings,
)
from agent.model.record import Address

__all__ = ["ConfigError"]  # re-exported: callers import it from here

T = TypeVar("T")

DEFAULT_SYSTEM_CONFIG = Path("/etc/namesync/config.toml")
DEFAULT_SYSTEM_SOCKET = Path("/run/namesync/control.sock")
DEFAULT_PODMAN_SOCKET = Path("/run/podman/podman.sock")
DEFAULT_PEER_SOCKET = Path("/run/namesync/peer.sock")
# "system": root's agent, writes the files and serves user agents. "user": a
# user session's agent (rootless Podman, qemu:///session), which pushes its
# table to the system agent instead (README "User session"). Not a config key:
# `namesync-agent --mode`, by default system as root and user otherwise.
MODES = ("system", "user")
LOG_LEVELS = ("debug", "info", "warning", "error")

KEY = "namesync.key"  # dataclass field metadata: a config key (a Key)
SECTION = "namesync.section"  # ...: a [section] or an [[array]] of tables (a SectionInfo)


@dataclass(frozen=True)
class Key:
    kind: Kind[Any]
    doc: str
    # Set when the default differs for a non-root agent; says what it is then.
    # default.toml shows such a key commented out, so each agent gets its own.
    per_user: str = ""
    # For keys without a default ([[static]]): what the commented example shows.
    example: object = None


def setting(default: T, kind: Kind[T], doc: str, *, per_user: str = "") -> T:
    """A config key with its default, value kind and one-line doc."""
    return field(default=default, metadata={KEY: Key(kind, doc, per_user)})


def off_for_users(doc: str, why: str = "") -> bool:
    """An on/off key, on for the system agent and off for a user agent (``why``)."""
    return setting(True, BOOL, doc, per_user=f"false ({why})" if why else "false")


PUBLISHED_BY_SYSTEM = "the system agent publishes a user's names"


def required(kind: Kind[T], doc: str, *, example: object) -> T:
    """A key that must be given (inside an [[array]] of tables)."""
    return cast(T, field(metadata={KEY: Key(kind, doc, example=example)}))


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon itself."""

    # 20 ms: see README "Coalescing" for the measurement behind it.
    coalesce_ms: int = setting(
        20,
        Int(0, 10_000),
        "The first change after a quiet spell is written at once; changes arriving "
        "during that write or within this window after it are written together.",
    )
    log_level: str = setting("info", Choice(*LOG_LEVELS), "Log verbosity.")


@dataclass(frozen=True)
class ControlConfig:
    """agentctl talks to the daemon on this socket. Root-only (mode 0600) unless
    allow_uids is set (then 0666, each peer checked by SO_PEERCRED)."""

    socket: Path = setting(
        DEFAULT_SYSTEM_SOCKET,
        PATH,
        "The control socket; takes effect when the daemon restarts.",
        per_user="$XDG_RUNTIME_DIR/namesync/control.sock",
    )
    allow_uids: tuple[int, ...] = setting(
        (), UIDS, "Further uids allowed on the socket besides root and the daemon's own."
    )
    # Every local user may be able to connect: bound what they can hold. All
    # are capped below the descriptor limit; root keeps a reserve beyond them.
    max_connections: int = setting(
        256, Int(1, 100_000), "Connections of all uids but root together; more are refused."
    )
    max_per_uid: int = setting(
        16, Int(1, 100_000), "Connections one uid may hold; more are refused at once."
    )
    idle_timeout_s: int = setting(60, Int(1, 86_400), "An idle connection is closed after this.")
    request_timeout_s: int = setting(
        10, Int(1, 3_600), "A started request must arrive, and its reply be read, within this."
    )


@dataclass(frozen=True)
class DnsmasqConfig:
    """A hosts-format file for dnsmasq's addn-hosts=, and the dnsmasq to SIGHUP after
    it changes (only if /proc/PID is really dnsmasq)."""

    enabled: bool = off_for_users(
        "Write the addn-hosts file and reload dnsmasq.", PUBLISHED_BY_SYSTEM
    )
    addn_hosts: Path = setting(
        Path("/run/namesync/addn-hosts"),
        PATH,
        "The addn-hosts file; written mode 0644 (dnsmasq reads it unprivileged).",
    )
    pid_file: Path = setting(
        Path("/run/NetworkManager/dnsmasq.pid"), PATH, "The dnsmasq to SIGHUP after a change."
    )
    executable: Path = setting(
        Path("/usr/sbin/dnsmasq"),
        PATH,
        "Only a process running this binary (or the dnsmasq on PATH) is ever signalled.",
    )
    local_zones: tuple[str, ...] = setting(
        ("dns.libvirt", "dns.podman", "dns.host"),
        FQDNS,
        "Zones dnsmasq answers locally (local=/ZONE/, written by `agentctl setup`): "
        "unknown names there are NXDOMAIN, not forwarded upstream.",
    )


@dataclass(frozen=True)
class HostsFileConfig:
    """A managed block between namesync's marker lines; nothing else in the file is
    touched. Serves glibc and systemd-resolved users."""

    enabled: bool = off_for_users("Keep the managed block up to date.", PUBLISHED_BY_SYSTEM)
    path: Path = setting(Path("/etc/hosts"), PATH, "The hosts file holding the block.")


@dataclass(frozen=True)
class NetworkManagerConfig:
    """Follow NetworkManager over the system D-Bus: its DNS mode and its dnsmasq."""

    enabled: bool = off_for_users("Follow NetworkManager (DNS mode, its dnsmasq's pid).")
    dnsmasq_dir: Path = setting(
        Path("/etc/NetworkManager/dnsmasq.d"),
        PATH,
        "NetworkManager's dnsmasq drop-in directory; `agentctl setup` writes namesync.conf here.",
    )

    @property
    def dropin(self) -> Path:
        return self.dnsmasq_dir / "namesync.conf"


@dataclass(frozen=True)
class ResolvedConfig:
    """When systemd-resolved is the host's resolver (Fedora's default) and NetworkManager
    is not in dnsmasq mode, namesync runs a dnsmasq of its own for dnsmasq.local_zones
    and routes those zones to it through resolved, as routing-only domains on a
    port-less bridge namesync owns (`resolvectl status namesync0`). Names change at
    once; the hosts-file block stays as the fallback."""

    enabled: bool = setting(True, BOOL, "Use this path when systemd-resolved is on the bus.")
    link: str = setting("namesync0", INTERFACE, "The bridge namesync creates for resolved.")
    # 198.18.0.0/15 is reserved for benchmarking: never routed, unlikely to collide.
    link_address: str = setting(
        "198.18.53.53",
        IP_ADDRESS,
        "The link's address (resolved needs a routable one); rootful containers are "
        "given it as their DNS server.",
    )
    listen: str = setting(
        "127.0.0.153",
        IP_ADDRESS,
        "Where namesync's dnsmasq answers resolved: loopback, whose answers resolved never caches.",
    )
    port: int = setting(53, Int(1, 65535), "The port namesync's dnsmasq answers on.")
    containers: bool = setting(
        True,
        BOOL,
        "Also answer on link_address (port 53), forwarding other names to upstream, for "
        "containers that cannot use the host's loopback resolver.",
    )
    upstream: str = setting(
        "127.0.0.53",
        SERVER,
        "Where namesync's dnsmasq forwards names outside the zones (the host's resolver).",
    )
    dnsmasq: str = setting("dnsmasq", PROGRAM, "The dnsmasq program namesync runs.")
    pid_file: Path = setting(
        Path("/run/namesync/dnsmasq.pid"), PATH, "The pid file of namesync's dnsmasq."
    )
    nm_unmanaged_conf: Path = setting(
        Path("/etc/NetworkManager/conf.d/90-namesync-unmanaged.conf"),
        PATH,
        "Written by `agentctl setup`: tells NetworkManager to leave the link alone.",
    )
    containers_conf: Path = setting(
        Path("/etc/containers/containers.conf.d/90-namesync-dns.conf"),
        PATH,
        "Written by `agentctl setup`: gives containers link_address as DNS server.",
    )
    static_records: str = setting(
        "auto",
        Choice("auto", "prefer", "no"),
        "systemd-resolved >= 261: serve the names as its static records "
        "(static_records_file) where namesync runs no dnsmasq (auto: dnsmasq.enabled = "
        "false), or instead of the routing path (prefer). Instant, but names not in "
        "the file go to resolved's DNS servers (no NXDOMAIN), and not to containers.",
    )
    static_records_file: Path = setting(
        Path("/run/systemd/resolve/static.d/namesync.rr"),
        PATH,
        "The static records file (systemd.rr(5)); removed while another path serves.",
    )

    def cross_check(self) -> list[tuple[str, str]]:
        problems = []
        if self.listen == self.link_address:
            problems.append(("listen", "must differ from resolved.link_address"))
        if self.containers and self.port != 53:
            problems.append(("port", "containers = true needs port 53 (a container's "
                             "resolv.conf cannot name a port); set containers = false"))
        return problems


@dataclass(frozen=True)
class HostConfig:
    """The host's own name, following its address on these interfaces live (netlink)."""

    enabled: bool = off_for_users(
        "Publish the host's own name.", "the host's name is the system agent's"
    )
    name: str = setting("host.dns.host", FQDN, "The host's name.")
    interfaces: tuple[str, ...] = setting(
        ("virbr0",), INTERFACES, "Interfaces whose addresses the host's name resolves to."
    )


@dataclass(frozen=True)
class LibvirtConfig:
    """Every running domain on these connections resolves as <domain>.<zone>, with one
    more name per NIC (<nic>.<domain>.<zone>) when it has several. Addresses come from
    libvirt's DHCP leases (watched in lease_dir), else from interfaceAddresses.
    Connections are read-only. If libvirtd is not running, status says so and
    namesync connects when it starts."""

    enabled: bool = setting(True, BOOL, "Publish libvirt domains.")
    uris: tuple[str, ...] = setting(
        ("qemu:///system",),
        LIBVIRT_URIS,
        "Hypervisor connections, one read-only connection each; lxc:///system works the "
        "same way.",
        per_user='["qemu:///session"]',
    )
    zone: str = setting("dns.libvirt", FQDN, "Zone of domain names.",
                        per_user="<user>.dns.libvirt")
    # The guest's own DHCP hostname is guest-controlled.
    guest_hostnames: bool = setting(
        False,
        BOOL,
        "Also publish a guest's DHCP hostname (chosen by the guest), only as "
        "<hostname>.guest.<zone>.",
    )
    lease_dir: Path = setting(
        Path("/var/lib/libvirt/dnsmasq"),
        PATH,
        "Where libvirt's per-network dnsmasq writes <bridge>.status lease files.",
    )
    dhcp_trigger: bool = setting(
        False,
        BOOL,
        "Publish a lease the moment libvirt's dnsmasq sends its DHCPACK on the network's "
        "bridge (15-90 ms before the lease file is written), provisionally until the "
        "lease file confirms it (withdrawn if it does not within 5 s). Off by default: "
        "the kernel cannot tell libvirt's dnsmasq from another sender of UDP 67 -> 68 "
        "frames leaving the bridge from the host, so do NOT turn it on where a "
        "MASQUERADE rule NATs other subnets out of a libvirt bridge (Podman/netavark, "
        "Docker or a VPN on the same host: a guest's or container's datagram then leaves "
        "as the host's) or where untrusted users may bind port 67 "
        "(CAP_NET_BIND_SERVICE, net.ipv4.ip_unprivileged_port_start=0). Off, leases "
        "publish from the lease file, +15-25 ms behind libvirt's dnsmasq on a quiet "
        "machine, more when loaded. Needs CAP_NET_RAW; without it the lease files alone "
        "publish and status says why.",
    )
    release_idle_s: int = setting(
        10,
        Int(0, 86_400),
        "After this long without a libvirt event, release the connection (libvirtd "
        "pings every client every 5 s) and watch libvirt's state and config files "
        "instead; the first change reconnects and lists everything again. 0: never.",
    )
    call_timeout_s: int = setting(
        10,
        Int(0, 3600),
        "A libvirt call that has not returned after this long means libvirtd hangs "
        "(stopped, deadlocked, stuck on storage): status says which call waits, the "
        "names stay, the connection is abandoned and namesync reconnects; it resyncs "
        "once libvirtd answers. A busy libvirtd answers within a few seconds. 0: wait "
        "for ever.",
    )


@dataclass(frozen=True)
class PodmanConfig:
    """Every running container of this Podman service resolves as <name>.<zone>, plus
    its network aliases and its pod's name."""

    enabled: bool = setting(True, BOOL, "Publish Podman containers.")
    socket: Path = setting(
        DEFAULT_PODMAN_SOCKET,
        PATH,
        "The Podman service's API socket.",
        per_user="$XDG_RUNTIME_DIR/podman/podman.sock",
    )
    zone: str = setting("dns.podman", FQDN, "Zone of container names.",
                        per_user="<user>.dns.podman")
    aardvark_dir: Path = setting(
        Path("/run/containers/networks/aardvark-dns"),
        PATH,
        "netavark's per-network DNS files, read as soon as they change (the fast path: "
        "a name answers before Podman's event arrives).",
        per_user="$XDG_RUNTIME_DIR/containers/networks/aardvark-dns",
    )


def _user_name_item(value: str) -> tuple[str, None] | tuple[None, str]:
    if not value or len(value) > 256 or any(c in value for c in ":/\n\0"):
        return None, f"not a user name: {value!r}"
    return value, None


@dataclass(frozen=True)
class PeersConfig:
    """User agents (the systemd user unit: rootless Podman, qemu:///session) publish
through the system agent on this socket, which every local user may connect to.
The system agent serves it; a user agent pushes its whole table there. A peer's
names are confined to <name>.<user>.<zone> for the [podman] and [libvirt] zones;
users in trusted_users may also publish directly in those zones. Anything else is
refused and shown in `agentctl status` with the peer's uid."""

    enabled: bool = setting(True, BOOL, "System agent: serve the socket; user agent: push to it.")
    socket: Path = setting(DEFAULT_PEER_SOCKET, PATH,
                           "The peer socket (mode 0666; each peer identified by SO_PEERCRED).")
    trusted_users: tuple[str, ...] = setting(
        (), Strings(_user_name_item, "user names or uids"),
        "Users who may publish <name>.<zone> directly, not only <name>.<user>.<zone>: "
        "logins exactly as passwd spells them (j.smith), or numeric uids.")
    max_names: int = setting(512, Int(1, 100_000),
                             "Names one user may publish; a push with more is refused whole.")
    max_addresses: int = setting(
        2048, Int(1, 1_000_000),
        "Addresses one user's names may have together (one addn-hosts line each); a push "
        "with more is refused whole.")
    max_message_bytes: int = setting(1 << 20, Int(1024, 64 << 20),
                                     "Bytes one push may take on the wire.")
    push_rate: int = setting(5, Int(1, 1000), "Pushes per second per user, after a burst.")
    push_burst: int = setting(20, Int(1, 10_000), "Pushes one user may send at once.")
    grace_s: int = setting(30, Int(0, 86_400),
                           "A disconnected user agent's names stay this long, then go.")


@dataclass(frozen=True, slots=True)
class StaticEntry:
    name: str = required(FQDN, "A fully qualified name (RFC 1123).", example="db.dns.host")
    addresses: tuple[Address, ...] = required(
        ADDRESSES, "Its IPv4 and/or IPv6 addresses.", example=("192.168.122.10", "fd00::10")
    )


S = TypeVar("S")


@dataclass(frozen=True)
class KeyInfo:
    name: str
    key: Key
    default: object  # dataclasses.MISSING for a required key

    @property
    def required(self) -> bool:
        return self.default is MISSING


@dataclass(frozen=True)
class SectionInfo:
    cls: type
    doc: str
    array: bool  # [[name]], any number of tables, or one [name]
    keys: tuple[KeyInfo, ...]
    name: str = ""


def keys_of(cls: type) -> tuple[KeyInfo, ...]:
    return tuple(
        KeyInfo(f.name, f.metadata[KEY], f.default) for f in fields(cls) if KEY in f.metadata
    )


def section(cls: type[S]) -> S:
    """One [name] table of keys; its docstring is its comment in default.toml."""
    info = SectionInfo(cls, inspect.cleandoc(cls.__doc__ or ""), False, keys_of(cls))
    return field(default_factory=cls, metadata={SECTION: info})


def array(cls: type[S], doc: str) -> tuple[S, ...]:
    """Any number of [[name]] tables of ``cls``'s keys."""
    info = SectionInfo(cls, doc, True, keys_of(cls))
    return cast(tuple[S, ...], field(default=(), metadata={SECTION: info}))


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = section(DaemonConfig)
    control: ControlConfig = section(ControlConfig)
    dnsmasq: DnsmasqConfig = section(DnsmasqConfig)
    hosts_file: HostsFileConfig = section(HostsFileConfig)
    networkmanager: NetworkManagerConfig = section(NetworkManagerConfig)
    resolved: ResolvedConfig = section(ResolvedConfig)
    host: HostConfig = section(HostConfig)
    libvirt: LibvirtConfig = section(LibvirtConfig)
    podman: PodmanConfig = section(PodmanConfig)
    peers: PeersConfig = section(PeersConfig)
    static: tuple[StaticEntry, ...] = array(
        StaticEntry, "Names for host services, or anything else (any number of these)."
    )
    # Where this config was read from ("<embedded default>" when no file exists).
    origin: str = "<embedded default>"
    mode: str = "system"  # MODES

    @property
    def static_records_possible(self) -> bool:
        """Could systemd-resolved's static records be the path (resolved.static_records)?"""
        r = self.resolved
        wanted = r.static_records == "prefer" or (r.static_records == "auto"
                                                  and not self.dnsmasq.enabled)
        return wanted and r.enabled and self.mode != "user"


def sections() -> tuple[SectionInfo, ...]:
    """Every section of config.toml, in file order, each with its name."""
    return tuple(
        replace(f.metadata[SECTION], name=f.name) for f in fields(Config) if SECTION in f.metadata
    )
