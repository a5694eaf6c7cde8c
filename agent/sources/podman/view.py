"""What one container publishes: its name, its aliases and their addresses, or why not.

Both paths that learn about containers end here, so they cannot disagree on a
name: ``podman inspect`` (authoritative, inspect.py) and netavark's aardvark-dns
files (the fast path, aardvark.py). A container the fast path published first
therefore gets exactly the same records when inspect confirms it, and the
record does not flap.

Rules (README "Podman"):

* ``<container name>.<zone>`` -> every address on every network, IPv4 and IPv6.
  The name is a trusted identifier but Podman allows ``_`` and ``.``:
  normalise_label maps it onto one RFC 1123 label or refuses it.
* Network aliases are further names of the same object, each -> the
  addresses on the networks where it is an alias. Skipped: the short id
  (Podman adds it to every network, it is noise) and an alias that normalises
  to the container's own label (already published).
* A pod's infra container publishes ``<pod name>.<zone>`` (its own generated
  ``<id>-infra`` name is not published); pod members publish their own name
  with the addresses they share with the infra, and no aliases: those belong
  to the namespace's owner, the infra container.
* No routable address (``--network host``/``none``, user-mode networking):
  a Rejection that says why, nothing published.
* Rootless Podman (the user agent): the container's own addresses live in
  the rootless network namespace, unreachable from the host, VMs and other
  containers. What is reachable is a port it publishes on the host, so a
  container with at least one port published on a non-loopback host address
  answers the host's own addresses (a "via host" record, agent/peer/wire.py;
  the system agent fills in what host.dns.host answers; ports bound to some
  host addresses only narrow it to those). No such port: a Rejection saying so.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.model.names import InvalidName, join, normalise_label
from agent.model.record import Address, ObjectState, Provenance, Record, Rejection, usable
from agent.peer.wire import VIA_HOST, bound_addresses

SHORT_ID = 12  # Podman's short container id, added as an alias on every network


@dataclass(frozen=True, slots=True)
class NetworkView:
    network: str
    addresses: tuple[Address, ...]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishedPort:
    host_ip: str  # "" = every host address
    host_port: int
    target: str  # "80/tcp"

    @property
    def loopback_only(self) -> bool:
        return self.host_ip in ("127.0.0.1", "::1", "localhost") or self.host_ip.startswith(
            "127.")

    def __str__(self) -> str:
        ip = self.host_ip or "0.0.0.0"
        host = f"[{ip}]" if ":" in ip else ip
        return f"{host}:{self.host_port}->{self.target}"


@dataclass(frozen=True, slots=True)
class ContainerView:
    """A running container as far as naming is concerned."""

    id: str
    name: str  # Podman's own name; for a pod's infra container, the pod's name
    networks: tuple[NetworkView, ...]
    kind: str = "container"  # "container" or "pod" (an infra container)
    network_mode: str = "bridge"
    shares_netns: bool = False  # pod member / --network container:X
    rootless: bool = False
    ports: tuple[PublishedPort, ...] = ()  # published on the host (-p)

    @property
    def addresses(self) -> tuple[Address, ...]:
        seen: dict[Address, None] = {}
        for net in self.networks:
            seen.update(dict.fromkeys(net.addresses))
        return tuple(seen)


def _unreachable(view: ContainerView) -> str:
    mode = view.network_mode
    if mode == "host":
        return "uses the host's network (--network host): it has no address of its own"
    if mode == "none":
        return "has no network (--network none)"
    if mode.split(":", 1)[0] in ("slirp4netns", "pasta"):
        return f"user-mode network ({mode}): its address is not reachable from the host"
    if mode.startswith(("container:", "ns:")):
        return f"shares a network namespace ({mode}) that has no address"
    return f"no address on any network (network mode {mode or 'unknown'})"


NO_PORT = "no published port: unreachable outside the rootless network"


def _rootless_state(view: ContainerView, source: str, zone: str, what: str) -> ObjectState:
    """A rootless container: the host's addresses if it publishes a port there, else why not."""
    reachable = [p for p in view.ports if not p.loopback_only]
    ports = ", ".join(str(p) for p in view.ports)
    if not reachable:
        why = NO_PORT if not view.ports else f"{NO_PORT} (only loopback-bound ports: {ports})"
        prov = Provenance(source, view.id, view.kind, f"{what} {view.name}")
        return ObjectState(rejections=(Rejection(prov, view.name, why),))
    prov = Provenance(source, view.id, VIA_HOST,
                      f"{what} {view.name} (rootless; the host's addresses, ports {ports})")
    bound = bound_addresses(p.host_ip for p in reachable)
    try:
        return ObjectState((Record(join(normalise_label(view.name), zone), bound, prov),))
    except InvalidName as e:
        return ObjectState(rejections=(Rejection(prov, view.name, e.reason),))


def object_state(view: ContainerView, *, source: str, zone: str) -> ObjectState:
    """The records (and refusals) of one running container."""
    what = "pod" if view.kind == "pod" else "container"
    if view.rootless:
        return _rootless_state(view, source, zone, what)
    prov = Provenance(source, view.id, view.kind, f"{what} {view.name}")
    addresses = tuple(a for a in view.addresses if usable(a))
    if not addresses:
        return ObjectState(rejections=(Rejection(prov, view.name, _unreachable(view)),))

    records: list[Record] = []
    rejections: list[Rejection] = []
    own: str | None = None
    try:
        own = normalise_label(view.name)
        records.append(Record(join(own, zone), addresses, prov))
    except InvalidName as e:
        rejections.append(Rejection(prov, view.name, e.reason))

    if not view.shares_netns:
        alias_records, alias_rejections = _aliases(view, source, zone, what, own)
        records += alias_records
        rejections += alias_rejections
    return ObjectState(tuple(records), tuple(rejections))


def _alias_labels(view: ContainerView, own: str | None
                  ) -> tuple[dict[str, set[Address]], dict[str, str]]:
    """Each alias's label -> the addresses of the networks it is an alias on; refusals."""
    noise = {view.id, view.id[:SHORT_ID]}
    by_label: dict[str, set[Address]] = {}
    refused: dict[str, str] = {}
    for net in view.networks:
        net_addrs = [a for a in net.addresses if usable(a)]
        if not net_addrs:
            continue
        for alias in net.aliases:
            if alias in noise or alias == view.name:
                continue
            try:
                label = normalise_label(alias)
            except InvalidName as e:
                refused[alias] = e.reason
                continue
            if label != own:
                by_label.setdefault(label, set()).update(net_addrs)
    return by_label, refused


def _aliases(view: ContainerView, source: str, zone: str, what: str, own: str | None
             ) -> tuple[list[Record], list[Rejection]]:
    """Network aliases: further names of the same object (module docstring)."""
    alias_prov = Provenance(source, view.id, "alias", f"alias of {what} {view.name}")
    by_label, refused = _alias_labels(view, own)
    records = []
    for label in sorted(by_label):
        try:
            records.append(Record(join(label, zone), tuple(by_label[label]), alias_prov))
        except InvalidName as e:
            refused[label] = e.reason
    return records, [Rejection(alias_prov, alias, why) for alias, why in sorted(refused.items())]
