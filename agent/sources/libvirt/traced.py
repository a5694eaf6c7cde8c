"""libvirt objects that tell the watchdog which RPC a worker thread is in.

One blocking step of the source (client.read_all) makes many RPCs:
listAllDomains, then isActive and XMLDesc per domain, listAllNetworks, ...
When libvirtd stops answering, status should name the one that waits
("libvirtd not answering: XMLDesc waiting 12 s"), not the step. A ``Traced``
object stores each method's name in ``Line.doing`` before calling it (a str
store from the worker thread, read by the loop) and wraps the libvirt objects
it returns (domains, networks) the same way. Everything else passes through:
arguments, return values, libvirt's exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.sources.watchdog import Line


def _libvirt_object(value: object) -> bool:
    kind = type(value)
    return kind.__module__ == "libvirt" and kind.__name__.startswith("vir")


class Traced:
    __slots__ = ("_line", "_obj")

    def __init__(self, obj: Any, line: Line) -> None:
        self._obj = obj
        self._line = line

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._obj, name)
        if not callable(attr):
            return attr
        return self._traced(name, attr)

    def _traced(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        line = self._line

        def call(*args: Any, **kwargs: Any) -> Any:
            line.doing = name
            return _wrap(method(*args, **kwargs), line)

        return call


def _wrap(value: Any, line: Line) -> Any:
    if _libvirt_object(value):
        return Traced(value, line)
    if isinstance(value, list) and any(_libvirt_object(v) for v in value):
        return [Traced(v, line) if _libvirt_object(v) else v for v in value]
    return value
