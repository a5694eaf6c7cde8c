"""One connection to the Podman service: its event stream and its inspections.

Nothing here calls back into the source. The stream's events, the end of
the stream and every inspection's outcome go into one queue (``hints``)
that the source follows; the source decides what each means.

Inspections are deduplicated per container (one in flight per id, and one
more after it if asked again meanwhile), a few at a time; a container
caught on its way up (created, initialized) is asked again a few times,
since its start event would bring the answer too, but up to ~250 ms later.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from podman.errors import APIError, NotFound

from agent.sources.lifecycle import Hints

from .events import EventStream, StreamEnded
from .inspect import DOWN_STATES, PUBLISHED_STATES, Down, InspectError, Live, Pending, pod_of
from .inspect import verdict as verdict_of

INSPECT_CONCURRENCY = 4
PENDING_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
# Replay this much history on subscribe: the service may start following its
# events file a moment after it sent the stream's headers. A replayed event
# costs one inspect; a missed one would cost a stale name.
SINCE_SLACK_S = 2
_FULL_ID = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Inspected:
    """What one inspection found. ``last``: no retry follows (settled, or given up)."""

    ref: str
    cid: str
    verdict: Live | Down | Pending
    last: bool = True
    problem: str | None = None  # the service refused, or its data was not understood


@dataclass(frozen=True, slots=True)
class Failed:
    """The service stopped answering an inspection: the connection is over."""

    error: Exception


Hint = Mapping[str, Any] | BaseException | Inspected | Failed


class _Refused(Exception):
    """The service answered an inspect with an error: it is alive, the request failed."""


def _gone(e: APIError) -> bool:
    # Removal races: besides 404, Podman 4.3 answers 500 "... does not exist in
    # database: no such container" for a container being removed.
    return isinstance(e, NotFound) or "no such container" in str(e)


def _pod_name(api: Any, pod: str) -> str | None:
    try:
        found = api.pods.get(pod).attrs.get("Name")
    except APIError as e:
        if e.response is None:
            raise
        found = None  # the pod is going away with its infra container
    return found if isinstance(found, str) else None


def fetch(api: Any, ref: str, pod_names: Mapping[str, str]) -> tuple[Any, str | None]:
    """Inspect one container (and its pod's name, for an infra container). Blocking.

    Returns (None, None) for a container that does not exist; raises _Refused
    for any other answer the service gave, anything else for no answer at all.
    """
    try:
        attrs = api.containers.get(ref).attrs
    except APIError as e:
        if _gone(e):
            return None, None
        if e.response is not None:
            raise _Refused(str(e)) from e
        raise
    pod = pod_of(attrs)
    if pod is None:
        return attrs, None
    return attrs, pod_names.get(pod) or _pod_name(api, pod)


def rootless_of(info: object) -> bool:
    host = info.get("host") if isinstance(info, Mapping) else None
    security = host.get("security") if isinstance(host, Mapping) else None
    return bool(security.get("rootless")) if isinstance(security, Mapping) else False


class Session:
    def __init__(self, api: Any, stream_client: Any, *, rootless: bool) -> None:
        self.api = api
        self.rootless = rootless
        self.hints: Hints[Hint] = Hints()
        self.stream = EventStream(stream_client, since=int(time.time()) - SINCE_SLACK_S,
                                  deliver=self.hints.put)
        self.unsettled: set[str] = set()  # listed on their way up: asked once synced
        self._pod_names: dict[str, str] = {}
        self._sem = asyncio.Semaphore(INSPECT_CONCURRENCY)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._failed = False

    def inspect(self, ref: str) -> None:
        """Inspect ``ref`` soon; if an inspect of it is under way, once more after it."""
        if self._failed:
            return
        if ref in self._tasks:
            self._again.add(ref)
            return
        self._tasks[ref] = asyncio.create_task(self._inspect_until_settled(ref),
                                               name=f"podman-inspect:{ref[:12]}")

    async def _inspect_until_settled(self, ref: str) -> None:
        retries = iter(PENDING_RETRY_S)
        try:
            while True:
                self._again.discard(ref)
                found = await self.inspect_once(ref)
                pending = isinstance(found.verdict, Pending)
                delay = next(retries, None) if pending and ref not in self._again else None
                last = ref not in self._again and delay is None
                self.hints.put(Inspected(found.ref, found.cid, found.verdict, last,
                                         found.problem))
                if ref in self._again:
                    continue
                if delay is None:
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._failed = True
            self.hints.put(Failed(e))
        finally:
            self._tasks.pop(ref, None)

    async def inspect_once(self, ref: str) -> Inspected:
        try:
            async with self._sem:
                attrs, pod_name = await asyncio.to_thread(fetch, self.api, ref, self._pod_names)
        except _Refused as e:
            return Inspected(ref, ref, Pending("refused"), problem=f"inspect {ref[:12]}: {e}")
        if attrs is None:
            return Inspected(ref, ref, Down(gone=True) if _FULL_ID.fullmatch(ref)
                             else Pending("unknown"))
        cid = attrs.get("Id") if isinstance(attrs, Mapping) else None
        cid = cid if isinstance(cid, str) and cid else ref
        pod = pod_of(attrs)
        if pod is not None and pod_name is not None:
            self._pod_names[pod] = pod_name
        try:
            return Inspected(ref, cid, verdict_of(attrs, rootless=self.rootless,
                                                  pod_name=pod_name))
        except InspectError as e:
            return Inspected(ref, cid, Pending("unreadable"),
                             problem=f"inspect {ref[:12]}: {e.reason}")

    async def list_all(self) -> tuple[dict[str, Live | Down], list[Inspected]]:
        """Every container: a verdict for each running or stopped one; the inspections
        that found a problem (to be shown); ``unsettled`` gets the rest."""
        listed = await asyncio.to_thread(lambda: self.api.containers.list(all=True))
        verdicts: dict[str, Live | Down] = {}
        running: list[str] = []
        for c in listed:
            attrs = c.attrs if isinstance(c.attrs, Mapping) else {}
            cid, state = attrs.get("Id"), attrs.get("State")
            if not isinstance(cid, str) or not cid:
                continue
            if state in PUBLISHED_STATES:
                running.append(cid)
            elif state in DOWN_STATES:
                names = attrs.get("Names")
                name = names[0] if isinstance(names, list) and names else ""
                verdicts[cid] = Down(name=name if isinstance(name, str) else "", state=state)
            else:
                self.unsettled.add(cid)
        problems = []
        for found in await asyncio.gather(*(self.inspect_once(c) for c in running)):
            if found.problem is not None:
                problems.append(found)
            if isinstance(found.verdict, Pending):
                self.unsettled.add(found.cid)
            else:
                verdicts[found.cid] = found.verdict
        return verdicts, problems

    def close(self) -> None:
        self.stream.close()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        with contextlib.suppress(Exception):
            self.api.close()


__all__ = ["Failed", "Hint", "Inspected", "Session", "StreamEnded", "fetch", "rootless_of"]
