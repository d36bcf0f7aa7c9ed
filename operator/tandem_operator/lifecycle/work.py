"""The working set of one decision, and the transitions every rule group shares.

``Work`` is a private, mutable copy of the run's status plus what the rules emitted so far
(lifecycle records, Events, attempts to start or cancel). The transitions (``fail``,
``pause``, ``queue``) are the one place each of them is spelt out: a rule says which
transition and why, never how a failed run looks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tandem_operator.api.models import (
    AutomationRunStatus,
    AutomationSpec,
    Checkpoint,
    ExecutionClaim,
    LastFailure,
    LifecycleRecord,
    Node,
    Scheduler,
)
from tandem_operator.api.vocabulary import LifecycleEvent, Phase, StopKind, event_reason
from tandem_operator.lifecycle.bounds import (
    MAX_REASON_CHARS,
    MIN_OUTPUT_BYTES,
    cap_output,
    clip,
    output_limit,
)
from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import Event, Observation, Override, StartAttempt
from tandem_operator.lifecycle.flow import nodes_by_id


class Work:
    """A private, mutable copy of the status plus what the rules emitted so far."""

    def __init__(self, obs: Observation, status: AutomationRunStatus) -> None:
        self.obs = obs
        self.now = format_ms(obs.now_ms)
        self.s = status
        self.records: list[LifecycleRecord] = []
        self.events: list[Event] = []
        self.start: list[StartAttempt] = []
        self.cancel: set[str] = set()
        self.stalled: str | None = None
        """Why the run cannot progress without a change from the user (Stalled=True)."""

    @property
    def cp(self) -> Checkpoint:
        return self.s.checkpoint

    def record(
        self,
        event: LifecycleEvent,
        *,
        reason: str | None = None,
        stop_kind: StopKind | None = None,
        metadata: Mapping[str, Any] | None = None,
        warning: bool = False,
    ) -> None:
        rec = LifecycleRecord(
            event=event,
            recorded_at=self.now,
            reason=clip(reason, MAX_REASON_CHARS),
            stop_kind=stop_kind,
            metadata=dict(metadata) if metadata else None,
        )
        self.records.append(rec)
        counters = self.s.counters
        # A hand-written status may carry history its counter never saw.
        counters.lifecycle_records = max(counters.lifecycle_records, len(self.cp.lifecycle_history))
        self.cp.lifecycle_history.append(rec)
        counters.lifecycle_records += 1
        message = event if not reason else f"{event}: {reason}"
        self.events.append(
            Event(
                type="Warning" if warning else "Normal", reason=event_reason(event), message=message
            )
        )

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event(type="Warning", reason=reason, message=message))

    def note(self, reason: str, message: str) -> None:
        """A Normal Event that goes with no transition (the run's phase stays)."""
        self.events.append(Event(type="Normal", reason=reason, message=message))

    def phase_to(self, phase: Phase) -> None:
        self.s.phase = phase

    # -- node bookkeeping ---------------------------------------------------------------

    def flow(self) -> AutomationSpec | None:
        return self.obs.definition

    def node(self, node_id: str) -> Node | None:
        flow = self.flow()
        return nodes_by_id(flow).get(node_id) if flow else None

    def in_progress(self) -> list[str]:
        """Nodes pending, not blocked, attempted, and without output."""
        blocked = set(self.cp.blocked_nodes)
        return [
            n
            for n in self.cp.pending_nodes
            if n not in blocked
            and self.cp.node_attempts.get(n, 0) > 0
            and n not in self.cp.node_outputs
        ]

    def set_output(self, node_id: str, output: Mapping[str, Any]) -> None:
        flow = self.flow()
        limit = output_limit(len(flow.nodes)) if flow else MIN_OUTPUT_BYTES
        self.cp.node_outputs[node_id] = cap_output(output, limit=limit)

    def reset_nodes(self, node_ids: set[str]) -> None:
        flow = self.flow()
        order = [n.id for n in flow.nodes] if flow else sorted(node_ids)
        for node_id in node_ids:
            self.cp.node_outputs.pop(node_id, None)
            self.cp.node_attempts.pop(node_id, None)
        self.cp.completed_nodes = [n for n in self.cp.completed_nodes if n not in node_ids]
        self.cp.blocked_nodes = [n for n in self.cp.blocked_nodes if n not in node_ids]
        pending = set(self.cp.pending_nodes) | node_ids
        self.cp.pending_nodes = [n for n in order if n in pending]

    def claim(self) -> None:
        epoch = self.s.execution_claim.epoch + 1 if self.s.execution_claim else 1
        lease = self.obs.now_ms + self.obs.settings.claim_lease_seconds * 1000
        self.s.execution_claim = ExecutionClaim(
            claimant=self.obs.instance,
            claimed_at=self.now,
            lease_expires_at=format_ms(lease),
            epoch=epoch,
        )

    def stop_in_flight(self) -> None:
        self.cancel |= set(self.obs.in_flight)

    def clear_stop(self) -> None:
        self.s.pause_reason = None
        self.s.stop_kind = None
        self.s.stop_reason = None
        self.s.detail = None

    def release_in_flight_attempts(self) -> None:
        """Attempts cancelled by the operator (pause, budget) do not count against the node."""
        for node_id in self.in_progress():
            self.cp.node_attempts[node_id] = max(0, self.cp.node_attempts.get(node_id, 0) - 1)

    def covering_overrides(self) -> list[Override]:
        """Approved overrides naming the run's creator or one of its agents (B7, B8)."""
        flow = self.flow()
        if flow is None:
            return []
        names = {a.agent_id for a in flow.agents} | {n.agent_id for n in flow.nodes if n.agent_id}
        if flow.creator_id:
            names.add(flow.creator_id)
        return [o for o in self.obs.overrides if o.agent_id in names]

    # -- transitions ----------------------------------------------------------------------

    def fail(
        self,
        *,
        detail: str,
        stop_reason: str,
        failure_kind: str,
        node_id: str | None = None,
        event: LifecycleEvent = "run_failed",
        reason: str | None = None,
        stop_kind: StopKind | None = None,
        metadata: Mapping[str, Any] | None = None,
        warning: bool = True,
    ) -> None:
        """→ Failed: detail, stopReason and lastFailure say why; one record (``reason`` or
        the detail)."""
        self.phase_to("Failed")
        if stop_kind is not None:
            self.s.stop_kind = stop_kind
        self.s.detail = detail
        self.s.stop_reason = stop_reason
        self.cp.last_failure = LastFailure(
            node_id=node_id, reason=stop_reason, failed_at=self.now, failure_kind=failure_kind
        )
        self.record(
            event,
            reason=reason if reason is not None else detail,
            stop_kind=stop_kind,
            metadata=metadata,
            warning=warning,
        )

    def pause(
        self,
        *,
        reason: str,
        event: LifecycleEvent = "run_paused",
        stop_kind: StopKind | None = None,
        stop_reason: str | None = None,
        detail: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """→ Paused with ``pauseReason``; the operator's pauses also set a stop kind and say
        why in stopReason and detail (B5, B8)."""
        self.phase_to("Paused")
        self.s.pause_reason = reason
        if stop_kind is not None:
            self.s.stop_kind = stop_kind
        if stop_reason is not None:
            self.s.stop_reason = stop_reason
        if detail is not None:
            self.s.detail = detail
        self.record(event, reason=reason, stop_kind=stop_kind, metadata=metadata)

    def queue(self) -> None:
        """→ Queued, waiting for admission (B9) from now."""
        self.phase_to("Queued")
        self.s.scheduler = Scheduler(queued_at=self.now)
