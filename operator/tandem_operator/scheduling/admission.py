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

from collections.abc import Iterable, Mapping
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
