"""The lifecycle's words, each defined once: phases, stop kinds, node statuses, events.

Every module that names a phase, a stop kind, a node status or a lifecycle event imports
it from here, as a ``Literal`` type, so a misspelt name fails ``mypy --strict`` instead of
silently never matching. The sets and predicates say what a name *means* for the rules
("terminal", "holds a workspace") so that no module keeps its own copy of a phase set.

The names themselves are fixed by the API (the contract's §3 and §5): they are what users
read in ``status.phase``, ``status.stopKind`` and ``status.checkpoint.lifecycleHistory``.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

Phase = Literal[
    "Queued",
    "Running",
    "Pausing",
    "Paused",
    "AwaitingApproval",
    "Completed",
    "Blocked",
    "Failed",
    "Cancelled",
]
ALL_PHASES: Final[tuple[Phase, ...]] = get_args(Phase)

TERMINAL_PHASES: Final[frozenset[Phase]] = frozenset(
    {"Completed", "Blocked", "Failed", "Cancelled"}
)
"""Finished runs: never left again except by a recover (B14)."""

ACTIVE_PHASES: Final[frozenset[Phase]] = frozenset({"Running", "Pausing"})
"""Phases that hold an execution claim, a scheduler slot and a workspace lock (B3, B9)."""

RECOVERABLE_PHASES: Final[frozenset[Phase]] = frozenset({"Failed", "Paused", "Blocked"})
"""Runs a new ``spec.recover.requestId`` resets and re-queues (B14)."""

PARKED_PHASES: Final[frozenset[Phase]] = frozenset({"Paused", "AwaitingApproval"})
"""Waiting for a person (or a timer rule): state lives in status, no lock is held (B3)."""

FAILED_LIKE_PHASES: Final[frozenset[Phase]] = frozenset({"Failed", "Blocked", "Cancelled"})
"""Terminal without the result: ``Stalled=True`` (kstatus reads it as Failed)."""


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL_PHASES


def holds_workspace(phase: str | None) -> bool:
    """Running and Pausing runs hold their workspace lock and a capacity slot (B9)."""
    return phase in ACTIVE_PHASES


def waits_for_admission(phase: str | None) -> bool:
    """A new run (no phase yet) or a Queued one: admission (B9) decides when it starts."""
    return phase is None or phase == "Queued"


def may_be_requeued(phase: str | None) -> bool:
    """Phases a decision can turn into Queued at once (resume, auto-resume, a gate)."""
    return waits_for_admission(phase) or phase in PARKED_PHASES


StopKind = Literal[
    "Cancelled",
    "OperatorStopped",
    "GuardrailStopped",
    "Panic",
    "Shutdown",
    "ServerRestart",
    "StaleReaped",
]
OPERATOR_PAUSES: Final[frozenset[StopKind]] = frozenset({"StaleReaped", "GuardrailStopped"})
"""Pauses the operator made: only B6, B7 or B14 resume them, never a plain resume (B12)."""

NodeStatus = Literal["completed", "needs_repair", "failed", "blocked"]
NODE_STATUSES: Final[frozenset[NodeStatus]] = frozenset(get_args(NodeStatus))

QueueReason = Literal["capacity", "workspace_lock", "rate_limit", "retry_backoff"]

QueueVerdict = Literal["admit", "capacity", "workspace_lock"]
"""What admission (B9) says of a run that waits: start now, or why not."""

LifecycleEvent = Literal[
    "run_queued",
    "run_started",
    "run_completed",
    "run_blocked",
    "run_failed",
    "run_failed_server_restart",
    "run_queued_for_resume_after_restart",
    "run_pausing_settled_on_restart",
    "run_pausing",
    "run_paused",
    "run_resumed",
    "run_stopped",
    "run_cancelled",
    "run_recovered",
    "run_recovered_from_pause",
    "run_auto_resumed",
    "run_queued_retry_backoff",
    "run_awaiting_approval",
    "run_gate_approved",
    "run_gate_reworked",
    "approval_gate_marked_stale",
    "approval_gate_reminder_due",
    "run_paused_stale_no_provider_activity",
    "run_failed_stale_no_provider_activity",
]
LIFECYCLE_EVENTS: Final[tuple[LifecycleEvent, ...]] = get_args(LifecycleEvent)

AutoResumeReason = Literal["auto_resume_after_stale_reap", "auto_resume_after_guardrail_override"]
AUTO_RESUME_REASONS: Final[tuple[AutoResumeReason, ...]] = get_args(AutoResumeReason)

STALE_REAP_EVENTS: Final[frozenset[LifecycleEvent]] = frozenset(
    {"run_paused_stale_no_provider_activity", "run_failed_stale_no_provider_activity"}
)


def event_reason(event: LifecycleEvent) -> str:
    """``run_failed_server_restart`` → ``RunFailedServerRestart`` (a Kubernetes Event reason)."""
    return "".join(part[:1].upper() + part[1:] for part in event.split("_"))
