"""Checks on a run's spec that CEL cannot express, for the validating admission webhook.

CEL in the CRD schema already refuses what it can say at ``kubectl apply`` (one of
automationRef/automation, unique DNS-1123 node ids, dependsOn and reworkTargets inside the
flow, ranges, enums, append-only gate decisions). What needs a graph walk or another
object's state is checked here, purely, so the webhook only wires it:

- ``dependsOn`` must not form a cycle;
- an approval gate's ``reworkTargets`` must be upstream of the gate;
- every new ``gateDecisions`` entry must name an Approval node of the run's flow and one of
  the decisions that gate allows.

Each message starts with the field path it is about, as the API server's own do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from tandem_operator.api.models import AutomationSpec, GateDecision
from tandem_operator.lifecycle.flow import find_cycle, upstream


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
    flow: AutomationSpec, decisions: Sequence[GateDecision], *, first_new: int
) -> list[str]:
    gates = {n.id: n for n in flow.nodes if n.kind == "Approval"}
    problems = []
    for index in range(first_new, len(decisions)):
        decision = decisions[index]
        gate = gates.get(decision.gate)
        field = f"spec.gateDecisions[{index}]"
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
    return problems


def run_problems(
    spec: Mapping[str, Any],
    *,
    old_spec: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None,
) -> list[str]:
    """Everything wrong with an AutomationRun spec that the schema let through."""
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
    first_new = len((old_spec or {}).get("gateDecisions") or [])
    if flow is not None:
        problems += decision_problems(flow, decisions, first_new=first_new)
    return problems
