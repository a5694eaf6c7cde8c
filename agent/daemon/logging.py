"""structlog setup: native journal entries under systemd, readable text on a terminal, JSON else.

``--log-format``:
  journal  one journal entry per event over the journal socket (journal.py):
           a readable MESSAGE, PRIORITY, SYSLOG_IDENTIFIER=namesync-agent and
           every structured field as an UPPERCASE journal field
           (``journalctl -o verbose``, ``journalctl SOURCE=podman:...``);
  console  aligned, human lines (a terminal);
  json     one JSON object per line with an ISO time;
  auto     journal when stderr is the service's journal stream (JOURNAL_STREAM
           names it), console on a terminal, json otherwise.
If the journal socket cannot be reached, entries go to stderr with ``<N>``
priority prefixes, which journald reads from a service's stream.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from .journal import JOURNAL_SOCKET, JournalSocket, entry_fields, stream_is_journal

FORMATS = ("auto", "journal", "json", "console")
IDENTIFIER = "namesync-agent"

# syslog priorities, as journald files them.
_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "critical": 2,
    "exception": 3,
}
# Context every entry carries that says nothing in a one-line MESSAGE.
_NOT_IN_MESSAGE = frozenset({"event", "level", "component", "exception", "_priority"})


def _logfmt(value: object) -> str:
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    text = str(value)
    return repr(text) if (not text or any(c in text for c in " \"'=")) else text


def message_text(event: EventDict) -> str:
    """'dnsmasq reloaded: names=3 pid=812': the event, then its fields, readable."""
    text = str(event.get("event", ""))
    fields = [f"{k}={_logfmt(v)}" for k, v in event.items() if k not in _NOT_IN_MESSAGE]
    if fields:
        text += ": " + " ".join(fields)
    exc = event.get("exception")
    if exc:
        text += "\n" + str(exc).rstrip()
    return text


class JournalRenderer:
    """The last processor: the event as journal fields, handed to JournalLogger."""

    def __call__(self, _: WrappedLogger, method: str, event: EventDict) -> tuple[Any, ...]:
        priority = _PRIORITY.get(method, 6)
        extra = {k: v for k, v in event.items() if k not in ("event", "level", "exception")}
        fields = entry_fields(message_text(event), priority, IDENTIFIER, extra)
        return ((fields, priority),), {}


class JournalLogger:
    """Sends each entry to journald; falls back to ``<N>message`` lines on ``stream``."""

    def __init__(self, sock: JournalSocket, stream: TextIO) -> None:
        self._sock = sock
        self._stream = stream

    def msg(self, entry: tuple[list[tuple[str, bytes]], int]) -> None:
        fields, priority = entry
        try:
            self._sock.send(fields)
        except OSError:
            message = dict(fields)["MESSAGE"].decode("utf-8", "replace")
            lines = message.splitlines() or [""]
            self._stream.write("".join(f"<{priority}>{line}\n" for line in lines))
            self._stream.flush()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


def choose_format(fmt: str, stream: TextIO, env: Mapping[str, str] | None = None) -> str:
    if fmt != "auto":
        return fmt
    env = os.environ if env is None else env
    try:
        fileno = stream.fileno()
    except (OSError, ValueError):
        fileno = -1
    if fileno >= 0 and stream_is_journal(fileno, env):
        return "journal"
    return "console" if stream.isatty() else "json"


def configure(level: str = "info", stream: TextIO | None = None, fmt: str = "auto",
              journal_socket: Path = JOURNAL_SOCKET) -> str:
    """Set up structlog; returns the format chosen (``auto`` resolved)."""
    stream = stream or sys.stderr
    chosen = choose_format(fmt, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    # Frame locals could carry anything a source handed over; keep them out.
    exc = structlog.processors.ExceptionRenderer(
        structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
    )
    factory: Any = structlog.PrintLoggerFactory(file=stream)
    processors: list[Any]
    if chosen == "journal":
        # journald stamps the time itself; tracebacks as text inside MESSAGE.
        sock = JournalSocket(journal_socket)
        processors = [*shared, structlog.processors.format_exc_info, JournalRenderer()]
        factory = lambda *_: JournalLogger(sock, stream)  # noqa: E731 - structlog factory
    elif chosen == "console":
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
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    return chosen
