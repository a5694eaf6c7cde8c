"""pyroute2's rtnetlink socket, without the rest of pyroute2 (memory, issue 11).

``import pyroute2`` runs a package ``__init__`` that imports every protocol
pyroute2 speaks (NDB with sqlite3, IPDB, nl80211, nftables, conntrack, WireGuard,
plan9, unittest.mock, ...): 12.6 MB of RSS, 370 modules. namesync uses the
rtnetlink socket (``AsyncIPRoute``) and its error type alone, which cost 6 MB.
So the package is registered with its ``__init__`` deferred: its submodules
import as usual, and only the first name asked of the package itself (say,
``from pyroute2 import NDB`` elsewhere in the process) runs the real
``__init__``, which then behaves exactly as an ordinary import would.

pyroute2 is imported on the first socket, not with this module: a daemon whose
host source and resolved path are off never loads it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

PACKAGE = "pyroute2"


def _defer_init(name: str) -> None:
    """Put package ``name`` in sys.modules with its submodules importable and its
    ``__init__`` not run until a name is looked up on the package."""
    if name in sys.modules:
        return  # imported already (deferred or not): nothing to save
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a plain package on disk: let the ordinary import handle (or refuse) it
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attr: str) -> Any:  # PEP 562: asked for names the module lacks
        if attr.startswith("__"):
            raise AttributeError(attr)  # probes (copy, inspect, pickle) must not run __init__
        if importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # `from pyroute2 import config`
        del module.__dict__["__getattr__"]  # the real __init__ decides from here on
        loader.exec_module(module)
        return getattr(module, attr)

    module.__dict__["__getattr__"] = __getattr__
    sys.modules[name] = module


def _socket_class() -> Any:
    _defer_init(PACKAGE)
    from pyroute2.iproute.linux import AsyncIPRoute

    return AsyncIPRoute


def async_iproute(netns: str | None = None) -> Any:
    """A new ``pyroute2.AsyncIPRoute`` (in network namespace ``netns`` if given)."""
    cls = _socket_class()
    return cls(netns=netns) if netns else cls()


def netlink_error() -> Any:
    """``pyroute2.NetlinkError``: the error a refused request raises (its ``code`` is errno)."""
    _defer_init(PACKAGE)
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError
