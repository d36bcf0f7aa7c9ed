"""The lifecycle of an AutomationRun as one pure function: ``decide(observation) -> Decision``.

Everything the rules need is in the :class:`Observation` (the run's spec and status, the
clock, the settings, what the scheduler allows, which operator instances are alive, what
the executors reported); everything they produce is in the :class:`Decision` (the new
status, the lifecycle records and Kubernetes Events to emit, attempts to start or cancel).
No I/O happens here: the reconciler applies the decision as one status patch and only then
acts on it, so a failed write never leaves a started attempt without its record.

Rules are applied in a fixed order on a private copy of the status:

1. recovery of an orphaned run (B1, B1r, B2), whose result the other rules see;
2. user control that overrides everything else: cancel (B13), recover (B14);
3. gate decisions and gate timers (B11, B4), pause and resume (B12);
4. automatic resumes (B6, B7) and admission (B9);
5. execution: executor outcomes, usage and budgets (B10, B17, B8), stale reaping (B5),
   dispatch of runnable nodes and gates, completion;
6. the update invariants (scheduler only while Queued, claim only while Running/Pausing,
   ``updatedAt``, ``finishedAt``, the B16 detail refresh, conditions, bounded history).

Status size is bounded so a run of up to 100 nodes stays under 256 KiB however long it
lives (etcd refuses objects over 1.5 MiB, and every write is sent to every watcher): node
outputs share ``OUTPUTS_BUDGET_BYTES`` (a cut output becomes a marker with ``truncated`` and
``original_bytes``), verdicts keep the newest ``MAX_VERDICTS`` per node, the lifecycle
history keeps the newest records within a count and ``HISTORY_BUDGET_BYTES`` while
``counters.lifecycleRecords`` counts them all, and reasons copied from the spec are clipped
to ``MAX_REASON_CHARS``. The automation snapshot is the flow as written, so its size is the
user's: the CRD's length limits keep it reasonable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from tandem_operator.api.models import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    AwaitingGate,
    Checkpoint,
    Condition,
    ExecutionClaim,
    GateDecision,
    GateHistoryEntry,
    LastFailure,
    LifecycleRecord,
    Node,
    Scheduler,
)
from tandem_operator.api.settings import Settings
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.lifecycle.flow import descendants, find_cycle, nodes_by_id

RESTART_DETAIL = "automation run interrupted by server restart"
PAUSING_SETTLED_REASON = "automation run settled to paused after server restart"
RUNTIME_CONTEXT_DETAIL = "runtime context partition missing for automation run"
STALE_REAP_REASON = "stale_no_provider_activity"
MAX_TRANSIENT_RETRIES = 5
BACKOFF_BASE_SECONDS = 2.0
BACKOFF_FACTOR = 2.5
BACKOFF_CAP_SECONDS = 8.0
MAX_OUTPUT_BYTES = 16 * 1024
"""Largest node output kept in status, whatever the size of the flow."""
MIN_OUTPUT_BYTES = 1024
"""Smallest per-node output cap: even a 100-node flow keeps small outputs whole."""
OUTPUTS_BUDGET_BYTES = 100 * 1024
"""What all node outputs of one run may take together; the per-node cap is this divided by
the number of nodes (see :func:`output_limit`)."""
MAX_VERDICTS = MAX_TRANSIENT_RETRIES + 1
"""Verdicts kept per node in ``nodeAttemptVerdicts`` (newest last): the latest attempt's
whole story, its transient errors in a row (which the back-off counts) and its verdict."""
MAX_VERDICT_ERROR_CHARS = 256
"""An executor error quoted in a verdict is cut to this length."""
HISTORY_BUDGET_BYTES = 48 * 1024
"""``lifecycleHistory`` keeps the newest records that fit in this many bytes (and at most
``TANDEM_LIFECYCLE_HISTORY_LIMIT`` of them); ``counters.lifecycleRecords`` counts them all."""
MAX_REASON_CHARS = 1024
"""A reason copied into a lifecycle record or a gateHistory entry is cut to this length."""
_DETAIL_NODE = re.compile(r"node `([^`]+)`")

QueueVerdict = Literal["admit", "capacity", "workspace_lock"]


@dataclass(frozen=True, kw_only=True)
class Override:
    """An approved, unexpired AgentQuotaOverride in the run's namespace."""

    name: str
    agent_id: str


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
    overrides: Sequence[Override] = ()
    outcomes: Sequence[AttemptOutcome] = ()
    in_flight: frozenset[str] = frozenset()
    """Nodes with an attempt running in this process right now."""
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


def camel(event: str) -> str:
    """``run_failed_server_restart`` → ``RunFailedServerRestart`` (an Event reason)."""
    return "".join(part[:1].upper() + part[1:] for part in event.split("_"))


# --------------------------------------------------------------------------- pure helpers


def within_window(*, reaped_at_ms: int, now_ms: int, window_ms: int) -> bool:
    """B6: a stale reap at ``reaped_at_ms`` may still be auto-resumed at ``now_ms``."""
    return now_ms - reaped_at_ms <= window_ms


def cap_reached(*, auto_resumes: int, cap: int) -> bool:
    """B6: the run has used up its automatic resumes."""
    return auto_resumes >= cap


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


def decision_key(index: int, decision: GateDecision) -> str:
    return decision.request_id or f"#{index}"


def backoff_seconds(transient_failures: int) -> float:
    """Delay before retrying after ``transient_failures`` consecutive transient errors.

    ``2 s x 2.5^(n-1)``, capped at 8 s: 1 -> 2.0, 2 -> 5.0, 3 and later -> 8.0.  The cap is
    short on purpose: the caller also bounds the number of retries, and an agent endpoint
    that comes back should be used again soon.
    """
    if transient_failures < 1:
        raise ValueError(f"transient_failures must be >= 1, got {transient_failures}")
    # Clamp the exponent so huge counts cannot overflow the float before the cap applies.
    exponent = min(transient_failures - 1, 16)
    return min(BACKOFF_BASE_SECONDS * BACKOFF_FACTOR**exponent, BACKOFF_CAP_SECONDS)


def output_limit(node_count: int) -> int:
    """Per-node cap on a stored output: the run's output budget shared by its nodes.

    ``OUTPUTS_BUDGET_BYTES // node_count`` within [``MIN_OUTPUT_BYTES``,
    ``MAX_OUTPUT_BYTES``]: a 3-node flow keeps outputs up to 16 KiB each, a 100-node flow
    1 KiB each, so a run's outputs stay near 100 KiB and its status far below etcd's limit.
    """
    share = OUTPUTS_BUDGET_BYTES // max(1, node_count)
    return max(MIN_OUTPUT_BYTES, min(MAX_OUTPUT_BYTES, share))


def cap_output(output: Mapping[str, Any], *, limit: int = MAX_OUTPUT_BYTES) -> dict[str, Any]:
    """An output over ``limit`` bytes (compact JSON) is replaced by a marker.

    The marker keeps what the lifecycle reads (``status``, ``blocker_category``) and a
    validated ``artifact`` reference when it fits, and says what was dropped:
    ``truncated: true`` and ``original_bytes``.
    """
    data = dict(output)
    encoded = _encoded_size(data)
    if encoded <= limit:
        return data
    kept: dict[str, Any] = {k: data[k] for k in ("status", "blocker_category") if k in data}
    kept["truncated"] = True
    kept["original_bytes"] = encoded
    artifact = data.get("artifact")
    if artifact is not None and _encoded_size({**kept, "artifact": artifact}) <= limit:
        kept["artifact"] = artifact
    return kept


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 3)] + "..."


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, default=str, separators=(",", ":")))


def _record_size(record: LifecycleRecord) -> int:
    """The bytes a lifecycle record takes in status, near enough for a budget."""
    size = 64 + len(record.event) + len(record.recorded_at) + len(record.reason or "")
    if record.stop_kind:
        size += 12 + len(record.stop_kind)
    if record.metadata:
        # repr is close to the JSON length and much cheaper than json.dumps.
        size += 12 + len(repr(record.metadata))
    return size


def trim_history(history: list[LifecycleRecord], *, limit: int) -> None:
    """Keep the newest ``limit`` records that fit in ``HISTORY_BUDGET_BYTES`` (at least one)."""
    if len(history) > limit:
        del history[:-limit]
    total = 0
    for index in range(len(history) - 1, -1, -1):
        total += _record_size(history[index])
        if total > HISTORY_BUDGET_BYTES and index < len(history) - 1:
            del history[: index + 1]
            return


# --------------------------------------------------------------------------- the working set


class _Work:
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
        event: str,
        *,
        reason: str | None = None,
        stop_kind: Any = None,
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
            Event(type="Warning" if warning else "Normal", reason=camel(event), message=message)
        )

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event(type="Warning", reason=reason, message=message))

    def phase_to(self, phase: Any) -> None:
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

    def queue(self) -> None:
        self.phase_to("Queued")
        self.s.scheduler = Scheduler(queued_at=self.now)


# --------------------------------------------------------------------------- the rules


def _initial_status(obs: Observation) -> AutomationRunStatus:
    status = AutomationRunStatus(phase="Queued", created_at=format_ms(obs.now_ms))
    if obs.definition is not None:
        status.checkpoint.pending_nodes = [n.id for n in obs.definition.nodes]
    status.scheduler = Scheduler(queued_at=status.created_at)
    return status


def _orphaned(w: _Work) -> bool:
    claim = w.s.execution_claim
    if claim is None:
        return True
    if claim.claimant == w.obs.instance:
        return False
    if claim.claimant not in w.obs.live_instances:
        return True
    expires = parse_ms(claim.lease_expires_at)
    return expires is not None and expires < w.obs.now_ms


def _fail_on_restart(w: _Work) -> None:
    w.phase_to("Failed")
    w.s.stop_kind = "ServerRestart"
    w.s.detail = RESTART_DETAIL
    w.s.stop_reason = RESTART_DETAIL
    w.cp.last_failure = LastFailure(
        reason=RESTART_DETAIL, failed_at=w.now, failure_kind="server_restart"
    )
    w.record("run_failed_server_restart", reason=RESTART_DETAIL, stop_kind="ServerRestart")


def _recover_orphan(w: _Work) -> None:
    """B1, B1r, B2: settle a Running or Pausing run whose executor is gone."""
    if w.s.phase not in ACTIVE_PHASES or not _orphaned(w):
        return
    if w.s.phase == "Pausing":
        # As when a pause settles normally (_settle_pausing), the attempts the pause cut
        # short do not count against their nodes; otherwise a resume could go past
        # maxAttempts.
        _release_in_flight_attempts(w)
        w.phase_to("Paused")
        w.s.pause_reason = w.s.pause_reason or PAUSING_SETTLED_REASON
        w.record("run_pausing_settled_on_restart", reason=w.s.pause_reason)
        return
    if w.obs.settings.restart_recovery == "fail":
        _fail_on_restart(w)
        return
    interrupted = w.in_progress()
    for node_id in interrupted:
        node = w.node(node_id)
        if node is not None and w.cp.node_attempts.get(node_id, 0) >= node.max_attempts:
            _fail_on_restart(w)
            return
    for node_id in interrupted:
        w.set_output(
            node_id, {"status": "needs_repair", "blocker_category": "server_restart_interrupted"}
        )
    w.queue()
    w.record(
        "run_queued_for_resume_after_restart",
        reason="requeued after server restart",
        metadata={"interrupted_nodes": interrupted},
    )


def _cancel(w: _Work) -> bool:
    """B13: desiredState Cancelled stops any run that has not ended."""
    if w.obs.spec.desired_state != "Cancelled" or w.s.phase in TERMINAL_PHASES:
        return False
    w.stop_in_flight()
    w.phase_to("Cancelled")
    w.s.stop_kind = "OperatorStopped"
    w.s.stop_reason = "cancelled by user"
    w.s.detail = "cancelled by user"
    w.record("run_stopped", reason="cancelled by user", stop_kind="OperatorStopped")
    return True


def _recover(w: _Work) -> None:
    """B14: a new recover.requestId resets failed or blocked nodes and re-queues."""
    request = w.obs.spec.recover
    if request is None or request.request_id == w.cp.recover_request_id:
        return
    w.cp.recover_request_id = request.request_id
    if w.s.phase not in ("Failed", "Paused", "Blocked"):
        w.warn(
            "RecoverIgnored",
            f"recover request {request.request_id} ignored: run is {w.s.phase}, "
            "not Failed, Paused or Blocked",
        )
        return
    was = w.s.phase
    failed = {
        n
        for n, out in w.cp.node_outputs.items()
        if str(out.get("status", "")).lower() in ("failed", "blocked")
    }
    # Nodes interrupted without an output (a B1 restart failure) count as failed: left
    # alone, their next attempt would go past maxAttempts.
    roots = failed | set(w.cp.blocked_nodes) | set(w.in_progress())
    flow = w.flow()
    reset = roots | (descendants(flow, roots) if flow else set())
    w.reset_nodes(reset)
    w.clear_stop()
    w.s.finished_at = None
    w.s.resume_reason = f"recovered by request {request.request_id}"
    w.cp.last_failure = None
    w.queue()
    event = "run_recovered_from_pause" if was == "Paused" else "run_recovered"
    w.record(
        event,
        reason=w.s.resume_reason,
        metadata={"request_id": request.request_id, "reset_nodes": sorted(reset)},
    )


def _gate_decisions(w: _Work) -> None:
    """B11: each new entry of spec.gateDecisions is applied once or rejected once."""
    decisions = w.obs.spec.gate_decisions
    seen = {e.request_id for e in w.cp.gate_history if e.request_id}
    start = _decisions_seen(w)
    for index in range(start, len(decisions)):
        decision = decisions[index]
        key = decision_key(index, decision)
        if key in seen:
            continue
        gate = w.cp.awaiting_gate
        if w.s.phase != "AwaitingApproval" or gate is None or gate.node_id != decision.gate:
            w.warn(
                "GateDecisionRejected",
                f"gate decision {decision.decision} for gate {decision.gate} rejected: "
                + (
                    f"gate {gate.node_id} is awaiting"
                    if gate and w.s.phase == "AwaitingApproval"
                    else f"no gate is awaiting (phase {w.s.phase})"
                ),
            )
            continue
        if decision.decision not in gate.decisions:
            w.warn(
                "GateDecisionRejected",
                f"gate {gate.node_id} does not allow decision {decision.decision}",
            )
            continue
        _apply_gate_decision(w, gate, decision, key=key, decided_by=decision.decided_by)
        seen.add(key)
    _set_decisions_seen(w, len(decisions))


def _decisions_seen(w: _Work) -> int:
    return w.s.counters.gate_decisions_seen


def _set_decisions_seen(w: _Work, count: int) -> None:
    w.s.counters.gate_decisions_seen = count


def _apply_gate_decision(
    w: _Work,
    gate: AwaitingGate,
    decision: GateDecision | None,
    *,
    key: str,
    decided_by: str | None,
    value: str | None = None,
    reason: str | None = None,
) -> None:
    verdict = value or (decision.decision if decision else "approve")
    why = reason or (decision.reason if decision else None)
    w.cp.gate_history.append(
        GateHistoryEntry(
            node_id=gate.node_id,
            decision=verdict,
            reason=clip(why, MAX_REASON_CHARS),
            decided_at=w.now,
            decided_by=decided_by,
            request_id=key,
            metadata={"source": "expiry"} if decision is None else None,
        )
    )
    w.cp.awaiting_gate = None
    node_id = gate.node_id
    flow = w.flow()
    below = descendants(flow, {node_id}) if flow else set()
    if verdict == "cancel":
        w.phase_to("Cancelled")
        w.s.stop_kind = "Cancelled"
        w.s.stop_reason = why or f"cancelled at gate `{node_id}`"
        w.s.detail = w.s.stop_reason
        w.record("run_cancelled", reason=w.s.stop_reason, stop_kind="Cancelled")
        return
    if verdict == "approve":
        w.cp.node_outputs[node_id] = {"status": "completed", "contract_kind": "approval_gate"}
        w.cp.node_attempts[node_id] = max(1, w.cp.node_attempts.get(node_id, 0))
        w.cp.completed_nodes = [*w.cp.completed_nodes, node_id]
        w.cp.pending_nodes = [n for n in w.cp.pending_nodes if n != node_id]
        w.cp.blocked_nodes = [n for n in w.cp.blocked_nodes if n not in below]
        w.s.detail = f"gate `{node_id}` approved"
        w.queue()
        w.record("run_gate_approved", reason=why, metadata={"node_id": node_id})
        return
    node = w.node(node_id)
    targets = set(gate.rework_targets or (node.depends_on if node else []))
    reset = targets | {node_id} | (descendants(flow, targets | {node_id}) if flow else below)
    w.reset_nodes(reset)
    w.s.detail = f"gate `{node_id}` sent back for rework"
    w.queue()
    w.record(
        "run_gate_reworked",
        reason=why,
        metadata={"node_id": node_id, "rework_targets": sorted(targets)},
    )


def _gate_timers(w: _Work) -> None:
    """B11 expiry and B4 stale marking for the awaiting gate."""
    gate = w.cp.awaiting_gate
    if w.s.phase != "AwaitingApproval" or gate is None:
        return
    requested = parse_ms(gate.requested_at)
    if requested is None:
        return
    node = w.node(gate.node_id)
    expiry = node.approval.expiry if node and node.approval else None
    metadata = dict(gate.metadata or {})
    if expiry is not None and w.obs.now_ms - requested >= expiry.after_seconds * 1000:
        if expiry.action == "remind":
            if not metadata.get("reminder_due"):
                metadata["reminder_due"] = True
                gate.metadata = metadata
                w.record(
                    "approval_gate_reminder_due",
                    reason=f"gate `{gate.node_id}` waited {expiry.after_seconds}s",
                    metadata={"node_id": gate.node_id, "requested_at_ms": requested},
                )
        else:
            _apply_gate_decision(
                w,
                gate,
                None,
                key=f"expiry:{gate.node_id}:{requested}",
                decided_by="system:expiry",
                value="cancel" if expiry.action == "cancel" else "approve",
                reason=f"gate expired after {expiry.after_seconds}s ({expiry.action})",
            )
            return
    if expiry is not None and expiry.action != "remind":
        return  # B4 is for gates that wait on people alone; this one resolves itself
    stale_after = w.obs.settings.approval_gate_stale_after_ms
    if metadata.get("stale") or w.obs.now_ms - requested < stale_after:
        return
    metadata.update(
        stale=True,
        stale_policy="manual_only_visible_status",
        stale_after_ms=stale_after,
        stale_marked_at_ms=w.obs.now_ms,
        requested_at_ms=requested,
    )
    gate.metadata = metadata
    w.s.detail = (
        f"awaiting manual approval for gate `{gate.node_id}` for at least "
        f"{stale_after // 1000}s; no automatic expiry action is configured"
    )
    w.record(
        "approval_gate_marked_stale",
        reason=w.s.detail,
        metadata={
            "node_id": gate.node_id,
            "requested_at_ms": requested,
            "stale_after_ms": stale_after,
            "policy": "manual_only_visible_status",
        },
    )


def _pause_resume(w: _Work) -> None:
    """B12: level-based on spec.desiredState."""
    desired = w.obs.spec.desired_state
    phase = w.s.phase
    if desired == "Paused":
        reason = w.obs.spec.pause_reason or "paused by user"
        if phase in ("Queued", "AwaitingApproval"):
            w.phase_to("Paused")
            w.s.pause_reason = reason
            w.s.stop_kind = None
            w.record("run_paused", reason=reason)
        elif phase == "Running":
            w.stop_in_flight()
            w.phase_to("Pausing")
            w.s.pause_reason = reason
            w.record("run_pausing", reason=reason)
        return
    if desired == "Running" and phase == "Paused":
        if w.s.stop_kind in ("StaleReaped", "GuardrailStopped"):
            return
        seen = w.s.observed_generation
        if seen is None or w.obs.generation <= seen:
            # B3: a Paused run whose spec has not changed since the operator last wrote it
            # stays Paused; resuming is a change of spec.desiredState the operator sees.
            return
        w.clear_stop()
        w.s.resume_reason = "resumed by user"
        w.queue()
        w.record("run_resumed", reason="resumed by user")


def _latest_reap_ms(w: _Work) -> int | None:
    for rec in reversed(w.cp.lifecycle_history):
        if rec.stop_kind == "StaleReaped" or rec.event.endswith("stale_no_provider_activity"):
            return parse_ms(rec.recorded_at)
    # The record may have been trimmed from a bounded history; the checkpoint keeps its time.
    return parse_ms(w.cp.last_stale_reap_at)


def _stale_auto_resume(w: _Work) -> None:
    """B6: re-queue a stale-reaped run within the window and under the cap."""
    cfg = w.obs.settings
    if (
        w.s.phase != "Paused"
        or w.s.stop_kind != "StaleReaped"
        or w.obs.spec.desired_state != "Running"
        or cfg.stale_auto_resume_disabled
        or cap_reached(
            auto_resumes=w.s.counters.auto_resumes, cap=cfg.stale_auto_resume_max_attempts
        )
    ):
        return
    reaped = _latest_reap_ms(w)
    if reaped is None or not within_window(
        reaped_at_ms=reaped, now_ms=w.obs.now_ms, window_ms=cfg.stale_auto_resume_window_ms
    ):
        return
    completed = set(w.cp.completed_nodes)
    repairable = False
    for node_id, output in w.cp.node_outputs.items():
        node = w.node(node_id)
        limit = node.max_attempts if node else 3
        if (
            node_id not in completed
            and str(output.get("status", "")).lower() == "needs_repair"
            and w.cp.node_attempts.get(node_id, 0) < limit
        ):
            repairable = True
            break
    if not repairable:
        return
    w.clear_stop()
    w.queue()
    w.s.counters.auto_resumes += 1
    w.record(
        "run_auto_resumed",
        reason="auto_resume_after_stale_reap",
        metadata={
            "auto_resume_window_ms": cfg.stale_auto_resume_window_ms,
            "stale_reaped_at_ms": reaped,
        },
    )


def _covering_overrides(w: _Work) -> list[Override]:
    flow = w.flow()
    if flow is None:
        return []
    names = {a.agent_id for a in flow.agents} | {n.agent_id for n in flow.nodes if n.agent_id}
    if flow.creator_id:
        names.add(flow.creator_id)
    return [o for o in w.obs.overrides if o.agent_id in names]


def _guardrail_auto_resume(w: _Work) -> None:
    """B7: an approved quota override re-queues a guardrail-stopped run."""
    if (
        w.s.phase != "Paused"
        or w.s.stop_kind != "GuardrailStopped"
        or w.obs.spec.desired_state != "Running"
    ):
        return
    covering = _covering_overrides(w)
    if not covering:
        return
    w.clear_stop()
    w.queue()
    w.record(
        "run_auto_resumed",
        reason="auto_resume_after_guardrail_override",
        metadata={
            "agent_ids": sorted({o.agent_id for o in covering}),
            "stop_kind": "guardrail_stopped",
        },
    )


def _admit(w: _Work) -> None:
    """B9: start a Queued run when the scheduler allows it."""
    if w.s.phase != "Queued" or w.obs.spec.desired_state != "Running":
        return
    if w.obs.definition is None:
        message = w.obs.definition_error or "automation definition is not available"
        w.stalled = message
        if w.s.detail != message:
            w.s.detail = message
            w.warn("AutomationUnresolved", message)
        return
    flow = w.obs.definition
    if flow.requires_runtime_context and not w.obs.spec.runtime_context:
        w.phase_to("Failed")
        w.s.detail = RUNTIME_CONTEXT_DETAIL
        w.s.stop_reason = RUNTIME_CONTEXT_DETAIL
        w.cp.last_failure = LastFailure(
            node_id="runtime_context",
            reason=RUNTIME_CONTEXT_DETAIL,
            failed_at=w.now,
            failure_kind="runtime_context_missing",
        )
        w.record("run_failed", reason=RUNTIME_CONTEXT_DETAIL, warning=True)
        return
    cycle = find_cycle(flow)
    if cycle is not None:
        # CEL cannot reject a cycle at admission; without this check the nodes on it would
        # never become runnable and the run would end Blocked for no visible reason.
        detail = f"dependency cycle in flow: {' -> '.join(cycle)}"
        w.phase_to("Failed")
        w.s.detail = detail
        w.s.stop_reason = detail
        w.cp.last_failure = LastFailure(
            node_id=cycle[0], reason=detail, failed_at=w.now, failure_kind="invalid_definition"
        )
        w.record("run_failed", reason=detail, warning=True)
        return
    if not w.cp.pending_nodes and not w.cp.completed_nodes and not w.cp.blocked_nodes:
        w.cp.pending_nodes = [n.id for n in flow.nodes]
    scheduler = w.s.scheduler or Scheduler(queued_at=w.now)
    retry_after = parse_ms(scheduler.retry_after)
    if w.obs.shutting_down:
        return
    if retry_after is not None and retry_after > w.obs.now_ms:
        w.s.scheduler = scheduler.model_copy(update={"queue_reason": "retry_backoff"})
        return
    if w.obs.admission != "admit":
        w.s.scheduler = scheduler.model_copy(
            update={"queue_reason": w.obs.admission, "retry_after": None}
        )
        return
    w.phase_to("Running")
    w.claim()
    w.s.started_at = w.s.started_at or w.now
    if w.s.automation_snapshot is None:
        w.s.automation_snapshot = flow.to_api()
    w.s.detail = "admitted"
    w.record("run_started", reason="admitted")


def _node_failed(w: _Work, node_id: str, node: Node | None, reason: str, kind: str) -> None:
    attempts = w.cp.node_attempts.get(node_id, 0)
    limit = node.max_attempts if node else attempts
    detail = f"node `{node_id}` failed after {attempts}/{limit} attempts"
    w.stop_in_flight()
    w.phase_to("Failed")
    w.s.detail = detail
    w.s.stop_reason = reason
    w.cp.last_failure = LastFailure(
        node_id=node_id, reason=reason, failed_at=w.now, failure_kind=kind
    )
    w.record("run_failed", reason=detail, metadata={"node_id": node_id}, warning=True)


def _apply_outcomes(w: _Work) -> None:
    """B10/B17: fold executor outcomes into the checkpoint."""
    cost_per_1k = w.obs.settings.token_cost_per_1k_usd
    for out in w.obs.outcomes:
        if out.prompt_tokens or out.completion_tokens:
            usage = w.s.usage
            usage.prompt_tokens += out.prompt_tokens
            usage.completion_tokens += out.completion_tokens
            total = out.prompt_tokens + out.completion_tokens
            usage.total_tokens += total
            cost = Decimal(usage.estimated_cost_usd or "0") + Decimal(total) / 1000 * cost_per_1k
            usage.estimated_cost_usd = _decimal_text(cost)
        # B12: attempts may finish while the run is Pausing; their results count.
        if w.s.phase not in ACTIVE_PHASES:
            continue
        node_id = out.node_id
        if (
            node_id not in w.cp.pending_nodes
            or w.cp.node_attempts.get(node_id, 0) != out.attempt
            or node_id in w.cp.node_outputs
        ):
            continue
        if w.s.phase == "Pausing" and (out.cancelled or out.transient):
            # The attempt was cut short by the pause: _settle_pausing gives it back, once.
            continue
        node = w.node(node_id)
        verdicts = w.cp.node_attempt_verdicts.setdefault(node_id, [])
        if out.cancelled:
            if w.obs.shutting_down:
                # B15: cut off by the shutdown grace period, not by a rule. The attempt stays
                # in progress so the next operator applies B1/B1r to it, as after a crash.
                continue
            w.cp.node_attempts[node_id] = max(0, out.attempt - 1)
            verdicts.append({"attempt": out.attempt, "status": "cancelled", "at": w.now})
            del verdicts[:-MAX_VERDICTS]
            continue
        if out.transient:
            failures = 1 + _trailing_transient_errors(verdicts)
            verdicts.append(
                {
                    "attempt": out.attempt,
                    "status": "transient_error",
                    "error": clip(out.error, MAX_VERDICT_ERROR_CHARS),
                }
            )
            del verdicts[:-MAX_VERDICTS]
            if failures < MAX_TRANSIENT_RETRIES:
                w.cp.node_attempts[node_id] = max(0, out.attempt - 1)
                delay_ms = int(backoff_seconds(failures) * 1000)
                w.cp.node_retry_after[node_id] = format_ms(w.obs.now_ms + delay_ms)
                w.s.detail = f"retrying node `{node_id}` after transient provider failure"
                continue
            status, output = (
                "needs_repair",
                {
                    "status": "needs_repair",
                    "blocker_category": "transient_executor_error",
                    "error": out.error,
                },
            )
        elif out.error is not None:
            status, output = "failed", {"status": "failed", "error": out.error}
        else:
            reported = out.status.lower()
            status = reported if reported in _NODE_STATUSES else "failed"
            output = {**out.output, "status": status}
        verdicts.append({"attempt": out.attempt, "status": status, "at": w.now})
        del verdicts[:-MAX_VERDICTS]
        limit = node.max_attempts if node else 1
        if status == "needs_repair" and out.attempt >= limit:
            w.set_output(node_id, {**output, "status": "failed", "exhausted": True})
            _node_failed(w, node_id, node, f"node `{node_id}` exhausted its attempts", "exhausted")
            # The remaining outcomes still bring their usage (B17).
            continue
        w.set_output(node_id, output)
        if status == "completed":
            w.cp.completed_nodes = [*w.cp.completed_nodes, node_id]
            w.cp.pending_nodes = [n for n in w.cp.pending_nodes if n != node_id]
            w.s.detail = f"completed node `{node_id}`"
        elif status == "blocked":
            w.cp.pending_nodes = [n for n in w.cp.pending_nodes if n != node_id]
            w.cp.blocked_nodes = [*w.cp.blocked_nodes, node_id]
        elif status == "failed":
            if out.error is not None:
                # The executor could not run the attempt (no such endpoint, 401, protocol
                # error): lastFailure carries its message, which names the cause.
                _node_failed(w, node_id, node, out.error, "executor_error")
            else:
                _node_failed(w, node_id, node, f"node `{node_id}` reported failed", "failed")
            continue
        else:
            w.s.detail = f"node `{node_id}` needs repair; retrying"


_NODE_STATUSES = frozenset({"completed", "needs_repair", "failed", "blocked"})


def _trailing_transient_errors(verdicts: Sequence[Mapping[str, Any]]) -> int:
    """Transient errors in a row at the end of a node's verdicts (the back-off count)."""
    count = 0
    for verdict in reversed(verdicts):
        if verdict.get("status") != "transient_error":
            break
        count += 1
    return count


def _decimal_text(value: Decimal) -> str:
    text = format(value.quantize(Decimal("0.000001")).normalize(), "f")
    return text if text != "-0" else "0"


def _budgets(w: _Work) -> None:
    """B8: a budget exceeded without an approved override pauses the run."""
    flow = w.flow()
    if w.s.phase != "Running" or flow is None or _covering_overrides(w):
        return
    ex = flow.execution
    exceeded: str | None = None
    started = parse_ms(w.s.started_at)
    if ex.max_total_tokens is not None and w.s.usage.total_tokens > ex.max_total_tokens:
        exceeded = (
            f"token budget exceeded: {w.s.usage.total_tokens} > maxTotalTokens "
            f"{ex.max_total_tokens}"
        )
    elif ex.max_total_cost_usd is not None and Decimal(
        w.s.usage.estimated_cost_usd or "0"
    ) > Decimal(ex.max_total_cost_usd):
        exceeded = (
            f"cost budget exceeded: {w.s.usage.estimated_cost_usd} > maxTotalCostUsd "
            f"{ex.max_total_cost_usd}"
        )
    elif (
        ex.max_total_runtime_seconds is not None
        and started is not None
        and w.obs.now_ms - started > ex.max_total_runtime_seconds * 1000
    ):
        exceeded = f"runtime budget exceeded: maxTotalRuntimeSeconds {ex.max_total_runtime_seconds}"
    if exceeded is None:
        return
    w.stop_in_flight()
    _release_in_flight_attempts(w)
    w.phase_to("Paused")
    w.s.stop_kind = "GuardrailStopped"
    w.s.pause_reason = exceeded
    w.s.stop_reason = exceeded
    w.s.detail = exceeded
    w.record("run_paused", reason=exceeded, stop_kind="GuardrailStopped")


def _release_in_flight_attempts(w: _Work) -> None:
    """Attempts cancelled by the operator (pause, budget) do not count against the node."""
    for node_id in w.in_progress():
        w.cp.node_attempts[node_id] = max(0, w.cp.node_attempts.get(node_id, 0) - 1)


def _stale_reap(w: _Work) -> None:
    """B5: a Running run whose executor went silent is reaped."""
    if w.s.phase != "Running":
        return
    progressing = w.in_progress()
    if not progressing:
        return
    timeouts = [
        (node.timeout_seconds or 0) * 1000 + 60_000
        for node_id in progressing
        if (node := w.node(node_id)) is not None and node.timeout_seconds
    ]
    threshold = max([w.obs.settings.stale_running_ms, *timeouts])
    # The latest sign of life: the runner's (any streamed line) or the last dispatch kept in
    # status (which survives restarts); the run's start when neither is known.
    seen = [t for t in (w.obs.last_activity_ms, parse_ms(w.cp.last_activity_at)) if t is not None]
    last = max(seen) if seen else parse_ms(w.s.started_at)
    if last is None or w.obs.now_ms - last < threshold:
        return
    failed_node: str | None = None
    for node_id in progressing:
        node = w.node(node_id)
        limit = node.max_attempts if node else 1
        exhausted = w.cp.node_attempts.get(node_id, 0) >= limit
        w.set_output(
            node_id,
            {
                "status": "failed" if exhausted else "needs_repair",
                "blocker_category": STALE_REAP_REASON,
            },
        )
        if exhausted and failed_node is None:
            failed_node = node_id
    w.stop_in_flight()
    w.s.stop_kind = "StaleReaped"
    w.cp.last_stale_reap_at = w.now
    metadata = {"stale_after_ms": threshold, "last_activity_ms": last, "nodes": progressing}
    if failed_node is not None:
        w.phase_to("Failed")
        node = w.node(failed_node)
        attempts = w.cp.node_attempts.get(failed_node, 0)
        w.s.detail = (
            f"node `{failed_node}` failed after {attempts}/"
            f"{node.max_attempts if node else attempts} attempts"
        )
        w.s.stop_reason = STALE_REAP_REASON
        w.cp.last_failure = LastFailure(
            node_id=failed_node, reason=STALE_REAP_REASON, failed_at=w.now, failure_kind="stale"
        )
        w.record(
            "run_failed_stale_no_provider_activity",
            reason=STALE_REAP_REASON,
            stop_kind="StaleReaped",
            metadata=metadata,
            warning=True,
        )
        return
    w.phase_to("Paused")
    w.s.pause_reason = STALE_REAP_REASON
    w.s.stop_reason = STALE_REAP_REASON
    w.s.detail = f"paused: no executor activity for {threshold // 1000}s"
    w.record(
        "run_paused_stale_no_provider_activity",
        reason=STALE_REAP_REASON,
        stop_kind="StaleReaped",
        metadata=metadata,
    )


def _dispatch(w: _Work) -> None:
    """B10/B11: start runnable nodes, open a gate, or finish the run."""
    flow = w.flow()
    if w.s.phase != "Running" or flow is None:
        return
    nodes = nodes_by_id(flow)
    completed = set(w.cp.completed_nodes)
    blocked = set(w.cp.blocked_nodes)
    in_flight = set(w.obs.in_flight) - w.cancel
    runnable: list[Node] = []
    for node_id in w.cp.pending_nodes:
        node = nodes.get(node_id)
        if node is None or node_id in blocked or node_id in in_flight:
            continue
        if not all(dep in completed for dep in node.depends_on):
            continue
        output = w.cp.node_outputs.get(node_id)
        if output is not None and str(output.get("status", "")).lower() != "needs_repair":
            continue
        runnable.append(node)
    tasks = [n for n in runnable if n.kind == "Task"]
    gates = [n for n in runnable if n.kind == "Approval"]
    backing_off = {
        n.id: at
        for n in tasks
        if (at := parse_ms(w.cp.node_retry_after.get(n.id))) is not None and at > w.obs.now_ms
    }
    tasks = [n for n in tasks if n.id not in backing_off]
    if backing_off and not tasks and not in_flight:
        retry_after = format_ms(min(backing_off.values()))
        w.phase_to("Queued")
        w.s.scheduler = Scheduler(
            queue_reason="retry_backoff", queued_at=w.now, retry_after=retry_after
        )
        w.record(
            "run_queued_retry_backoff",
            reason=w.s.detail,
            metadata={"retry_after": retry_after, "nodes": sorted(backing_off)},
        )
        return
    if tasks:
        if w.obs.shutting_down:
            # B15: no new attempt; the run waits Running for the next operator (B1/B1r).
            return
        spent = [n for n in tasks if w.cp.node_attempts.get(n.id, 0) >= n.max_attempts]
        if spent:
            # An attempt that ended without an outcome (lost between the status write and
            # the start, or interrupted by hand-edited status) used the node's last attempt:
            # never start one past maxAttempts.
            node = spent[0]
            previous = w.cp.node_outputs.get(node.id) or {}
            w.set_output(node.id, {**previous, "status": "failed", "exhausted": True})
            _node_failed(w, node.id, node, f"node `{node.id}` exhausted its attempts", "exhausted")
            return
        slots = flow.execution.max_parallel_nodes - len(in_flight)
        for node in tasks[: max(0, slots)]:
            attempt = w.cp.node_attempts.get(node.id, 0) + 1
            w.cp.node_attempts[node.id] = attempt
            w.cp.node_outputs.pop(node.id, None)
            w.cp.node_retry_after.pop(node.id, None)
            w.cp.last_activity_at = w.now
            w.s.detail = f"running node `{node.id}` attempt {attempt}"
            w.start.append(StartAttempt(node_id=node.id, attempt=attempt))
        return
    if in_flight or w.in_progress() or backing_off:
        return
    if gates:
        gate = gates[0]
        approval = gate.approval
        w.cp.awaiting_gate = AwaitingGate(
            node_id=gate.id,
            title=approval.title if approval else None,
            instructions=approval.instructions if approval else None,
            decisions=list(approval.decisions) if approval else ["approve", "rework", "cancel"],
            rework_targets=list(approval.rework_targets) if approval else [],
            requested_at=w.now,
            metadata={},
        )
        below = descendants(flow, {gate.id})
        held = set(w.cp.blocked_nodes)
        pending = set(w.cp.pending_nodes)
        w.cp.blocked_nodes = [
            # Nodes blocked by their own outcome are no longer pending; they stay blocked
            # (approving the gate must not turn the run Completed without them).
            *(n for n in w.cp.blocked_nodes if n not in pending),
            *(n for n in w.cp.pending_nodes if n in below or n in held),
        ]
        w.phase_to("AwaitingApproval")
        w.s.detail = f"awaiting approval at gate `{gate.id}`"
        w.record(
            "run_awaiting_approval",
            reason=approval.title if approval and approval.title else gate.id,
            metadata={"node_id": gate.id},
        )
        return
    remaining = [n for n in w.cp.pending_nodes if n not in blocked]
    if remaining:
        # Nodes whose dependencies can never complete (a blocked upstream).
        w.cp.blocked_nodes = [*w.cp.blocked_nodes, *remaining]
        blocked |= set(remaining)
    failed = [n for n, out in w.cp.node_outputs.items() if str(out.get("status", "")) == "failed"]
    if failed:
        _node_failed(w, failed[0], nodes.get(failed[0]), "node failed", "failed")
    elif blocked:
        w.phase_to("Blocked")
        w.s.detail = f"blocked nodes: {', '.join(sorted(blocked))}"
        w.record("run_blocked", reason=w.s.detail, warning=True)
    else:
        w.phase_to("Completed")
        w.s.detail = "completed"
        w.record("run_completed", reason="all nodes completed")


def _settle_pausing(w: _Work) -> None:
    """B12: a Pausing run whose in-flight attempts have ended becomes Paused."""
    if w.s.phase != "Pausing" or w.obs.in_flight:
        return
    _release_in_flight_attempts(w)
    if w.obs.spec.desired_state == "Running":
        # Resumed while its attempts were still stopping: nothing left to pause.
        w.clear_stop()
        w.s.resume_reason = "resumed by user"
        w.queue()
        w.record("run_resumed", reason="resumed by user")
        return
    w.phase_to("Paused")
    w.record("run_paused", reason=w.s.pause_reason or "paused by user")


# --------------------------------------------------------------------------- invariants


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
    failed_like = phase in ("Failed", "Blocked", "Cancelled")
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


def _finalize(w: _Work) -> None:
    s = w.s
    if s.phase != "Queued":
        s.scheduler = None
    if s.phase not in ACTIVE_PHASES:
        s.execution_claim = None
    if s.phase in TERMINAL_PHASES:
        s.finished_at = s.finished_at or w.now
        s.checkpoint.awaiting_gate = None
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


# --------------------------------------------------------------------------- entry point

_DERIVED = frozenset({"conditions", "progress", "updated_at", "observed_generation"})


def _core_changed(before: AutomationRunStatus, after: AutomationRunStatus) -> bool:
    """A field other than those derived from the rest changed: a change worth a write.

    Model equality compares field values recursively, as comparing two ``model_dump``s
    would, without serialising a status that may hold 100 nodes' outputs twice per decide.
    """
    return any(
        getattr(before, name) != getattr(after, name)
        for name in AutomationRunStatus.model_fields
        if name not in _DERIVED
    )


def _generation_moved(before: AutomationRunStatus, generation: int) -> bool:
    """The spec changed since the operator last wrote status: say so in observedGeneration.

    A status without ``observedGeneration`` (written by hand, or by an older operator) is
    not rewritten just to add it: B3 promises no write to a Paused or AwaitingApproval run
    on restart, and the next real change records the generation anyway.
    """
    return before.observed_generation is not None and before.observed_generation != generation


_SHARED_PARTS: Any = {
    "automation_snapshot": True,
    "checkpoint": {"lifecycle_history", "gate_history", "node_outputs", "node_attempt_verdicts"},
}


def _reported_invalid(status: AutomationRunStatus) -> bool:
    """The reconciler stalled this run over a status it could not use (``InvalidStatus``).

    The run is decided again only once someone fixed the status, and that decision must
    be written even when it changes nothing else, or ``Stalled`` would stay True.
    """
    return any(
        c.type == "Stalled" and c.status == "True" and c.reason == "InvalidStatus"
        for c in status.conditions
    )


def _private_copy(status: AutomationRunStatus) -> AutomationRunStatus:
    """A copy of ``status`` for the rules to change, cheap enough for 100-node statuses.

    The bulky parts are shared, not copied: the automation snapshot (no rule changes it
    once set) and the records, gateHistory entries, node outputs and verdicts, which the
    rules only ever add, replace or drop (their containers are copied), never change in
    place. The rest goes through a dump and a validation, pydantic-core work that is many
    times faster than ``model_copy(deep=True)``.
    """
    cp = status.checkpoint
    copy = AutomationRunStatus.model_validate(status.model_dump(exclude=_SHARED_PARTS))
    copy.automation_snapshot = status.automation_snapshot
    copy.checkpoint.lifecycle_history = list(cp.lifecycle_history)
    copy.checkpoint.gate_history = list(cp.gate_history)
    copy.checkpoint.node_outputs = dict(cp.node_outputs)
    copy.checkpoint.node_attempt_verdicts = {
        node_id: list(verdicts) for node_id, verdicts in cp.node_attempt_verdicts.items()
    }
    return copy


def decide(obs: Observation) -> Decision:
    """Apply every rule to one run and say what to write and do."""
    fresh = obs.status is None
    before = obs.status or _initial_status(obs)
    w = _Work(obs, _private_copy(before))
    if fresh:
        w.record("run_queued", reason="created")
    _recover_orphan(w)
    if not _cancel(w):
        _recover(w)
        _gate_decisions(w)
        _gate_timers(w)
        if w.s.phase not in TERMINAL_PHASES:
            _pause_resume(w)
            _stale_auto_resume(w)
            _guardrail_auto_resume(w)
            _admit(w)
            _apply_outcomes(w)
            _budgets(w)
            _stale_reap(w)
            _dispatch(w)
            _settle_pausing(w)
        else:
            # Attempts that end after the run did still bring their usage (B17).
            _apply_outcomes(w)
    else:
        _apply_outcomes(w)
    _finalize(w)
    changed = (
        fresh
        or _core_changed(before, w.s)
        or _generation_moved(before, obs.generation)
        or _reported_invalid(before)
    )
    if changed:
        w.s.updated_at = w.now
    return Decision(
        status=w.s,
        changed=changed,
        records=tuple(w.records),
        events=tuple(w.events),
        start=tuple(w.start),
        cancel=frozenset(w.cancel),
        consumed=len(obs.outcomes),
    )
