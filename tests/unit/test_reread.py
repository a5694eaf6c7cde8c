"""Timing dnsmasq's re-read from /proc: deterministic, on a /proc made by the test.

The real thing (a real dnsmasq re-reading 10,000 names) is checked in
tests/integration/test_signal_target.py; here the states and CPU counters are
scripted, and the clock is the test's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.sinks.reread import (
    LIMIT_S,
    SHORT_LIMIT_S,
    UNKNOWN_CHARGE_S,
    Reread,
    RereadHistory,
    awake,
    cpu_time,
    wait_reread,
)

PID = 4242


class FakeProc:
    """/proc/PID/stat and schedstat that change on each look, as the script says."""

    def __init__(self, root: Path, script: list[tuple[str, int]]) -> None:
        self.dir = root / str(PID)
        self.dir.mkdir(parents=True)
        self.script = script  # (state, schedstat ns) per sleep of the watcher
        self.now = 0.0
        self.sleeps: list[float] = []
        self._show(0)

    def _show(self, i: int) -> None:
        state, ns = self.script[min(i, len(self.script) - 1)]
        # comm with a space and a paren, as a hostile process could name itself
        (self.dir / "stat").write_text(f"{PID} (dns) masq) {state} 1 1 1 0 -1 0 0 0 0 0 "
                                       f"{ns // 10_000_000} 0 0 0 20 0 1 0\n")
        (self.dir / "schedstat").write_text(f"{ns} 0 1\n")

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self._show(len(self.sleeps))


def test_the_reread_ends_when_dnsmasq_sleeps_and_costs_its_cpu_time(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path, [("R", 1_000_000_000), ("R", 1_004_000_000),
                               ("R", 1_008_000_000), ("S", 1_009_500_000)])
    r = wait_reread(PID, 1.0, 0.0, proc=tmp_path, clock=proc.clock, sleep=proc.sleep)
    assert r.complete
    assert r.cpu_s == pytest.approx(0.0095)
    assert len(proc.sleeps) == 3
    assert r.wall_s == pytest.approx(sum(proc.sleeps))


def test_a_reread_already_over_at_the_first_look_costs_what_the_counter_says(
        tmp_path: Path) -> None:
    proc = FakeProc(tmp_path, [("S", 2_000_400_000)])
    r = wait_reread(PID, 2.0, 0.0, proc=tmp_path, clock=proc.clock, sleep=proc.sleep)
    assert r.complete and proc.sleeps == []
    assert r.cpu_s == pytest.approx(0.0004)


def test_the_poll_interval_grows_with_the_wait(tmp_path: Path) -> None:
    """A 300 ms re-read (100,000 names) is looked at some 70 times, not 1500."""
    script = [("R", 0)] * 200 + [("S", 300_000_000)]
    proc = FakeProc(tmp_path, script)

    def sleep(seconds: float) -> None:
        proc.sleep(seconds)
        if proc.now >= 0.3:  # dnsmasq is done at 300 ms
            proc.script = [("S", 300_000_000)]
            proc._show(0)

    r = wait_reread(PID, 0.0, 0.0, proc=tmp_path, clock=proc.clock, sleep=sleep)
    assert r.complete
    assert r.cpu_s == pytest.approx(0.3)
    assert len(proc.sleeps) < 100
    assert 0.3 <= r.wall_s <= 0.3 * 1.1 + 0.001  # seen within a tenth of the wait


def test_a_dnsmasq_that_never_goes_back_to_sleep_is_given_up_on(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path, [("R", 5_000_000_000)])
    r = wait_reread(PID, 4.0, 0.0, proc=tmp_path, clock=proc.clock, sleep=proc.sleep,
                    limit_s=2.0)
    assert not r.complete
    assert r.wall_s >= 2.0
    assert r.cpu_s == pytest.approx(1.0)  # what it used meanwhile: a lower bound


def test_a_dnsmasq_that_exits_ends_the_wait(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path, [("R", 0)])

    def sleep(seconds: float) -> None:
        proc.sleep(seconds)
        for f in proc.dir.iterdir():
            f.unlink()

    r = wait_reread(PID, 0.0, 0.0, proc=tmp_path, clock=proc.clock, sleep=sleep)
    assert not r.complete
    assert r.cpu_s == 0.0


def test_cpu_time_falls_back_to_clock_ticks_without_schedstat(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path, [("S", 120_000_000)])
    (proc.dir / "schedstat").unlink()
    assert cpu_time(PID, tmp_path) == pytest.approx(0.12)  # 12 ticks of utime, at 100 Hz
    assert cpu_time(PID + 1, tmp_path) is None


def test_an_unfinished_watch_is_charged_at_most_twice_what_the_file_should_cost() -> None:
    h = RereadHistory()
    assert h.watch_limit(400_000) == LIMIT_S  # nothing known yet: 100k names take seconds
    assert h.charge(Reread(0.0096, 0.030, True), 400_000) == pytest.approx(0.0096)
    assert h.watch_limit(400_000) == SHORT_LIMIT_S  # 4 x 30 ms, floored
    # dnsmasq busy past the watch (a query flood): 3 s of its CPU is not re-reading.
    assert h.charge(Reread(3.0, SHORT_LIMIT_S, False), 400_000) == pytest.approx(0.0192)
    # The table grew a hundredfold: so does what its re-read is expected to cost.
    assert h.watch_limit(40_000_000) == LIMIT_S  # 4 x 3 s x 2 (one unfinished), capped
    assert h.charge(Reread(5.0, LIMIT_S, False), 40_000_000) == pytest.approx(1.92)


def test_a_dnsmasq_busy_from_the_start_is_charged_a_bounded_amount() -> None:
    h = RereadHistory()
    assert h.charge(Reread(LIMIT_S, LIMIT_S, False), 1000) == UNKNOWN_CHARGE_S
    assert h.watch_limit(1000) == 2 * SHORT_LIMIT_S  # and watched longer each time
    h.charge(Reread(LIMIT_S, LIMIT_S, False), 1000)
    assert h.watch_limit(1000) == 4 * SHORT_LIMIT_S


BUSY_ON_SIGNAL = """
import signal, time
def busy(*_):
    end = time.monotonic() + 0.6
    while time.monotonic() < end:
        pass
signal.signal(signal.SIGUSR1, busy)
print("ready", flush=True)
while True:
    signal.pause()
"""


def test_a_reread_that_got_slower_is_watched_longer_until_seen_to_end_and_learned() -> None:
    # A real process stands in for dnsmasq: each SIGUSR1 is a 0.6 s "re-read",
    # where the last one seen to end took 20 ms.
    child = subprocess.Popen([sys.executable, "-c", BUSY_ON_SIGNAL], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        h = RereadHistory()
        h.charge(Reread(0.01, 0.02, True), 1000)
        limits: list[float] = []
        for _ in range(6):
            until_asleep(child.pid)
            limits.append(h.watch_limit(1000))
            before = cpu_time(child.pid)
            assert before is not None
            at = time.monotonic()
            os.kill(child.pid, signal.SIGUSR1)
            r = wait_reread(child.pid, before, at, limit_s=limits[-1])
            assert h.charge(r, 1000) <= max(0.02, r.cpu_s)
            if r.complete:
                break
        assert r.complete, limits
        assert limits[0] == SHORT_LIMIT_S and limits == sorted(limits) and limits[-1] > 0.6
        assert h.last is not None and h.last.wall_s >= 0.6
        assert h.watch_limit(1000) >= 4 * 0.6  # learned: the next watch waits long enough
    finally:
        child.kill()
        child.wait()


def until_asleep(pid: int) -> None:
    deadline = time.monotonic() + 30
    while awake(pid):
        assert time.monotonic() < deadline, "the stand-in never went back to sleep"
        time.sleep(0.01)
def test_a_real_process_that_never_sleeps_ends_the_watch_at_its_limit() -> None:
    # A busy loop stands in for a dnsmasq kept busy by a flood of queries.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        before = cpu_time(busy.pid)
        assert before is not None
        start = time.monotonic()
        r = wait_reread(busy.pid, before, start, limit_s=0.3)
        assert not r.complete and 0.3 <= r.wall_s < 2.0
        assert r.cpu_s > 0  # it did burn CPU meanwhile...
        h = RereadHistory()
        h.charge(Reread(0.01, 0.02, True), 1000)
        assert h.charge(r, 1000) <= 0.02  # ...which is not charged as re-reading
    finally:
        busy.kill()
        busy.wait()
