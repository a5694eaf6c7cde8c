"""Run namesync-agent with inotify's watch limit reached for the release watch only
(dirwatch.Changes raises ENOSPC as inotify_add_watch does at fs.inotify.max_user_watches).
Used as Agent(wrap=(python, this)): sys.argv is then [this, python, -m, agent.daemon.main, ...]."""
import errno
import runpy
import sys

# This file's directory (tests/harness, which has an agent.py) must not shadow the
# agent package.
sys.path.pop(0)

from agent.sources import dirwatch


def refuse(self):
    raise OSError(errno.ENOSPC, "inotify watch limit reached (simulated)")

dirwatch.Changes.__enter__ = refuse
sys.argv = ["namesync-agent", *sys.argv[4:]]
runpy.run_module("agent.daemon.main", run_name="__main__")
