"""Approval gates: decisions from the spec (B11), expiry, and stale marking (B4).

Each entry of ``spec.gateDecisions`` is applied once or rejected once (a requestId makes it
idempotent); a decision for a gate that is not awaiting is rejected with a Warning Event.
Expiry applies ``cancel`` or ``resume`` (= approve) or records a reminder; B4 marks a gate
that waits on people alone as stale, exactly once.
"""

from __future__ import annotations

from tandem_operator.api.models import AwaitingGate, GateDecision, GateHistoryEntry
from tandem_operator.lifecycle.approvals import apply_approval
from tandem_operator.lifecycle.bounds import MAX_REASON_CHARS, clip
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.flow import descendants
from tandem_operator.lifecycle.work import Work


def decision_key(index: int, decision: GateDecision) -> str:
    return decision.request_id or f"#{index}"


def gate_decisions(w: Work) -> None:
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
        _decide(w, gate, decision, key=key)
        seen.add(key)
    _set_decisions_seen(w, len(decisions))


def _decide(w: Work, gate: AwaitingGate, decision: GateDecision, *, key: str) -> None:
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


def _decisions_seen(w: Work) -> int:
    return w.s.counters.gate_decisions_seen


def _set_decisions_seen(w: Work, count: int) -> None:
    w.s.counters.gate_decisions_seen = count


def _apply_gate_decision(
    w: Work,
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


def gate_timers(w: Work) -> None:
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
