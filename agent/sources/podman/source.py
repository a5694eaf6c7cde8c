"""Podman containers -> ``<name>.<zone>``, kept true by events, inspect and aardvark's files.

On the shared lifecycle (sources/lifecycle.py): on every (re)connect the
event stream is subscribed, then every container listed and the whole
snapshot replaced. After that an event is only a hint: the container it
names is inspected again and its one entry replaced (a ``rename`` event
carries only the new name; inspect by id says what the container is called
now). While the service is unreachable the last snapshot stays: a service
restart must not make running containers vanish. While its socket is absent
nothing is retried: the lifecycle waits for the socket to appear.

Beside the events, the aardvark-dns files (aardvark.py, followed for the
source's whole life) are a second, faster signal: netavark writes them
before ``podman run`` returns, while the file-backed event stream is polled
(up to ~250 ms late). A container they list that inspect has no verdict on
yet is published from them at once; any change to a container's lines makes
the source inspect it. Inspect stays authoritative (ledger.py has the merge
rules), and lines that cannot be tied to one container are refused
(aardvark.py, refusals.py).

The path of an event, straight (docs/architecture.md): the stream's thread
and every inspection put what they found into one queue (session.py); the
follower here takes it, asks the ledger what the container now publishes,
and hands that to the store at once. Batching is the pipeline's alone.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from agent.config.schema import Config, PodmanConfig
from agent.model.names import InvalidName, normalise_label
from agent.sources.base import Objects, ServiceSource, Source
from agent.sources.lifecycle import Awaited, Problem

from .aardvark import AardvarkWatcher, Snapshot
from .inspect import Down, Live, Pending
from .ledger import Ledger
from .refusals import line_refusals
from .view import ContainerView, object_state

if TYPE_CHECKING:
    from .session import Inspected, Session

log = structlog.get_logger(component="sources.podman")

API_TIMEOUT_S = 10.0
# Container events that cannot change a name or an address.
IGNORED_ACTIONS = frozenset({
    "attach", "commit", "copy", "exec", "exec_died", "export", "health_status", "mount",
    "sync", "top", "unmount",
})
FIX = "start Podman's API service: systemctl enable --now podman.socket"
FIX_USER = "start Podman's API service: systemctl --user enable --now podman.socket"

ClientFactory = Callable[[str, "float | None"], Any]


def podman_client(base_url: str, timeout: float | None) -> Any:
    """podman-py's client on an explicit socket (it would default to the per-user one).
    Imported here: a daemon without Podman never loads podman-py and requests."""
    from podman import PodmanClient

    if timeout is None:
        return PodmanClient(base_url=base_url)
    return PodmanClient(base_url=base_url, timeout=timeout)


def _describe(e: BaseException) -> str:
    cause = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    text = f"{type(e).__name__}: {e}"
    if cause is not None and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text


def event_ref(event: Mapping[str, Any]) -> str | None:
    """The container an event is a hint about, or None if it cannot change a name."""
    kind = event.get("Type")
    action = event.get("Action") or event.get("status")
    actor = event.get("Actor")
    actor = actor if isinstance(actor, Mapping) else {}
    attrs = actor.get("Attributes")
    attrs = attrs if isinstance(attrs, Mapping) else {}
    ref = actor.get("ID") or event.get("id") or attrs.get("name")
    if not isinstance(ref, str) or not ref:
        return None
    if kind == "container" and action not in IGNORED_ACTIONS:
        return ref
    # A network event may not name the network; the container is what changed:
    # inspect it again and take all of its networks from there.
    if kind == "network" and action in ("connect", "disconnect"):
        return ref
    return None


class PodmanSource(ServiceSource["Session"]):
    kind = "podman"
    retry_first_s = 1.0
    retry_max_s = 30.0

    def __init__(self, config: PodmanConfig, client_factory: ClientFactory = podman_client,
                 *, euid: int | None = None) -> None:
        super().__init__(f"podman:{config.socket}")
        self.config = config
        self._client_factory = client_factory
        self._ledger = Ledger(functools.partial(object_state, source=self.name,
                                                zone=config.zone))
        self._conn: Session | None = None  # set once listed, until the connection ends
        # A non-root daemon talks to a rootless Podman, whose addresses the host
        # cannot reach (and whose aardvark files are elsewhere anyway). The
        # service's own answer replaces this guess on every connect.
        self._rootless = (os.geteuid() if euid is None else euid) != 0
        self._fast = Snapshot()
        self._fast_off: str | None = None
        self._then: str | None = None  # what happens next, while disconnected
        self._coming: set[str] = set()  # inspected on their way up, not running yet

    @classmethod
    def from_config(cls, config: Config) -> list[Source]:
        return [cls(config.podman)] if config.podman.enabled else []

    def config_key(self) -> Hashable:
        return self.config

    def near_misses(self, name: str) -> list[dict[str, Any]]:
        """For `agentctl explain`: a stopped container that would answer ``name``."""
        out = []
        for down in self._ledger.stopped().values():
            try:
                label = normalise_label(down.name)
            except InvalidName:
                continue
            if down.name and name == f"{label}.{self.config.zone}":
                out.append({"kind": "stopped", "name": down.name, "state": down.state,
                            "text": f"container {down.name} exists but is "
                                    f"{down.state or 'stopped'}",
                            "fix": f"podman start {down.name}"})
        return out

    @property
    def base_url(self) -> str:
        return f"unix://{self.config.socket}"

    # --- the lifecycle's hooks ------------------------------------------------------

    def wait_available(self) -> Awaited | None:
        return Awaited((self.config.socket,), "Podman's API socket",
                       FIX_USER if self._rootless else FIX)

    def companions(self) -> Sequence[Any]:
        return (self._fast_path(),)

    async def connect(self) -> Session:
        from .session import Session, rootless_of

        api = self._client_factory(self.base_url, API_TIMEOUT_S)
        try:
            info = await asyncio.to_thread(api.info)
        except BaseException:
            api.close()
            raise
        self._rootless = rootless_of(info)
        return Session(api, self._client_factory(self.base_url, None), rootless=self._rootless)

    async def subscribe(self, conn: Session) -> None:
        await conn.stream.open()  # from here on, nothing that happens is missed

    async def list_all(self, conn: Session) -> Objects:
        verdicts, problems = await conn.list_all()
        for found in problems:
            self._inspect_problem(found)
        self._ledger.set_provisional(self._fast_views())
        self._ledger.resync(verdicts)
        self._refusals()
        self._conn = conn
        self._coming.clear()
        self._expect()  # from now on the pipeline knows what this source expects
        log.debug("Podman listed", socket=str(self.config.socket),
                  running=sum(isinstance(v, Live) for v in verdicts.values()))
        return self._ledger.snapshot()

    async def follow(self, conn: Session) -> str:
        from .session import Failed, Inspected

        # Listed on the way up, or only in aardvark's files: ask until settled.
        for cid in sorted(conn.unsettled | {c for c in self._fast_views()
                                            if self._ledger.verdict(c) is None}):
            conn.inspect(cid)
        while True:
            for hint in await conn.hints.batch():
                if isinstance(hint, Inspected):
                    self._inspected(hint)
                elif isinstance(hint, Failed):
                    raise hint.error
                elif isinstance(hint, BaseException):
                    return str(hint)  # the stream ended
                elif (ref := event_ref(hint)) is not None:
                    self.saw_event()
                    conn.inspect(ref)
                else:
                    self.saw_event()

    async def disconnect(self, conn: Session) -> None:
        conn.close()

    def on_disconnected(self) -> None:
        self._conn = None  # the files alone speak now (ledger rule 5)
        self._coming.clear()
        self._expect()

    def describe(self, error: BaseException) -> Problem:
        text = _describe(error)
        if any(s in text for s in ("Connection refused", "No such file", "Unable to make "
                                   "connection")):
            return Problem(f"Podman's API socket {self.config.socket} does not answer",
                           FIX_USER if self._rootless else FIX)
        return Problem(text)

    def connected_detail(self) -> str | None:
        self._then = None
        return self._detail()

    def failed_detail(self, problem: Problem, then: str) -> str:
        self._then = then
        return self._detail() or then

    # --- status ---------------------------------------------------------------------

    def _detail(self) -> str | None:
        notes = [self._then] if self._then else []
        if self._rootless:
            notes.append("rootless Podman: a container answers the host's addresses if it "
                         "publishes a port on the host, else it is not published")
        elif self._fast_off:
            notes.append(f"fast path off: {self._fast_off}")
        else:
            notes += [f"fast path off for network {net}: {why}"
                      for net, why in sorted(self._fast.problems.items())]
        return "; ".join(notes) or None

    def _show(self) -> None:
        """The fast path's problems changed: say so in the current state's detail."""
        self.set_state(self.health.state, self._detail())

    def _inspect_problem(self, found: Inspected) -> None:
        assert found.problem is not None
        self.record_error(found.problem)
        log.warning("Podman inspect failed; container left as it was",
                    container=found.ref[:12], problem=found.problem)

    # --- what the follower and the files found --------------------------------------

    def _publish(self, ids: set[str]) -> None:
        """Hand what changed to the store at once: batching is the pipeline's (coalesce.py)."""
        for cid in sorted(ids):
            self.update(cid, self._ledger.published(cid))

    def _expect(self) -> None:
        """Tell the pipeline how many containers are on their way up (created, not started)."""
        # Optional in SnapshotSink: the store has it (StateStore.expect), others may not.
        expect = getattr(self._sink, "expect", None)
        if expect is not None:
            expect(self.name, len(self._coming))

    def _inspected(self, found: Inspected) -> None:
        log.debug("inspected", container=found.cid[:12], verdict=type(found.verdict).__name__,
                  state=getattr(found.verdict, "state", None), last=found.last)
        if found.problem is not None:
            self._inspect_problem(found)
        coming = len(self._coming)
        if isinstance(found.verdict, Pending) and not found.last:
            self._coming.add(found.ref)
        else:
            self._coming.discard(found.ref)
        if len(self._coming) != coming:
            self._expect()
        if not isinstance(found.verdict, Pending):
            self._apply(found.cid, found.verdict)

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
        conn = self._conn
        changed, hints = self._ledger.set_provisional(
            self._fast_views(), present, files_alone=conn is None)
        self._publish(changed | self._refusals())
        if conn is not None:
            for cid in sorted(hints):
                v = self._ledger.verdict(cid)
                if not (isinstance(v, Down) and v.gone):
                    conn.inspect(cid)
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
