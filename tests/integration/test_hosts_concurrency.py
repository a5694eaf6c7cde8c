"""Another program editing the hosts file while namesync rewrites its block (defect 7).

The editor is a real process doing what editors and scripts do: read the
file, add a line outside the block, write a temp file beside it and rename
it over the original, hundreds of times, while the real agent rewrites its
block as fast as config reloads make it. Every one of the editor's lines must
survive: README "hosts file" says what window remains (two renames by another
program within the microseconds of namesync's exchange), and that is far
below what this run can hit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.harness.agent import Agent
from tests.harness.wait import until

from .conftest import WriteConfig

pytestmark = pytest.mark.integration

EDITS = 600
# Documented in README: an edit is lost only if the editor renames twice within
# namesync's exchange-and-check window, or reads the file inside it (it then
# sees namesync's version, which the swap-back withdraws). On a quiet machine
# that window is microseconds and no edit is lost; on a saturated one (load
# 10 on 2 CPUs) preemption inside it lost 1 of 600 in some runs. The code
# before the check lost 4-21 in every run.
MAX_LOST = 2

EDITOR = textwrap.dedent("""
    import json, os, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    tmp = path + ".editor-tmp"
    for i in range(n):
        with open(path, "rb") as f:
            data = f.read()
        with open(tmp, "wb") as f:
            f.write(b"10.3.%d.%d editor-%d.example\\n" % (i // 250, i % 250, i) + data)
        os.rename(tmp, path)
        time.sleep(0.002)
    print(json.dumps({"edits": n}), flush=True)
""")


def test_concurrent_editor_loses_no_edit_outside_the_block(
        agent: Agent, write_config: WriteConfig, public_tmp: Path) -> None:
    hosts = public_tmp / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    write_config({"churn.dns.test": ["10.0.0.0"]}, coalesce_ms=0)
    agent.start()
    assert agent.proc is not None
    editor = subprocess.Popen([sys.executable, "-c", EDITOR, str(hosts), str(EDITS)],
                              stdout=subprocess.PIPE, text=True)
    writes_before = next(s for s in agent.status()["sinks"]
                         if s["kind"] == "hosts_file")["writes"]
    i = 0
    try:
        while editor.poll() is None:
            i += 1
            write_config({"churn.dns.test": [f"10.0.{i // 250 % 250}.{i % 250}"]}, coalesce_ms=0)
            agent.proc.send_signal(signal.SIGHUP)
            time.sleep(0.003)  # pacing the SIGHUPs, not synchronisation
        assert editor.stdout is not None
        assert json.loads(editor.stdout.read()) == {"edits": EDITS}
    finally:
        if editor.poll() is None:
            editor.kill()
        editor.wait()
    # The agent settles on the last config; the file then holds its block once.
    last = f"10.0.{i // 250 % 250}.{i % 250} churn.dns.test".encode()
    until(lambda: last in hosts.read_bytes(), timeout=10, what="the last block")
    data = hosts.read_bytes()
    lost = [k for k in range(EDITS)
            if b" editor-%d.example\n" % k not in data]
    writes = next(s for s in agent.status()["sinks"]
                  if s["kind"] == "hosts_file")["writes"] - writes_before
    assert writes >= 100, f"only {writes} namesync writes overlapped the editor"
    assert len(lost) <= MAX_LOST, f"{len(lost)} of {EDITS} edits lost ({writes} writes): {lost}"
    assert data.startswith(b"10.3.")  # the editor's lines are where it put them
    assert data.count(b"# BEGIN namesync") == 1
