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

EDITS = 600  # at least; the editor goes on until namesync has written WRITES times
WRITES = 120
MAX_EDITS = 20_000
# Documented in README: an edit is lost only if the editor renames twice within
# namesync's exchange-and-check window, or reads the file inside it (it then
# sees namesync's version, which the swap-back withdraws). On a quiet machine
# that window is microseconds and no edit is lost; on a saturated one (load
# 10 on 2 CPUs) preemption inside it lost 1 of 600 in some runs. The code
# before the check lost 4-21 in every run.
MAX_LOST = 2

EDITOR = textwrap.dedent("""
    import json, os, sys, time
    path, n, stop, most = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    tmp = path + ".editor-tmp"
    i = 0
    while i < most and (i < n or not os.path.exists(stop)):
        with open(path, "rb") as f:
            data = f.read()
        with open(tmp, "wb") as f:
            f.write(b"10.3.%d.%d editor-%d.example\\n" % (i // 250 % 250, i % 250, i) + data)
        os.rename(tmp, path)
        i += 1
        time.sleep(0.002)
    print(json.dumps({"edits": i}), flush=True)
""")


def test_concurrent_editor_loses_no_edit_outside_the_block(
        agent: Agent, write_config: WriteConfig, public_tmp: Path) -> None:
    hosts = public_tmp / "hosts"
    hosts.write_bytes(b"127.0.0.1 localhost\n")
    write_config({"churn.dns.test": ["10.0.0.0"]}, coalesce_ms=0)
    agent.start()
    assert agent.proc is not None
    stop = public_tmp / "editor-stop"
    # The editor goes on until namesync has overlapped it WRITES times: on a loaded
    # machine config reloads come slower, and a fixed number of edits ended first.
    editor = subprocess.Popen([sys.executable, "-c", EDITOR, str(hosts), str(EDITS), str(stop),
                               str(MAX_EDITS)], stdout=subprocess.PIPE, text=True)

    def hosts_writes() -> int:
        return int(next(s for s in agent.status()["sinks"] if s["kind"] == "hosts_file")["writes"])

    writes_before = hosts_writes()
    i = 0
    try:
        while editor.poll() is None:
            i += 1
            write_config({"churn.dns.test": [f"10.0.{i // 250 % 250}.{i % 250}"]}, coalesce_ms=0)
            agent.proc.send_signal(signal.SIGHUP)
            time.sleep(0.003)  # pacing the SIGHUPs, not synchronisation
            if i % 50 == 0 and not stop.exists() and hosts_writes() - writes_before >= WRITES:
                stop.touch()
        assert editor.stdout is not None
        edits = json.loads(editor.stdout.read())["edits"]
        assert edits >= EDITS
    finally:
        if editor.poll() is None:
            editor.kill()
        editor.wait()
    # The agent settles on the last config; the file then holds its block once.
    last = f"10.0.{i // 250 % 250}.{i % 250} churn.dns.test".encode()
    until(lambda: last in hosts.read_bytes(), timeout=10, what="the last block")
    data = hosts.read_bytes()
    lost = [k for k in range(edits)
            if b" editor-%d.example\n" % k not in data]
    writes = next(s for s in agent.status()["sinks"]
                  if s["kind"] == "hosts_file")["writes"] - writes_before
    assert writes >= 100, f"only {writes} namesync writes overlapped {edits} edits"
    assert len(lost) <= MAX_LOST, f"{len(lost)} of {edits} edits lost ({writes} writes): {lost}"
    assert data.startswith(b"10.3.")  # the editor's lines are where it put them
    assert data.count(b"# BEGIN namesync") == 1
