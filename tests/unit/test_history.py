"""NameHistory: since when each published name is held, and what vanished."""

from __future__ import annotations

from agent.daemon.history import NameHistory
from agent.model.record import Provenance, Record, parse_address
from agent.plan.table import Table, plan


def _table(**holders: str) -> Table:
    """name -> holding object id (all in source "s")."""
    return plan([Record(n, (parse_address("10.0.0.1"),), Provenance("s", o, "x"))
                 for n, o in holders.items()], [])


def test_since_is_when_the_current_holder_got_the_name() -> None:
    now = [100.0]
    h = NameHistory(clock=lambda: now[0])
    t1 = _table(a="A", b="B")
    h.observe(Table(), t1)
    assert (h.since.get("a"), h.since.get("b")) == (100.0, 100.0)
    now[0] = 200.0
    t2 = _table(a="A", b="B2", c="C")  # b moved to another object, c is new
    h.observe(t1, t2)
    assert (h.since.get("a"), h.since.get("b"), h.since.get("c")) == (100.0, 200.0, 200.0)
    now[0] = 300.0
    t3 = _table(b="B2")  # a (held since the first table) and c vanish
    h.observe(t2, t3)
    assert (h.gone["a"].since, h.gone["a"].until) == (100.0, 300.0)
    assert (h.gone["c"].since, h.gone["c"].until) == (200.0, 300.0)
    now[0] = 400.0
    h.observe(t3, _table(a="A", b="B2"))  # a is back: held since its return
    assert (h.since.get("a"), h.since.get("b")) == (400.0, 200.0)
    assert "a" not in h.gone
