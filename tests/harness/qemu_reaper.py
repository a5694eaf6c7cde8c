"""Safety net for the session libvirtd harness when pytest itself dies (SIGKILL, CI timeout).

Started by SessionLibvirtd with a pipe on stdin. Normal teardown writes "done"
and closes the pipe: the reaper just exits. If the pipe reaches EOF without
"done", pytest is gone without tearing down: the session libvirtd got SIGTERM
from its parent-death signal, but the QEMU processes it daemonized would run
on (a TCG guest costs CPU on a shared machine). Everything running as the
test's user is this run's (the user is unique to the run,
tests/harness/users.py): the reaper kills it by pid.

Run as a script (stdlib, wait.py and proc.py only):

    python qemu_reaper.py UID
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, for tests.harness
from tests.harness.proc import pids, process_gone
from tests.harness.wait import Timeout, until


def _of(uid: int) -> set[int]:
    found = set()
    for pid in pids():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid and not process_gone(pid):
                found.add(pid)
    return found


def reap(uid: int) -> None:
    for _ in range(3):  # libvirtd may have been spawning a QEMU: look again
        targets = _of(uid)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Timeout):
            until(functools.partial(lambda t: all(process_gone(p) for p in t), targets),
                  timeout=10)


def main() -> None:
    uid = int(sys.argv[1])
    if uid == 0:
        raise SystemExit("qemu_reaper: refusing uid 0")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for pytest, which tears down
    if sys.stdin.read().strip() == "done":
        return
    reap(uid)


if __name__ == "__main__":
    main()
