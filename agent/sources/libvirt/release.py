"""Where libvirt writes a file for every change the libvirt source follows.

libvirtd pings every client every 5 s (libvirtd.conf ``keepalive_interval``;
the ping starts as soon as the client library asks for the keepalive feature
while opening the connection, which no client option avoids). A source that
has seen no event for a while therefore releases its connection and waits on
these directories instead (lifecycle.py ``release_watch``). Checked on a real
libvirtd (LXC driver; the QEMU driver keeps its files the same way):

    domain started, suspended, resumed   <state>/<name>.xml written (rename)
    domain stopped                       <state>/<name>.xml removed
    domain defined, undefined            <config>/<name>.xml written, removed
    network started, stopped             <network state>/<name>.xml written, removed
    network defined, undefined           <network config>/<name>.xml written, removed

Guest-agent lifecycle and addresses from interfaceAddresses() have no such
file: a domain whose address comes from probing keeps the connection (the
source says so in status).

Only ``<name>.xml`` files count (``libvirt_change``). A socket-activated
libvirtd exits on its own after a while with no client (``--timeout 120``),
which a released source no longer is: it removes its ``driver.pid`` and
closes other files as it goes. Woken by those, the source would connect,
which starts libvirtd again, for ever. Its death does count when it crashed:
the kernel then closes ``driver.pid`` (held open while it runs), and the file
is still there, which a clean exit removes first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

# Drivers whose state and config files are known (<driver> under libvirt's dirs).
_DRIVERS = ("qemu", "lxc")


@dataclass(frozen=True, slots=True)
class Watched:
    """The directories to watch while released, or why the connection must stay."""

    dirs: tuple[Path, ...] = ()
    why_not: str | None = None


def _user_dirs(env: Mapping[str, str]) -> tuple[Path, Path] | None:
    """libvirt's per-user runtime and config directories (virGetUserRuntimeDirectory,
    virGetUserConfigDirectory): XDG first, then the home directory."""
    home = env.get("HOME")
    runtime = env.get("XDG_RUNTIME_DIR")
    cache = env.get("XDG_CACHE_HOME") or (f"{home}/.cache" if home else None)
    config = env.get("XDG_CONFIG_HOME") or (f"{home}/.config" if home else None)
    run = runtime or cache
    if run is None or config is None:
        return None
    return Path(run) / "libvirt", Path(config) / "libvirt"


def libvirt_change(path: Path, closed: bool) -> bool:
    """Whether a change to ``path`` in a watched directory is one the source follows
    (``closed``: the file was closed after writing)."""
    if path.suffix == ".xml":
        return True
    return path.name == "driver.pid" and closed and path.exists()


def release_dirs(uri: str, env: Mapping[str, str] | None = None) -> Watched:
    """What to watch for ``uri`` while its connection is released."""
    parts = urlsplit(uri)
    driver, _, transport = parts.scheme.partition("+")
    if parts.netloc or transport not in ("", "unix"):
        return Watched(why_not="a remote connection (its files are on another host)")
    if parse_qs(parts.query).get("socket"):
        return Watched(why_not="a daemon on a socket of its own (its files are not known)")
    if driver not in _DRIVERS:
        return Watched(why_not=f"the {driver} driver (which files it writes is not known)")
    if parts.path == "/system":
        run, etc = Path("/run/libvirt"), Path("/etc/libvirt")
        return Watched((run / driver, etc / driver, run / "network", etc / "qemu" / "networks"))
    if parts.path == "/session" and driver == "qemu":
        found = _user_dirs(os.environ if env is None else env)
        if found is None:
            return Watched(why_not="no XDG_RUNTIME_DIR or HOME to find the session's files")
        run, config = found
        return Watched((run / "qemu" / "run", config / "qemu",
                        run / "network" / "lib", config / "qemu" / "networks"))
    return Watched(why_not=f"{uri} (which files it writes is not known)")
