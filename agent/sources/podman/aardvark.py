"""The fast path: netavark's aardvark-dns config files, parsed and watched.

For every DNS-enabled network with a running container, netavark keeps one
file named after the network in the aardvark-dns config directory (rootful:
``/run/containers/networks/aardvark-dns``) and writes a container's line
*before* ``podman run`` returns, while Podman's (file-backed, polled) event
stream reports the start up to ~250 ms later. Format, as written by netavark
1.4 (this machine) and later:

    GATEWAY[,GATEWAY...][ DNSSERVER,...]
    CONTAINER_ID IPV4[,IPV4...] IPV6[,IPV6...] NAME[,ALIAS...][ DNSSERVER,...]

one line per container, an empty field where a family has no address; the
names are the container name (the pod name for a pod's infra container), then
its aliases on that network, including its short id.

These files are a hint, not the truth: inspect stays authoritative (see
ledger.py). They are read defensively: a file that does not parse contributes
nothing (the source says so in status and falls back to events for that
network); a file caught mid-write (netavark appends lines and rewrites in
place, not by rename) is read again when its writer closes it.

netavark copies names into the file as they are, and Podman's REST API lets
a client give a network alias with a newline in it: one container can then
write a second, well-formed line that claims any id, address and name. So a
line is only believed when it is what netavark writes for one container
(``vet``): one line per id, and the short id Podman appends as the last name
of every line belongs to that line's id. An alias with a newline always
breaks one of the two, because what follows the newline ends with the short
id of the container that wrote it (and netavark, which removes lines by
their id, leaves that line behind when the writer goes). The lines that
break them are refused
(shown in status), and a file with a refused line publishes nothing from the
fast path: which of its other lines came from the same forgery cannot be
told, so that network waits for Podman's events and inspect.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from agent.model.record import Address, AddressError, parse_address
from agent.sources import parsed_dir
from agent.sources.parsed_dir import DirView, FileFormat, ParsedDir

from .view import ContainerView, NetworkView

PID_FILE = "aardvark.pid"  # aardvark-dns's own pid, beside the network files
LOCK_FILE = "aardvark.lock"  # in the parent directory: netavark holds it while committing
MAX_FILE_BYTES = 4 << 20  # ~40,000 containers; anything bigger is not netavark's
_ID = re.compile(r"[0-9a-f]{64}")
# Podman network names; anything else in the directory is not a network file.
_NETWORK = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")


class AardvarkFormatError(ValueError):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


# Raised for a file being written (empty, or its last line has no newline yet).
Incomplete = parsed_dir.Incomplete


@dataclass(frozen=True, slots=True)
class Entry:
    container_id: str
    ipv4: tuple[IPv4Address, ...]
    ipv6: tuple[IPv6Address, ...]
    names: tuple[str, ...]  # container (or pod) name first, then aliases
    line: int = field(default=0, compare=False)  # where in its file, for refusals


@dataclass(frozen=True, slots=True)
class LineRefusal:
    """One line of a network's file that does not stand for what its container is."""

    network: str
    entry: Entry
    reason: str


@dataclass(frozen=True, slots=True)
class NetworkFile:
    network: str
    gateways: tuple[Address, ...]
    entries: tuple[Entry, ...]


def _addresses(text: str, line: int, what: str) -> list[Address]:
    if not text:
        return []
    out = []
    for raw in text.split(","):
        try:
            out.append(parse_address(raw))
        except AddressError as e:
            raise AardvarkFormatError(line, f"{what}: {e.reason} (in {raw!r})") from None
    return out


def _v4(addr: Address, line: int) -> IPv4Address:
    if not isinstance(addr, IPv4Address):
        raise AardvarkFormatError(line, f"IPv6 address {addr} in the IPv4 field")
    return addr


def _v6(addr: Address, line: int) -> IPv6Address:
    if not isinstance(addr, IPv6Address):
        raise AardvarkFormatError(line, f"IPv4 address {addr} in the IPv6 field")
    return addr


def _names(text: str, line: int) -> tuple[str, ...]:
    names = tuple(text.split(","))
    if not text or any(not n for n in names):
        raise AardvarkFormatError(line, f"empty name in {text!r}")
    return names


def parse_network_file(network: str, data: bytes) -> NetworkFile:
    """Parse one network's file; raises AardvarkFormatError or Incomplete."""
    if len(data) > MAX_FILE_BYTES:
        raise AardvarkFormatError(0, f"file is {len(data)} bytes, more than {MAX_FILE_BYTES}")
    if not data or not data.endswith(b"\n"):
        raise Incomplete()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AardvarkFormatError(data[: e.start].count(b"\n") + 1, "not UTF-8") from None
    lines = text[:-1].split("\n")
    for i, line in enumerate(lines, 1):
        if not line.isprintable():
            raise AardvarkFormatError(i, "control character")
    head = lines[0].split(" ")
    if len(head) > 2:
        raise AardvarkFormatError(1, f"expected GATEWAYS [DNS_SERVERS], got {len(head)} fields")
    gateways = _addresses(head[0], 1, "gateway")
    if not gateways:
        raise AardvarkFormatError(1, "no gateway")
    if len(head) == 2:
        _addresses(head[1], 1, "DNS server")
    entries = tuple(_entry(line, i) for i, line in enumerate(lines[1:], 2))
    return NetworkFile(network, tuple(gateways), entries)


def _entry(line: str, i: int) -> Entry:
    fields = line.split(" ")
    if len(fields) not in (4, 5):
        raise AardvarkFormatError(
            i, f"expected ID IPV4S IPV6S NAMES [DNS_SERVERS], got {len(fields)} fields")
    cid, v4, v6, names = fields[:4]
    if not _ID.fullmatch(cid):
        raise AardvarkFormatError(i, f"not a container id: {cid[:80]!r}")
    ipv4 = tuple(_v4(a, i) for a in _addresses(v4, i, "IPv4"))
    ipv6 = tuple(_v6(a, i) for a in _addresses(v6, i, "IPv6"))
    if len(fields) == 5:
        _addresses(fields[4], i, "DNS server")
    return Entry(cid, ipv4, ipv6, _names(names, i), i)



_SHORT_ID = re.compile(r"[0-9a-f]{12}")


def _line_problem(e: Entry, lines_of: Mapping[str, int], shorts: Mapping[str, str],
                  named_by: Mapping[str, int], marked: bool,
                  shared: frozenset[str]) -> str | None:
    if lines_of[e.container_id] > 1:
        return (f"{lines_of[e.container_id]} lines for container {e.container_id[:12]}: "
                "netavark writes one (a network alias with a newline in it?)")
    own = e.container_id[:12]
    if own in shared:
        # A forged line can borrow its writer's short id as the start of its own
        # id, so the short id netavark appends would look like the line's own.
        return (f"another line's container id also starts with {own}: one of them "
                "comes from a network alias with a newline in it")
    for n in e.names:
        if n != own and shorts.get(n, e.container_id) != e.container_id:
            return (f"names {n}, the short id of another container in this file "
                    "(a network alias with a newline in it?)")
    if own in named_by:
        return (f"its short id ends line {named_by[own]}: one of its network aliases "
                "has a newline in it")
    last = e.names[-1]
    if last != own and _SHORT_ID.fullmatch(last):
        # Lingers after its writer is gone: netavark removes lines by their id.
        return (f"ends with the short id {last} of another container "
                "(a network alias with a newline in it?)")
    if marked and last != own:
        return ("does not end with its container's short id, as every other line does "
                "(cut short by a newline in a network alias?)")
    return None


def vet(f: NetworkFile) -> tuple[LineRefusal, ...]:
    """The lines of ``f`` that cannot be tied to one real container (module docstring)."""
    lines_of: dict[str, int] = {}
    for e in f.entries:
        lines_of[e.container_id] = lines_of.get(e.container_id, 0) + 1
    shorts = {cid[:12]: cid for cid in lines_of}
    prefixes = Counter(cid[:12] for cid in lines_of)
    shared = frozenset(p for p, n in prefixes.items() if n > 1)
    named_by = {n: e.line for e in f.entries for n in e.names
                if n in shorts and n != e.container_id[:12]}
    # Podman appends the short id to every line it writes; a file where some line
    # ends with its own shows that this writer does it, so a line without is cut.
    marked = any(e.names[-1] == e.container_id[:12] and lines_of[e.container_id] == 1
                 for e in f.entries)
    out = []
    for e in f.entries:
        why = _line_problem(e, lines_of, shorts, named_by, marked, shared)
        if why is not None:
            out.append(LineRefusal(f.network, e, why))
    return tuple(out)


def container_views(files: Iterable[NetworkFile]) -> dict[str, ContainerView]:
    """What the (vetted) files say each container publishes, in the terms inspect uses."""
    names: dict[str, str] = {}
    nets: dict[str, list[NetworkView]] = {}
    for f in sorted(files, key=lambda f: f.network):
        for e in f.entries:
            names.setdefault(e.container_id, e.names[0])
            nets.setdefault(e.container_id, []).append(
                NetworkView(f.network, (*e.ipv4, *e.ipv6), e.names[1:]))
    return {cid: ContainerView(cid, names[cid], tuple(nets[cid])) for cid in sorted(names)}


# --- the directory (agent/sources/parsed_dir.py follows and reads it) ---------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the directory says now."""

    views: Mapping[str, ContainerView] = field(default_factory=dict)
    # network -> why its file is not used; those networks fall back to events.
    problems: Mapping[str, str] = field(default_factory=dict)
    # Every container id some file has a line for, believed or not: once the
    # Podman service is gone, the only witness of which containers still exist.
    present: frozenset[str] = frozenset()
    refused: tuple[LineRefusal, ...] = ()
    lines: tuple[tuple[str, Entry], ...] = ()  # (network, line) of every parsed file


def _network_key(name: str) -> str | None:
    return name if name != PID_FILE and _NETWORK.fullmatch(name) else None


LOCK_WAIT_S = 1.0


@contextlib.contextmanager
def _commit_lock(directory: Path) -> Iterator[None]:
    """netavark's commit lock, shared: no reading a file while a commit appends to it.

    Best effort: without a lock file (another netavark version), or if someone
    holds it far longer than a commit takes, read anyway; a partial last line
    is still recognised, and the writer's close brings another read.
    """
    try:
        fd = os.open(directory.parent / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)  # a commit takes well under a millisecond
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def _commit_lock_now(directory: Path) -> Iterator[bool]:
    """``_commit_lock`` if it is free this instant (or there is none): whether it is held."""
    try:
        fd = os.open(directory.parent / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


# A refused file contributes nothing (its network falls back to events): no last good.
AARDVARK_FILES = FileFormat(key=_network_key, parse=parse_network_file,
                            max_bytes=MAX_FILE_BYTES, keep_last_good=False,
                            read_lock=_commit_lock, read_lock_now=_commit_lock_now)


def snapshot_of(view: DirView[NetworkFile]) -> Snapshot:
    """What the files prove: vetted views, problems per network, every id present."""
    problems = dict(view.refused)
    trusted: list[NetworkFile] = []
    refused: list[LineRefusal] = []
    for name, f in sorted(view.files.items()):
        bad = vet(f)
        if bad:
            refused += bad
            problems[name] = (f"line {bad[0].entry.line} refused: {bad[0].reason}"
                              + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        else:
            trusted.append(f)
    lines = tuple((f.network, e) for _, f in sorted(view.files.items()) for e in f.entries)
    present = frozenset(e.container_id for _, e in lines)
    return Snapshot(container_views(trusted), problems, present, tuple(refused), lines)


class AardvarkWatcher:
    """netavark's directory, followed into existence, as a Snapshot on every change."""

    def __init__(self, directory: Path, on_change: Callable[[Snapshot], None]) -> None:
        self.directory = directory
        self.on_change = on_change
        self._dir = ParsedDir(directory, AARDVARK_FILES, self._changed)

    @property
    def watching(self) -> Path | None:
        """The directory, or the ancestor waited on until it exists."""
        return self._dir.watching

    @property
    def present(self) -> bool:
        return self._dir.view.present

    def snapshot(self) -> Snapshot:
        return snapshot_of(self._dir.view)

    async def run(self) -> None:
        await self._dir.run()

    def _changed(self, new: DirView[NetworkFile], _old: DirView[NetworkFile]) -> None:
        self.on_change(snapshot_of(new))
