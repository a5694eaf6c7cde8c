"""Poll-until, the only waiting the tests do: no bare sleeps as synchronisation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Timeout(AssertionError):
    pass


def until(probe: Callable[[], T], timeout: float = 5.0, interval: float = 0.005,
          what: str = "condition") -> T:
    """Call ``probe`` until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}; last value {last!r}")
        time.sleep(interval)
        last = probe()
    return last
