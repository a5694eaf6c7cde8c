"""Cached Debian root filesystems built with mmdebstrap, shared by every test that needs one.

One builder for all: the systemd-under-nspawn tests (tests/system) and the
standalone systemd-resolved tests chroot into the same kind of tree. A rootfs
is cached in /var/cache/namesync-tests/rootfs-NAME-KEY, where KEY hashes
everything that goes into it (suite, mirrors, package list, directories made),
so a changed package list builds a new one and never reuses a stale one. It is
built by cache.cached_build (an flock, a temporary directory renamed into place
when complete: several suites on one machine may ask at once, a killed build
is never used). Mirrors are the machine's own apt sources, never a hard-coded
host. Nothing here writes into a cached tree after the build: users boot it
with ``--volatile=overlay`` or bind it read-only.

    from tests.harness.rootfs import SYSTEMD_IMAGE, build
    root = build(SYSTEMD_IMAGE)   # ~50 s the first time on this machine, then 0 s
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cache import CACHE, cached_build
from .isolation import original_network

SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Image:
    """What goes into one cached rootfs."""

    name: str  # part of the cache directory's name, for people looking at the cache
    packages: tuple[str, ...]
    # Empty directories made after the install (mount points for the tests' binds).
    dirs: tuple[str, ...] = ()
    # None: the machine's own release; else another suite of the same mirrors ("sid").
    suite: str | None = None
    apt_options: tuple[str, ...] = ()  # mmdebstrap --aptopt


# One image for both: a bootable systemd with a user manager (tests/system) and
# systemd-resolved for the standalone resolved tests (tests/harness/resolved.py),
# so one ~50 s build on a fresh machine serves the whole suite.
SYSTEMD_IMAGE = Image(
    name="systemd",
    packages=(
        "systemd", "systemd-sysv", "dbus", "dbus-user-session",
        "systemd-resolved", "libnss-resolve",
        "dnsmasq-base", "dnsutils", "iproute2", "procps", "passwd", "util-linux",
        # namesync's Python: dependencies come as wheels built on the host
        # (pip installs them), libvirt0 for the libvirt binding's wheel.
        "python3", "python3-pip", "libvirt0",
    ),
    dirs=("/etc/systemd/resolved.conf.d", "/namesync-test"),
)

# Debian sid: the newest systemd (>= 261, whose resolved reads static.d/*.rr), for
# the static-records sink's tests. Kept small, it is built on every fresh CI
# machine: no pip (namesync's pure-Python dependencies are unpacked from the
# host's wheels, tests/harness/installed.py), dbus-fast from Debian (the host's
# wheel is built for the host's Python), no dnsutils (resolvectl asks resolved).
SID_IMAGE = Image(
    name="sid",
    suite="sid",
    # The mirror here can be a frozen snapshot, and sid's Release is valid for a week
    # only ("Release file ... is expired"); signatures are still checked.
    apt_options=('Acquire::Check-Valid-Until "false"',),
    packages=(
        "systemd", "systemd-sysv", "dbus", "systemd-resolved", "libnss-resolve",
        "dnsmasq-base", "iproute2", "procps", "python3", "python3-dbus-fast",
    ),
    dirs=("/namesync-test",),
)


def _deb822_lines(text: str) -> list[str]:
    lines: list[str] = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, _, value = raw.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                lines.append(f"deb {uri} {suite} {fields.get('components', 'main')}")
    return lines


def apt_mirrors() -> list[str]:
    """``deb URI SUITE COMPONENTS`` lines of this machine's enabled apt sources."""
    lines: list[str] = []
    for path in sorted(SOURCES_DIR.glob("*.sources")):
        lines += _deb822_lines(path.read_text())
    for path in [SOURCES_LIST, *sorted(SOURCES_DIR.glob("*.list"))]:
        if path.exists():
            for raw in path.read_text().splitlines():
                words = raw.split("#", 1)[0].split()
                if words[:1] == ["deb"]:
                    # "[signed-by=...]" options dropped: mmdebstrap brings its own keyring
                    lines.append(" ".join(w for w in words
                                          if not w.startswith("[") and not w.endswith("]")))
    return lines


def base_suite(mirrors: list[str]) -> str:
    """The distribution's own suite ("bookworm"), not -updates or -security."""
    suites = [line.split()[2] for line in mirrors if len(line.split()) > 2]
    plain = [s for s in suites if "-" not in s and "/" not in s]
    if not plain:
        raise RuntimeError(f"no base suite in the machine's apt sources: {suites}")
    return plain[0]


def mirrors_for(image: Image, mirrors: list[str]) -> tuple[str, list[str]]:
    """The suite to build and its mirror lines: the machine's own, or ``image.suite``
    from the same archives (its -updates/-security lines belong to the machine's release)."""
    base = base_suite(mirrors)
    if image.suite is None:
        return base, mirrors
    lines = []
    for line in mirrors:
        words = line.split()
        if len(words) > 2 and words[2] == base:
            lines.append(" ".join([*words[:2], image.suite, *words[3:]]))
    return image.suite, lines


def cache_key(image: Image, suite: str, mirrors: list[str]) -> str:
    parts = [suite, *mirrors, "packages:", *sorted(image.packages), "dirs:", *sorted(image.dirs)]
    if image.apt_options:
        parts += ["aptopt:", *image.apt_options]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _cache_name(image: Image, suite: str, mirrors: list[str]) -> str:
    return f"rootfs-{image.name}-{cache_key(image, suite, mirrors)}"


def path_for(image: Image) -> Path:
    """Where ``image`` is (or will be) cached on this machine."""
    return CACHE / _cache_name(image, *mirrors_for(image, apt_mirrors()))


def unavailable() -> str | None:
    """Why no rootfs can be built here (None if it can)."""
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed (Debian: apt-get install mmdebstrap)"
    if not apt_mirrors():
        return "no apt sources on this machine to build a Debian rootfs from"
    return None


def build(image: Image = SYSTEMD_IMAGE) -> Path:
    """The cached rootfs for ``image``: built once per machine, then reused as it is."""
    why = unavailable()
    if why:
        raise FileNotFoundError(why)
    suite, mirrors = mirrors_for(image, apt_mirrors())

    def mmdebstrap(out: Path) -> None:
        # "$1" is the new root, expanded by the hook's shell
        made = " ".join(f'"$1"{shlex.quote(d)}' for d in image.dirs)
        hooks = [f"--customize-hook=mkdir -p {made}"] if image.dirs else []
        hooks += [f"--aptopt={o}" for o in image.apt_options]
        r = subprocess.run(
            [*original_network(), "mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
             f"--include={','.join(image.packages)}", *hooks, suite, str(out), *mirrors],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if r.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({r.returncode}):\n{r.stderr[-4000:]}")

    return cached_build(_cache_name(image, suite, mirrors), mmdebstrap, note=f"{image}")
