"""Human rendering of the status document: problems first, each said once, ages, columns.

The document may carry sections this version does not know (a later daemon,
the user agent's peers): unknown keys are ignored, never an error.
"""

from __future__ import annotations

import time
from typing import Any

from agent.daemon.health import assess, sink_failing

from .text import age, columns, duration, plain


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _header(doc: dict[str, Any], health: dict[str, Any], now: float) -> list[str]:
    d = doc["daemon"]
    n = len(health["problems"])
    verdict = health["state"] + (f" ({_plural(n, 'problem')})" if n else "")
    who = " (user agent)" if d.get("mode") == "user" else ""
    out = [f"namesync {d['version']}{who}  pid {d['pid']}  up {duration(d['uptime_s'])}  "
           f"{verdict}"]
    out.append(f"config    {d['config']}  loaded {age(d['config_loaded'], now)}")
    t = doc["table"]
    sync = f"last sync {age(d['last_sync'], now)}" + ("" if d["last_sync_ok"] else " (failed)")
    out.append(
        f"names     {t['names']} published, {_plural(len(t['conflicts']), 'conflict')}, "
        f"{len(t['rejected'])} refused; {sync}"
    )
    path = doc.get("dns_path") or {}
    resolver = _resolver(doc.get("networkmanager") or {}, path.get("path"))
    if resolver:
        out.append(f"resolver  {resolver}")
    out.extend(_dns_path(path))
    return out


def _dns_path(p: dict[str, Any]) -> list[str]:
    """Which path serves the names (agent/resolver/path.py), and the resolved route's state."""
    if not p:
        return []
    out = [f"path      {p['path']}: {plain(p['reason'])}"]
    r = p.get("route")
    if r:
        state = "registered" if r["registered"] else "NOT registered"
        out.append(
            f"          link {r['link']} (ifindex {r['ifindex']}, {r['link_address']}) "
            f"-> {r['server']} {' '.join(r['domains'])}: {state}"
        )
        out.append(f"          namesync's dnsmasq pid {r['dnsmasq_pid']}, "
                   f"restarts {r['dnsmasq_restarts']}")
        for key in ("link_error", "registration_error", "dnsmasq_last_exit"):
            if r.get(key):
                out.append(f"          {key.replace('_', ' ')}: {plain(r[key])}")
    s = p.get("static_records")
    if s and s.get("serving"):
        out.append(f"          systemd-resolved {s['version']} (pid {s['pid']}) is sent "
                   "SIGHUP after each change")
    return out


def _resolver(nm: dict[str, Any], path: str | None = None) -> str | None:
    if not nm.get("watching"):
        return None
    if nm["bus"] != "connected":
        text = f"D-Bus {nm['bus']}" + (f": {plain(nm['bus_error'])}"
                                              if nm.get("bus_error") else "")
    elif not nm["running"]:
        text = "NetworkManager not running"
    else:
        pid = nm["dnsmasq_pid"]
        text = f"NetworkManager dns={nm['dns_mode']}" + (f", its dnsmasq pid {pid}" if pid else "")
    # NM's advice ("names reach lookups only through the hosts file") is moot once
    # namesync serves the names through systemd-resolved itself.
    if nm.get("advice") and path != "systemd-resolved":
        text += f"\n          {nm['advice']}"
    return text


def _problems(health: dict[str, Any]) -> list[str]:
    if not health["problems"]:
        return []
    out = ["", "PROBLEMS"]
    for p in health["problems"]:
        out.append(f"  {p['what']}: {plain(p['problem'])}")
        if p.get("fix"):
            out.append(f"    fix: {p['fix']}")
    return out


def _source_note(s: dict[str, Any], now: float, current: bool) -> list[str]:
    notes = []
    if s["state"] == "disconnected" and s.get("names"):
        # Names stay while a source is away (its last snapshot, or netavark's files for
        # Podman): say so, or "disconnected" next to a count of names reads as a lie.
        notes.append(f"still publishing its {_plural(s['names'], 'name')} (last known state)")
    if s.get("detail"):
        notes.append(plain(s["detail"]))
    if s.get("last_error") and not current:
        # A current error is under PROBLEMS; a past one is history worth a line.
        notes.append(_past_error(s, now))
    return [f"    {n}" for n in notes]


def _past_error(x: dict[str, Any], now: float) -> str:
    text = f"last error {age(x['last_error_at'], now)}"
    if x.get("recovered_at"):
        text += f" (recovered {age(x['recovered_at'], now)})"
    return f"{text}: {plain(x['last_error'])}"


def _sources(doc: dict[str, Any], now: float) -> list[str]:
    out = ["", "SOURCES"]
    rows = [["NAME", "STATE", "NAMES", "REFUSED", "LAST EVENT"]]
    notes: list[list[str]] = [[]]
    for s in doc["sources"]:
        names = str(s.get("names", s["objects"]))
        refused = str(s.get("refused", 0) + s.get("lost", 0))
        rows.append([s["name"], s["state"], names, refused, age(s["last_event"], now)])
        current = s.get("error_active", s["state"] in ("disconnected", "starting"))
        notes.append(_source_note(s, now, current))
    for line, extra in zip(columns(rows, right={2, 3}), notes, strict=True):
        out.append(line)
        out.extend(extra)
    return out


def _reload_line(r: dict[str, Any] | None, now: float) -> str | None:
    if not r:
        return None
    if not r["signalled"]:
        return f"    last reload {age(r['at'], now)}: not signalled (see PROBLEMS)"
    line = (f"    last reload {age(r['at'], now)}: SIGHUP to pid {r['pid']} ({r['via']}), "
            f"{r['latency_ms']:.1f} ms after the change")
    if r.get("reread_ms") is not None:
        line += f"; dnsmasq re-read it in {r['reread_ms']:.1f} ms of CPU"
    return line


def _sink(k: dict[str, Any], now: float, last_sync_ok: bool) -> tuple[list[str], list[str]]:
    """The sink's row and the lines under it."""
    if k.get("refused"):
        # A refused file holds whatever the user left in it: no counts to show.
        return [k["kind"], k["path"], "refused (see PROBLEMS)"], []
    row = [k["kind"], k["path"], f"{_plural(k['names'], 'name')}, {_plural(k['lines'], 'line')}"]
    write = f"    last write {age(k['last_write'], now)}"
    if k.get("last_write_ms") is not None:
        write += f" ({k['last_write_method']}, {k['last_write_ms']:.1f} ms)"
    lines = [write + f"; writes {k['writes']}, unchanged {k['unchanged']}"]
    reload = _reload_line(k.get("last_reload"), now)
    if reload:
        lines.append(reload)
    if k.get("warning"):
        lines.append(f"    warning: {plain(k['warning'])}")
    if k.get("last_error") and not sink_failing(k, last_sync_ok):
        lines.append(f"    {_past_error(k, now)}")
    return row, lines


def _sinks(doc: dict[str, Any], now: float) -> list[str]:
    out = ["", "SINKS"]
    if not doc["sinks"]:
        return [*out, "  (none enabled)"]
    ok = doc["daemon"]["last_sync_ok"]
    rows, unders = zip(*(_sink(k, now, ok) for k in doc["sinks"]), strict=True)
    for line, under in zip(columns(list(rows)), unders, strict=True):
        out.append(line)
        out.extend(under)
    return out


def party(p: dict[str, Any]) -> str:
    return f"{p['source']} {p['display'] or p['object']}"


def _table(doc: dict[str, Any]) -> list[str]:
    out = []
    conflicts = doc["table"]["conflicts"]
    if conflicts:
        out += ["", f"CONFLICTS ({len(conflicts)})"]
        rows = [["NAME", "KEPT BY", "REFUSED FOR"]]
        rows += [[c["name"], party(c["winner"]), ", ".join(party(p) for p in c["losers"])]
                 for c in conflicts]
        out += columns(rows)
    rejected = doc["table"]["rejected"]
    if rejected:
        out += ["", f"REFUSED NAMES ({len(rejected)})"]
        rows = [["FROM", "VALUE", "REASON"]]
        rows += [[party(r), repr(r["value"]), r["reason"]] for r in rejected]
        out += columns(rows)
    return out


def format_status(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    health = doc.get("health") or assess(doc)
    out = _header(doc, health, now)
    out += _problems(health)
    out += _sources(doc, now)
    out += _sinks(doc, now)
    out += _table(doc)
    return "\n".join(out) + "\n"
