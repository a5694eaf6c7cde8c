"""explain's verdict as a pure function of the chain (the live cases run in integration)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agent.daemon.explain import Explainer
from agent.daemon.history import NameHistory
from agent.daemon.verdict import verdict
from agent.model.record import Provenance, Rejection
from agent.plan.table import Table
from agent.sources.podman.view import NO_PORT


def chain(**kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "query": "web.dns.podman", "name": "web.dns.podman", "mode": "system",
        "zone": {"zone": "dns.podman", "publisher": "Podman containers ([podman] zone)"},
        "zones": ["dns.podman"], "claim": {"addresses": ["10.0.0.5"]}, "misses": [],
        "files": [{"kind": "dnsmasq", "path": "/run/namesync/addn-hosts", "present": True,
                   "error": None, "lines": ["10.0.0.5 web.dns.podman"]}],
        "resolver": {"pid": 812, "address": "127.0.0.1", "port": 53, "reads_file": True,
                     "file": "/run/namesync/addn-hosts", "last_signal_sent": True,
                     "last_signal_reason": None, "problem": None},
        "answer": {"rcode": "NOERROR", "addresses": ["10.0.0.5"], "error": None},
    }
    doc.update(kw)
    return doc


def test_ok() -> None:
    v = verdict(chain())
    assert v == {"ok": True, "fix": None, "text": "web.dns.podman resolves to 10.0.0.5 at "
                 "dnsmasq pid 812 (127.0.0.1 port 53)"}


def test_dnsmasq_that_does_not_read_the_file() -> None:
    c = chain(answer={"rcode": "NXDOMAIN", "addresses": [], "error": None})
    c["resolver"]["reads_file"] = False
    v = verdict(c)
    assert not v["ok"]
    assert v["text"] == ("dnsmasq pid 812 (127.0.0.1 port 53) answers NXDOMAIN: it is not "
                         "configured to read /run/namesync/addn-hosts")
    assert v["fix"].startswith("`agentctl setup`")


def test_user_agent_points_at_the_system_agent() -> None:
    v = verdict(chain(mode="user", resolver=None, files=[], answer=None))
    assert v["ok"] and "`sudo agentctl explain web.dns.podman`" in v["text"]


def test_a_user_agents_via_host_name_says_it_answers_the_hosts_addresses() -> None:
    user = {"mode": "user", "resolver": None, "files": [], "answer": None}
    v = verdict(chain(claim={"addresses": [], "kind": "via-host"}, **user))
    assert "published by this user agent as the host's addresses and pushed" in v["text"]
    v = verdict(chain(claim={"addresses": ["192.0.2.7"], "kind": "via-host"}, **user))
    assert "as the host's addresses among 192.0.2.7 and pushed" in v["text"]


def test_a_source_hook_miss_comes_first_with_its_fix() -> None:
    hook = {"kind": "no_port", "text": "container web has no published port: unreachable "
            "outside the rootless network", "fix": "podman run -p 8080:80 ..."}
    other = {"kind": "other_zone", "name": "web.dns.libvirt", "text": "web.dns.libvirt is "
             "published"}
    v = verdict(chain(claim=None, misses=[other, hook]))
    assert v == {"ok": False, "fix": "podman run -p 8080:80 ...",
                 "text": "web.dns.podman is not published: " + hook["text"]}


def test_nothing_claims_a_podman_name() -> None:
    v = verdict(chain(claim=None))
    assert v["fix"] == "start a container named web (podman run --name web ...)"


def test_a_rootless_container_without_a_port() -> None:
    prov = Provenance("peer:1000", "c1", "container", "container web")
    table = Table(rejections=(Rejection(prov, "web", NO_PORT),))
    config = SimpleNamespace(mode="system")
    misses = Explainer(config, table, [], NameHistory()).refused(  # type: ignore[arg-type]
        "web.alice.dns.podman")
    assert [m["kind"] for m in misses] == ["no_port"]
    v = verdict(chain(claim=None, misses=misses))
    assert v["text"] == ("web.dns.podman is not published: container web (peer:1000) wanted "
                         f"'web', refused: {NO_PORT}")
    assert v["fix"].startswith("publish a port on a host address")
