"""Man pages generated from the parsers and the config schema.

namesync-agent(8) and agentctl(8) come from the argparse parsers (options,
subcommands, their help), namesync.conf(5) from the config schema; the few
sections a parser cannot know (signals, files) are written here once.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable

from agent.config.load import embedded_default_text

from .parsers import Command, Option, Positional, all_commands

SEE_ALSO = {
    "namesync-agent": ("agentctl", 8, "namesync.conf", 5, "dnsmasq", 8, "systemctl", 1),
    "agentctl": ("namesync-agent", 8, "namesync.conf", 5, "resolvectl", 1),
}
SUMMARY = {
    "namesync-agent": "publish DNS names of libvirt VMs, Podman containers and the host",
    "agentctl": "inspect and control a running namesync-agent",
}

AGENT_SECTIONS = """\
.SH SIGNALS
.TP
.B SIGHUP
Reload the configuration file. A file with errors is refused and the running
configuration kept. Under systemd, use
.BR "systemctl reload namesync" ,
which returns once the new configuration is in force and fails if it was refused.
.TP
.BR SIGTERM ", " SIGINT
Exit cleanly; the published names stay in their files.
.SH FILES
.TP
.I /etc/namesync/config.toml
System configuration, see
.BR namesync.conf (5).
.TP
.I ~/.config/namesync/config.toml
Configuration of a user's own agent (the user unit).
.TP
.I /run/namesync/addn\\-hosts
The names, in hosts format, for dnsmasq's
.BR addn\\-hosts .
.TP
.I /run/namesync/control.sock
Control socket used by
.BR agentctl (8).
.TP
.I /usr/lib/systemd/system/namesync.service
.TQ
.I /usr/lib/systemd/user/namesync.service
The system and the user unit.
"""


def text(s: str) -> str:
    """``s`` safe as roff text: backslashes escaped, no line read as a request."""
    s = s.replace("\\", "\\e")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in s.split("\n"))


def flag(s: str) -> str:
    """An option or command name, hyphens as real minus signs (copy-paste works)."""
    return text(s).replace("-", "\\-")


def paragraphs(description: str) -> list[str]:
    """Blank-line separated paragraphs, each joined into one filled line."""
    out = []
    for para in description.strip().split("\n\n"):
        if para.strip():
            out += [".PP", text(" ".join(para.split()))]
    return out


def _option(o: Option) -> list[str]:
    names = ", ".join(f"\\fB{flag(f)}\\fR" for f in o.flags)
    if o.metavar:
        value = "{" + ",".join(o.choices) + "}" if o.choices else o.metavar
        names += f" \\fI{text(value)}\\fR"
    return [".TP", names, text(o.help)]


def _positional(p: Positional) -> list[str]:
    return [".TP", f"\\fI{text(p.name)}\\fR", text(p.help)]


def _synopsis(c: Command) -> str:
    parts = [f"\\fB{flag(c.name)}\\fR", "[\\fIOPTIONS\\fR]"]
    if c.subcommands:
        parts.append("\\fICOMMAND\\fR [\\fIARGS\\fR]")
    for p in c.positionals:
        parts.append(f"[\\fI{text(p.name)}\\fR]" if p.optional else f"\\fI{text(p.name)}\\fR")
    return " ".join(parts)


def _subcommand(c: Command, inherited: frozenset[Option]) -> list[str]:
    out = [f".SS {flag(c.name)}", text(c.help)]
    if c.description and c.description != c.help:
        out += paragraphs(c.description)
    out += [line for p in c.positionals for line in _positional(p)]
    out += [line for o in c.options if o not in inherited for line in _option(o)]
    return out


def _commands(c: Command) -> list[str]:
    """The COMMANDS section; options every command repeats from the top are said once."""
    top = frozenset(c.options)
    shared = [o for o in c.options if all(o in s.options for s in c.subcommands)]
    out = [".SH COMMANDS"]
    if shared:
        names = ", ".join(f"\\fB{flag(o.flags[0])}\\fR" for o in shared)
        out.append(f"{names} may also be given after the command.")
    return out + [line for s in c.subcommands for line in _subcommand(s, top)]


def _see_also(refs: Iterable[object]) -> list[str]:
    items = list(refs)
    pairs = list(zip(items[::2], items[1::2], strict=True))
    lines = [f".BR {flag(str(n))} ({s})" + ("," if i < len(pairs) - 1 else "")
             for i, (n, s) in enumerate(pairs)]
    return [".SH SEE ALSO", *lines]


EXIT_CODES = re.compile(r"^Exit (?:codes|status):\s*", re.IGNORECASE)


def _epilog(epilog: str) -> list[str]:
    """"Exit codes: 0 this, 1 that, ..." becomes EXIT STATUS; other text, NOTES."""
    m = EXIT_CODES.match(epilog.strip())
    if not m:
        return [".SH NOTES", *paragraphs(epilog)] if epilog.strip() else []
    out = [".SH EXIT STATUS"]
    for item in re.split(r",\s*(?=\d+\s)", epilog.strip()[m.end():].rstrip(".")):
        code, _, meaning = item.partition(" ")
        out += [".TP", f"\\fB{text(code)}\\fR", text(meaning)]
    return out


def command_page(c: Command, version: str, date: str) -> str:
    out = [f'.TH {flag(c.name.upper())} 8 "{date}" "namesync {text(version)}" '
           '"System Administration"',
           ".SH NAME", f"{flag(c.name)} \\- {text(SUMMARY.get(c.name, c.help))}",
           ".SH SYNOPSIS", _synopsis(c),
           ".SH DESCRIPTION", *paragraphs(c.description),
           ".SH OPTIONS", *[line for o in c.options for line in _option(o)]]
    if c.positionals:
        out += [line for p in c.positionals for line in _positional(p)]
    if c.subcommands:
        out += _commands(c)
    out += _epilog(c.epilog)
    page = "\n".join(out) + "\n"
    if c.name == "namesync-agent":
        page += AGENT_SECTIONS
    return page + "\n".join(_see_also(SEE_ALSO.get(c.name, ()))) + "\n"


def _fallback_conf_page(version: str, date: str) -> str:
    """namesync.conf(5) from the embedded defaults, for a schema without a roff renderer."""
    return "\n".join([
        f'.TH NAMESYNC.CONF 5 "{date}" "namesync {text(version)}" "File Formats"',
        ".SH NAME", "namesync.conf \\- namesync configuration file",
        ".SH SYNOPSIS", "/etc/namesync/config.toml", ".br", "~/.config/namesync/config.toml",
        ".SH DESCRIPTION",
        "A TOML file; every key is optional. The defaults, as printed by",
        ".BR \"namesync\\-agent \\-\\-print\\-default\\-config\" :",
        ".PP", ".nf", ".RS", text(embedded_default_text().rstrip("\n")), ".RE", ".fi",
        *_see_also(("namesync-agent", 8, "agentctl", 8)),
    ]) + "\n"


def conf_page(version: str, date: str) -> str:
    """namesync.conf(5): the schema's own reference when the schema has one."""
    try:
        reference = importlib.import_module("agent.config.reference")
    except ImportError:
        return _fallback_conf_page(version, date)
    render: Callable[[str, str], str] = reference.man_page
    return render(version, date)


def pages(version: str, date: str) -> dict[str, str]:
    """File name -> roff source of every page namesync installs."""
    out = {f"{c.name}.8": command_page(c, version, date) for c in all_commands()}
    out["namesync.conf.5"] = conf_page(version, date)
    return out
