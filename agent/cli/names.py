"""Human rendering of ``list``, ``explain`` and ``watch``."""

from __future__ import annotations

import time
from typing import Any

from .text import age, columns, parse_ts, plain


def _who(p: dict[str, Any]) -> str:
    return str(p.get("display") or p.get("object") or "")


def format_list(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    out: list[str] = []
    if doc["names"]:
        rows = [["NAME", "ADDRESSES", "SOURCE", "OBJECT", "SINCE"]]
        rows += [[n["name"], ", ".join(n["addresses"]), n["source"], _who(n),
                  age(n["since"], now)] for n in doc["names"]]
        out += columns(rows, indent="")
    else:
        out.append("no names published" + (f" matching {doc['pattern']!r}"
                                           if doc.get("pattern") else ""))
    misses = [[m["name"], m["source"], _who(m),
               f"lost: kept by {_who(m['winner'])} ({m['winner']['source']})"]
              for m in doc["lost"]]
    misses += [[repr(r["value"]), r["source"], _who(r), f"refused: {r['reason']}"]
               for r in doc["refused"]]
    if misses:
        out += ["", f"NOT PUBLISHED ({len(misses)})"]
        out += columns([["NAME", "SOURCE", "OBJECT", "WHY"], *misses], indent="")
    return "\n".join(out) + "\n"


def _files(doc: dict[str, Any]) -> list[str]:
    out = []
    label = {"dnsmasq": "addn-hosts", "hosts_file": "hosts block"}
    for f in doc["files"]:
        if f["error"]:
            state = f"? {plain(f['error'])}"
        elif f["present"]:
            state = "yes: " + "; ".join(f["lines"])
        else:
            state = "no"
        out.append(f"  {label.get(f['kind'], f['kind']):<11} {f['path']}: {state}")
    return out


def _resolver(doc: dict[str, Any], now: float) -> list[str]:
    r = doc.get("resolver")
    if r is None:
        return ["  resolver    none (the dnsmasq sink is off)"]
    if r["pid"] is None:
        line = f"  resolver    no dnsmasq: {plain(r['problem'] or '')}"
    else:
        reads = {True: "reads the file", False: "NOT configured to read the file",
                 None: "?"}[r["reads_file"]]
        line = (f"  resolver    dnsmasq pid {r['pid']} ({r['via']}) at {r['address']} "
                f"port {r['port']}, {reads}")
    out = [line]
    if r["last_signal"]:
        reason = r["last_signal_reason"] or ""
        sent = "SIGHUP sent" if r["last_signal_sent"] else (
            "NOT signalled" + ("" if reason == r["problem"] else f": {plain(reason)}"))
        out.append(f"              last change {age(r['last_signal'], now)}: {sent}")
    a = doc.get("answer")
    if a is not None:
        if a["error"]:
            out.append(f"  answer      none: {a['error']}")
        else:
            got = " " + ", ".join(a["addresses"]) if a["addresses"] else ""
            out.append(f"  answer      {a['rcode']}{got} ({a.get('ms', 0):.1f} ms, asked now)")
    return out


def _claim(doc: dict[str, Any], now: float) -> list[str]:
    c = doc.get("claim")
    if c is None:
        return ["  claim       nobody"]
    out = [f"  claim       {_who(c)} ({c['source']}), since {age(c['since'], now)}",
           f"  record      {', '.join(c['addresses'])}"]
    for p in doc.get("losers", []):
        out.append(f"  also wanted by {_who(p)} ({p['source']}): lost, the current holder "
                   "keeps the name")
    return out


def _misses(doc: dict[str, Any], now: float) -> list[str]:
    out = []
    for m in doc.get("misses", []):
        text = plain(m["text"])
        if m["kind"] == "gone":
            text += f" {age(m['until'], now)}"
        out.append(f"  nearest miss {text}")
    return out


def format_explain(doc: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    v = doc["verdict"]
    out = [doc["name"] or repr(doc["query"])]
    if doc["name"] is not None:
        z = doc.get("zone")
        out.append(f"  zone        {z['zone']}: {z['publisher']}" if z else
                   "  zone        none of namesync's zones")
        out += _claim(doc, now)
        out += _misses(doc, now)
        out += _files(doc)
        out += _resolver(doc, now)
    out.append(("OK: " if v["ok"] else "NOT OK: ") + v["text"])
    if v.get("fix"):
        out.append(f"fix: {v['fix']}")
    return "\n".join(out) + "\n"


def format_event(ev: dict[str, Any]) -> str:
    t = parse_ts(ev.get("at"))
    clock = time.strftime("%H:%M:%S", time.localtime(t)) if t else "--:--:--"
    kind = ev["event"]
    if kind == "synced":
        return f"{clock}  {ev['names']} names published; watching for changes"
    if kind == "overflow":
        return f"{clock}  ! {ev['reason']}"
    if kind == "refused":
        return (f"{clock}  refused   {ev['value']!r} from {_who(ev)} ({ev['source']}): "
                f"{ev['reason']}")
    sign = {"present": " ", "appeared": "+", "vanished": "-", "changed": "~", "moved": "~"}
    return (f"{clock} {sign.get(kind, '?')} {kind:<9} {ev['name']}  {', '.join(ev['addresses'])}"
            f"  {_who(ev)} ({ev['source']})")
