"""Podman containers -> ``<name>.<zone>``, kept true by events, inspect and aardvark's files.

On every (re)connect: subscribe to the event stream, then list, then replace
the whole snapshot. After that an event is only a hint: the container it
names is inspected again and its one entry replaced (a ``rename`` event
carries only the new name; inspect by id says what the container is called
now). While the service is unreachable the last snapshot stays: a service
restart must not make running containers vanish.

Beside the events, the aardvark-dns files (aardvark.py) are a second,
faster signal: netavark writes them before ``podman run`` returns, while the
file-backed event stream is polled (up to ~250 ms late). A container they
list that inspect has no verdict on yet is published from them at once; any
change to a container's lines makes the source inspect it. Inspect stays
authoritative (ledger.py has the merge rules).

podman-py is synchronous: inspects run in threads (asyncio.to_thread), the
event stream in its own thread (events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import structlog
from podman import PodmanClient
from podman.errors import APIError, NotFound

from agent.config.schema import Config, PodmanConfig
from agent.model.record import ObjectState
from agent.sources.base import SnapshotSink, Source
from agent.sources.lifecycle import LinkState

from .aardvark import AardvarkWatcher, Snapshot
from .events import EventStream, StreamEnded
from .inspect import DOWN_STATES, PUBLISHED_STATES, Down, InspectError, Live, Pending, pod_of
from .inspect import verdict as verdict_of
from .ledger import Ledger
from .refusals import line_refusals
from .view import ContainerView, object_state

log = structlog.get_logger(component="sources.podman")

API_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
INSPECT_CONCURRENCY = 4
# A container caught on its way up (created, initialized) is asked again a few
# times: its start event would bring the answer too, but up to ~250 ms later.
PENDING_RETRY_S = (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
# Replay this much history on subscribe: the service may start following its
# events file a moment after it sent the stream's headers. A replayed event
# costs one inspect; a missed one would cost a stale name.
SINCE_SLACK_S = 2
# Container events that cannot change a name or an address.
IGNORED_ACTIONS = frozenset({
    "attach", "commit", "copy", "exec", "exec_died", "export", "health_status", "mount",
    "sync", "top", "unmount",
})
_FULL_ID = re.compile(r"[0-9a-f]{64}")

ClientFactory = Callable[[str, "float | None"], Any]


def podman_client(base_url: str, timeout: float | None) -> Any:
    """podman-py's client on an explicit socket (it would default to the per-user one)."""
    if timeout is None:
        return PodmanClient(base_url=base_url)
    return PodmanClient(base_url=base_url, timeout=timeout)


def _describe(e: BaseException) -> str:
    cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    text = f"{type(e).__name__}: {e}"
    if cause is not None and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


class PodmanSource(Source):
    kind = "podman"

    def __init__(self, config: PodmanConfig, client_factory: ClientFactory = podman_client,
                 *, euid: int | None = None) -> None:
        super().__init__(f"podman:{config.socket}")
        self.config = config
        self._client_factory = client_factory
        self._ledger = Ledger(self._build)
        self._sink: SnapshotSink | None = None
        self._session: _Session | None = None
        # A non-root daemon talks to a rootless Podman, whose addresses the host
        # cannot reach (and whose aardvark files are elsewhere anyway). The
        # service's own answer replaces this guess on every connect.
        self._rootless = (os.geteuid() if euid is None else euid) != 0
        self._fast = Snapshot()
        self._fast_off: str | None = None
        self._link: tuple[LinkState, str | None] = ("starting", None)
        self._pod_names: dict[str, str] = {}
        self._synced_session = False

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        return [cls(config.podman)] if config.podman.enabled else []

    def config_key(self) -> Hashable:
        return self.config

    @property
    def base_url(self) -> str:
        return f"unix://{self.config.socket}"

    def _build(self, view: ContainerView) -> ObjectState:
        return object_state(view, source=self.name, zone=self.config.zone)

    # --- status ------------------------------------------------------------

    def _show(self, state: LinkState | None = None, detail: str | None = None) -> None:
        """Set the connection state (None: keep it) and rebuild health.detail."""
        if state is not None:
            self._link = (state, detail)
        state, detail = self._link
        notes = [detail] if detail else []
        if self._rootless:
            notes.append("rootless Podman: a container answers the host's addresses if it "
                         "publishes a port on the host, else it is not published")
        elif self._fast_off:
            notes.append(f"fast path off: {self._fast_off}")
        else:
            notes += [f"fast path off for network {net}: {why}"
                      for net, why in sorted(self._fast.problems.items())]
        self.set_state(state, "; ".join(notes) or None)

    # --- publishing --------------------------------------------------------

    def _publish(self, ids: set[str]) -> None:
        """Hand what changed to the store at once: batching is the pipeline's (coalesce.py)."""
        if self._sink is None:
            return
        for cid in sorted(ids):
            self._sink.update(self.name, cid, self._ledger.published(cid))

    def _expect(self, coming: int) -> None:
        """Tell the pipeline how many containers are on their way up (created, not started)."""
        # Optional in SnapshotSink: the store has it (StateStore.expect), others may not.
        expect = getattr(self._sink, "expect", None)
        if expect is not None:
            expect(self.name, coming)

    def _apply(self, cid: str, verdict: Live | Down) -> None:
        old = self._ledger.verdict(cid)
        if (isinstance(old, Live) and isinstance(verdict, Live)
                and old.view.name != verdict.view.name):
            log.info("container renamed", id=cid[:12], old=old.view.name, new=verdict.view.name)
        changed = {cid} if self._ledger.set_verdict(cid, verdict) else set()
        if isinstance(verdict, Down) and verdict.gone and cid in self._fast.present:
            changed |= self._refusals()  # a line for no container
        self._publish(changed)

    def _fast_views(self) -> Mapping[str, ContainerView]:
        return {} if self._rootless or self._fast_off else self._fast.views

    def _refusals(self) -> set[str]:
        """Show the lines not believed (refusals.py); returns the keys that changed."""
        if self._rootless or self._fast_off:
            return self._ledger.set_refused({})

        def removed(cid: str) -> bool:
            v = self._ledger.verdict(cid)
            return isinstance(v, Down) and v.gone

        return self._ledger.set_refused(line_refusals(self._fast, source=self.name,
                                                      removed=removed))

    def _on_aardvark(self, snapshot: Snapshot) -> None:
        problems_changed = snapshot.problems != self._fast.problems
        self._fast = snapshot
        present = None if self._rootless or self._fast_off else snapshot.present
        changed, hints = self._ledger.set_provisional(
            self._fast_views(), present, files_alone=self._session is None)
        self._publish(changed | self._refusals())
        session = self._session
        if session is not None:
            for cid in sorted(hints):
                v = self._ledger.verdict(cid)
                if not (isinstance(v, Down) and v.gone):
                    session.inspect(cid)
        if problems_changed:
            self._show()

    async def _fast_path(self) -> None:
        watcher = AardvarkWatcher(self.config.aardvark_dir, self._on_aardvark)
        try:
            await watcher.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # No inotify (limits reached, no permission): events alone still work.
            self._fast_off = _describe(e)
            log.error("aardvark-dns fast path failed; using Podman events alone",
                      path=str(self.config.aardvark_dir), error=self._fast_off)
            self._on_aardvark(Snapshot())
            self._show()

    # --- the connection ----------------------------------------------------

    async def run(self, sink: SnapshotSink) -> None:
        self._sink = sink
        fast = asyncio.create_task(self._fast_path(), name=f"{self.name}:aardvark")
        try:
            await self._connect_loop()
        finally:
            fast.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fast

    async def _connect_loop(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            try:
                await self._connect_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if self._synced_session:  # it worked until now: retry soon
                    delay = RECONNECT_MIN_S
                    self._synced_session = False
                why = _describe(e)
                self.record_error(why)
                self._show("disconnected", f"reconnecting in {delay:.0f}s")
                self.mark_synced()  # the daemon must not wait for a service that is down
                log.warning("Podman service lost; keeping the last snapshot",
                            socket=str(self.config.socket), error=why, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def _connect_once(self) -> None:
        api = self._client_factory(self.base_url, API_TIMEOUT_S)
        stream = EventStream(self._client_factory(self.base_url, None),
                             since=int(time.time()) - SINCE_SLACK_S)
        session = _Session(self, api, stream)
        try:
            await stream.open()  # subscribed: nothing that happens from here on is missed
            info = await asyncio.to_thread(api.info)
            self._rootless = _rootless(info)
            verdicts, unsettled = await session.list_all()
            self._pod_names.clear()
            self._ledger.set_provisional(self._fast_views())
            self._ledger.resync(verdicts)
            self._refusals()
            assert self._sink is not None
            self._sink.replace(self.name, self._ledger.snapshot())
            self._session = session
            self._synced_session = True
            self.mark_synced()
            self._show("connected")
            log.info("Podman synced", socket=str(self.config.socket),
                     running=sum(isinstance(v, Live) for v in verdicts.values()))
            # Listed on the way up, or only in aardvark's files: ask until settled.
            for cid in sorted(unsettled | {c for c in self._fast_views()
                                           if self._ledger.verdict(c) is None}):
                session.inspect(cid)
            while True:
                try:
                    event = await stream.next()
                except StreamEnded:
                    if session.error is not None:
                        raise session.error from None
                    raise
                self.saw_event()
                self._on_event(event, session)
        finally:
            self._session = None
            stream.close()
            session.close()
            with contextlib.suppress(Exception):
                api.close()

    def _on_event(self, event: Mapping[str, Any], session: _Session) -> None:
        kind = event.get("Type")
        action = event.get("Action") or event.get("status")
        actor = event.get("Actor")
        actor = actor if isinstance(actor, Mapping) else {}
        attrs = actor.get("Attributes")
        attrs = attrs if isinstance(attrs, Mapping) else {}
        ref = actor.get("ID") or event.get("id") or attrs.get("name")
        if not isinstance(ref, str) or not ref:
            return
        if kind == "container" and action not in IGNORED_ACTIONS:
            session.inspect(ref)
        elif kind == "network" and action in ("connect", "disconnect"):
            # The network may be missing from the event; the container is what
            # changed: inspect it again and take all of its networks from there.
            session.inspect(ref)


def _rootless(info: object) -> bool:
    host = info.get("host") if isinstance(info, Mapping) else None
    security = host.get("security") if isinstance(host, Mapping) else None
    return bool(security.get("rootless")) if isinstance(security, Mapping) else False


class _Refused(Exception):
    """The service answered an inspect with an error: it is alive, the request failed."""


def _gone(e: APIError) -> bool:
    # Removal races: besides 404, Podman 4.3 answers 500 "... does not exist in
    # database: no such container" for a container being removed.
    return isinstance(e, NotFound) or "no such container" in str(e)


def _fetch(api: Any, ref: str, pod_names: Mapping[str, str]) -> tuple[Any, str | None]:
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
    name = pod_names.get(pod)
    if name is None:
        try:
            found = api.pods.get(pod).attrs.get("Name")
        except APIError as e:
            if e.response is None:
                raise
            found = None  # the pod is going away with its infra container
        name = found if isinstance(found, str) else None
    return attrs, name


class _Session:
    """One connection's inspections: deduplicated per container, a few at a time."""

    def __init__(self, source: PodmanSource, api: Any, stream: EventStream) -> None:
        self.source = source
        self.api = api
        self.stream = stream
        self.error: Exception | None = None
        self._sem = asyncio.Semaphore(INSPECT_CONCURRENCY)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._coming: set[str] = set()  # inspected on their way up, not running yet

    def _on_the_way(self, ref: str, coming: bool) -> None:
        before = len(self._coming)
        if coming:
            self._coming.add(ref)
        else:
            self._coming.discard(ref)
        if len(self._coming) != before:
            self.source._expect(len(self._coming))

    def inspect(self, ref: str) -> None:
        """Inspect ``ref`` soon; if an inspect of it is under way, once more after it."""
        if self.error is not None:
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
                cid, v = await self.inspect_once(ref)
                self._on_the_way(ref, isinstance(v, Pending))
                if not isinstance(v, Pending):
                    self.source._apply(cid, v)
                if ref in self._again:
                    continue
                delay = next(retries, None) if isinstance(v, Pending) else None
                if delay is None:
                    return
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.fail(e)
        finally:
            self._tasks.pop(ref, None)
            self._on_the_way(ref, False)

    async def inspect_once(self, ref: str) -> tuple[str, Live | Down | Pending]:
        try:
            async with self._sem:
                attrs, pod_name = await asyncio.to_thread(_fetch, self.api, ref,
                                                          self.source._pod_names)
        except _Refused as e:
            self.source.record_error(f"inspect {ref[:12]}: {e}")
            log.warning("Podman refused an inspect; container left as it was",
                        container=ref[:12], error=str(e))
            return ref, Pending("refused")
        if attrs is None:
            return ref, Down(gone=True) if _FULL_ID.fullmatch(ref) else Pending("unknown")
        cid = attrs.get("Id") if isinstance(attrs, Mapping) else None
        cid = cid if isinstance(cid, str) and cid else ref
        pod = pod_of(attrs)
        if pod is not None and pod_name is not None:
            self.source._pod_names[pod] = pod_name
        try:
            return cid, verdict_of(attrs, rootless=self.source._rootless, pod_name=pod_name)
        except InspectError as e:
            self.source.record_error(f"inspect {ref[:12]}: {e.reason}")
            log.warning("Podman inspect data not understood; container left as it was",
                        container=ref[:12], problem=e.reason)
            return cid, Pending("unreadable")

    async def list_all(self) -> tuple[dict[str, Live | Down], set[str]]:
        """Every container: a verdict for each running or stopped one, and the rest."""
        listed = await asyncio.to_thread(lambda: self.api.containers.list(all=True))
        verdicts: dict[str, Live | Down] = {}
        running: list[str] = []
        unsettled: set[str] = set()
        for c in listed:
            attrs = c.attrs if isinstance(c.attrs, Mapping) else {}
            cid, state = attrs.get("Id"), attrs.get("State")
            if not isinstance(cid, str) or not cid:
                continue
            if state in PUBLISHED_STATES:
                running.append(cid)
            elif state in DOWN_STATES:
                verdicts[cid] = Down()
            else:
                unsettled.add(cid)
        for cid, v in await asyncio.gather(*(self.inspect_once(c) for c in running)):
            if isinstance(v, Pending):
                unsettled.add(cid)
            else:
                verdicts[cid] = v
        return verdicts, unsettled

    def fail(self, e: Exception) -> None:
        """The service stopped answering: end the stream, which makes the source reconnect."""
        if self.error is None:
            self.error = e
            self.stream.close()

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
