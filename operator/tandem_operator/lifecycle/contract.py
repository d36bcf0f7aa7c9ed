"""The contract between the rules and the runtime: what ``decide`` sees and what it says.

``Observation`` is everything the rules may look at (gathered by the runtime); ``Decision``
is everything they produce (a status to write, lifecycle records and Kubernetes Events to
emit, attempts to start or cancel, and when to decide again). Both are frozen: the rules
never reach out, and the runtime never reaches in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tandem_operator.api.models import (
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    LifecycleRecord,
)
from tandem_operator.api.settings import Settings
from tandem_operator.api.vocabulary import QueueVerdict

__all__ = [
    "AttemptOutcome",
    "Decision",
    "Event",
    "Observation",
    "Override",
    "QueueVerdict",
    "StartAttempt",
]


@dataclass(frozen=True, kw_only=True)
class Override:
    """An approved, unexpired AgentQuotaOverride in the run's namespace."""

    name: str
    agent_id: str
    expires_ms: int | None = None
    """``spec.expiresAt``; ``None`` for an override that does not expire."""


@dataclass(frozen=True, kw_only=True)
class AttemptOutcome:
    """What an executor reported for one attempt of one node."""

    node_id: str
    attempt: int
    status: str = "failed"
    output: Mapping[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    transient: bool = False
    cancelled: bool = False
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Observation:
    """Everything ``decide`` may look at, gathered by the reconciler."""

    now_ms: int
    settings: Settings
    instance: str
    """This operator process's identity (the claimant it writes)."""
    live_instances: frozenset[str]
    """Operator instances whose heartbeat Lease is current, this one included."""
    generation: int
    spec: AutomationRunSpec
    status: AutomationRunStatus | None
    """``None`` for a run the operator has never written."""
    definition: AutomationSpec | None = None
    """The flow: the snapshot once admitted, else the inline or referenced automation."""
    definition_error: str | None = None
    admission: QueueVerdict = "capacity"
    """B9's verdict for this run as if it were Queued (admit, or why it would wait)."""
    overrides: Sequence[Override] = ()
    outcomes: Sequence[AttemptOutcome] = ()
    in_flight: frozenset[str] = frozenset()
    """Nodes with an attempt running in this process right now (adopted ones included)."""
    adopted: frozenset[str] = frozenset()
    """In-progress nodes whose attempt still runs outside this process: a container attempt
    whose Pod exists (C5). Recovery (B1/B1r) spares them; the runtime follows them again."""
    in_flight_tokens: int = 0
    """Tokens that attempts still running have reported and no outcome carries yet (B21)."""
    waiting: Mapping[str, str] = field(default_factory=dict)
    """Why an in-flight attempt cannot make progress, by node (e.g. its Pod's image cannot be
    pulled); B5 writes it into the verdict of the attempt it reaps."""
    last_activity_ms: int | None = None
    shutting_down: bool = False


@dataclass(frozen=True, kw_only=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class StartAttempt:
    node_id: str
    attempt: int


@dataclass(frozen=True, kw_only=True)
class Decision:
    status: AutomationRunStatus
    changed: bool
    records: tuple[LifecycleRecord, ...] = ()
    events: tuple[Event, ...] = ()
    start: tuple[StartAttempt, ...] = ()
    cancel: frozenset[str] = frozenset()
    """Nodes whose in-flight attempts must be cancelled."""
    consumed: int = 0
    """How many of ``Observation.outcomes`` this decision took into account."""
    requeue_at_ms: int | None = None
    """When to decide again if nothing else happens (``lifecycle.deadlines``); ``None``:
    only a change (a watch event, an outcome, an admission verdict) can move the run."""
    settled: bool = True
    """The rules reached a fixed point; if not, decide again at once."""
