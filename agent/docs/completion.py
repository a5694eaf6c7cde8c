"""bash, zsh and fish completion generated from the argument parsers.

Completes subcommands, every option of the command and of the subcommand in
use, the choices of options and positionals that have them, and file names
for path-valued options (--config, --socket).
"""

from __future__ import annotations

from .parsers import Command, Option, all_commands

SHELLS = ("bash", "zsh", "fish")


def _words(c: Command) -> list[str]:
    return [f for o in c.options for f in o.flags] + [ch for p in c.positionals for ch in p.choices]


def _value_options(c: Command) -> list[Option]:
    found = {f: o for o in c.options if o.metavar for f in o.flags}
    for sub in c.subcommands:
        found.update({f: o for o in sub.options if o.metavar for f in o.flags})
    return list({id(o): o for o in found.values()}.values())


def _bash_value_case(o: Option) -> str:
    pattern = "|".join(o.flags)
    if o.choices:
        reply = f'($(compgen -W "{" ".join(o.choices)}" -- "$cur"))'
    elif o.takes_path:
        reply = '($(compgen -f -- "$cur"))'
    else:
        reply = "()"
    return f"        {pattern}) COMPREPLY={reply}; return ;;"


def bash(c: Command) -> str:
    fn = "_" + c.name.replace("-", "_")
    subs = [s.name for s in c.subcommands]
    top = " ".join(_words(c) + subs)
    lines = [f"# bash completion for {c.name}; generated from its argument parser",
             f"{fn}() {{",
             '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" i',
             "    for ((i = 1; i < COMP_CWORD; i++)); do"]
    if subs:
        lines += [f'        case ${{COMP_WORDS[i]}} in {"|".join(subs)}) '
                  'cmd=${COMP_WORDS[i]}; break ;; esac']
    else:
        lines += ["        :"]
    lines += ["    done", "    case $prev in",
              *[_bash_value_case(o) for o in _value_options(c)],
              "    esac", "    case $cmd in",
              f'        "") COMPREPLY=($(compgen -W "{top}" -- "$cur")) ;;',
              *[f'        {s.name}) COMPREPLY=($(compgen -W "{" ".join(_words(s))}" -- "$cur")) ;;'
                for s in c.subcommands],
              "    esac", "}", f"complete -F {fn} {c.name}"]
    return "\n".join(lines) + "\n"


ZSH_COMMAND_STATE = "'1: :->command'"
ZSH_ARGS_STATE = "'*:: :->args'"


def _zsh_help(text: str) -> str:
    return text.replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]")


def _zsh_option(o: Option) -> list[str]:
    specs = []
    for f in o.flags:
        spec = f"{f}[{_zsh_help(o.help)}]"
        if o.metavar:
            action = f"({' '.join(o.choices)})" if o.choices else (
                "_files" if o.takes_path else " ")
            spec += f":{o.metavar.lower()}:{action}"
        specs.append(f"'{spec}'")
    return specs


def _zsh_arguments(c: Command, extra: list[str]) -> str:
    specs = [s for o in c.options for s in _zsh_option(o)]
    specs += [f"'*:{p.name.lower()}:({' '.join(p.choices)})'" for p in c.positionals if p.choices]
    return " \\\n      ".join(["_arguments -s -S", *specs, *extra])


def zsh(c: Command) -> str:
    fn = "_" + c.name.replace("-", "_")
    lines = [f"#compdef {c.name}", f"# zsh completion for {c.name}; generated from its parser",
             f"{fn}() {{"]
    if not c.subcommands:
        lines += [f"  {_zsh_arguments(c, [])}", "}", f'{fn} "$@"']
        return "\n".join(lines) + "\n"
    lines += ["  local curcontext=$curcontext state line", "  local -a commands",
              "  commands=(",
              *[f"    '{s.name}:{_zsh_help(s.help)}'" for s in c.subcommands], "  )",
              f"  {_zsh_arguments(c, [ZSH_COMMAND_STATE, ZSH_ARGS_STATE])}",
              "  case $state in",
              f"    command) _describe -t commands '{c.name} command' commands ;;",
              "    args)", "      case $line[1] in",
              *[f"        {s.name}) {_zsh_arguments(s, [])} ;;" for s in c.subcommands],
              "      esac ;;", "  esac", "}", f'{fn} "$@"']
    return "\n".join(lines) + "\n"


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(name: str, o: Option, condition: str | None) -> str:
    parts = ["complete", "-c", name]
    if condition:
        parts += ["-n", _fish_quote(condition)]
    for f in o.flags:
        parts += ["-l", f[2:]] if f.startswith("--") else ["-s", f[1:]]
    if o.choices:
        parts += ["-x", "-a", _fish_quote(" ".join(o.choices))]
    elif o.takes_path:
        parts += ["-r", "-F"]
    elif o.metavar:
        parts += ["-x"]
    return " ".join([*parts, "-d", _fish_quote(o.help)])


def fish(c: Command) -> str:
    lines = [f"# fish completion for {c.name}; generated from its argument parser",
             f"complete -c {c.name} -f"]
    lines += [_fish_option(c.name, o, None) for o in c.options]
    for s in c.subcommands:
        lines.append(f"complete -c {c.name} -n __fish_use_subcommand -a {s.name} "
                     f"-d {_fish_quote(s.help)}")
        seen = f"__fish_seen_subcommand_from {s.name}"
        lines += [_fish_option(c.name, o, seen) for o in s.options]
        lines += [f"complete -c {c.name} -n {_fish_quote(seen)} "
                  f"-a {_fish_quote(' '.join(p.choices))}" for p in s.positionals if p.choices]
    return "\n".join(lines) + "\n"


def file_name(shell: str, command: str) -> str:
    """Where each shell looks: bash by command name, zsh _command, fish command.fish."""
    return {"bash": command, "zsh": f"_{command}", "fish": f"{command}.fish"}[shell]


def scripts() -> dict[tuple[str, str], str]:
    """(shell, file name) -> completion script, for every command and shell."""
    render = {"bash": bash, "zsh": zsh, "fish": fish}
    return {(shell, file_name(shell, c.name)): render[shell](c)
            for c in all_commands() for shell in SHELLS}
