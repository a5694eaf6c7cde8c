"""structlog setup: journald-friendly JSON under systemd, readable text on a terminal."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

# sd-daemon(3) priority prefixes, read by journald from a service's stderr.
_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "critical": 2,
    "exception": 3,
}


def _stderr_is_journal(stream: TextIO) -> bool:
    """JOURNAL_STREAM is inherited by children; trust it only if it names our stderr."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _journal_prefix(_: WrappedLogger, method: str, event: EventDict) -> EventDict:
    event["_priority"] = _PRIORITY.get(method, 6)
    return event


class _PrefixedJSON:
    """Render JSON and put ``<N>`` in front so journald files it at the right priority."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer(sort_keys=True)

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> str:
        prio = event.pop("_priority", 6)
        rendered = self._json(logger, method, event)
        text = rendered.decode() if isinstance(rendered, bytes) else rendered
        return f"<{prio}>{text}"


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    # Frame locals could carry anything a source handed over; keep them out.
    exc = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    processors: list[Any]
    if _stderr_is_journal(stream):
        # journald stamps the time itself.
        processors = [*shared, _journal_prefix, exc, _PrefixedJSON()]
    elif stream.isatty():
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=False),
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback),
        ]
    else:
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            exc,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
