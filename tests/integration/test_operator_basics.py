"""The operator skeleton on the real control plane: new runs get status, hand-written status is kept."""

from __future__ import annotations

from collections.abc import Callable

from support import Cluster, OperatorProcess, sim, simulated_run


def test_new_run_gets_status_and_completes(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(simulated_run("basic", [sim("a"), sim("b", dependsOn=["a"])]))
    status = cluster.wait_phase("basic", "Completed", timeout=30)
    assert status["createdAt"].endswith("Z")
    assert status["observedGeneration"] == cluster.run("basic")["metadata"]["generation"]
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {
        "Succeeded": "True",
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "AwaitingApproval": "False",
    }
    assert status["checkpoint"]["completedNodes"] == ["a", "b"]
    events = [r["event"] for r in status["checkpoint"]["lifecycleHistory"]]
    assert events == ["run_queued", "run_started", "run_completed"]
