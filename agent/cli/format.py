"""Human rendering of the status document: short, aligned, problems first-class."""

from __future__ import annotations

from typing import Any


def _age(iso: str | None) -> str:
    return iso.replace("T", " ").rstrip("Z").split(".")[0] + "Z" if iso else "never"


def _uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def format_status(doc: dict[str, Any]) -> str:
    d = doc["daemon"]
    out: list[str] = []
    state = "ready" if d["ready"] else "starting"
    out.append(f"namesync {d['version']}  pid {d['pid']}  up {_uptime(d['uptime_s'])}  {state}")
    out.append(f"config   {d['config']}  (loaded {_age(d['config_loaded'])})")
    if d.get("config_error"):
        out.append("  ! last reload refused, previous config still running:")
        out.extend("    " + line for line in d["config_error"].splitlines()[1:])
    out.append(
        f"names    {doc['table']['names']}   syncs {d['syncs']}  "
        f"last {_age(d['last_sync'])}{'' if d['last_sync_ok'] else '  (FAILED, retrying)'}"
    )

    nm = doc.get("networkmanager") or {}
    if nm.get("watching"):
        if nm["bus"] != "connected":
            out.append(
                f"resolver D-Bus {nm['bus']}" + (f": {nm['bus_error']}" if nm["bus_error"] else "")
            )
        elif not nm["running"]:
            out.append("resolver NetworkManager not running")
        else:
            pid = nm["dnsmasq_pid"]
            out.append(
                f"resolver NetworkManager dns={nm['dns_mode']}"
                + (f", its dnsmasq pid {pid}" if pid else "")
            )
        if nm.get("advice"):
            out.append(f"  ! {nm['advice']}")

    out.append("")
    out.append("SOURCES")
    for s in doc["sources"]:
        out.append(
            f"  {s['name']:<24} {s['state']:<13} {s['objects']:>5} objects"
            f"   last event {_age(s['last_event'])}"
        )
        if s.get("detail"):
            out.append(f"    {s['detail']}")
        if s.get("last_error"):
            out.append(f"    last error {_age(s['last_error_at'])}: {s['last_error']}")

    out.append("")
    out.append("SINKS")
    if not doc["sinks"]:
        out.append("  (none enabled)")
    for k in doc["sinks"]:
        out.append(f"  {k['kind']:<11} {k['path']}   {k['names']} names, {k['lines']} lines")
        out.append(
            f"    last write {_age(k['last_write'])}"
            + (
                f" ({k['last_write_method']}, {k['last_write_ms']:.1f} ms)"
                if k.get("last_write_ms") is not None
                else ""
            )
            + f"   writes {k['writes']}, unchanged {k['unchanged']}"
        )
        r = k.get("last_reload")
        if r:
            if r["signalled"]:
                out.append(
                    f"    last reload {_age(r['at'])}: SIGHUP to pid {r['pid']} "
                    f"({r['via']}), {r['latency_ms']:.1f} ms after the change"
                )
            else:
                out.append(f"    last reload {_age(r['at'])}: NOT signalled: {r['reason']}")
        if k.get("warning"):
            out.append(f"    ! warning: {k['warning']}")
        if k.get("refused"):
            out.append(f"    ! refused: {k['refused']}")
        if k.get("last_error"):
            out.append(f"    ! last error {_age(k['last_error_at'])}: {k['last_error']}")

    conflicts = doc["table"]["conflicts"]
    out.append("")
    out.append(f"CONFLICTS ({len(conflicts)})")
    for c in conflicts:
        losers = ", ".join(f"{p['source']}:{p['display'] or p['object']}" for p in c["losers"])
        w = c["winner"]
        out.append(
            f"  {c['name']}: kept by {w['source']}:{w['display'] or w['object']}; "
            f"refused for {losers}"
        )

    rejected = doc["table"]["rejected"]
    out.append("")
    out.append(f"REFUSED NAMES ({len(rejected)})")
    for r in rejected:
        out.append(f"  {r['source']}:{r['display'] or r['object']}: {r['value']!r}: {r['reason']}")
    return "\n".join(out) + "\n"
