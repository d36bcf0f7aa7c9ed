"""Checks on a run's spec that CEL cannot express, for the validating admission webhook.

CEL in the CRD schema already refuses what it can say at ``kubectl apply`` (one of
automationRef/automation, unique DNS-1123 node ids, dependsOn and reworkTargets inside the
flow, ranges, enums, append-only gate decisions). What needs a graph walk or another
object's state is checked here, purely, so the webhook only wires it:

- ``dependsOn`` must not form a cycle;
- an approval gate's ``reworkTargets`` must be upstream of the gate;
- every new ``gateDecisions`` entry (one the old list does not hold, wherever it sits) must
  name an Approval node of the run's flow and one of the decisions that gate allows;
- B18a/B18b, when the admission request's user is given: every new entry's ``decidedBy``
  is that user (the mutating webhook stamps it; this is the check that it happened), and
  the user, or one of its groups, is in the gate's ``approvers`` when the gate has them;
- a run whose flow is not known yet (an ``automationRef`` run the operator has not admitted,
  so its status has no ``automationSnapshot``) takes no decisions: neither the gate nor its
  approvers can be checked, and no gate of it can be waiting anyway.

Each message starts with the field path it is about, as the API server's own do.

:func:`status_problems` does the same for a run's *status*, which users may write by hand
(``kubectl patch --subresource=status``) and which the schema can only check for types. A
status the rules cannot act on safely is not guessed at: the reconciler reports it (a
Warning Event ``InvalidStatus`` and ``Stalled=True``) and leaves every field as it is until
someone fixes it. What counts as unusable:

- a non-empty status without ``phase`` (acting on it would start the run from scratch);
- an ``automationSnapshot`` that is not a valid flow (the run has nothing to execute);
- a timestamp that is not RFC 3339 (deadlines computed from it would never fire, or at
  once);
- a ``usage.estimatedCostUsd`` that is not a decimal number (B17 adds to it, B8 compares
  it: every decision would fail);
- once admitted (a snapshot is set): ``completedNodes``, ``pendingNodes``,
  ``blockedNodes`` or ``nodeOutputs`` naming a node the flow does not have (the run would
  end Blocked or Failed because of a node that does not exist), an ``awaitingGate`` that
  is not one of the flow's approval gates, or an AwaitingApproval run without one (no
  decision could ever apply).

Tolerated, because no rule reads them for an unknown node: ``nodeAttempts``,
``nodeAttemptVerdicts`` and ``nodeRetryAfter`` entries for nodes the flow does not have;
they are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pydantic

from tandem_operator.api.models import (
    DECIMAL,
    Approval,
    AutomationRunStatus,
    AutomationSpec,
    GateDecision,
)
from tandem_operator.lifecycle.approvals import may_decide
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.flow import find_cycle, upstream
from tandem_operator.lifecycle.gates import decision_keys, undecided

_DECIMAL = re.compile(DECIMAL)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def flow_problems(flow: AutomationSpec, *, path: str) -> list[str]:
    problems = []
    cycle = find_cycle(flow)
    if cycle:
        problems.append(f"{path}.nodes: dependsOn forms a cycle: {' -> '.join(cycle)}")
    for index, node in enumerate(flow.nodes):
        if node.approval is None or not node.approval.rework_targets:
            continue
        above = upstream(flow, node.id)
        outside = [t for t in node.approval.rework_targets if t not in above]
        if outside:
            problems.append(
                f"{path}.nodes[{index}].approval.reworkTargets: {', '.join(outside)} "
                f"not upstream of gate `{node.id}`"
            )
    return problems


def decision_problems(
    flow: AutomationSpec,
    decisions: Sequence[GateDecision],
    *,
    new: Sequence[int],
    user: str | None = None,
    groups: Sequence[str] = (),
) -> list[str]:
    """What is wrong with the entries of ``decisions`` at the indexes ``new``.

    With ``user`` (the admission request's authenticated user and ``groups``), also B18a
    (``decidedBy`` is that user) and B18b (the user may decide the gate).
    """
    gates = {n.id: n for n in flow.nodes if n.kind == "Approval"}
    problems = []
    for index in new:
        decision = decisions[index]
        gate = gates.get(decision.gate)
        field = f"spec.gateDecisions[{index}]"
        if user is not None and decision.decided_by != user:
            problems.append(
                f"{field}.decidedBy: `{decision.decided_by}` is not the user writing the "
                f"decision (`{user}`)"
            )
        if gate is None:
            problems.append(
                f"{field}.gate: `{decision.gate}` is not an approval gate of this flow"
                + (f" (gates: {', '.join(sorted(gates))})" if gates else " (it has none)")
            )
            continue
        allowed = gate.approval.decisions if gate.approval else ["approve", "rework", "cancel"]
        if decision.decision not in allowed:
            problems.append(
                f"{field}.decision: gate `{gate.id}` allows {', '.join(allowed)}, "
                f"not {decision.decision}"
            )
        if user is not None and not may_decide(gate.approval, user=user, groups=groups):
            problems.append(
                f"{field}: user `{user}` may not decide gate `{gate.id}` "
                f"({_approvers_text(gate.approval)})"
            )
    return problems


def _approvers_text(approval: Approval | None) -> str:
    approvers = approval.approvers if approval is not None else None
    if approvers is None:
        return "anyone may"
    users = ", ".join(approvers.users) or "none"
    groups = ", ".join(approvers.groups) or "none"
    return f"approvers: users {users}; groups {groups}"


def run_problems(
    spec: Mapping[str, Any],
    *,
    old_spec: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None,
    user: str | None = None,
    groups: Sequence[str] = (),
) -> list[str]:
    """Everything wrong with an AutomationRun spec that the schema let through.

    ``user`` and ``groups`` are the admission request's; without them B18a/B18b are not
    checked (the operator's own re-check of a stored spec has no request).
    """
    raw_flow = (status or {}).get("automationSnapshot") or spec.get("automation")
    problems: list[str] = []
    flow: AutomationSpec | None = None
    if raw_flow is not None:
        try:
            flow = AutomationSpec.model_validate(raw_flow)
        except pydantic.ValidationError:
            flow = None
    if flow is not None and spec.get("automation") is not None:
        problems += flow_problems(flow, path="spec.automation")
    try:
        decisions = [GateDecision.model_validate(d) for d in spec.get("gateDecisions") or []]
    except pydantic.ValidationError:
        return problems
    try:
        old = [GateDecision.model_validate(d) for d in (old_spec or {}).get("gateDecisions") or []]
    except pydantic.ValidationError:
        old = []
    if flow is not None:
        # New entries are those the old list does not hold, wherever they were inserted.
        problems += decision_problems(
            flow, decisions, new=new_entries(old, decisions), user=user, groups=groups
        )
    elif fresh := new_entries(old, decisions):
        problems.append(
            f"spec.gateDecisions[{fresh[0]}]: the run's flow is not resolved yet, so no gate "
            "of it is waiting; decide once the run is AwaitingApproval"
        )
    return problems


def new_entries(old: Sequence[GateDecision], new: Sequence[GateDecision]) -> list[int]:
    """Indexes of the entries of ``new`` that ``old`` does not hold, wherever they sit."""
    return undecided(new, decision_keys(old), seen=0)


def flow_error(raw: object) -> str | None:
    """Why ``raw`` does not parse as a flow (first error, with its path); ``None`` if it does."""
    try:
        AutomationSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    return None


def is_timestamp(value: str) -> bool:
    """``value`` is an RFC 3339 date-time (``T`` separator, ``Z`` or a numeric offset)."""
    return _RFC3339.match(value) is not None and parse_ms(value) is not None


def _timestamps(status: AutomationRunStatus) -> Iterator[tuple[str, str | None]]:
    """(field path, value) of every timestamp in a run's status."""
    yield "status.createdAt", status.created_at
    yield "status.startedAt", status.started_at
    yield "status.finishedAt", status.finished_at
    yield "status.updatedAt", status.updated_at
    cp = status.checkpoint
    yield "status.checkpoint.lastActivityAt", cp.last_activity_at
    if cp.awaiting_gate is not None:
        yield "status.checkpoint.awaitingGate.requestedAt", cp.awaiting_gate.requested_at
    if cp.last_failure is not None:
        yield "status.checkpoint.lastFailure.failedAt", cp.last_failure.failed_at
    for node_id, at in cp.node_retry_after.items():
        yield f"status.checkpoint.nodeRetryAfter.{node_id}", at
    for index, record in enumerate(cp.lifecycle_history):
        yield f"status.checkpoint.lifecycleHistory[{index}].recordedAt", record.recorded_at
    for index, entry in enumerate(cp.gate_history):
        yield f"status.checkpoint.gateHistory[{index}].decidedAt", entry.decided_at
    if status.scheduler is not None:
        yield "status.scheduler.queuedAt", status.scheduler.queued_at
        yield "status.scheduler.retryAfter", status.scheduler.retry_after
    if status.execution_claim is not None:
        yield "status.executionClaim.claimedAt", status.execution_claim.claimed_at
        yield "status.executionClaim.leaseExpiresAt", status.execution_claim.lease_expires_at
    for index, condition in enumerate(status.conditions):
        yield f"status.conditions[{index}].lastTransitionTime", condition.last_transition_time


def status_problems(
    status: AutomationRunStatus, *, flow: AutomationSpec | None, snapshot_error: str | None
) -> list[str]:
    """Why the operator cannot act on this (parsed, phase-bearing) status; empty if it can.

    ``flow`` is the run's definition as the reconciler resolved it; ``snapshot_error`` says
    why ``status.automationSnapshot`` did not parse as a flow, when it did not.
    """
    problems: list[str] = []
    if snapshot_error is not None:
        problems.append(f"status.automationSnapshot is not a valid flow: {snapshot_error}")
    for path, value in _timestamps(status):
        if value is not None and not is_timestamp(value):
            problems.append(f"{path}: {value!r} is not an RFC 3339 timestamp")
    cost = status.usage.estimated_cost_usd
    if _DECIMAL.match(cost) is None:
        problems.append(
            f"status.usage.estimatedCostUsd: {cost!r} is not a decimal number such as 1.25"
        )
    if status.automation_snapshot is None or flow is None:
        return problems
    known = {node.id for node in flow.nodes}
    cp = status.checkpoint
    named = {
        "completedNodes": cp.completed_nodes,
        "pendingNodes": cp.pending_nodes,
        "blockedNodes": cp.blocked_nodes,
        "nodeOutputs": list(cp.node_outputs),
    }
    for field, node_ids in named.items():
        unknown = sorted({n for n in node_ids if n not in known})
        if unknown:
            problems.append(
                f"status.checkpoint.{field}: {', '.join(unknown)} not a node of this run's flow"
            )
    gates = {node.id for node in flow.nodes if node.kind == "Approval"}
    gate = cp.awaiting_gate
    if gate is not None and gate.node_id not in gates:
        problems.append(
            f"status.checkpoint.awaitingGate.nodeId: `{gate.node_id}` is not an approval gate "
            "of this run's flow"
        )
    if status.phase == "AwaitingApproval" and gate is None:
        problems.append("status.checkpoint.awaitingGate: missing on an AwaitingApproval run")
    return problems
