"""Podman inspect data -> records, with inspect JSON and aardvark files recorded from a real
Podman 4.3 / netavark 1.4 (tests/unit/data/podman, made by the same containers)."""

from __future__ import annotations

import copy
import json
import string
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.model.names import parse_fqdn
from agent.model.record import ObjectState
from agent.sources.podman.aardvark import container_views, parse_network_file
from agent.sources.podman.inspect import Down, InspectError, Live, Pending, verdict
from agent.sources.podman.view import ContainerView, NetworkView, object_state

DATA = Path(__file__).parent / "data" / "podman"
SOURCE = "podman:/run/podman/podman.sock"
ZONE = "dns.podman"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def published(attrs: dict[str, Any], zone: str = ZONE, **kw: Any) -> ObjectState:
    v = verdict(attrs, **kw)
    assert isinstance(v, Live), v
    return object_state(v.view, source=SOURCE, zone=zone)


def table(state: ObjectState) -> dict[str, tuple[str, ...]]:
    return {r.name: tuple(str(a) for a in r.addresses) for r in state.records}


def test_running_container_name_alias_and_ipv6() -> None:
    state = published(load("inspect_running_alias_ipv6"))
    # web_1 -> web-1; the alias "web_1" normalises to the same label and the
    # short id alias is noise: neither becomes a second name.
    assert table(state) == {
        "web-1.dns.podman": ("10.89.90.2", "fd00:90::2"),
        "www.dns.podman": ("10.89.90.2", "fd00:90::2"),
    }
    assert state.rejections == ()
    main, alias = state.records
    assert (main.provenance.kind, main.provenance.display) == ("container", "container web_1")
    assert main.provenance.object_id == load("inspect_running_alias_ipv6")["Id"]
    assert main.provenance.source == SOURCE
    assert (alias.provenance.kind, alias.provenance.display) == (
        "alias", "alias of container web_1")


def test_two_networks_every_address_aliases_per_network() -> None:
    assert table(published(load("inspect_two_networks"))) == {
        "two.dns.podman": ("10.89.90.3", "10.89.91.2", "fd00:90::3"),
        "front.dns.podman": ("10.89.90.3", "fd00:90::3"),  # alias on web-net only
        "db.dns.podman": ("10.89.91.2",),  # alias on db_net only
    }


def test_network_without_dns_still_published() -> None:
    assert table(published(load("inspect_nodns"))) == {"quiet.dns.podman": ("10.89.92.2",)}


def test_paused_container_keeps_its_name() -> None:
    assert table(published(load("inspect_paused"))) == table(
        published(load("inspect_running_alias_ipv6")))


@pytest.mark.parametrize(("fixture", "reason"), [
    ("inspect_host", "uses the host's network (--network host): it has no address of its own"),
    ("inspect_none", "has no network (--network none)"),
])
def test_no_routable_address_is_refused_with_reason(fixture: str, reason: str) -> None:
    attrs = load(fixture)
    state = published(attrs)
    assert state.records == ()
    (rej,) = state.rejections
    assert (rej.value, rej.reason) == (attrs["Name"], reason)
    assert rej.provenance.object_id == attrs["Id"]


def test_user_mode_network_refused() -> None:
    attrs = load("inspect_none")
    attrs["HostConfig"]["NetworkMode"] = "slirp4netns"
    (rej,) = published(attrs).rejections
    assert rej.reason == (
        "user-mode network (slirp4netns): its address is not reachable from the host")


def test_rootless_without_a_published_port_is_refused_with_the_reason() -> None:
    attrs = load("inspect_running_alias_ipv6")
    attrs["NetworkSettings"]["Ports"] = {"80/tcp": None}  # exposed, not published
    state = published(attrs, rootless=True)
    assert state.records == ()
    assert state.rejections[0].reason == (
        "no published port: unreachable outside the rootless network")


def test_rootless_with_only_loopback_ports_is_refused_and_shows_them() -> None:
    attrs = load("inspect_running_alias_ipv6")
    attrs["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8081"}]}
    (rej,) = published(attrs, rootless=True).rejections
    assert rej.reason == ("no published port: unreachable outside the rootless network "
                          "(only loopback-bound ports: 127.0.0.1:8081->80/tcp)")


def test_rootless_with_a_published_port_answers_the_hosts_addresses() -> None:
    """Its own (rootless netns) addresses are never published; the name is a "via host"
    record the system agent fills with the host's addresses."""
    attrs = load("inspect_running_alias_ipv6")
    attrs["NetworkSettings"]["Ports"] = {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}
    state = published(attrs, rootless=True)
    assert state.rejections == ()
    (rec,) = state.records
    assert rec.addresses == ()
    assert rec.provenance.kind == "via-host"
    assert rec.name == f"web-1.{ZONE}"
    assert "0.0.0.0:8080->80/tcp" in rec.provenance.display
    assert "127.0.0.1:5353->53/udp" in rec.provenance.display


def test_rootful_containers_keep_their_addresses_whatever_they_publish() -> None:
    attrs = load("inspect_running_alias_ipv6")
    plain = published(attrs)
    attrs["NetworkSettings"]["Ports"] = {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert published(attrs) == plain


def test_stopped_and_starting_states() -> None:
    assert verdict(load("inspect_exited")) == Down()
    assert verdict(load("inspect_created")) == Pending("created")
    attrs = load("inspect_running_alias_ipv6")
    for state in ("stopping", "removing", "dead", "stopped"):
        attrs["State"]["Status"] = state
        assert verdict(attrs) == Down()
    for state in ("initialized", "configured", "restarting", ""):
        attrs["State"]["Status"] = state
        assert isinstance(verdict(attrs), Pending)


def test_pod_infra_publishes_the_pod_name_and_pod_aliases() -> None:
    pod = load("pod_inspect")
    state = published(load("inspect_pod_infra"), pod_name=pod["Name"])
    assert table(state) == {
        "shop.dns.podman": ("10.89.90.4", "fd00:90::4"),
        "store.dns.podman": ("10.89.90.4", "fd00:90::4"),
    }
    assert state.records[0].provenance.kind == "pod"
    assert state.records[0].provenance.display == "pod shop"
    # Its own generated name (<pod id>-infra) is noise: never published.
    assert not any("infra" in r.name for r in state.records)


def test_pod_infra_without_pod_name_is_not_guessed() -> None:
    with pytest.raises(InspectError, match="pod's name is unknown"):
        verdict(load("inspect_pod_infra"))


def test_pod_member_shares_infra_addresses_not_its_aliases() -> None:
    assert table(published(load("inspect_pod_member"))) == {
        "shop-app.dns.podman": ("10.89.90.4", "fd00:90::4")}


def test_zone_is_configurable() -> None:
    assert set(table(published(load("inspect_two_networks"), zone="ctr.internal"))) == {
        "two.ctr.internal", "front.ctr.internal", "db.ctr.internal"}


def test_fast_path_yields_exactly_what_inspect_yields() -> None:
    """The aardvark lines of the very same containers build identical records: a name the
    fast path published does not change (or flap) when inspect confirms it."""
    files = [parse_network_file(p.name.removeprefix("aardvark_"), p.read_bytes())
             for p in sorted(DATA.glob("aardvark_*"))]
    views = container_views(files)
    for fixture in ("inspect_running_alias_ipv6", "inspect_two_networks"):
        attrs = load(fixture)
        from_files = object_state(views[attrs["Id"]], source=SOURCE, zone=ZONE)
        assert from_files == published(attrs)
    infra = load("inspect_pod_infra")
    from_files = object_state(views[infra["Id"]], source=SOURCE, zone=ZONE)
    # Same names and addresses; only the kind differs (the files cannot tell an
    # infra container), and the rendered hosts lines do not carry it.
    assert table(from_files) == table(published(infra, pod_name="shop"))


def view(name: str, aliases: tuple[str, ...] = (), cid: str = "a" * 64) -> ContainerView:
    return ContainerView(cid, name, (NetworkView("n", (ip_address("10.0.0.5"),), aliases),))


def test_hostile_names_normalised_or_refused() -> None:
    state = object_state(view("Web_App.1", ("ünïcode", "Db_Main", "x" * 70, "aaaaaaaaaaaa")),
                         source=SOURCE, zone=ZONE)
    assert set(table(state)) == {"web-app-1.dns.podman", "db-main.dns.podman"}
    assert {(r.value, r.provenance.kind) for r in state.rejections} == {
        ("ünïcode", "alias"), ("x" * 70, "alias")}
    assert "non-ASCII" in next(r.reason for r in state.rejections if r.value == "ünïcode")

    long = object_state(view("y" * 64, ("ok",)), source=SOURCE, zone=ZONE)
    assert set(table(long)) == {"ok.dns.podman"}  # the alias stands on its own
    assert long.rejections[0].value == "y" * 64
    assert "64 characters" in long.rejections[0].reason


def test_link_local_and_loopback_never_published() -> None:
    v = ContainerView("b" * 64, "c", (NetworkView("n", (ip_address("fe80::1"),
                                                       ip_address("127.0.0.2"))),))
    state = object_state(v, source=SOURCE, zone=ZONE)
    assert state.records == ()
    assert state.rejections[0].reason.startswith("no address on any network")


names = st.text(alphabet=string.printable + "äé\u200b\x00", max_size=80)


@given(name=names, aliases=st.lists(names, max_size=4))
def test_every_published_name_is_valid_and_every_refusal_has_a_reason(
        name: str, aliases: list[str]) -> None:
    state = object_state(view(name, tuple(aliases)), source=SOURCE, zone=ZONE)
    for rec in state.records:
        assert parse_fqdn(rec.name) == rec.name
        assert rec.name.endswith("." + ZONE)
    for rej in state.rejections:
        assert rej.reason
    assert len({r.name for r in state.records}) == len(state.records)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)
PATHS = [("Id",), ("Name",), ("State",), ("State", "Status"), ("IsInfra",), ("HostConfig",),
         ("HostConfig", "NetworkMode"), ("NetworkSettings",), ("NetworkSettings", "Networks"),
         ("NetworkSettings", "Networks", "web-net"),
         ("NetworkSettings", "Networks", "web-net", "IPAddress"),
         ("NetworkSettings", "Networks", "web-net", "Aliases"),
         ("NetworkSettings", "Networks", "web-net", "SecondaryIPAddresses")]


@given(path=st.sampled_from(PATHS), value=json_values)
def test_drifted_inspect_data_is_an_inspect_error_never_a_crash(
        path: tuple[str, ...], value: object) -> None:
    attrs = copy.deepcopy(load("inspect_running_alias_ipv6"))
    target = attrs
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        v = verdict(attrs)
    except InspectError as e:
        assert e.reason
        return
    if isinstance(v, Live):
        object_state(v.view, source=SOURCE, zone=ZONE)


@pytest.mark.parametrize(("ports", "bound"), [
    ({"80/tcp": [{"HostIp": "192.0.2.7", "HostPort": "8080"}],
      "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}]}, ["192.0.2.7"]),
    ({"80/tcp": [{"HostIp": "192.0.2.7", "HostPort": "8080"}],
      "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8443"}]}, []),  # one on all: all
    ({"80/tcp": [{"HostIp": "192.0.2.7", "HostPort": "8080"}],
      "81/tcp": [{"HostIp": "fe80::7", "HostPort": "8081"}]}, ["192.0.2.7"]),
])
def test_rootless_ports_bound_to_one_host_address_answer_only_it(
        ports: dict[str, object], bound: list[str]) -> None:
    attrs = load("inspect_running_alias_ipv6")
    attrs["NetworkSettings"]["Ports"] = ports
    (rec,) = published(attrs, rootless=True).records
    assert rec.provenance.kind == "via-host"
    assert [str(a) for a in rec.addresses] == bound
