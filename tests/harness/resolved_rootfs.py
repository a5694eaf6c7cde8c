"""A cached Debian rootfs with systemd-resolved in it, built with mmdebstrap.

systemd-resolved must never be installed on the machine itself (its postinst
takes /etc/resolv.conf over), so the tests run it from a chroot. Building one
takes ~30 s; it is cached under /var/cache/namesync-tests/ by a key over
everything that goes into it, built under an flock (several engineers' suites
run at once) into a temp dir and renamed into place, so a half-built rootfs
is never used. The mirrors are the machine's own apt sources, never a
hard-coded host.

This is the resolved tests' own small builder; it is meant to be folded into
the shared rootfs builder (tests/harness/rootfs.py) once that exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

CACHE = Path("/var/cache/namesync-tests")
SOURCES_DIR = Path("/etc/apt/sources.list.d")
SOURCES_LIST = Path("/etc/apt/sources.list")
RESOLVED_PACKAGES = ("systemd-resolved", "dbus", "libnss-resolve")
BUILD_TIMEOUT_S = 600


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
    list_files = [SOURCES_LIST, *sorted(SOURCES_DIR.glob("*.list"))]
    for path in list_files:
        if path.exists():
            for raw in path.read_text().splitlines():
                words = raw.split("#", 1)[0].split()
                if words[:1] == ["deb"]:
                    # drop "[signed-by=...]" options: mmdebstrap sets up its own keyring
                    lines.append(" ".join(w for w in words if not w.startswith("[")
                                          and not w.endswith("]")))
    return lines


def _suite(mirrors: list[str]) -> str:
    suites = [line.split()[2] for line in mirrors]
    plain = [s for s in suites if "-" not in s]
    if not plain:
        raise RuntimeError(f"no base suite in the machine's apt sources: {suites}")
    return plain[0]


def build_rootfs(packages: tuple[str, ...] = RESOLVED_PACKAGES) -> Path:
    """The cached rootfs directory holding ``packages`` (built once, then reused)."""
    if shutil.which("mmdebstrap") is None:
        raise FileNotFoundError("mmdebstrap is not installed (apt-get install mmdebstrap)")
    mirrors = apt_mirrors()
    suite = _suite(mirrors)
    key = hashlib.sha256("\n".join([suite, *mirrors, *sorted(packages)]).encode()).hexdigest()
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"rootfs-resolved-{key[:16]}"
    with open(CACHE / f"rootfs-resolved-{key[:16]}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        tmp = target.with_name(target.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        r = subprocess.run(
            ["mmdebstrap", "--variant=minbase", "--mode=root", "--quiet",
             f"--include={','.join(packages)}",
             # Empty mount points the harness binds its own files onto.
             "--customize-hook=mkdir -p $1/etc/systemd/resolved.conf.d $1/namesync-test",
             suite, str(tmp), *mirrors],
            capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"mmdebstrap failed ({r.returncode}):\n{r.stderr[-4000:]}")
        (tmp / ".complete").write_text(key + "\n")
        tmp.rename(target)
        return target
