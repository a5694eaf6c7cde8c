"""The config reference, generated from the schema: default.toml, Markdown, roff.

Other parts of namesync call these: ``default_toml()`` is what
``namesync-agent --print-default-config`` prints and what agent/config/default.toml
holds (the RPM installs it); ``markdown()`` is README's reference (between
``BEGIN_MARK`` and ``END_MARK``); ``roff()`` is the body of namesync.conf(5) and
``man_page()`` the whole page. ``python -m agent.config.reference --write``
regenerates default.toml and README's section; tests fail until it is run.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from agent.config.schema import KeyInfo, SectionInfo, sections

BEGIN_MARK = (
    "<!-- BEGIN config reference: generated from agent/config/schema.py by "
    "`python -m agent.config.reference --write`; do not edit by hand -->"
)
END_MARK = "<!-- END config reference -->"
WIDTH = 78

_TOML_HEADER = """\
# namesync configuration (/etc/namesync/config.toml; per user:
# ~/.config/namesync/config.toml). Every key is optional; the values below
# are the defaults. Reload with `systemctl reload namesync` (SIGHUP): a
# config with errors is refused and the running one kept. A missing file
# means these defaults; an empty one is refused (it looks like a torn save).
"""


def _value(k: KeyInfo) -> str:
    return k.key.kind.toml(k.key.example if k.required else k.default)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ")


def _toml_key(k: KeyInfo, commented: bool) -> list[str]:
    lines = _comment(k.key.doc)
    if k.key.per_user:
        lines += _comment(f"Default for a non-root agent: {k.key.per_user}.")
    off = "# " if commented or k.key.per_user else ""
    line = f"{off}{k.name} = {_value(k)}"
    kind = "  # " + k.key.kind.describe().replace("`", "")
    return [*lines, line + kind if len(line + kind) <= WIDTH else line]


def _toml_section(sec: SectionInfo) -> list[str]:
    head = [*_comment(sec.doc), f"# [[{sec.name}]]"] if sec.array else [
        f"[{sec.name}]", *_comment(sec.doc)
    ]
    lines = ["", *head]
    for k in sec.keys:
        lines += ["#" if sec.array else "", *_toml_key(k, commented=sec.array)]
    return lines


def default_toml() -> str:
    """The default config file: every section and key, with its default and doc."""
    lines = _TOML_HEADER.splitlines()
    for sec in sections():
        lines += _toml_section(sec)
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_default(k: KeyInfo) -> str:
    if k.required:
        return f"required, e.g. `{_value(k)}`"
    text = f"`{_value(k)}`"
    if k.key.per_user:
        text += f" (non-root: `{k.key.per_user}`)"
    return text


def markdown() -> str:
    """README's config reference: one table per section, every key."""
    out: list[str] = []
    for sec in sections():
        title = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
        out += [f"**`{title}`** {_md_cell(sec.doc)}", ""]
        out += ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for k in sec.keys:
            cells = (f"`{k.name}`", k.key.kind.describe(), _md_default(k), k.key.doc)
            out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
        out.append("")
    return "\n".join(out)


def _roff_text(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # A line starting with . or ' would be read as a request.
    return "\\&" + text if text[:1] in (".", "'") else text


def roff() -> str:
    """The sections and keys of namesync.conf(5), as roff (man macros), no page header."""
    out = [".SH SECTIONS AND KEYS"]
    for sec in sections():
        title = f"[[{sec.name}]]" if sec.array else f"[{sec.name}]"
        out += [f".SS {_roff_text(title)}", _roff_text(sec.doc.replace("\n", " "))]
        for k in sec.keys:
            default = "required" if k.required else f"default \\fB{_roff_text(_value(k))}\\fR"
            if k.key.per_user:
                default += f" (non\\-root: {_roff_text(k.key.per_user)})"
            out += [
                ".TP",
                f".B {_roff_text(k.name)}",
                f"{_roff_text(k.key.kind.describe())}; {default}.",
                ".br",
                _roff_text(k.key.doc),
            ]
    return "\n".join(out) + "\n"


def man_page(version: str, date: str) -> str:
    """namesync.conf(5), complete."""
    return (
        f'.TH NAMESYNC.CONF 5 "{date}" "namesync {_roff_text(version)}" "File Formats"\n'
        ".SH NAME\nnamesync.conf \\- namesync configuration file\n"
        ".SH SYNOPSIS\n/etc/namesync/config.toml\n.br\n~/.config/namesync/config.toml\n"
        ".SH DESCRIPTION\n"
        "A TOML file. Every key is optional; a missing file means the defaults below, an "
        "empty file is refused. An unknown key, a value of the wrong type, an invalid name "
        "or address, or a duplicate name is an error that names its key; the daemon then "
        "refuses to start, and a reload (SIGHUP) keeps the running config.\n"
        ".B namesync\\-agent \\-\\-print\\-default\\-config\nprints the defaults, "
        ".B namesync\\-agent \\-\\-check\\-config\nvalidates a file.\n"
        + roff()
        + ".SH SEE ALSO\n.BR namesync\\-agent (8),\n.BR agentctl (1)\n"
    )


def replace_marked(text: str, body: str) -> str:
    """``text`` with what lies between the markers replaced by ``body``."""
    start = text.index(BEGIN_MARK) + len(BEGIN_MARK)
    end = text.index(END_MARK)
    return text[:start] + "\n" + body + text[end:]


def marked(text: str) -> str:
    return text[text.index(BEGIN_MARK) + len(BEGIN_MARK) + 1 : text.index(END_MARK)]


def _write(root: Path) -> None:
    (root / "agent" / "config" / "default.toml").write_text(default_toml(), encoding="utf-8")
    readme = root / "README.md"
    readme.write_text(replace_marked(readme.read_text(encoding="utf-8"), markdown()), "utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.config.reference", description=__doc__)
    p.add_argument("what", nargs="?", choices=["toml", "markdown", "roff"], default="toml")
    p.add_argument("--write", action="store_true", help="regenerate default.toml and README")
    args = p.parse_args(argv)
    if args.write:
        _write(Path(__file__).resolve().parents[2])
        return 0
    sys.stdout.write({"toml": default_toml, "markdown": markdown, "roff": roff}[args.what]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
