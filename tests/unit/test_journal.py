"""Journal output read back as journald reads it, from a real unix datagram socket."""

from __future__ import annotations

import fcntl
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from agent.daemon import logging as nlogging
from agent.daemon.journal import field_name
from tests.harness.journal import JournalServer


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """These tests configure structlog globally; later tests must see it as before."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalServer]:
    server = JournalServer(tmp_path / "journal" / "socket")
    yield server
    server.close()


def log_to(journal: JournalServer) -> io.StringIO:
    stream = io.StringIO()
    assert nlogging.configure("debug", stream, fmt="journal",
                              journal_socket=journal.path) == "journal"
    return stream


def test_entry_fields(journal: JournalServer) -> None:
    log_to(journal)
    structlog.get_logger(component="sinks.addn_hosts").warning(
        "dnsmasq not signalled", path="/run/namesync/addn-hosts", pid=812, names=["a", "b"])
    e = journal.receive()
    assert e["MESSAGE"] == [b"dnsmasq not signalled: path=/run/namesync/addn-hosts pid=812 "
                            b'names=["a","b"]']
    assert e["PRIORITY"] == [b"4"]
    assert e["SYSLOG_IDENTIFIER"] == [b"namesync-agent"]
    assert e["COMPONENT"] == [b"sinks.addn_hosts"]
    assert e["PATH"] == [b"/run/namesync/addn-hosts"]
    assert e["PID"] == [b"812"]
    assert e["NAMES"] == [b'["a", "b"]']
    assert "LEVEL" not in e and "EVENT" not in e


def test_multiline_values_use_the_binary_form(journal: JournalServer) -> None:
    log_to(journal)
    log = structlog.get_logger(component="t")
    log.error("config reload refused", problems="line 1\nline 2")
    e = journal.receive()
    assert e["PROBLEMS"] == [b"line 1\nline 2"]
    assert e["PRIORITY"] == [b"3"]
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("source crashed", source="podman")
    e = journal.receive()
    message = e["MESSAGE"][0].decode()
    assert message.startswith("source crashed: source=podman\nTraceback (most recent call last)")
    assert "ValueError: boom" in message


def test_an_entry_larger_than_a_datagram_goes_through_a_sealed_memfd(
        journal: JournalServer) -> None:
    log_to(journal)
    big = "x" * (4 << 20)
    structlog.get_logger(component="t").info("big", blob=big)
    e = journal.receive()
    assert e["BLOB"] == [big.encode()]
    [seals] = journal.sealed
    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL


def test_no_journal_socket_falls_back_to_priority_prefixed_lines(tmp_path: Path) -> None:
    stream = io.StringIO()
    nlogging.configure("info", stream, fmt="journal", journal_socket=tmp_path / "none")
    structlog.get_logger(component="t").warning("two\nlines", k="v")
    assert stream.getvalue() == "<4>two\n<4>lines: k=v\n"


def test_field_names() -> None:
    assert field_name("latency_ms") == "LATENCY_MS"
    assert field_name("message") == "NAMESYNC_MESSAGE"
    assert field_name("_uid") == "UID"
    assert field_name("9x") == "NAMESYNC_9X"
    assert field_name("a.b-c") == "A_B_C"
