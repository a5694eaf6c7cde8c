"""Per-stage timings of namesync's hot path, in-process (no dnsmasq, no root needed).

Run as ``.venv/bin/python bench/stages.py [N]``. Each stage is timed on the
same synthetic data the reload bench uses (N static names, one of which
changes its address), repeated, and reported as median and minimum: this is
what to look at when a number in ``reload_latency.py`` moves.
"""

from __future__ import annotations

import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from ipaddress import ip_address
from itertools import count
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config.load import parse_config
from agent.daemon.history import NameHistory
from agent.model.record import ObjectState, Provenance, Record
from agent.plan.planner import Planner
from agent.plan.render import host_lines, render_addn_hosts
from agent.plan.table import Table, plan
from agent.sources.static import StaticObjects, StaticSource
from agent.state.store import StateStore
from bench.data import ADDR_A, ADDR_B, ZONE, config_text, target_index

REPEATS = 15


def timed(label: str, fn: Callable[[], object], repeats: int = REPEATS) -> None:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    print(f"  {label:<44} median {statistics.median(samples):8.2f} ms   "
          f"min {min(samples):8.2f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    text_a = config_text(n, ADDR_A, socket=Path("/tmp/s"), addn_hosts=Path("/tmp/a"),
                         pid_file=Path("/tmp/p"), coalesce_ms=0)
    text_b = text_a.replace(f'"{ADDR_A}"', f'"{ADDR_B}"')
    print(f"{n} static names, config text {len(text_a)} bytes")
    cfg_a = parse_config(text_a, "bench")
    cfg_b = parse_config(text_b, "bench")

    timed("tomllib.loads", lambda: tomllib.loads(text_b))
    timed("parse_config (incl. tomllib)", lambda: parse_config(text_b, "bench"))
    timed("config_key compare (old vs new entries)", lambda: cfg_a.static == cfg_b.static)
    snap_a = StaticSource(cfg_a.static).snapshot()
    timed("StaticSource.snapshot", lambda: StaticSource(cfg_b.static).snapshot())
    snap_b = StaticSource(cfg_b.static).snapshot()

    store0 = StateStore(lambda: None)
    store0.replace("static", snap_a)
    flip = [snap_a, snap_b]

    def replace() -> None:
        flip.reverse()
        store0.replace("static", flip[0])
    timed("StateStore.replace, a changed snapshot", replace)
    store0.replace("static", snap_a)
    table_a = plan(store0.records(), store0.rejections(), None)
    timed("Table.holders", table_a.holders)
    # A config reload brings all-new records: plan and render see nothing they saw.
    fresh = [StaticSource(cfg_b.static).snapshot() for _ in range(REPEATS)]

    # What the daemon's pipeline does: one Planner, each table made from the last.
    def planner_after(table: Table) -> Planner:
        p = Planner()
        p.table = table
        return p
    planners = [planner_after(table_a) for _ in range(REPEATS)]

    def plan_fresh() -> None:
        snap = fresh.pop()
        planners.pop().plan((r for o in snap.values() for r in o.records), ())
    timed("plan, all records new (config reload)", plan_fresh)
    fresh = [StaticSource(cfg_b.static).snapshot() for _ in range(REPEATS)]
    tables = [planner_after(table_a).plan((r for o in s.values() for r in o.records), ())
              for s in fresh]
    timed("render_addn_hosts + host_lines, new table",
          lambda: (render_addn_hosts(t := tables.pop()), host_lines(t)))
    store1 = StateStore(lambda: None)
    store1.replace("static", snap_b)
    planner = Planner()
    table_b = planner.plan(store1.records(), store1.rejections())
    timed("plan, records seen before", lambda: planner.plan(store1.records(),
                                                            store1.rejections()))
    timed("render_addn_hosts + host_lines, same table again",
          lambda: (render_addn_hosts(table_b), host_lines(table_b)))

    # A config reload as the daemon runs it (parsing aside): the static source's
    # snapshot, made as the store compares it with the running one and keeps the
    # unchanged objects, then plan + render. Before the planner this was
    # snapshot + replace + "plan, all records new" + "render ..., new table".
    store2 = StateStore(lambda: None)
    store2.replace("static", snap_a)
    planner2 = Planner()
    planner2.plan(store2.records(), store2.rejections())
    configs = [cfg_a, cfg_b]

    def config_reload() -> None:
        configs.reverse()
        store2.replace("static", StaticObjects("static", configs[0].static))
        t = planner2.plan(store2.records(), store2.rejections())
        render_addn_hosts(t)
        host_lines(t)
    timed("config reload: snapshot+replace+plan+render", config_reload)

    # The source-update path: one object changes, then plan + render as a sync does.
    i = target_index(n)
    name = f"h{i:05d}.{ZONE}"
    prov = Provenance("bench", name, "static", f"[[static]] {name}")
    addr = [ADDR_B]

    def source_update(patched: bool) -> None:
        addr[0] = ADDR_A if addr[0] == ADDR_B else ADDR_B
        store1.update("static", name, ObjectState(
            records=(Record(name, (ip_address(addr[0]),), prov),)))
        changes = store1.take_batch() if patched else None
        t = planner.plan(store1.records(), store1.rejections(), changes)
        render_addn_hosts(t)
    timed("source update: update+plan+render, every name", lambda: source_update(False))
    store1.take_batch()
    planner.plan(store1.records(), store1.rejections())  # the generation the batches follow
    timed("source update: update+plan+render, patched", lambda: source_update(True))

    # What a container start costs a sync (the daemon's path: the store lists the
    # change, the planner patches its table, history looks at the one name).
    history = NameHistory()
    history.observe(Table(), planner.table)
    started = count()

    def container_start() -> None:
        k = next(started)
        cid = f"c{k}"
        cprov = Provenance("podman", cid, "container", cid)
        store1.update("podman", cid, ObjectState(
            records=(Record(f"c{k}.dns.podman", (ip_address(f"10.88.{k // 250}.{k % 250 + 2}"),),
                            cprov),)))
        old = planner.table
        t = planner.plan(store1.records(), store1.rejections(), store1.take_batch())
        history.observe(old, t, planner.changed)
        render_addn_hosts(t)
    timed("container start: update+plan+history+render, patched", container_start)
    assert render_addn_hosts(table_a) != render_addn_hosts(table_b)


if __name__ == "__main__":
    main()
