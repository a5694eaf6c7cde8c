"""What the man pages and shell completions are generated from: the real argument parsers.

Both namesync commands describe themselves with argparse; this module reads
those parsers into a plain tree (options, positionals, subcommands) so that the
generators never drift from what the commands accept.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

# Options whose value is a file system path: completed as files.
PATH_METAVARS = frozenset({"PATH", "FILE", "SOCKET", "DIR"})


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]  # "--config", "-c"
    help: str
    metavar: str | None  # None: a flag without a value
    choices: tuple[str, ...] = ()

    @property
    def takes_path(self) -> bool:
        return self.metavar in PATH_METAVARS and not self.choices


@dataclass(frozen=True)
class Positional:
    name: str
    help: str
    choices: tuple[str, ...] = ()
    optional: bool = False


@dataclass(frozen=True)
class Command:
    name: str  # "agentctl", or a subcommand's name
    help: str  # one line
    description: str
    options: tuple[Option, ...]
    positionals: tuple[Positional, ...] = ()
    subcommands: tuple[Command, ...] = field(default=())
    epilog: str = ""


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {"default": action.default, "prog": "", "choices": action.choices}
    return text


def _choices(action: argparse.Action) -> tuple[str, ...]:
    return tuple(str(c) for c in action.choices) if action.choices else ()


def _option(action: argparse.Action) -> Option:
    takes_value = action.nargs != 0
    metavar = None
    if takes_value:
        raw = action.metavar if action.metavar is not None else action.dest.upper()
        metavar = raw if isinstance(raw, str) else " ".join(raw)
    return Option(tuple(action.option_strings), _help(action), metavar, _choices(action))


def _positional(action: argparse.Action) -> Positional:
    name = action.metavar if isinstance(action.metavar, str) else action.dest
    return Positional(name.upper(), _help(action), _choices(action),
                      optional=action.nargs in ("?", "*"))


def _subcommands(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> list[Command]:
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    return [command(sub, name=name, help=helps.get(name, ""))
            for name, sub in action.choices.items()]


def command(p: argparse.ArgumentParser, *, name: str | None = None, help: str = "") -> Command:
    """``p`` (and its subcommands) as a Command tree; --help is left out.

    argparse has no public way to list a parser's arguments: this reads
    ``_actions`` and the subparsers action, stable since Python 3.2.
    """
    options: list[Option] = []
    positionals: list[Positional] = []
    subs: list[Command] = []
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            subs += _subcommands(action)
        elif action.option_strings:
            options.append(_option(action))
        else:
            positionals.append(_positional(action))
    return Command(name or p.prog, help or (p.description or "").split("\n\n")[0],
                   p.description or "", tuple(options), tuple(positionals), tuple(subs),
                   p.epilog or "")


def all_commands() -> list[Command]:
    """namesync-agent and agentctl, read from their parsers."""
    from agent.cli import agentctl
    from agent.daemon import main

    return [command(main.parser()), command(agentctl.build_parser())]
