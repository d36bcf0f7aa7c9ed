"""Approval gates (B11) and stale gates (B4) on the real control plane.

A user decides a gate by appending to ``spec.gateDecisions`` with ``kubectl patch``; the
tests read the outcome back from status and from Kubernetes Events. Flows are simulated
(no agent endpoint) and fast, so each test is about the gate, not the work around it.

``status.observedGeneration`` is the sync point for "the operator has seen this spec
change": a test that expects *nothing* to happen waits for it before looking, so it cannot
pass just by looking too early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

STALE_DETAIL = (
    "awaiting manual approval for gate `review` for at least 2s; "
    "no automatic expiry action is configured"
)


def lifecycle(status: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (status.get("checkpoint") or {}).get("lifecycleHistory") or []
    return records


def recorded(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [r for r in lifecycle(status) if r["event"] == event]


def gate(node_id: str = "review", **approval: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "kind": "Approval",
        "dependsOn": approval.pop("dependsOn", ["a"]),
        "approval": {"title": "Review the draft", **approval},
    }


def gated_run(name: str, **approval: Any) -> dict[str, Any]:
    """a → review (Approval) → b."""
    return simulated_run(name, [sim("a"), gate(**approval), sim("b", dependsOn=["review"])])


def decide(cluster: Cluster, name: str, *decisions: dict[str, Any]) -> None:
    """Append decisions to spec.gateDecisions (the list is append-only)."""
    current = cluster.run(name)["spec"].get("gateDecisions") or []
    cluster.patch_spec(name, {"gateDecisions": [*current, *decisions]})


def observed(cluster: Cluster, name: str) -> dict[str, Any]:
    """Status once the operator has seen the run's latest spec."""

    def check() -> dict[str, Any] | None:
        run = cluster.run(name)
        status: dict[str, Any] = run.get("status") or {}
        return status if status.get("observedGeneration") == run["metadata"]["generation"] else None

    found: dict[str, Any] = wait_for(check, timeout=30, what=f"{name} to observe its spec")
    return found


def awaiting(cluster: Cluster, name: str, *, decided: int = 0) -> dict[str, Any]:
    """Wait until the run awaits its gate with ``decided`` decisions already in gateHistory."""

    def check() -> dict[str, Any] | None:
        status = cluster.status(name)
        history = (status.get("checkpoint") or {}).get("gateHistory") or []
        if status.get("phase") == "AwaitingApproval" and len(history) == decided:
            return status
        return None

    found: dict[str, Any] = wait_for(
        check,
        timeout=45,
        what=f"{name} awaiting approval after {decided} decisions",
        describe=lambda: f"phase={cluster.phase(name)}",
    )
    return found


def warnings(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e for e in cluster.events(name) if e.get("reason") == reason and e.get("type") == "Warning"
    ]


# --------------------------------------------------------------------------- B11 decisions


def test_gate_opens_and_approve_completes(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(gated_run("approve"))
    status = awaiting(cluster, "approve")
    gate_state = status["checkpoint"]["awaitingGate"]
    assert gate_state["nodeId"] == "review"
    assert gate_state["title"] == "Review the draft"
    assert gate_state["decisions"] == ["approve", "rework", "cancel"]
    assert gate_state["requestedAt"].endswith("Z")
    assert status["checkpoint"]["blockedNodes"] == ["b"]
    assert status["checkpoint"]["completedNodes"] == ["a"]
    assert "executionClaim" not in status
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["AwaitingApproval"] == "True"

    decide(cluster, "approve", {"gate": "review", "decision": "approve", "requestId": "r1"})
    status = cluster.wait_phase("approve", "Completed", "Failed", "Cancelled", timeout=45)
    assert status["phase"] == "Completed"
    cp = status["checkpoint"]
    assert cp["nodeOutputs"]["review"] == {"status": "completed", "contract_kind": "approval_gate"}
    assert cp["completedNodes"] == ["a", "review", "b"]
    assert [(h["nodeId"], h["decision"]) for h in cp["gateHistory"]] == [("review", "approve")]
    assert "awaitingGate" not in cp
    # Approved with capacity free: re-admitted in the same decision, no queueReason shown.
    approved = next(r for r in lifecycle(status) if r["event"] == "run_gate_approved")
    assert recorded(status, "run_started")[-1]["recordedAt"] == approved["recordedAt"]
    # Every transition's Event comes from the operator itself (`kubectl describe`'s From).
    events = wait_for(
        lambda: (
            (found := cluster.events("approve"))
            and {e["reason"] for e in found} >= {"RunGateApproved", "RunCompleted"}
            and found
        ),
        timeout=15,
        what="the transitions' Events",
    )
    assert {e["source"].get("component") for e in events} == {"tandem-operator"}
    assert {e.get("reportingComponent") for e in events} == {"tandem-operator"}


def test_rework_resets_upstream_and_reopens_the_gate(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(gated_run("rework"))
    awaiting(cluster, "rework")
    decide(
        cluster,
        "rework",
        {"gate": "review", "decision": "rework", "reason": "too short", "requestId": "r1"},
    )
    status = awaiting(cluster, "rework", decided=1)
    cp = status["checkpoint"]
    # `a` (the gate's upstream) ran again from scratch: a fresh first attempt, while the
    # verdicts of both attempts are kept.
    assert cp["nodeAttempts"] == {"a": 1}
    assert [v["status"] for v in cp["nodeAttemptVerdicts"]["a"]] == ["completed", "completed"]
    assert cp["gateHistory"][0]["decision"] == "rework"
    assert cp["gateHistory"][0]["reason"] == "too short"
    reworked = recorded(status, "run_gate_reworked")
    assert len(reworked) == 1
    assert reworked[0]["metadata"]["rework_targets"] == ["a"]
    assert len(recorded(status, "run_awaiting_approval")) == 2

    decide(cluster, "rework", {"gate": "review", "decision": "approve", "requestId": "r2"})
    status = cluster.wait_phase("rework", "Completed", "Failed", "Cancelled", timeout=45)
    assert status["phase"] == "Completed"
    assert [h["decision"] for h in status["checkpoint"]["gateHistory"]] == ["rework", "approve"]


def test_rework_targets_reset_only_the_named_nodes_and_below(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(
        simulated_run(
            "targets",
            [
                sim("a"),
                sim("b", dependsOn=["a"]),
                gate(dependsOn=["b"], reworkTargets=["b"]),
                sim("c", dependsOn=["review"]),
            ],
        )
    )
    awaiting(cluster, "targets")
    decide(cluster, "targets", {"gate": "review", "decision": "rework", "requestId": "r1"})
    status = awaiting(cluster, "targets", decided=1)
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"a": 1, "b": 1}
    assert len(cp["nodeAttemptVerdicts"]["a"]) == 1  # untouched
    assert len(cp["nodeAttemptVerdicts"]["b"]) == 2  # ran again
    assert cp["completedNodes"] == ["a", "b"]
    assert cp["blockedNodes"] == ["c"]


def test_cancel_decision_cancels_the_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(gated_run("cancel"))
    awaiting(cluster, "cancel")
    decide(
        cluster,
        "cancel",
        {"gate": "review", "decision": "cancel", "reason": "not needed", "requestId": "r1"},
    )
    status = cluster.wait_phase("cancel", "Cancelled", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Cancelled"
    assert status["stopKind"] == "Cancelled"
    assert status.get("finishedAt")
    assert "awaitingGate" not in status["checkpoint"]
    cancelled = recorded(status, "run_cancelled")
    assert len(cancelled) == 1
    assert cancelled[0]["stopKind"] == "Cancelled"
    assert "b" not in status["checkpoint"].get("nodeAttempts", {})
    wait_for(
        lambda: any(e["reason"] == "RunCancelled" for e in cluster.events("cancel")),
        timeout=15,
        what="a RunCancelled Event",
    )


def test_same_request_id_is_applied_once(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(gated_run("idem"))
    awaiting(cluster, "idem")
    rework = {"gate": "review", "decision": "rework", "requestId": "same"}
    decide(cluster, "idem", rework)
    awaiting(cluster, "idem", decided=1)
    # The same request again (a retried client call): recorded decisions are not repeated.
    decide(cluster, "idem", rework)
    status = observed(cluster, "idem")
    time.sleep(1.5)
    status = cluster.status("idem")
    assert status["phase"] == "AwaitingApproval"
    assert len(status["checkpoint"]["gateHistory"]) == 1
    assert len(status["checkpoint"]["nodeAttemptVerdicts"]["a"]) == 2
    assert len(recorded(status, "run_gate_reworked")) == 1


def test_decision_for_a_gate_that_is_not_awaiting_is_rejected(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(
        simulated_run(
            "reject",
            [
                sim("a", after=3),
                gate(),
                sim("b", dependsOn=["review"]),
                gate("final", dependsOn=["b"]),
            ],
        )
    )
    cluster.wait_phase("reject", "Running", timeout=30)
    # Too early: no gate awaits yet.
    decide(cluster, "reject", {"gate": "review", "decision": "approve", "requestId": "early"})
    wait_for(
        lambda: warnings(cluster, "reject", "GateDecisionRejected"),
        timeout=15,
        what="a GateDecisionRejected Warning",
    )
    status = awaiting(cluster, "reject")
    assert status["checkpoint"]["awaitingGate"]["nodeId"] == "review"
    before = status["checkpoint"]
    # The wrong gate: `final` is not the one awaiting.
    decide(cluster, "reject", {"gate": "final", "decision": "approve", "requestId": "wrong"})
    observed(cluster, "reject")
    wait_for(
        lambda: (
            sum(e.get("count") or 1 for e in warnings(cluster, "reject", "GateDecisionRejected"))
            >= 2
        ),
        timeout=15,
        what="a second GateDecisionRejected Warning",
    )
    time.sleep(1.5)
    status = cluster.status("reject")
    assert status["phase"] == "AwaitingApproval"
    after = status["checkpoint"]
    for key in ("awaitingGate", "gateHistory", "completedNodes", "pendingNodes", "nodeOutputs"):
        assert after.get(key) == before.get(key), key
    assert after.get("gateHistory", []) == []
    messages = " | ".join(e["message"] for e in warnings(cluster, "reject", "GateDecisionRejected"))
    assert "review" in messages
    assert "final" in messages


# --------------------------------------------------------------------------- B11 expiry


@pytest.mark.parametrize(
    ("action", "phase", "decision"),
    [("cancel", "Cancelled", "cancel"), ("resume", "Completed", "approve")],
)
def test_gate_expiry_applies_its_action(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    action: str,
    phase: str,
    decision: str,
) -> None:
    operators()
    cluster.apply(gated_run("expiry", expiry={"afterSeconds": 2, "action": action}))
    opened = awaiting(cluster, "expiry")
    status = cluster.wait_phase("expiry", phase, "Completed", "Cancelled", "Failed", timeout=45)
    assert status["phase"] == phase
    history = status["checkpoint"]["gateHistory"]
    assert [(h["nodeId"], h["decision"]) for h in history] == [("review", decision)]
    assert history[0]["decidedAt"] >= opened["checkpoint"]["awaitingGate"]["requestedAt"]
    if phase == "Cancelled":
        assert status["stopKind"] == "Cancelled"
        assert len(recorded(status, "run_cancelled")) == 1
    else:
        assert status["checkpoint"]["completedNodes"] == ["a", "review", "b"]


def test_gate_expiry_remind_records_once_and_keeps_waiting(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(gated_run("remind", expiry={"afterSeconds": 1, "action": "remind"}))
    awaiting(cluster, "remind")
    status = wait_for(
        lambda: recorded(s := cluster.status("remind"), "approval_gate_reminder_due") and s,
        timeout=30,
        what="approval_gate_reminder_due",
    )
    time.sleep(3)  # several timer intervals
    status = cluster.status("remind")
    assert status["phase"] == "AwaitingApproval"
    reminders = recorded(status, "approval_gate_reminder_due")
    assert len(reminders) == 1
    assert reminders[0]["metadata"]["node_id"] == "review"
    assert status["checkpoint"].get("gateHistory", []) == []
    # Still decidable by a person.
    decide(cluster, "remind", {"gate": "review", "decision": "approve", "requestId": "r1"})
    assert cluster.wait_phase("remind", "Completed", "Failed", timeout=45)["phase"] == "Completed"


# --------------------------------------------------------------------------- B4


def test_stale_gate_is_marked_once_even_across_a_restart(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    env = {"TANDEM_APPROVAL_GATE_STALE_AFTER_MS": "2000"}
    first = operators(**env)
    cluster.apply(gated_run("stale"))
    opened = awaiting(cluster, "stale")
    requested = opened["checkpoint"]["awaitingGate"]["requestedAt"]
    status = wait_for(
        lambda: recorded(s := cluster.status("stale"), "approval_gate_marked_stale") and s,
        timeout=30,
        what="approval_gate_marked_stale",
    )
    assert status["phase"] == "AwaitingApproval"
    assert status["detail"] == STALE_DETAIL
    meta = status["checkpoint"]["awaitingGate"]["metadata"]
    assert meta["stale"] is True
    assert meta["stale_policy"] == "manual_only_visible_status"
    assert meta["stale_after_ms"] == 2000
    assert meta["stale_marked_at_ms"] >= meta["requested_at_ms"] + 2000
    record = recorded(status, "approval_gate_marked_stale")[0]
    assert record["metadata"] == {
        "node_id": "review",
        "requested_at_ms": meta["requested_at_ms"],
        "stale_after_ms": 2000,
        "policy": "manual_only_visible_status",
    }
    assert status["checkpoint"]["awaitingGate"]["requestedAt"] == requested

    first.kill()
    operators(**env)
    # The new operator leads once the old Lease runs out; a canary shows it is acting.
    cluster.apply(simulated_run("canary", [sim("a")]))
    cluster.wait_phase("canary", "Completed", timeout=45)
    time.sleep(3)
    status = cluster.status("stale")
    assert status["phase"] == "AwaitingApproval"
    assert len(recorded(status, "approval_gate_marked_stale")) == 1
    assert status["checkpoint"]["awaitingGate"]["metadata"] == meta
    stale_events = [e for e in cluster.events("stale") if e["reason"] == "ApprovalGateMarkedStale"]
    assert sum(e.get("count") or 1 for e in stale_events) == 1
