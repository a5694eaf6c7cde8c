"""Read config.toml into ``Config`` by walking the schema, collecting every problem at once."""

from __future__ import annotations

import difflib
import errno
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from agent.config import toml
from agent.config.errors import ConfigError, Problems
from agent.config.modes import resolve_mode, user_label
from agent.config.schema import (
    DEFAULT_PODMAN_SOCKET,
    DEFAULT_SYSTEM_CONFIG,
    DEFAULT_SYSTEM_SOCKET,
    LOG_LEVELS,
    Config,
    KeyInfo,
    SectionInfo,
    sections,
)
from agent.config.toml import Tables
from agent.model.names import InvalidName
from agent.model.quote import quote

__all__ = ["LOG_LEVELS", "load_config", "parse_config"]

EMBEDDED = "<embedded default>"
# Far above any real config (100,000 [[static]] names is about 7 MB), far below
# what would hurt to read and parse.
MAX_CONFIG_BYTES = 64 << 20
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


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
        return DEFAULT_SYSTEM_SOCKET
    return Path(env["XDG_RUNTIME_DIR"]) / "namesync" / "control.sock"


def default_podman_socket(euid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Rootful Podman's socket for root; the user's own service socket otherwise."""
    env = os.environ if env is None else env
    if (os.geteuid() if euid is None else euid) == 0 or not env.get("XDG_RUNTIME_DIR"):
        return DEFAULT_PODMAN_SOCKET
    return Path(env["XDG_RUNTIME_DIR"]) / "podman" / "podman.sock"


def user_defaults(euid: int | None = None, env: Mapping[str, str] | None = None
                  ) -> dict[str, object]:
    """A user agent's defaults (dotted key -> value): the schema's ``per_user`` keys."""
    env = os.environ if env is None else env
    uid = os.geteuid() if euid is None else euid
    try:
        label = user_label(uid)
    except (KeyError, InvalidName):
        label = f"uid{uid}"  # the system agent refuses it, with the reason
    out: dict[str, object] = {
        "dnsmasq.enabled": False,
        "hosts_file.enabled": False,
        "networkmanager.enabled": False,
        "host.enabled": False,
        "libvirt.uris": ("qemu:///session",),
        "podman.zone": f"{label}.dns.podman",
        "libvirt.zone": f"{label}.dns.libvirt",
    }
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        run = Path(runtime)
        out["control.socket"] = run / "namesync" / "control.sock"
        out["podman.socket"] = run / "podman" / "podman.sock"
        out["podman.aardvark_dir"] = run / "containers" / "networks" / "aardvark-dns"
    return out


def embedded_default_text() -> str:
    return (resources.files("agent.config") / "default.toml").read_text(encoding="utf-8")


def _key_text(name: str) -> str:
    # A key is part of every message about it: a hostile one is quoted, like a value.
    return name if _PLAIN_KEY.fullmatch(name) else quote(name)


def _unknown(
    table: Mapping[str, Any], known: list[str], prefix: str, what: str, problems: Problems
) -> None:
    for extra in sorted(set(table) - set(known)):
        hint = ""
        if len(extra) <= 64:  # difflib is quadratic in the length
            near = difflib.get_close_matches(extra, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
        problems.add(prefix + _key_text(extra), what + hint)


def _keys(
    keys: tuple[KeyInfo, ...],
    table: Mapping[str, Any],
    prefix: str,
    problems: Problems,
    defaults: Mapping[str, object],
) -> dict[str, Any]:
    """Each key's value (its default when absent or invalid); problems reported under prefix."""
    values: dict[str, Any] = {}
    for k in keys:
        key = prefix + k.name
        if k.name not in table:
            if k.required:
                problems.add(key, "missing")
            else:
                values[k.name] = defaults.get(key, k.default)
            continue
        value = k.key.kind.parse(table[k.name], key, problems)
        if value is not None:
            values[k.name] = value
        elif not k.required:
            values[k.name] = defaults.get(key, k.default)
    _unknown(table, [k.name for k in keys], prefix, "unknown key", problems)
    return values


def _section(
    sec: SectionInfo, doc: Mapping[str, Any], problems: Problems, defaults: Mapping[str, object]
) -> object:
    raw = doc.get(sec.name, {})
    if not isinstance(raw, dict):
        problems.add(sec.name, f"expected a table ([{sec.name}]), got {type(raw).__name__}")
        raw = {}
    value = sec.cls(**_keys(sec.keys, raw, f"{sec.name}.", problems, defaults))
    # A check that needs two keys of one section at once: the section's cross_check().
    cross = getattr(value, "cross_check", None)
    for key, why in cross() if callable(cross) else ():
        problems.add(f"{sec.name}.{key}", why)
    return value


class _Items:
    """Parses the tables of one [[array]]; the usual valid item takes one quick pass.

    A reload parses every [[static]] entry again (100,000 of them, some configs):
    an item with exactly the schema's keys is converted with no per-key
    bookkeeping, and only an item with a problem is parsed again, reporting.
    """

    def __init__(self, sec: SectionInfo, problems: Problems) -> None:
        self.sec = sec
        self.problems = problems
        self.quiet = Problems()
        self.names = frozenset(k.name for k in sec.keys)
        self.convert = [(k.name, k.key.kind.parse) for k in sec.keys]

    def parse(self, item: object, i: int) -> object | None:
        if type(item) is dict and item.keys() == self.names:
            quiet = self.quiet
            values = [parse(item[name], "", quiet) for name, parse in self.convert]
            if not quiet:
                parsed: object = self.sec.cls(*values)
                return parsed
            self.quiet = Problems()
        return self._reporting(item, i)

    def _reporting(self, item: object, i: int) -> object | None:
        where = f"{self.sec.name}[{i}]"
        if not isinstance(item, dict):
            self.problems.add(where, "expected a table")
            return None
        keys = self.sec.keys
        values = _keys(keys, item, f"{where}.", self.problems, {})
        return self.sec.cls(**values) if len(values) == len(keys) else None


def _array(
    sec: SectionInfo, doc: Mapping[str, Any], problems: Problems, previous: tuple[object, ...]
) -> tuple[object, ...]:
    """An [[array]] of tables; an item equal to one of ``previous`` is that same object.

    On a reload nearly every [[static]] entry is unchanged: the running config's
    object (and the name and addresses the published records share with it) is
    kept, and the new copy freed at once, so the table is never held twice.
    """
    raw = doc.get(sec.name, [])
    if not isinstance(raw, list | Tables):
        problems.add(sec.name, f"expected an array of tables ([[{sec.name}]])")
        return ()
    items = _Items(sec, problems)
    unique = sec.keys[0].name  # the first key names an item: two items may not share it
    running = {getattr(item, unique): item for item in previous}
    out: list[object] = []
    first_seen: dict[object, int] = {}
    for i, item in enumerate(raw):
        if type(raw) is list:
            # Each table is dropped from the document as soon as it is converted:
            # with 100,000 entries the document is larger than what it becomes.
            raw[i] = None
        parsed = items.parse(item, i)
        if parsed is None:
            continue
        ident = getattr(parsed, unique)
        seen = first_seen.setdefault(ident, i)
        if seen != i:
            problems.add(
                f"{sec.name}[{i}].{unique}",
                f"{quote(ident)} is already defined by {sec.name}[{seen}]",
            )
            continue
        same = running.get(ident)
        out.append(same if same == parsed else parsed)
    return tuple(out)


def _toml(text: str, origin: str, *, whole: bool = False) -> dict[str, Any]:
    try:
        if not whole:
            try:
                return toml.loads(text)
            except toml.Unsplit:
                pass
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(origin, [f"TOML syntax: {e}"]) from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays or inline tables.
        raise ConfigError(origin, ["TOML syntax: values nested too deeply"]) from None


def parse_config(
    text: str,
    origin: str,
    *,
    socket_default: Path | None = None,
    podman_socket_default: Path | None = None,
    defaults: Mapping[str, object] | None = None,
    previous: Config | None = None,
    mode: str = "system",
) -> Config:
    """Parse TOML text; raise ConfigError listing every problem found.

    ``defaults`` (dotted key -> value, e.g. ``{"podman.socket": Path(...)}``) replaces
    the schema's default of a key the file does not set: how an agent that is not
    the system one (a user agent) gets its own defaults. Those keys say so in the
    schema (``per_user``) and default.toml leaves them commented out.
    ``previous`` (the running config, on a reload) lends its unchanged objects.
    """
    try:
        return _parse(_toml(text, origin), origin, defaults, socket_default,
                      podman_socket_default, previous, mode)
    except toml.Unsplit:  # a [[static]] group did not parse alone: read it all at once
        return _parse(_toml(text, origin, whole=True), origin, defaults, socket_default,
                      podman_socket_default, previous, mode)


def _parse(
    doc: dict[str, Any],
    origin: str,
    defaults: Mapping[str, object] | None,
    socket_default: Path | None,
    podman_socket_default: Path | None,
    previous: Config | None,
    mode: str,
) -> Config:
    problems = Problems()
    defaults = dict(defaults or {})
    if socket_default is not None:
        defaults["control.socket"] = socket_default
    if podman_socket_default is not None:
        defaults["podman.socket"] = podman_socket_default
    schema = sections()
    _unknown(doc, [s.name for s in schema], "", "unknown section or key", problems)
    values: dict[str, Any] = {
        s.name: _array(s, doc, problems, getattr(previous, s.name, ()))
        if s.array
        else _section(s, doc, problems, defaults)
        for s in schema
    }
    problems.raise_if_any(origin)
    return replace(Config(**values), origin=origin, mode=mode)


def _read(target: Path) -> str:
    with target.open("rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(str(target), [f"file is larger than {MAX_CONFIG_BYTES >> 20} MiB"])
    if not data.strip():
        # What a non-atomic save caught half-way leaves. Taking it as "all defaults"
        # would drop every [[static]] name and move the sinks to the default paths.
        raise ConfigError(
            str(target),
            [
                "empty file: refused (a save interrupted half-way looks like this); "
                "to run on the defaults, put a comment in it or remove it"
            ],
        )
    return data.decode("utf-8")


# Reading failed for want of descriptors or memory: the file may well be fine.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR})


def load_config(
    path: Path | None, *, socket_default: Path | None = None, previous: Config | None = None,
    mode: str | None = None,
) -> Config:
    """Read ``path`` (or the default path); a missing default file means the embedded default.

    An explicitly named file that does not exist is an error: running on
    defaults when the user pointed at a file would hide a typo in a path.
    """
    explicit = path is not None
    natural = resolve_mode(None)
    mode = resolve_mode(mode)
    if path is not None:
        target = path
    elif mode == natural:
        target = default_config_path()
    else:  # a forced mode reads that mode's file (-1: "not root", whoever runs it)
        target = default_config_path(0 if mode == "system" else -1)
    try:
        text = _read(target)
        origin = str(target.absolute())
    except FileNotFoundError:
        if explicit:
            raise ConfigError(str(target), ["file not found"]) from None
        text, origin = embedded_default_text(), EMBEDDED
    except OSError as e:
        if e.errno in TRANSIENT_ERRNOS:
            raise  # not the file's fault (no descriptors, no memory): the caller retries
        raise ConfigError(str(target), [f"cannot read: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError(str(target), [f"cannot read: {e}"]) from None
    return parse_config(
        text,
        origin,
        socket_default=socket_default or (default_socket_path() if mode == natural else None),
        podman_socket_default=default_podman_socket() if mode == natural else None,
        defaults=user_defaults() if mode == "user" else None,
        mode=mode,
        previous=previous,
    )
