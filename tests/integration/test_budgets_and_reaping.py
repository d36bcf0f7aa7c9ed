"""Stale reaping (B5), stale auto-resume (B6), budgets (B8), overrides (B7) and usage (B17).

End to end on the real control plane with the operator as a process and a real HTTP agent
server in this test process (``agent`` fixture). A *stalled* agent sends one activity
line and then holds the connection open in silence, as a hung model provider does; the
operator must notice the silence (``TANDEM_STALE_RUNNING_MS``), reap the run and close
the connection, which the server records as a disconnect.

The moment between a stale reap and its automatic resume is too short to observe from
outside (the cancelled attempt's outcome triggers the next reconcile at once), so the
first test reaps with auto-resume disabled, checks the Paused run, and lets a second
operator — with auto-resume on — resume it, which also shows the decision rests on the
run's status alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from support import Cluster, OperatorProcess, simulated_run, wait_for

from agentserver import Activity, AgentServer, Result, Stall, Usage

AGENT = {"agentId": "researcher", "endpointRef": {"name": "engine"}}
STALE = {"TANDEM_STALE_RUNNING_MS": "3000"}


def task(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "agentId": "researcher", "objective": f"do {node_id}", **extra}


def agent_run(name: str, nodes: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return simulated_run(name, nodes, agents=[AGENT], **spec)


def records(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [r for r in status["checkpoint"]["lifecycleHistory"] if r["event"] == event]


def events(status: dict[str, Any]) -> list[str]:
    return [r["event"] for r in status["checkpoint"]["lifecycleHistory"]]


def test_stalled_agent_is_reaped_then_auto_resumed(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(node="x", attempt=1, steps=[Activity(), Stall()])
    first = operators(**STALE, TANDEM_DISABLE_STALE_AUTO_RESUME="1")
    cluster.apply(agent_run("stalled", [task("x", maxAttempts=3)]))
    status = cluster.wait_phase("stalled", "Paused", "Completed", "Failed", timeout=60)

    assert status["phase"] == "Paused"
    assert status["stopKind"] == "StaleReaped"
    assert status["pauseReason"] == "stale_no_provider_activity"
    cp = status["checkpoint"]
    assert cp["nodeOutputs"]["x"] == {
        "status": "needs_repair",
        "blocker_category": "stale_no_provider_activity",
    }
    assert cp["nodeAttempts"] == {"x": 1}
    (reap,) = records(status, "run_paused_stale_no_provider_activity")
    assert reap["stopKind"] == "StaleReaped"
    assert reap["reason"] == "stale_no_provider_activity"
    assert "executionClaim" not in status
    reasons = {e["reason"] for e in cluster.events("stalled")}
    assert "RunPausedStaleNoProviderActivity" in reasons

    # The operator hung up on the silent agent, no sooner than the stale threshold.
    (request,) = agent.requests_for("x")
    drops = wait_for(lambda: agent.disconnects, timeout=10, what="the agent to see a hang-up")
    assert [(d.node, d.attempt, d.step) for d in drops] == [("x", 1, "Stall")]
    assert drops[0].monotonic - request.monotonic >= 3.0
    wait_for(lambda: agent.in_flight == 0, timeout=10, what="the stalled request to end")

    # B6 lives in status: another operator, with auto-resume on, resumes the run.
    first.stop()
    operators(**STALE)
    status = cluster.wait_phase("stalled", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    (resumed,) = records(status, "run_auto_resumed")
    assert resumed["reason"] == "auto_resume_after_stale_reap"
    assert resumed["metadata"]["auto_resume_window_ms"] == 1_200_000
    reaped_at = resumed["metadata"]["stale_reaped_at_ms"]
    assert isinstance(reaped_at, int)
    assert reaped_at > 0
    assert status["counters"]["autoResumes"] == 1
    assert status["checkpoint"]["nodeAttempts"] == {"x": 2}
    assert [r.attempt for r in agent.requests_for("x")] == [1, 2]
    assert events(status)[-4:] == [
        "run_paused_stale_no_provider_activity",
        "run_auto_resumed",
        "run_started",
        "run_completed",
    ]
    for field in ("stopKind", "stopReason", "pauseReason"):
        assert field not in status


def test_always_stalling_agent_uses_up_auto_resumes(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    """Cap 2: three reaps. With attempts left the run stays Paused; without, it fails."""
    agent.script(steps=[Activity(), Stall()])
    operators(**STALE, TANDEM_STALE_AUTO_RESUME_MAX_ATTEMPTS="2")
    cluster.apply(
        agent_run("roomy", [task("slow", maxAttempts=5)]),
        agent_run("tight", [task("stuck", maxAttempts=3)]),
    )

    def settled() -> dict[str, Any] | None:
        status = cluster.status("roomy")
        paused = status.get("phase") == "Paused"
        if paused and status.get("counters", {}).get("autoResumes") == 2:
            return status
        return None

    wait_for(settled, timeout=90, what="roomy to be reaped after its last auto-resume")
    tight = cluster.wait_phase("tight", "Failed", "Completed", timeout=60)

    # Attempts left (3 of 5) but no auto-resumes left: stays Paused.
    time.sleep(3)  # several lifecycle ticks: nothing may change any more
    roomy = cluster.status("roomy")
    assert roomy["phase"] == "Paused"
    assert roomy["stopKind"] == "StaleReaped"
    assert roomy["pauseReason"] == "stale_no_provider_activity"
    assert roomy["counters"]["autoResumes"] == 2
    assert roomy["checkpoint"]["nodeAttempts"] == {"slow": 3}
    assert len(records(roomy, "run_paused_stale_no_provider_activity")) == 3
    assert len(records(roomy, "run_auto_resumed")) == 2
    assert [r.attempt for r in agent.requests_for("slow")] == [1, 2, 3]

    # The third reap found the node out of attempts: B5 fails the run instead.
    assert tight["phase"] == "Failed"
    assert tight["stopKind"] == "StaleReaped"
    assert tight["detail"] == "node `stuck` failed after 3/3 attempts"
    assert tight["checkpoint"]["nodeOutputs"]["stuck"] == {
        "status": "failed",
        "blocker_category": "stale_no_provider_activity",
    }
    assert tight["checkpoint"]["lastFailure"]["nodeId"] == "stuck"
    assert tight["counters"]["autoResumes"] == 2
    assert len(records(tight, "run_failed_stale_no_provider_activity")) == 1
    assert [r.attempt for r in agent.requests_for("stuck")] == [1, 2, 3]

    # Every stalled connection was closed by the operator.
    wait_for(lambda: agent.in_flight == 0, timeout=10, what="all agent connections to close")
    dropped = sorted((d.node or "", d.attempt or 0) for d in agent.disconnects)
    assert dropped == [
        ("slow", 1),
        ("slow", 2),
        ("slow", 3),
        ("stuck", 1),
        ("stuck", 2),
        ("stuck", 3),
    ]


def test_token_budget_pauses_until_an_approved_override(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(
        node="a",
        steps=[
            Activity(),
            Usage(prompt_tokens=60, completion_tokens=10),
            Usage(prompt_tokens=60, completion_tokens=20),
            Result(),
        ],
    )
    agent.script(node="b", steps=[Usage(prompt_tokens=7, completion_tokens=3), Result()])
    operators(TANDEM_TOKEN_COST_PER_1K_USD="0.5")
    cluster.apply(
        agent_run(
            "budget",
            [task("a"), task("b", dependsOn=["a"])],
            execution={"maxTotalTokens": 100},
        )
    )
    status = cluster.wait_phase("budget", "Paused", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Paused"
    assert status["stopKind"] == "GuardrailStopped"
    assert "maxTotalTokens" in status["pauseReason"]
    assert "maxTotalTokens" in status["stopReason"]
    (paused,) = records(status, "run_paused")
    assert paused["stopKind"] == "GuardrailStopped"
    assert "maxTotalTokens" in paused["reason"]
    assert status["usage"]["totalTokens"] == 150
    assert status["checkpoint"]["completedNodes"] == ["a"]

    # An override that is not approved changes nothing.
    spec: dict[str, Any] = {"agentId": "researcher", "approved": False, "reason": "report"}
    override = {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AgentQuotaOverride",
        "metadata": {"name": "more-tokens"},
        "spec": spec,
    }
    cluster.apply(override)
    time.sleep(3)  # several lifecycle ticks
    assert cluster.phase("budget") == "Paused"
    assert agent.requests_for("b") == []

    spec.update(approved=True, approvedBy="ops")
    cluster.apply(override)
    status = cluster.wait_phase("budget", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    (resumed,) = records(status, "run_auto_resumed")
    assert resumed["reason"] == "auto_resume_after_guardrail_override"
    assert resumed["metadata"] == {"agent_ids": ["researcher"], "stop_kind": "guardrail_stopped"}
    # The override also lets the run exceed the budget further without stopping again.
    assert len(records(status, "run_paused")) == 1

    usage = status["usage"]
    assert usage["promptTokens"] == 60 + 60 + 7
    assert usage["completionTokens"] == 10 + 20 + 3
    assert usage["totalTokens"] == 160
    assert Decimal(usage["estimatedCostUsd"]) == Decimal(160) / 1000 * Decimal("0.5")
