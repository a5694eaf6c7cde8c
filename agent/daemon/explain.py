"""``agentctl explain NAME``: the whole chain for one name, ending in a verdict and the fix.

Who claims the name (or the nearest miss), the record, whether it is in the
addn-hosts file and the hosts block (read from disk, not assumed), which
dnsmasq serves it and when it was last signalled, and what that dnsmasq
answers right now. The file reads, /proc reads and the DNS question run in
a worker thread.

Sources may offer more nearest misses through an optional method
``near_misses(name) -> list[dict]`` (each dict at least ``kind`` and
``text``): e.g. Podman's stopped container of that name, or a rootless
container with no published port (the user-session source).
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.model.names import InvalidName, parse_fqdn
from agent.plan.table import Table
from agent.sinks.addn_hosts import AddnHostsSink
from agent.sinks.base import Sink
from agent.sinks.hosts_block import MarkerError, split
from agent.sources.base import Source
from agent.sources.podman.view import NO_PORT

from .dnsquery import DnsError, query
from .history import NameHistory
from .resolver_probe import Resolver, find_resolver
from .status import provenance, ts
from .verdict import verdict

if TYPE_CHECKING:
    from agent.config.schema import Config

FILE_BYTES = 64 << 20  # never read more than this of a file to look for one name
NO_PORT_FIX = ("publish a port on a host address (podman run -p 8080:80 ...; a port bound "
               "to 127.0.0.1 only is not reachable from VMs and containers)")


def zones_of(config: Config) -> dict[str, str]:
    """zone -> what publishes into it, from the running config."""
    zones: dict[str, str] = {}
    for z in config.dnsmasq.local_zones:
        zones[z] = "a local zone of dnsmasq ([dnsmasq] local_zones)"
    if config.libvirt.enabled:
        zones[config.libvirt.zone] = "libvirt domains ([libvirt] zone)"
    if config.podman.enabled:
        zones[config.podman.zone] = "Podman containers ([podman] zone)"
    if config.host.enabled:
        zones.setdefault(config.host.name.partition(".")[2], "the host record ([host] name)")
    for s in config.static:
        zones.setdefault(s.name.partition(".")[2], "[[static]] names")
    return {z: why for z, why in zones.items() if z}


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The longest zone ``name`` falls in (``web.alice.dns.podman`` is in ``dns.podman``)."""
    best = None
    for z in zones:
        if (name == z or name.endswith("." + z)) and (best is None or len(z) > len(best)):
            best = z
    return best


def loose(text: str) -> str:
    """A spelling key that matches 'Café_1' with 'cafe-1': what a refused name was meant to be."""
    folded = unicodedata.normalize("NFKD", text)
    return "".join(c for c in folded.lower() if c.isascii() and c.isalnum())


def spelled_alike(key: str, value: str) -> bool:
    """Whether a refused ``value`` was meant to be the label whose loose key is ``key``.

    Equal loose keys ('Café_1' vs 'cafe-1'), or one the start of the other when the
    label is long enough to say so (a 70-character name asked for as its first 63).
    """
    if not key:
        return False
    for v in (loose(value), loose(value.partition(".")[0])):
        if v == key or (min(len(v), len(key)) >= 8 and (v.startswith(key) or key.startswith(v))):
            return True
    return False


@dataclass
class Facts:
    """What the thread gathers: files, resolver, live answers."""

    files: list[dict[str, Any]] = field(default_factory=list)
    resolver: dict[str, Any] | None = None
    query: dict[str, Any] | None = None


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(FILE_BYTES)


def _lines_for(lines: Iterable[bytes], name: str) -> list[str]:
    found = []
    key = name.encode()
    for line in lines:
        fields = line.split(b"#", 1)[0].split()
        if key in (f.lower() for f in fields[1:]):
            found.append(line.decode("utf-8", "replace").strip())
    return found


def file_check(sink: Sink, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": sink.kind, "path": str(sink.path), "present": None,
                           "lines": [], "error": None}
    try:
        data = _read_head(sink.path)
    except FileNotFoundError:
        out["error"] = f"{sink.path} does not exist"
        return out
    except OSError as e:
        out["error"] = f"cannot read {sink.path}: {e.strerror}"
        return out
    if sink.kind == "hosts_file":
        try:
            body = split(data).body
        except MarkerError as e:
            out["error"] = f"malformed namesync markers: {e}"
            return out
        lines: Iterable[bytes] = body or ()
    else:
        lines = data.splitlines()
    out["lines"] = _lines_for(lines, name)
    out["present"] = bool(out["lines"])
    return out


def _resolver_doc(sink: AddnHostsSink) -> tuple[Resolver | None, dict[str, Any]]:
    resolver, why = find_resolver(sink.locator)
    r = sink.status.last_reload
    doc: dict[str, Any] = {
        "kind": "dnsmasq",
        "file": str(sink.path),
        "pid": resolver.pid if resolver else None,
        "via": resolver.via if resolver else None,
        "problem": why or None,
        "address": resolver.address if resolver else None,
        "port": resolver.port if resolver else None,
        "reads_file": (str(sink.path) in resolver.addn_hosts) if resolver else None,
        "last_signal": ts(r.at) if r else None,
        "last_signal_sent": r.sent if r else None,
        "last_signal_pid": r.pid if r else None,
        "last_signal_reason": r.reason if r else None,
    }
    return resolver, doc


def _ask(resolver: Resolver, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"server": resolver.address, "port": resolver.port}
    addrs: list[str] = []
    for rtype in ("A", "AAAA"):
        try:
            reply = query(resolver.address, resolver.port, name, rtype)
        except DnsError as e:
            return {**out, "rcode": None, "addresses": [], "error": str(e)}
        out.setdefault("rcode", reply.rcode)
        out["ms"] = round(reply.ms, 2)
        addrs += reply.addresses
        if reply.rcode != "NOERROR":
            break
    return {**out, "addresses": addrs, "error": None}


def gather(sinks: list[Sink], name: str, live: bool) -> Facts:
    facts = Facts(files=[file_check(s, name) for s in sinks])
    for s in sinks:
        if isinstance(s, AddnHostsSink):
            resolver, facts.resolver = _resolver_doc(s)
            if resolver is not None and live:
                facts.query = _ask(resolver, name)
            break
    return facts


class Explainer:
    def __init__(self, config: Config, table: Table, sources: Iterable[Source],
                 history: NameHistory) -> None:
        self.config = config
        self.table = table
        self.sources = list(sources)
        self.history = history

    def refused(self, name: str) -> list[dict[str, Any]]:
        """Refused spellings of ``name``'s first label (also for a name that is no DNS name)."""
        key = loose(name.partition(".")[0])
        out = []
        for r in self.table.rejections:
            if spelled_alike(key, r.value):
                # A rootless container without a reachable port is refused for what it
                # is, not for its spelling: its own kind and fix.
                no_port = r.reason.startswith(NO_PORT)
                out.append({"kind": "no_port" if no_port else "refused",
                            "fix": NO_PORT_FIX if no_port else None,
                            "value": r.value, "reason": r.reason,
                            "party": provenance(r.provenance),
                            "text": f"{r.provenance.display or r.provenance.object_id} "
                                    f"({r.provenance.source}) wanted {r.value!r}, refused: "
                                    f"{r.reason}"})
        return out

    def _misses(self, name: str) -> list[dict[str, Any]]:
        label = name.partition(".")[0]
        misses = self.refused(name)
        gone = self.history.gone.get(name)
        if gone is not None:
            misses.append({"kind": "gone", "until": ts(gone.until), "since": ts(gone.since),
                           "addresses": [str(a) for a in gone.addresses],
                           "party": provenance(gone.provenance),
                           "text": f"published by {gone.provenance.display} "
                                   f"({gone.provenance.source}) until it went away"})
        for src in self.sources:
            hook = getattr(src, "near_misses", None)
            if callable(hook):
                misses += hook(name)
        for other, e in self.table.entries.items():
            if other != name and other.partition(".")[0] == label:
                misses.append({"kind": "other_zone", "name": other,
                               "addresses": [str(a) for a in e.addresses],
                               "party": provenance(e.provenance),
                               "text": f"{other} is published ({e.provenance.display})"})
        for src in self.sources:
            if src.health.state in ("disconnected", "starting"):
                hint = getattr(src, "fix_hint", None)
                misses.append({"kind": "source_down", "source": src.name,
                               "fix": hint() if callable(hint) else None,
                               "text": f"source {src.name} is {src.health.state}: what it "
                                       "would publish is unknown"})
        return misses

    def static_part(self, raw: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"query": raw, "mode": getattr(self.config, "mode", "system")}
        try:
            name = parse_fqdn(raw.strip())
        except InvalidName as e:
            doc.update(name=None, invalid=e.reason, misses=self.refused(raw.strip().lower()))
            return doc
        zones = zones_of(self.config)
        zone = zone_of(name, zones)
        entry = self.table.entries.get(name)
        conflict = next((c for c in self.table.conflicts if c.name == name), None)
        doc.update(
            name=name,
            invalid=None,
            zone={"zone": zone, "publisher": zones[zone],
                  "local": zone in self.config.dnsmasq.local_zones} if zone else None,
            zones=sorted(zones),
            claim=None if entry is None else {
                "addresses": [str(a) for a in entry.addresses],
                "since": ts(self.history.since.get(name)),
                **provenance(entry.provenance)},
            losers=[provenance(p) for p in conflict.losers] if conflict else [],
            misses=[] if entry is not None else self._misses(name),
        )
        return doc


async def explain(explainer: Explainer, sinks: list[Sink], raw: str,
                  live: bool = True) -> dict[str, Any]:
    doc = explainer.static_part(raw)
    if doc["name"] is not None:
        facts = await asyncio.to_thread(gather, sinks, doc["name"], live)
        doc.update(files=facts.files, resolver=facts.resolver, answer=facts.query)
    else:
        doc.update(files=[], resolver=None, answer=None)
    doc["verdict"] = verdict(doc)
    return doc
