"""What changed in the store between two syncs: the input of an incremental plan.

A sync that follows one container start must not cost what the whole table
costs: with 10,000 names, re-planning all of them was most of the sync's CPU,
and on a busy machine that CPU is what makes the new name late. So the store
lists the objects that changed since its last batch, each as it was then and
as it is now, and the planner patches its last table with just those.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.model.record import ObjectState


@dataclass(frozen=True, slots=True)
class ObjectChange:
    before: ObjectState | None  # when the last batch was taken (None: not there)
    after: ObjectState | None  # now (None: gone)


@dataclass(frozen=True, slots=True)
class Changes:
    """The objects changed between two store generations.

    ``objects`` is None when they were not listed (too many, or a whole source
    dropped): the table is then planned from every snapshot, as it always can be.
    A planner patches a table only if it was planned at ``since``.
    """

    since: int
    upto: int
    objects: tuple[ObjectChange, ...] | None
