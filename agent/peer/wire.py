"""The ``push`` message: a user agent's whole table, as the system agent receives it.

    {"records":  [{"name": "web.alice.dns.podman", "addresses": ["10.0.0.5"],
                   "what": "container web"},
                  {"name": "api.alice.dns.podman", "via": "host",
                   "what": "container api (rootless; ports 0.0.0.0:8080->80/tcp)"}],
     "rejected": [{"value": "db", "reason": "no published port: ...", "what": "container db"}]}

``via: "host"`` means "the host's own addresses": a rootless container (or a
session VM on user-mode networking) is reachable only through ports it
publishes on the host, so its name answers what the system agent's host
record answers. The user agent cannot know those addresses as the system
agent does (it is the system agent's [host] interfaces that count), so it
says "the host" and the system agent fills them in.

Everything here is untrusted on the receiving side: policy.py validates it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from agent.model.record import Address, AddressError, parse_address
from agent.plan.table import Table

# A record whose addresses are the host's (see above): in the user agent's
# own table it has no addresses and this provenance kind.
VIA_HOST = "via-host"
MAX_TEXT = 300  # "what" and "reason" strings: for status only, cut to this


def bound_addresses(hosts: Iterable[str]) -> tuple[Address, ...]:
    """What a via-host name answers in the user agent's table: the host addresses its
    ports are bound to, () for all of the host's (a port bound to every address, or
    to something that is no address, counts as all: what it answered before)."""
    out: list[Address] = []
    for host in hosts:
        try:
            addr = parse_address(host.strip("[]"))
        except AddressError:
            return ()
        if addr.is_unspecified:
            return ()
        out.append(addr)
    # A port also bound to a link-local address: the name answers the others (the
    # system agent refuses a claim naming one); bound to nothing else, it says so.
    reachable = [a for a in out if not (a.is_link_local or a.is_loopback)]
    return tuple(dict.fromkeys(reachable or out))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def push_params(table: Table) -> dict[str, Any]:
    """The push for ``table``: every name it publishes, and what its sources refused."""
    records: list[dict[str, Any]] = []
    for name, entry in table.entries.items():
        prov = entry.provenance
        item: dict[str, Any] = {"name": name, "what": _cut(prov.display or prov.kind)}
        if prov.kind == VIA_HOST:
            item["via"] = "host"
            if entry.addresses:  # its ports are bound to these host addresses only
                item["only"] = [str(a) for a in entry.addresses]
        else:
            item["addresses"] = [str(a) for a in entry.addresses]
        records.append(item)
    rejected = [
        {"value": _cut(r.value), "reason": _cut(r.reason),
         "what": _cut(r.provenance.display or r.provenance.kind)}
        for r in table.rejections
    ]
    return {"records": records, "rejected": rejected}
