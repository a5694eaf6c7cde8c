"""pyroute2 with its package __init__ deferred (agent/sources/netlink.py).

Run in a fresh interpreter each: what is asserted is what that process imported.
"""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_the_socket_loads_without_pyroute2s_whole_package() -> None:
    out = _run("import sys\n"
               "from agent.sources.netlink import async_iproute, netlink_error\n"
               "ipr = async_iproute(); ipr.close()\n"
               "assert issubclass(netlink_error(), Exception)\n"
               "print(sorted(m for m in ('pyroute2.ndb', 'pyroute2.ipdb', 'sqlite3')"
               " if m in sys.modules))")
    assert out == "[]"


def test_anyone_else_importing_pyroute2_gets_the_whole_package() -> None:
    out = _run("from agent.sources.netlink import async_iproute\n"
               "async_iproute().close()\n"
               "import pyroute2\n"
               "from pyroute2 import NDB, IPRoute, config\n"
               "print(NDB.__module__, IPRoute.__module__, pyroute2.__version__ != 'unknown')")
    assert out == "pyroute2.ndb.main pyroute2.iproute.linux True"
