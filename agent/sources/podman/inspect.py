"""``podman inspect`` data -> what the container publishes (the authoritative path).

Pure: no I/O, so it is tested with inspect JSON recorded from a real Podman.
Inspect data comes from a service namesync does not control, and its shape
drifts between Podman versions: anything unexpected is an InspectError
naming the field, never a crash further down.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.model.record import Address, AddressError, parse_address

from .view import ContainerView, NetworkView, PublishedPort

# Podman's container states. Running and paused containers keep their network
# namespace and addresses (a paused one resumes where it was), so both keep
# their names, as aardvark-dns does.
PUBLISHED_STATES = frozenset({"running", "paused"})
# On the way down or gone: unpublish now, whatever aardvark's files still say.
DOWN_STATES = frozenset({"exited", "stopped", "stopping", "removing", "dead"})
# Anything else (created, configured, initialized, restarting, unknown) is on
# the way up: no verdict yet, the start event or a retry brings one.


class InspectError(ValueError):
    """Inspect data this code does not understand; ``reason`` names the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Live:
    view: ContainerView


@dataclass(frozen=True, slots=True)
class Down:
    # Removed (inspect said 404), not merely stopped: the id can never come
    # back, so its tombstone may be forgotten once aardvark forgets it too.
    gone: bool = False
    # What it was called and how it stopped, for `agentctl explain` ("container web
    # exists but is exited"); not part of the verdict's value.
    name: str = field(default="", compare=False)
    state: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class Pending:
    state: str


Verdict = Live | Down | Pending


def _get(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise InspectError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _address(raw: object, where: str) -> Address | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InspectError(f"{where}: expected a string, got {type(raw).__name__}")
    try:
        return parse_address(raw)
    except AddressError:
        # Not publishable (garbage, scoped, unspecified): the container is then
        # refused for having no address, which status shows; nothing is guessed.
        return None


def _secondary(net: Mapping[str, Any], key: str, where: str) -> list[Address]:
    out = []
    for i, item in enumerate(_get(net, key, list, where, [])):
        if not isinstance(item, Mapping):
            raise InspectError(f"{where}{key}[{i}]: expected an object")
        addr = _address(item.get("Addr"), f"{where}{key}[{i}].Addr")
        if addr is not None:
            out.append(addr)
    return out


def networks(attrs: Mapping[str, Any]) -> tuple[NetworkView, ...]:
    settings = _get(attrs, "NetworkSettings", Mapping, "", {})
    nets = _get(settings, "Networks", Mapping, "NetworkSettings.", {})
    views = []
    for name in sorted(nets):
        net = nets[name]
        where = f"NetworkSettings.Networks[{name!r}]."
        if not isinstance(net, Mapping):
            raise InspectError(f"{where[:-1]}: expected an object")
        addrs = [a for a in (_address(net.get("IPAddress"), f"{where}IPAddress"),
                             _address(net.get("GlobalIPv6Address"), f"{where}GlobalIPv6Address"))
                 if a is not None]
        addrs += _secondary(net, "SecondaryIPAddresses", where)
        addrs += _secondary(net, "SecondaryIPv6Addresses", where)
        aliases = _get(net, "Aliases", list, where, [])
        if not all(isinstance(a, str) for a in aliases):
            raise InspectError(f"{where}Aliases: expected strings")
        views.append(NetworkView(str(name), tuple(addrs), tuple(aliases)))
    return tuple(views)


def ports(attrs: Mapping[str, Any]) -> tuple[PublishedPort, ...]:
    """Ports published on the host (``-p``), from NetworkSettings.Ports."""
    settings = _get(attrs, "NetworkSettings", Mapping, "", {})
    table = _get(settings, "Ports", Mapping, "NetworkSettings.", {})
    out: list[PublishedPort] = []
    for target in sorted(table):
        bindings = table[target]
        if not isinstance(bindings, list):
            continue  # exposed, not published (null)
        for b in bindings:
            if not isinstance(b, Mapping):
                raise InspectError(f"NetworkSettings.Ports[{target!r}]: expected objects")
            host_ip, host_port = b.get("HostIp", ""), b.get("HostPort", "")
            if isinstance(host_ip, str) and isinstance(host_port, str) and host_port.isdigit():
                out.append(PublishedPort(host_ip, int(host_port), str(target)))
    return tuple(out)


def verdict(attrs: Mapping[str, Any], *, rootless: bool = False,
            pod_name: str | None = None) -> Verdict:
    """What one container's inspect data means for its names.

    ``pod_name``: the pod's name, for an infra container (the caller looks it
    up: the container's inspect data has only the pod's id).
    """
    if not isinstance(attrs, Mapping):
        raise InspectError(f"expected an object, got {type(attrs).__name__}")
    cid = _get(attrs, "Id", str, "")
    if not cid:
        raise InspectError("Id: missing")
    state = _get(_get(attrs, "State", Mapping, "", {}), "Status", str, "State.", "")
    if state in DOWN_STATES:
        return Down(name=_get(attrs, "Name", str, "", "").lstrip("/"), state=state)
    if state not in PUBLISHED_STATES:
        return Pending(state)
    name = _get(attrs, "Name", str, "", "").lstrip("/")
    if not name:
        raise InspectError("Name: missing")
    kind = "container"
    if _get(attrs, "IsInfra", bool, "", False):
        if not pod_name:
            raise InspectError(f"infra container {name}: its pod's name is unknown")
        name, kind = pod_name, "pod"
    mode = _get(_get(attrs, "HostConfig", Mapping, "", {}), "NetworkMode", str,
                "HostConfig.", "")
    return Live(ContainerView(
        id=cid,
        name=name,
        networks=networks(attrs),
        kind=kind,
        network_mode=mode,
        shares_netns=mode.startswith("container:"),
        rootless=rootless,
        ports=ports(attrs) if rootless else (),
    ))


def pod_of(attrs: Mapping[str, Any]) -> str | None:
    """The pod id of an infra container (whose name must be looked up), else None."""
    if isinstance(attrs, Mapping) and attrs.get("IsInfra") is True:
        pod = attrs.get("Pod")
        if isinstance(pod, str) and pod:
            return pod
    return None
