"""The one-line verdict at the end of ``explain``, and the fix: a pure function of the chain."""

from __future__ import annotations

from typing import Any

from agent.model.names import InvalidName, parse_fqdn
from agent.peer.wire import VIA_HOST

Verdict = dict[str, Any]


def _is_dns_name(value: str) -> bool:
    try:
        parse_fqdn(value)
    except InvalidName:
        return False
    return True

# Nearest misses in the order a user should hear about them: what was asked for
# and refused beats what used to be there, which beats a guess at a typo.
_MISS_ORDER = ("lost", "refused", "stopped", "no_port", "gone", "other_zone", "source_down")


def _v(ok: bool, text: str, fix: str | None = None) -> Verdict:
    return {"ok": ok, "text": text, "fix": fix}


def _file(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((f for f in doc.get("files", []) if f["kind"] == kind), None)


def _without_dnsmasq(doc: dict[str, Any], why: str, wanted: bool) -> Verdict:
    """No dnsmasq serves the name; ``wanted``: the dnsmasq sink is on, so one should."""
    name = doc["name"]
    hosts = _file(doc, "hosts_file")
    if hosts and hosts["present"]:
        return _v(not wanted, f"{name} resolves on this host through the hosts block of "
                  f"{hosts['path']}; no dnsmasq serves it over DNS ({why})",
                  "for VMs and containers, run a dnsmasq that reads the addn-hosts file "
                  "(`agentctl setup` with NetworkManager's dns=dnsmasq)")
    return _v(False, f"{name} is published, but nothing serves it: {why}",
              "start the dnsmasq that reads the addn-hosts file, or `agentctl setup`")


def _wrong_answer(doc: dict[str, Any], got: str) -> Verdict:
    res = doc["resolver"]
    who = f"dnsmasq pid {res['pid']} ({res['address']} port {res['port']})"
    if res.get("last_signal_sent") is False:
        return _v(False, f"{who} answers {got}: it was not signalled after the last change "
                  f"({res['last_signal_reason']})",
                  "point [dnsmasq] pid_file at the dnsmasq that reads the file, then "
                  "`agentctl reload`")
    if res.get("reads_file") is False:
        return _v(False, f"{who} answers {got}: it is not configured to read {res['file']}",
                  "`agentctl setup` (NetworkManager), or add addn-hosts="
                  f"{res['file']} and local=/ZONE/ to that dnsmasq's config and restart it")
    return _v(False, f"{who} answers {got}, not what namesync publishes",
              "check that dnsmasq can read the file as its unprivileged user (mode 0644, "
              "every directory searchable), then `agentctl reload`")


def _claimed(doc: dict[str, Any]) -> Verdict:
    name, claim = doc["name"], doc["claim"]
    want = sorted(claim["addresses"])
    addn = _file(doc, "dnsmasq")
    if addn is not None and not addn["present"]:
        return _v(False, f"{name} is published but not in {addn['path']}"
                  + (f" ({addn['error']})" if addn.get("error") else ""),
                  "`agentctl status` shows why the last write failed")
    res = doc.get("resolver")
    if res is None and doc.get("mode") == "user":
        # A user agent serves nothing itself: the system agent publishes its table.
        kind = claim.get("kind")
        what = ("as the host's addresses" + (f" among {', '.join(want)}" if want else "")
                if kind == VIA_HOST else f"as {', '.join(want)}")
        return _v(True, f"{name} is published by this user agent {what} and "
                  "pushed to the system agent, which serves it (what it answers: "
                  f"`sudo agentctl explain {name}`)")
    if res is None:
        return _without_dnsmasq(doc, "the dnsmasq sink is off", wanted=False)
    if res["pid"] is None:
        return _without_dnsmasq(doc, res["problem"], wanted=True)
    ans = doc.get("answer")
    if ans is None:
        return _v(True, f"{name} is published as {', '.join(want)} (not asked live)")
    if ans["error"]:
        return _v(False, f"dnsmasq pid {res['pid']} does not answer: {ans['error']}",
                  "check that dnsmasq listens where its command line says")
    got = sorted(ans["addresses"])
    if ans["rcode"] == "NOERROR" and got == want:
        return _v(True, f"{name} resolves to {', '.join(want)} at dnsmasq pid {res['pid']} "
                  f"({res['address']} port {res['port']})")
    return _wrong_answer(doc, ", ".join(got) if got else ans["rcode"] or "nothing")


def _first_miss(misses: list[dict[str, Any]]) -> dict[str, Any] | None:
    def rank(m: dict[str, Any]) -> int:
        kind = m["kind"]
        return _MISS_ORDER.index(kind) if kind in _MISS_ORDER else 2  # source hooks: early
    return min(misses, key=rank) if misses else None


def _fix_for_miss(miss: dict[str, Any], label: str) -> str | None:
    kind = miss["kind"]
    if miss.get("fix"):
        return str(miss["fix"])
    if kind == "refused":
        if _is_dns_name(str(miss.get("value", ""))):
            return None  # refused for what it is, not how it is spelled: the reason says it
        return (f"rename it to a DNS-safe name (letters, digits and inner hyphens, at most "
                f"63), e.g. {label!r}")
    if kind == "gone":
        return "start it again: its name comes back as soon as it runs"
    if kind == "other_zone":
        return f"use {miss['name']}"
    return None


def _nothing(doc: dict[str, Any]) -> Verdict:
    name, zone = doc["name"], doc.get("zone")
    label = name.partition(".")[0]
    if zone is None:
        zones = ", ".join(doc.get("zones", [])) or "none configured"
        return _v(False, f"{name} is in none of namesync's zones ({zones}); "
                  "namesync publishes nothing there",
                  f"ask for {label}.<zone>, or add a [[static]] entry for {name}")
    publisher = zone["publisher"]
    if "Podman" in publisher:
        fix = f"start a container named {label} (podman run --name {label} ...)"
    elif "libvirt" in publisher:
        fix = f"start a libvirt domain named {label}"
    else:
        fix = f"add a [[static]] entry for {name}, then `agentctl reload`"
    return _v(False, f"nothing claims {name} (zone {zone['zone']}: {publisher})", fix)


def _missing(doc: dict[str, Any]) -> Verdict:
    name = doc["name"]
    miss = _first_miss(doc.get("misses", []))
    if miss is None or (miss["kind"] == "source_down" and doc.get("zone") is None):
        return _nothing(doc)
    text = f"{name} is not published: {miss['text']}"
    if miss["kind"] == "other_zone" and doc.get("zone") is None:
        text = f"{name} is in none of namesync's zones; {miss['text']}"
    return _v(False, text, _fix_for_miss(miss, name.partition(".")[0]))


def verdict(doc: dict[str, Any]) -> Verdict:
    if doc.get("name") is None:
        text = f"{doc['query']!r} is not a DNS name: {doc['invalid']}"
        refused = doc.get("misses") or []
        if refused:
            return _v(False, f"{text}; {refused[0]['text']}",
                      _fix_for_miss(refused[0], "a-dns-label"))
        return _v(False, text, "names are dot-separated labels of letters, digits and inner "
                  "hyphens")
    if doc.get("claim"):
        return _claimed(doc)
    return _missing(doc)
