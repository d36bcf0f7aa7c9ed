"""What every status update enforces, and the conditions derived from the phase.

``scheduler`` only while Queued, ``executionClaim`` only while Running or Pausing,
``finishedAt`` on terminal phases, the B16 running detail (non-terminal runs), the progress
column, the bounded history, and the conditions Succeeded, Ready, Reconciling, Stalled and
AwaitingApproval (kstatus and Argo CD read them; docs/gitops.md).
"""

from __future__ import annotations

import re

from tandem_operator.api.models import AutomationRunStatus, Checkpoint, Condition
from tandem_operator.api.vocabulary import ACTIVE_PHASES, FAILED_LIKE_PHASES, TERMINAL_PHASES
from tandem_operator.lifecycle.bounds import trim_history
from tandem_operator.lifecycle.work import Work

_DETAIL_NODE = re.compile(r"node `([^`]+)`")


def refresh_detail(detail: str | None, checkpoint: Checkpoint) -> str | None:
    """B16: a detail that names a completed node moves on to what runs next."""
    if not detail:
        return detail
    match = _DETAIL_NODE.search(detail)
    if not match or match.group(1) not in checkpoint.completed_nodes:
        return detail
    blocked = set(checkpoint.blocked_nodes)
    for node_id in checkpoint.pending_nodes:
        attempts = checkpoint.node_attempts.get(node_id, 0)
        if node_id not in blocked and attempts > 0:
            return f"running node `{node_id}` attempt {attempts}"
    return f"completed node `{match.group(1)}`; continuing"


_CONDITION_TYPES = ("Succeeded", "Ready", "Reconciling", "Stalled", "AwaitingApproval")


def desired_conditions(
    status: AutomationRunStatus,
    *,
    stalled_reason: str | None = None,
    stalled_kind: str = "InvalidStatus",
) -> dict[str, tuple[str, str, str]]:
    """type → (status, reason, message) for the run's phase."""
    phase = status.phase or "Queued"
    message = status.detail or ""
    terminal = phase in TERMINAL_PHASES
    succeeded = "True" if phase == "Completed" else ("False" if terminal else "Unknown")
    # Terminal without its result: kstatus (Flux, kpt) reads Stalled=True as Failed, which
    # a Cancelled run must be too, or it would report InProgress forever (docs/gitops.md).
    failed_like = phase in FAILED_LIKE_PHASES
    stalled = failed_like or stalled_reason is not None
    return {
        "Succeeded": (succeeded, phase, message),
        "Ready": ("True" if phase == "Completed" else "False", phase, message),
        "Reconciling": (
            "True" if phase in ("Queued", "Running", "Pausing") else "False",
            phase,
            message,
        ),
        "Stalled": (
            "True" if stalled else "False",
            stalled_kind if stalled_reason else phase,
            stalled_reason or (message if stalled else ""),
        ),
        "AwaitingApproval": (
            "True" if phase == "AwaitingApproval" else "False",
            phase,
            message if phase == "AwaitingApproval" else "",
        ),
    }


def apply_conditions(
    status: AutomationRunStatus,
    *,
    now: str,
    generation: int,
    stalled_reason: str | None = None,
    stalled_kind: str = "InvalidStatus",
) -> None:
    wanted = desired_conditions(status, stalled_reason=stalled_reason, stalled_kind=stalled_kind)
    current = {c.type: c for c in status.conditions}
    out: list[Condition] = []
    for ctype in _CONDITION_TYPES:
        value, reason, message = wanted[ctype]
        old = current.get(ctype)
        transition = old.last_transition_time if old is not None and old.status == value else now
        out.append(
            Condition(
                type=ctype,
                status=value,
                reason=reason,
                message=message,
                last_transition_time=transition,
                observed_generation=generation,
            )
        )
    status.conditions = out


def finalize(w: Work) -> None:
    s = w.s
    if s.phase != "Queued":
        s.scheduler = None
    if s.phase not in ACTIVE_PHASES:
        s.execution_claim = None
    if s.phase in TERMINAL_PHASES:
        s.finished_at = s.finished_at or w.now
        s.checkpoint.awaiting_gate = None
    else:
        # B16 is about a run that goes on; a finished run's detail says how it ended.
        s.detail = refresh_detail(s.detail, s.checkpoint)
    flow = w.flow()
    if flow is not None:
        s.progress = f"{len(s.checkpoint.completed_nodes)}/{len(flow.nodes)}"
    trim_history(s.checkpoint.lifecycle_history, limit=w.obs.settings.lifecycle_history_limit)
    s.observed_generation = w.obs.generation
    apply_conditions(
        s,
        now=w.now,
        generation=w.obs.generation,
        stalled_reason=w.stalled,
        stalled_kind="AutomationUnresolved",
    )
