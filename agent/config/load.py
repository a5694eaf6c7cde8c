"""Parse and validate config.toml into ``Config``, collecting every problem at once."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from agent.config.schema import (
    DEFAULT_SYSTEM_CONFIG,
    Config,
    ConfigError,
    ControlConfig,
    DaemonConfig,
    DnsmasqConfig,
    HostConfig,
    HostsFileConfig,
    LibvirtConfig,
    NetworkManagerConfig,
    PodmanConfig,
    StaticEntry,
)
from agent.model.names import InvalidName, parse_fqdn
from agent.model.record import AddressError, parse_address

T = TypeVar("T")
_STATIC_KEYS = frozenset({"name", "addresses"})
LOG_LEVELS = ("debug", "info", "warning", "error")
EMBEDDED = "<embedded default>"


def default_config_path(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if (os.geteuid() if euid is None else euid) == 0:
        return DEFAULT_SYSTEM_CONFIG
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "namesync" / "config.toml"


def default_socket_path(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The control socket: /run/namesync for root, $XDG_RUNTIME_DIR/namesync otherwise."""
    env = os.environ if env is None else env
    if (os.geteuid() if euid is None else euid) == 0 or not env.get("XDG_RUNTIME_DIR"):
        return ControlConfig.socket
    return Path(env["XDG_RUNTIME_DIR"]) / "namesync" / "control.sock"


def default_podman_socket(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Rootful Podman's socket for root; the user's own service socket otherwise."""
    env = os.environ if env is None else env
    if (os.geteuid() if euid is None else euid) == 0 or not env.get("XDG_RUNTIME_DIR"):
        return PodmanConfig.socket
    return Path(env["XDG_RUNTIME_DIR"]) / "podman" / "podman.sock"


def embedded_default_text() -> str:
    return (resources.files("agent.config") / "default.toml").read_text(encoding="utf-8")


class _Reader:
    """Typed access to one TOML table that records problems instead of raising."""

    def __init__(self, table: Mapping[str, Any], prefix: str, problems: list[str]) -> None:
        self.table = table
        self.prefix = prefix
        self.problems = problems
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def get(
        self, name: str, kind: type[T], default: T, check: Callable[[T], str | None] | None = None
    ) -> T:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        # bool is an int in Python; a config saying `coalesce_ms = true` is a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append(
                f"{self.key(name)}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
            )
            return default
        if check is not None:
            why = check(value)
            if why:
                self.problems.append(f"{self.key(name)}: {why}")
                return default
        return value

    def path(self, name: str, default: Path) -> Path:
        raw = self.get(
            name, str, "", lambda s: None if s.startswith("/") else "must be an absolute path"
        )
        return Path(raw) if raw else default

    def finish(self) -> None:
        for extra in sorted(set(self.table) - self.seen):
            self.problems.append(f"{self.key(extra)}: unknown key")


def _strings(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...] | None:
    raw = r.get(key, list, list(default))
    bad = [v for v in raw if not isinstance(v, str)]
    if bad:
        r.problems.append(f"{r.key(key)}: expected strings, got {bad!r}")
        return None
    return tuple(raw)


def _names(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _strings(r, key, default)
    if raw is None:
        return default
    out = []
    for i, value in enumerate(raw):
        try:
            out.append(parse_fqdn(value))
        except InvalidName as e:
            r.problems.append(f"{r.key(key)}[{i}]: {e.reason} (in {value!r})")
    return tuple(out)


def _interfaces(r: _Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _strings(r, key, default)
    if raw is None:
        return default
    for i, value in enumerate(raw):
        # IFNAMSIZ is 16 with the NUL; the kernel refuses '/', ':' and whitespace.
        if (
            not value
            or len(value) > 15
            or any(c in value for c in "/: \t\n")
            or value in (".", "..")
        ):
            r.problems.append(f"{r.key(key)}[{i}]: not an interface name: {value!r}")
    return raw


def _table(doc: Mapping[str, Any], name: str, problems: list[str]) -> _Reader:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        problems.append(f"{name}: expected a table ([{name}]), got {type(value).__name__}")
        value = {}
    return _Reader(value, f"{name}.", problems)


def _static(doc: Mapping[str, Any], problems: list[str]) -> tuple[StaticEntry, ...]:
    raw = doc.get("static", [])
    if not isinstance(raw, list):
        problems.append("static: expected an array of tables ([[static]])")
        return ()
    entries: list[StaticEntry] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        # Fast path for the usual entry (both keys, nothing else, right types, all
        # valid, name not seen before): it is parsed once per entry on every reload,
        # so skip the per-key bookkeeping that only matters for reporting problems.
        # Anything else is done again below, which reports exactly as it always has.
        if type(item) is dict and item.keys() == _STATIC_KEYS:
            given_name, given_addrs = item["name"], item["addresses"]
            if type(given_name) is str and given_name and type(given_addrs) is list and given_addrs:
                try:
                    fast_name = parse_fqdn(given_name)
                    fast_addrs = tuple(map(parse_address, given_addrs))
                except (InvalidName, AddressError):
                    pass
                else:
                    if fast_name not in first_seen:
                        first_seen[fast_name] = i
                        entries.append(StaticEntry(name=fast_name, addresses=fast_addrs))
                        continue
        where = f"static[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table")
            continue
        r = _Reader(item, f"{where}.", problems)
        raw_name = r.get("name", str, "")
        raw_addrs = r.get("addresses", list, [])
        r.finish()
        if "name" not in item:
            problems.append(f"{where}.name: missing")
        if "addresses" not in item:
            problems.append(f"{where}.addresses: missing")
        name = None
        if isinstance(item.get("name"), str):
            try:
                name = parse_fqdn(raw_name)
            except InvalidName as e:
                problems.append(f"{where}.name: {e.reason} (in {raw_name!r})")
        addrs = []
        for j, a in enumerate(raw_addrs):
            try:
                addrs.append(parse_address(a))
            except AddressError as e:
                problems.append(f"{where}.addresses[{j}]: {e.reason} (in {a!r})")
        if "addresses" in item and not raw_addrs:
            problems.append(f"{where}.addresses: empty; a name needs at least one address")
        if name is None or not addrs:
            continue
        if name in first_seen:
            problems.append(
                f"{where}.name: {name!r} is already defined by static[{first_seen[name]}]"
            )
            continue
        first_seen[name] = i
        entries.append(StaticEntry(name=name, addresses=tuple(addrs)))
    return tuple(entries)


def _zone(r: _Reader, key: str, default: str) -> str:
    raw = r.get(key, str, default)
    try:
        return parse_fqdn(raw)
    except InvalidName as e:
        r.problems.append(f"{r.key(key)}: {e.reason} (in {raw!r})")
        return default


_LIBVIRT_URI_SCHEMES = ("qemu", "lxc", "test", "xen", "ch", "bhyve", "vz", "libxl")


def _libvirt(r: _Reader) -> LibvirtConfig:
    uris = _strings(r, "uris", LibvirtConfig.uris)
    if uris is None:
        uris = LibvirtConfig.uris
    for i, uri in enumerate(uris):
        scheme = uri.split(":", 1)[0].split("+", 1)[0]
        if "://" not in uri or scheme not in _LIBVIRT_URI_SCHEMES:
            r.problems.append(
                f"{r.key('uris')}[{i}]: not a libvirt URI such as qemu:///system (in {uri!r})"
            )
    if len(set(uris)) != len(uris):
        r.problems.append(f"{r.key('uris')}: a URI is listed twice")
    config = LibvirtConfig(
        enabled=r.get("enabled", bool, True),
        uris=uris,
        zone=_zone(r, "zone", LibvirtConfig.zone),
        guest_hostnames=r.get("guest_hostnames", bool, False),
        lease_dir=r.path("lease_dir", LibvirtConfig.lease_dir),
    )
    r.finish()
    return config


def _podman(r: _Reader, socket_default: Path | None) -> PodmanConfig:
    config = PodmanConfig(
        enabled=r.get("enabled", bool, True),
        socket=r.path("socket", socket_default or PodmanConfig.socket),
        zone=_zone(r, "zone", PodmanConfig.zone),
        aardvark_dir=r.path("aardvark_dir", PodmanConfig.aardvark_dir),
    )
    r.finish()
    return config


def parse_config(
    text: str,
    origin: str,
    *,
    socket_default: Path | None = None,
    podman_socket_default: Path | None = None,
) -> Config:
    """Parse TOML text; raise ConfigError listing every problem found."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(origin, [f"TOML syntax: {e}"]) from None
    problems: list[str] = []
    known = {"daemon", "control", "dnsmasq", "hosts_file", "networkmanager", "host", "static",
             "libvirt", "podman"}
    for extra in sorted(set(doc) - known):
        problems.append(f"{extra}: unknown section or key")

    d = _table(doc, "daemon", problems)
    daemon = DaemonConfig(
        coalesce_ms=d.get(
            "coalesce_ms",
            int,
            DaemonConfig.coalesce_ms,
            lambda v: None if 0 <= v <= 10_000 else "must be 0..10000",
        ),
        log_level=d.get(
            "log_level",
            str,
            DaemonConfig.log_level,
            lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}",
        ),
    )
    d.finish()

    c = _table(doc, "control", problems)
    uids = c.get("allow_uids", list, [])
    bad_uids = [u for u in uids if not isinstance(u, int) or isinstance(u, bool) or u < 0]
    if bad_uids:
        problems.append(f"control.allow_uids: not uids: {bad_uids!r}")
    control = ControlConfig(
        socket=c.path("socket", socket_default or ControlConfig.socket),
        allow_uids=tuple(u for u in uids if u not in bad_uids),
    )
    c.finish()

    m = _table(doc, "dnsmasq", problems)
    dnsmasq = DnsmasqConfig(
        enabled=m.get("enabled", bool, True),
        addn_hosts=m.path("addn_hosts", DnsmasqConfig.addn_hosts),
        pid_file=m.path("pid_file", DnsmasqConfig.pid_file),
        local_zones=_names(m, "local_zones", DnsmasqConfig.local_zones),
    )
    m.finish()

    n = _table(doc, "networkmanager", problems)
    networkmanager = NetworkManagerConfig(
        enabled=n.get("enabled", bool, True),
        dnsmasq_dir=n.path("dnsmasq_dir", NetworkManagerConfig.dnsmasq_dir),
    )
    n.finish()

    t = _table(doc, "host", problems)
    host_name = t.get("name", str, HostConfig.name)
    try:
        host_name = parse_fqdn(host_name)
    except InvalidName as e:
        problems.append(f"host.name: {e.reason} (in {host_name!r})")
    host = HostConfig(
        enabled=t.get("enabled", bool, True),
        name=host_name,
        interfaces=_interfaces(t, "interfaces", HostConfig.interfaces),
    )
    t.finish()

    libvirt = _libvirt(_table(doc, "libvirt", problems))
    podman = _podman(_table(doc, "podman", problems), podman_socket_default)

    h = _table(doc, "hosts_file", problems)
    hosts_file = HostsFileConfig(
        enabled=h.get("enabled", bool, True),
        path=h.path("path", HostsFileConfig.path),
    )
    h.finish()

    static = _static(doc, problems)
    if problems:
        raise ConfigError(origin, problems)
    return Config(
        daemon=daemon,
        control=control,
        dnsmasq=dnsmasq,
        hosts_file=hosts_file,
        networkmanager=networkmanager,
        host=host,
        libvirt=libvirt,
        podman=podman,
        static=static,
        origin=origin,
    )


def load_config(path: Path | None, *, socket_default: Path | None = None) -> Config:
    """Read ``path`` (or the default path); a missing default file means the embedded default.

    An explicitly named file that does not exist is an error: running on
    defaults when the user pointed at a file would hide a typo in a path.
    """
    explicit = path is not None
    target = path if path is not None else default_config_path()
    try:
        text = target.read_text(encoding="utf-8")
        origin = str(target.absolute())
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(target), ["file not found"]) from None
        text, origin = embedded_default_text(), EMBEDDED
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(str(target), [f"cannot read: {e}"]) from None
    return parse_config(
        text,
        origin,
        socket_default=socket_default or default_socket_path(),
        podman_socket_default=default_podman_socket(),
    )
