"""Admission (B9) as a pure pass over what the operator knows of every run.

Queued runs start oldest first (creationTimestamp, then name) while fewer than
``TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS`` runs are Running or Pausing, and never while a
Running or Pausing run holds the same ``workspace.root``. The pass walks the queue in
that order, handing out free slots and free workspaces; a run learns its verdict from
the pass rather than from its own view alone, so a younger run never overtakes an older
one that waits for the same resource.

The workspace lock is the run's own status: a run holds the lock of its workspace while
its phase is Running or Pausing, which is written with a resourceVersion precondition by
the single active operator (see docs/architecture.md). Every way out of those phases —
completion, failure, pause, cancel, deletion, recovery after a crash — releases it.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tandem_operator.api.models import ACTIVE_PHASES
from tandem_operator.api.vocabulary import QueueVerdict


@dataclass(frozen=True, kw_only=True)
class RunSlot:
    """What admission needs to know of one run."""

    key: tuple[str, str]
    """(namespace, name)"""
    created: str
    """metadata.creationTimestamp: RFC 3339 strings of one format order like times"""
    phase: str | None
    workspace: str | None
    eligible: bool = True
    """Queued and ready to start (desired Running, no retry back-off pending)."""


def workspace_root(
    body: Mapping[str, Any], referenced: Mapping[str, Any] | None = None
) -> str | None:
    """The workspace lock key of a raw AutomationRun, however malformed its status is.

    The flow is the status snapshot once admitted, else the inline automation, else
    ``referenced`` (the spec of the Automation the run names). A snapshot written by hand
    may be anything (the schema keeps it free-form), so every level is checked: one bad
    run must not stop admission of every other run.
    """
    status = body.get("status")
    spec = body.get("spec")
    candidates = (
        status.get("automationSnapshot") if isinstance(status, Mapping) else None,
        spec.get("automation") if isinstance(spec, Mapping) else None,
        referenced,
    )
    flow = next((c for c in candidates if c), None)
    workspace = flow.get("workspace") if isinstance(flow, Mapping) else None
    root = workspace.get("root") if isinstance(workspace, Mapping) else None
    return root if isinstance(root, str) and root else None


def admission_pass(
    runs: Iterable[RunSlot], *, capacity: int
) -> dict[tuple[str, str], QueueVerdict]:
    """Verdict for every eligible Queued run: admit, or why it waits."""
    runs = list(runs)
    busy = sum(1 for r in runs if r.phase in ACTIVE_PHASES)
    locked = {r.workspace for r in runs if r.phase in ACTIVE_PHASES and r.workspace}
    verdicts: dict[tuple[str, str], QueueVerdict] = {}
    queue = sorted(
        (r for r in runs if r.phase in (None, "Queued") and r.eligible),
        key=lambda r: (r.created, r.key[1], r.key[0]),
    )
    for run in queue:
        if run.workspace and run.workspace in locked:
            verdicts[run.key] = "workspace_lock"
        elif busy >= capacity:
            verdicts[run.key] = "capacity"
        else:
            verdicts[run.key] = "admit"
            busy += 1
            if run.workspace:
                locked.add(run.workspace)
    return verdicts


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiting:
    """What admission keeps of a run that waits (new or Queued)."""

    key: tuple[str, str]
    created: str
    desired_running: bool
    retry_after_ms: int | None
    own_workspace: str | None
    automation_ref: str | None
    has_flow: bool


SortKey = tuple[str, str, str]
"""(creationTimestamp, name, namespace): B9's order."""


class AdmissionQueue:
    """B9 kept up to date run by run, so a verdict costs what it walks, not every run.

    ``admission_pass`` answers for every waiting run at once by walking the whole queue;
    an operator that asks for one run's verdict at every reconcile would walk it once per
    run, quadratic in the queue. This index is updated as runs change phase (``update``),
    and a verdict walks only the waiting runs ahead of the asking one that take a slot or
    are held by a workspace: once the free slots are handed out, every later run waits for
    capacity. ``referenced`` resolves the workspace of a run whose flow is an Automation's,
    and whether that flow exists. The answers are the same as ``admission_pass`` over the
    same runs (a property test holds the two together).
    """

    def __init__(self, *, capacity: int, referenced: Callable[[str, str], FlowFacts]) -> None:
        self.capacity = capacity
        self._referenced = referenced
        self._waiting: dict[tuple[str, str], Waiting] = {}
        self._order: list[SortKey] = []
        self._holders: dict[tuple[str, str], str | None] = {}
        self._locked: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def busy(self) -> int:
        return len(self._holders)

    def update(self, key: tuple[str, str], *, phase: str | None, waiting: Waiting | None) -> None:
        """Record ``key``'s current phase (``None`` phase and no ``waiting``: deleted)."""
        self._unwait(key)
        if key in self._holders:
            held = self._holders.pop(key)
            if held:
                self._locked[held] -= 1
                if self._locked[held] <= 0:
                    del self._locked[held]
        if phase in ACTIVE_PHASES and waiting is not None:
            root = self._workspace(waiting)
            self._holders[key] = root
            if root:
                self._locked[root] += 1
        elif waiting is not None and (phase is None or phase == "Queued"):
            self._waiting[key] = waiting
            insort(self._order, _sort_key(waiting))

    def _unwait(self, key: tuple[str, str]) -> None:
        old = self._waiting.pop(key, None)
        if old is not None:
            at = bisect_left(self._order, _sort_key(old))
            if at < len(self._order) and self._order[at] == _sort_key(old):
                del self._order[at]

    def _workspace(self, run: Waiting) -> str | None:
        if run.has_flow or run.automation_ref is None:
            return run.own_workspace
        return self._referenced(run.key[0], run.automation_ref).workspace

    def _eligible(self, run: Waiting, now_ms: int) -> bool:
        if not run.desired_running:
            return False
        if run.retry_after_ms is not None and run.retry_after_ms > now_ms:
            return False
        if run.has_flow:
            return True
        return (
            run.automation_ref is not None
            and self._referenced(run.key[0], run.automation_ref).exists
        )

    def _walk(self, now_ms: int) -> Iterator[tuple[Waiting, QueueVerdict]]:
        """The queue in B9's order with each eligible run's verdict, lazily."""
        free = self.capacity - self.busy
        locked = set(self._locked)
        for sort_key in self._order:
            run = self._waiting[(sort_key[2], sort_key[1])]
            if not self._eligible(run, now_ms):
                continue
            root = self._workspace(run)
            if root and root in locked:
                yield run, "workspace_lock"
            elif free <= 0:
                yield run, "capacity"
            else:
                free -= 1
                if root:
                    locked.add(root)
                yield run, "admit"

    def admissible(self, now_ms: int) -> list[tuple[str, str]]:
        """The waiting runs admission lets in now (oldest first)."""
        out: list[tuple[str, str]] = []
        if self.busy >= self.capacity:
            return out
        for run, verdict in self._walk(now_ms):
            if verdict == "admit":
                out.append(run.key)
                if len(out) >= self.capacity - self.busy:
                    break
        return out

    def verdict(self, candidate: Waiting, now_ms: int) -> QueueVerdict:
        """B9 for ``candidate`` as if it were Queued (it may be Paused, about to resume).

        The candidate takes its place in the order among the waiting runs; runs after it
        do not matter.
        """
        key = candidate.key
        was = self._waiting.get(key)
        if was is None:
            self._waiting[key] = candidate
            insort(self._order, _sort_key(candidate))
        elif was != candidate:
            self._unwait(key)
            self._waiting[key] = candidate
            insort(self._order, _sort_key(candidate))
        try:
            if not self._eligible(candidate, now_ms):
                return "capacity"
            root = self._workspace(candidate)
            if root and root in self._locked:
                return "workspace_lock"
            if self.busy >= self.capacity:
                return "capacity"
            for run, verdict in self._walk(now_ms):
                if run.key == key:
                    return verdict
            return "capacity"
        finally:
            if was is None:
                self._unwait(key)
            elif was != candidate:
                self._unwait(key)
                self._waiting[key] = was
                insort(self._order, _sort_key(was))


@dataclass(frozen=True, slots=True)
class FlowFacts:
    """Of an Automation a run refers to: whether it exists, and its workspace."""

    exists: bool
    workspace: str | None


def _sort_key(run: Waiting) -> SortKey:
    return (run.created, run.key[1], run.key[0])
