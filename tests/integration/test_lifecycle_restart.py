"""Restart recovery (B1, B1r, B2, B3) on the real control plane.

Every test writes a run's status by hand while no operator is running, exactly as an
operator that died mid-run would have left it, then starts an operator and watches what
it makes of the run. Nothing but ``kubectl`` touches the cluster, so the tests also prove
that a hand-written status (the contract's way to test restarts and old runs) is honoured.

A run that was admitted reads its flow from ``status.automationSnapshot``; the tests write
one for Running and Pausing runs, and one test leaves it out on purpose to check that the
operator falls back to the inline ``spec.automation``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import Cluster, OperatorProcess, paused_by_hand, sim, simulated_run, ts, wait_for

RESTART_DETAIL = "automation run interrupted by server restart"
PAUSING_SETTLED = "automation run settled to paused after server restart"


def lifecycle(status: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (status.get("checkpoint") or {}).get("lifecycleHistory") or []
    return records


def recorded(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [r for r in lifecycle(status) if r["event"] == event]


def event_reasons(cluster: Cluster, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(name)]


def running_status(
    manifest: dict[str, Any],
    *,
    pending: list[str],
    attempts: dict[str, int],
    claim: dict[str, Any] | None = None,
    snapshot: bool = True,
    phase: str = "Running",
    **extra: Any,
) -> dict[str, Any]:
    """The status an operator leaves behind when it dies while the run is ``phase``."""
    status: dict[str, Any] = {
        "phase": phase,
        "createdAt": ts(-30),
        "startedAt": ts(-20),
        "updatedAt": ts(-5),
        "detail": f"running node `{pending[0]}` attempt {attempts.get(pending[0], 1)}",
        "checkpoint": {
            "pendingNodes": pending,
            "nodeAttempts": attempts,
            "lifecycleHistory": [
                {"event": "run_queued", "recordedAt": ts(-30), "reason": "created"},
                {"event": "run_started", "recordedAt": ts(-20), "reason": "admitted"},
            ],
        },
        **extra,
    }
    if claim is not None:
        status["executionClaim"] = claim
    if snapshot:
        status["automationSnapshot"] = manifest["spec"]["automation"]
    return status


def dead_claim() -> dict[str, Any]:
    """A claim of an operator instance that no longer exists, its lease not yet run out."""
    return {
        "claimant": "operator-that-died-0-abcdef",
        "claimedAt": ts(-20),
        "leaseExpiresAt": ts(3600),
        "epoch": 1,
    }


def settle(cluster: Cluster, name: str, *phases: str) -> dict[str, Any]:
    return cluster.wait_phase(name, *phases, timeout=45)


# --------------------------------------------------------------------------- B1


@pytest.mark.parametrize("claim", ["none", "dead_claimant"])
def test_orphaned_running_run_fails_with_server_restart(
    cluster: Cluster, operators: Callable[..., OperatorProcess], claim: str
) -> None:
    run = simulated_run("orphan", [sim("a"), sim("b", dependsOn=["a"])])
    cluster.apply(run)
    cluster.patch_status(
        "orphan",
        running_status(
            run,
            pending=["a", "b"],
            attempts={"a": 1},
            claim=dead_claim() if claim == "dead_claimant" else None,
        ),
    )
    operators()
    status = settle(cluster, "orphan", "Failed", "Completed", "Queued")
    assert status["phase"] == "Failed"
    assert status["stopKind"] == "ServerRestart"
    assert status["detail"] == RESTART_DETAIL
    assert status["stopReason"] == RESTART_DETAIL
    assert status.get("finishedAt")
    assert "executionClaim" not in status
    records = recorded(status, "run_failed_server_restart")
    assert len(records) == 1
    assert records[0]["stopKind"] == "ServerRestart"
    # Nothing ran: the interrupted attempt is not retried under the fail policy.
    assert status["checkpoint"]["nodeAttempts"] == {"a": 1}
    assert "run_started" not in [r["event"] for r in lifecycle(status)[2:]]
    wait_for(
        lambda: "RunFailedServerRestart" in event_reasons(cluster, "orphan"),
        timeout=15,
        what="a RunFailedServerRestart Event",
    )


# --------------------------------------------------------------------------- B1r


def test_requeue_policy_marks_interrupted_node_and_resumes(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    run = simulated_run("requeue", [sim("a"), sim("b", dependsOn=["a"])])
    cluster.apply(run)
    cluster.patch_status(
        "requeue", running_status(run, pending=["a", "b"], attempts={"a": 1}, claim=dead_claim())
    )
    operators(TANDEM_RESTART_RECOVERY="requeue")
    status = settle(cluster, "requeue", "Completed", "Failed")
    assert status["phase"] == "Completed", status.get("detail")
    assert status["checkpoint"]["completedNodes"] == ["a", "b"]
    # The interrupted attempt counts: the re-run of `a` is its second attempt.
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2, "b": 1}
    requeued = recorded(status, "run_queued_for_resume_after_restart")
    assert len(requeued) == 1
    assert requeued[0]["metadata"]["interrupted_nodes"] == ["a"]
    assert "stopKind" not in status
    events = [r["event"] for r in lifecycle(status)]
    assert events[2:] == [
        "run_queued_for_resume_after_restart",
        "run_started",
        "run_completed",
    ]


def test_requeue_policy_output_is_visible_while_the_run_waits(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    """Paused while the operator was down: B1r first, then B12 holds the run, output intact."""
    run = simulated_run("held", [sim("a"), sim("b", dependsOn=["a"])], desiredState="Paused")
    cluster.apply(run)
    cluster.patch_status(
        "held", running_status(run, pending=["a", "b"], attempts={"a": 1}, claim=dead_claim())
    )
    operators(TANDEM_RESTART_RECOVERY="requeue")
    status = settle(cluster, "held", "Paused", "Failed", "Completed")
    assert status["phase"] == "Paused"
    assert status["checkpoint"]["nodeOutputs"]["a"] == {
        "status": "needs_repair",
        "blocker_category": "server_restart_interrupted",
    }
    assert [r["event"] for r in lifecycle(status)[2:]] == [
        "run_queued_for_resume_after_restart",
        "run_paused",
    ]
    cluster.patch_spec("held", {"desiredState": "Running"})
    status = settle(cluster, "held", "Completed", "Failed")
    assert status["phase"] == "Completed"
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2, "b": 1}
    assert status["checkpoint"]["nodeOutputs"]["a"]["status"] == "completed"


def test_requeue_policy_node_out_of_attempts_fails_as_b1(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    run = simulated_run("spent", [sim("a", maxAttempts=2), sim("b", dependsOn=["a"])])
    cluster.apply(run)
    cluster.patch_status(
        "spent", running_status(run, pending=["a", "b"], attempts={"a": 2}, claim=dead_claim())
    )
    operators(TANDEM_RESTART_RECOVERY="requeue")
    status = settle(cluster, "spent", "Failed", "Completed", "Queued")
    assert status["phase"] == "Failed"
    assert status["stopKind"] == "ServerRestart"
    assert status["detail"] == status["stopReason"] == RESTART_DETAIL
    assert len(recorded(status, "run_failed_server_restart")) == 1
    assert recorded(status, "run_queued_for_resume_after_restart") == []
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2}


def test_running_run_without_snapshot_uses_the_inline_flow(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    """A hand-written Running status with no automationSnapshot: the flow comes from spec."""
    run = simulated_run("nosnap", [sim("a", maxAttempts=2), sim("b", dependsOn=["a"])])
    cluster.apply(run)
    cluster.patch_status(
        "nosnap", running_status(run, pending=["a", "b"], attempts={"a": 1}, snapshot=False)
    )
    operators(TANDEM_RESTART_RECOVERY="requeue")
    status = settle(cluster, "nosnap", "Completed", "Failed")
    assert status["phase"] == "Completed", status.get("detail")
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2, "b": 1}
    # Admitted again, the run now carries the snapshot of the flow it ran.
    assert [n["id"] for n in status["automationSnapshot"]["nodes"]] == ["a", "b"]


# --------------------------------------------------------------------------- B2


@pytest.mark.parametrize(
    ("pause_reason", "stop_kind"),
    [(None, None), ("maintenance window", "Shutdown")],
)
def test_orphaned_pausing_run_settles_to_paused(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    pause_reason: str | None,
    stop_kind: str | None,
) -> None:
    run = simulated_run("pausing", [sim("a"), sim("b", dependsOn=["a"])], desiredState="Paused")
    cluster.apply(run)
    extra: dict[str, Any] = {}
    if pause_reason:
        extra["pauseReason"] = pause_reason
    if stop_kind:
        extra["stopKind"] = stop_kind
    cluster.patch_status(
        "pausing",
        running_status(
            run, phase="Pausing", pending=["a", "b"], attempts={"a": 1}, claim=dead_claim(), **extra
        ),
    )
    operators()
    status = settle(cluster, "pausing", "Paused", "Failed", "Queued", "Completed")
    assert status["phase"] == "Paused"
    assert status["pauseReason"] == (pause_reason or PAUSING_SETTLED)
    assert status.get("stopKind") == stop_kind
    assert "executionClaim" not in status
    settled = recorded(status, "run_pausing_settled_on_restart")
    assert len(settled) == 1
    assert settled[0]["reason"] == status["pauseReason"]
    assert recorded(status, "run_failed_server_restart") == []
    wait_for(
        lambda: "RunPausingSettledOnRestart" in event_reasons(cluster, "pausing"),
        timeout=15,
        what="a RunPausingSettledOnRestart Event",
    )


# --------------------------------------------------------------------------- B3


def _resource_version(cluster: Cluster, name: str) -> str:
    version: str = cluster.run(name)["metadata"]["resourceVersion"]
    return version


def test_paused_and_awaiting_runs_are_not_written_on_restart(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    paused = simulated_run(
        "paused",
        [sim("a"), sim("b", dependsOn=["a"])],
        desiredState="Paused",
        pauseReason="by hand",
    )
    gate = {
        "id": "review",
        "kind": "Approval",
        "dependsOn": ["a"],
        "approval": {"title": "Review the draft"},
    }
    awaiting = simulated_run("awaiting", [sim("a"), gate, sim("b", dependsOn=["review"])])
    cluster.apply(paused, awaiting)
    artifact = {"path": "out/report.md", "contentDigest": "sha256:abc", "validated": True}
    by_hand = paused_by_hand(artifact=artifact)
    by_hand["checkpoint"]["lifecycleHistory"] = [
        {"event": "run_paused", "recordedAt": ts(-40), "reason": "by hand"}
    ]
    by_hand["automationSnapshot"] = paused["spec"]["automation"]
    cluster.patch_status("paused", by_hand)
    cluster.patch_status(
        "awaiting",
        {
            "phase": "AwaitingApproval",
            "createdAt": ts(-60),
            "startedAt": ts(-50),
            "detail": "awaiting approval at gate `review`",
            "checkpoint": {
                "completedNodes": ["a"],
                "pendingNodes": ["review", "b"],
                "blockedNodes": ["b"],
                "nodeAttempts": {"a": 1},
                "nodeOutputs": {"a": {"status": "completed", "artifact": artifact}},
                "awaitingGate": {
                    "nodeId": "review",
                    "title": "Review the draft",
                    "decisions": ["approve", "rework", "cancel"],
                    "requestedAt": ts(-10),
                    "metadata": {},
                },
            },
            "automationSnapshot": awaiting["spec"]["automation"],
        },
    )
    before = {name: cluster.run(name) for name in ("paused", "awaiting")}
    operators()
    # A canary proves the operator is up, leading and acting before we look.
    cluster.apply(simulated_run("canary", [sim("a")]))
    settle(cluster, "canary", "Completed")
    time.sleep(3)  # several timer intervals (1 s in the fast settings)
    for name, old in before.items():
        new = cluster.run(name)
        assert new["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"], name
        assert new["status"] == old["status"], name
    # The state kept in status is still usable: the gate takes a decision and the
    # run carries on from where it stood.
    cluster.patch_spec(
        "awaiting",
        {"gateDecisions": [{"gate": "review", "decision": "approve", "requestId": "r1"}]},
    )
    status = settle(cluster, "awaiting", "Completed", "Failed")
    assert status["phase"] == "Completed"
    assert status["checkpoint"]["nodeOutputs"]["a"]["artifact"] == artifact
    assert status["checkpoint"]["nodeAttempts"] == {"a": 1, "review": 1, "b": 1}


def test_hand_written_status_is_read_back_verbatim(cluster: Cluster) -> None:
    """Guard for the tests above: the CRD keeps every field they write (nothing pruned)."""
    run = simulated_run("verbatim", [sim("a")])
    cluster.apply(run)
    written = running_status(run, pending=["a"], attempts={"a": 1}, claim=dead_claim())
    cluster.patch_status("verbatim", written)
    status = cluster.status("verbatim")
    assert json.dumps(status, sort_keys=True) == json.dumps(written, sort_keys=True)
