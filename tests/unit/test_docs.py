"""Man pages and completions are generated from the real parsers: nothing is left out."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.docs.completion import scripts
from agent.docs.man import pages
from agent.docs.parsers import all_commands


def test_every_option_and_command_is_in_its_man_page_and_completions() -> None:
    rendered = pages("9.9", "2026-01-01")
    completions = scripts()
    for c in all_commands():
        page = rendered[f"{c.name}.8"]
        flags = {f for o in c.options for f in o.flags}
        flags |= {f for s in c.subcommands for o in s.options for f in o.flags}
        for f in flags:
            assert f.replace("-", "\\-") in page, (c.name, f)
            for shell in ("bash", "zsh"):
                name = {"bash": c.name, "zsh": f"_{c.name}"}[shell]
                assert f in completions[(shell, name)], (shell, c.name, f)
        for s in c.subcommands:
            assert f".SS {s.name}" in page
            assert s.name in completions[("fish", f"{c.name}.fish")]
    assert '.TH NAMESYNC.CONF 5 "2026-01-01" "namesync 9.9"' in rendered["namesync.conf.5"]


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_have_no_groff_warnings() -> None:
    for name, roff in pages("9.9", "2026-01-01").items():
        r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=roff,
                           capture_output=True, text=True, timeout=30)
        assert r.stderr == "", (name, r.stderr)


def test_exit_codes_in_the_epilog_become_exit_status() -> None:
    page = pages("9.9", "2026-01-01")["agentctl.8"]
    exit_status = page[page.index(".SH EXIT STATUS"):page.index(".SH SEE ALSO")]
    for code in ("0", "1", "2", "3"):
        assert f".TP\n\\fB{code}\\fR\n" in exit_status
