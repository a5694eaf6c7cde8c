"""One verdict for the whole daemon, from its status document: healthy, degraded, starting.

``agentctl status`` exits on it the way ``systemctl is-active`` users expect
(0 healthy, 1 degraded or starting), so what counts as degraded is decided
here, once, from the same document ``--json`` prints. Each problem is one
line with the fix where one is known.
"""

from __future__ import annotations

from typing import Any

from agent.cli.text import parse_ts

Problem = dict[str, str | None]


def _problem(what: str, problem: str, fix: str | None = None) -> Problem:
    return {"what": what, "problem": problem, "fix": fix}


def _without_fix(text: str, fix: str | None) -> str:
    """Sources word their errors 'reason (fix)'; the fix gets its own line here."""
    return text[: -len(fix) - 3] if fix and text.endswith(f" ({fix})") else text


def _source_problems(src: dict[str, Any]) -> list[Problem]:
    if src["state"] not in ("disconnected", "starting"):
        return []
    why = src.get("last_error") or src.get("detail") or "not connected"
    fix = src.get("fix")
    return [_problem(f"source {src['name']}", f"{src['state']}: {_without_fix(why, fix)}", fix)]


def sink_failing(sink: dict[str, Any], last_sync_ok: bool) -> bool:
    if "error_active" in sink:
        return bool(sink["error_active"])
    if last_sync_ok or not sink.get("last_error_at"):
        return False
    failed = parse_ts(sink["last_error_at"]) or 0.0
    return failed >= (parse_ts(sink.get("last_write")) or 0.0)


def _sink_problems(sink: dict[str, Any], last_sync_ok: bool) -> list[Problem]:
    what = f"{sink['kind']} {sink['path']}"
    out = []
    if sink.get("refused"):
        out.append(_problem(what, f"refused: {sink['refused']}",
                            "fix the namesync marker lines by hand; namesync rewrites the block"))
    elif sink_failing(sink, last_sync_ok):
        out.append(_problem(what, f"failing: {sink['last_error']}"))
    reload = sink.get("last_reload")
    if reload and not reload["signalled"]:
        out.append(_problem(
            what, f"dnsmasq not signalled: {reload['reason']}",
            "start the dnsmasq that reads this file, or point [dnsmasq] pid_file at its pid file",
        ))
    return out


def assess(doc: dict[str, Any]) -> dict[str, Any]:
    d = doc["daemon"]
    problems: list[Problem] = []
    if d.get("config_error"):
        first = d["config_error"].splitlines()[0]
        problems.append(_problem("config", f"last reload refused ({first}); "
                                 "the previous config is still running",
                                 "fix the config, then `agentctl reload`"))
    for src in doc["sources"]:
        problems += _source_problems(src)
    for sink in doc["sinks"]:
        problems += _sink_problems(sink, d["last_sync_ok"])
    state = "degraded" if problems else "healthy"
    if not d["ready"]:
        state = "starting"
    return {"state": state, "problems": problems}
