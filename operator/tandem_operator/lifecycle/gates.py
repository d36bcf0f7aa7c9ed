"""Approval gates: decisions from the spec (B11), expiry, and stale marking (B4).

Each entry of ``spec.gateDecisions`` is applied once or rejected once (a requestId makes it
idempotent); a decision for a gate that is not awaiting is rejected with a Warning Event.
Entries are known by a key, not by their position: a digest of the requestId, or of the
entry's content and how many identical entries come before it (:func:`decision_keys`). The
keys of the entries acted on are kept in ``checkpoint.gateDecisionKeys`` (bounded), so an
entry inserted before recorded ones lands once, and a list that shrinks (a GitOps revert
the schema could not refuse) neither replays nor forgets what was decided.
Expiry applies ``cancel`` or ``resume`` (= approve) or records a reminder; B4 marks a gate
that waits on people alone as stale, exactly once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tandem_operator.api.models import ApprovalExpiry, AwaitingGate, GateDecision, GateHistoryEntry
from tandem_operator.lifecycle.approvals import apply_approval
from tandem_operator.lifecycle.bounds import MAX_REASON_CHARS, clip
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.flow import descendants
from tandem_operator.lifecycle.work import Work

MAX_DECISION_KEYS = 512
"""Keys of decided entries kept in ``checkpoint.gateDecisionKeys`` (newest last): twice the
longest ``spec.gateDecisions``, so a list that was cut and grew again is still known."""


def decision_keys(decisions: Sequence[GateDecision]) -> list[str]:
    """A key for each entry that does not depend on where it sits in the list.

    An entry with a requestId is known by it (two entries with one requestId are one
    decision); one without, by its content and the number of identical entries before it,
    so the same decision written twice counts twice. Keys are short digests: 512 of them
    take a few KiB of status.
    """
    occurrences: Counter[str] = Counter()
    keys = []
    for decision in decisions:
        if decision.request_id:
            identity = f"request\0{decision.request_id}"
        else:
            content = "\0".join(
                (decision.gate, decision.decision, decision.reason or "", decision.decided_by or "")
            )
            identity = f"content\0{content}\0{occurrences[content]}"
            occurrences[content] += 1
        keys.append(hashlib.sha256(identity.encode()).hexdigest()[:16])
    return keys


def undecided(
    decisions: Sequence[GateDecision], status_keys: Sequence[str] | None, *, seen: int
) -> list[int]:
    """Indexes of the entries not yet applied or rejected.

    ``status_keys`` is ``checkpoint.gateDecisionKeys``; a status written before it existed
    has only ``counters.gateDecisionsSeen`` (``seen``), which counted entries by position:
    its first ``seen`` entries count as decided.
    """
    keys = decision_keys(decisions)
    known = set(status_keys) if status_keys is not None else set(keys[:seen])
    return [index for index, key in enumerate(keys) if key not in known]


def gate_decisions(w: Work) -> None:
    """B11: each new entry of spec.gateDecisions is applied once or rejected once."""
    decisions = w.obs.spec.gate_decisions
    keys = decision_keys(decisions)
    counters = w.s.counters
    pending = undecided(decisions, w.cp.gate_decision_keys, seen=counters.gate_decisions_seen)
    if pending and w.cp.gate_decision_keys is None:
        # A status from before keys were kept: its counter said which entries were seen.
        w.cp.gate_decision_keys = keys[: counters.gate_decisions_seen]
    seen = {e.request_id for e in w.cp.gate_history if e.request_id}
    for index in pending:
        decision = decisions[index]
        _remember(w, keys[index])
        if decision.request_id and decision.request_id in seen:
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
        _decide(w, gate, decision, key=decision.request_id)
        if decision.request_id:
            seen.add(decision.request_id)
    if pending:
        # Kept for readers of older status; never lowered when the list shrinks.
        counters.gate_decisions_seen = max(counters.gate_decisions_seen, len(decisions))


def _remember(w: Work, key: str) -> None:
    known = [*(w.cp.gate_decision_keys or []), key]
    w.cp.gate_decision_keys = known[-MAX_DECISION_KEYS:]


def _decide(w: Work, gate: AwaitingGate, decision: GateDecision, *, key: str | None) -> None:
    """B11 with B18c: an approval counts towards the gate's quorum; the last one passes it."""
    node = w.node(gate.node_id)
    outcome = apply_approval(
        awaiting_gate=gate,
        gate_history=w.cp.gate_history,
        approval=node.approval if node else None,
        decision=decision.decision,
        user=decision.decided_by,
        decided_at=w.now,
    )
    if outcome.action in ("pass", "rework", "cancel"):
        _apply_gate_decision(w, gate, decision, key=key, decided_by=decision.decided_by)
    elif outcome.action == "wait":
        w.cp.gate_history.append(
            GateHistoryEntry(
                node_id=gate.node_id,
                decision="approve",
                reason=clip(decision.reason, MAX_REASON_CHARS),
                decided_at=w.now,
                decided_by=decision.decided_by,
                request_id=key,
            )
        )
        gate.approvals = list(outcome.approvals)
        w.s.detail = (
            f"awaiting approval at gate `{gate.node_id}`: approved by "
            f"{', '.join(a.user for a in outcome.approvals)} ({outcome.count})"
        )
        w.note("GateApprovalRecorded", f"gate {gate.node_id}: {w.s.detail}")
    elif outcome.action == "unidentified":
        w.warn(
            "GateDecisionRejected",
            f"approval for gate {gate.node_id} names no user (decidedBy); the gate needs "
            f"{outcome.required} distinct approvers",
        )
    # "duplicate": this user already approved this request; nothing changes.


def _apply_gate_decision(
    w: Work,
    gate: AwaitingGate,
    decision: GateDecision | None,
    *,
    key: str | None,
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


@dataclass(frozen=True)
class GateTimes:
    """When B11's expiry and B4's stale mark are due for the awaiting gate (``None``: they
    have nothing left to do). ``gate_timers`` acts on them; ``deadlines`` wakes up for them.
    """

    requested_ms: int
    expiry: ApprovalExpiry | None
    expires_at_ms: int | None
    stale_at_ms: int | None


def gate_times(w: Work) -> GateTimes | None:
    """The awaiting gate's timers, or ``None`` when no gate waits (or its request time is
    unreadable)."""
    gate = w.cp.awaiting_gate
    if w.s.phase != "AwaitingApproval" or gate is None:
        return None
    requested = parse_ms(gate.requested_at)
    if requested is None:
        return None
    node = w.node(gate.node_id)
    expiry = node.approval.expiry if node and node.approval else None
    metadata = gate.metadata or {}
    reminded = expiry is not None and expiry.action == "remind" and metadata.get("reminder_due")
    # B4 is for gates that wait on people alone: a gate with another expiry resolves itself.
    people_alone = expiry is None or expiry.action == "remind"
    return GateTimes(
        requested_ms=requested,
        expiry=expiry,
        expires_at_ms=(
            requested + expiry.after_seconds * 1000 if expiry is not None and not reminded else None
        ),
        stale_at_ms=(
            requested + w.obs.settings.approval_gate_stale_after_ms
            if people_alone and not metadata.get("stale")
            else None
        ),
    )


def gate_timers(w: Work) -> None:
    """B11 expiry and B4 stale marking for the awaiting gate."""
    times = gate_times(w)
    gate = w.cp.awaiting_gate
    if times is None or gate is None:
        return
    requested, expiry = times.requested_ms, times.expiry
    metadata = dict(gate.metadata or {})
    due = times.expires_at_ms is not None and w.obs.now_ms >= times.expires_at_ms
    if expiry is not None and due:
        if expiry.action == "remind":
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
    if times.stale_at_ms is None or w.obs.now_ms < times.stale_at_ms:
        return
    stale_after = w.obs.settings.approval_gate_stale_after_ms
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
