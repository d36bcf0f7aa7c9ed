"""User control and automatic resumes (B6, B7, B12, B13, B14) on the real control plane.

Users steer a run through its spec (``desiredState``, ``pauseReason``, ``recover``) and
the operator answers in status; governance answers a guardrail stop with an approved
``AgentQuotaOverride``. Stale-reaped runs are written by hand (the reaper itself is B5's
business): a Paused status with stopKind StaleReaped and the reap's lifecycle record is
exactly what the operator would have left, and the operator must treat it the same.

Tests that expect a run to *stay* as it is wait first for proof that the operator acts
(a canary run that completes, or ``observedGeneration`` catching up with a spec change),
then let a few timer intervals pass, so they cannot pass by looking too early.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from support import Cluster, OperatorProcess, paused_by_hand, sim, simulated_run, ts, wait_for

STALE = "stale_no_provider_activity"
DEFAULT_WINDOW_MS = 1_200_000


def ms(timestamp: str) -> int:
    return round(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def lifecycle(status: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (status.get("checkpoint") or {}).get("lifecycleHistory") or []
    return records


def recorded(status: dict[str, Any], event: str) -> list[dict[str, Any]]:
    return [r for r in lifecycle(status) if r["event"] == event]


def running_node(cluster: Cluster, name: str, node: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = cluster.status(name)
        cp = status.get("checkpoint") or {}
        if (
            status.get("phase") == "Running"
            and cp.get("nodeAttempts", {}).get(node, 0) > 0
            and node not in cp.get("nodeOutputs", {})
        ):
            return status
        return None

    found: dict[str, Any] = wait_for(check, timeout=45, what=f"{name}: node {node} running")
    return found


def observed(cluster: Cluster, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        run = cluster.run(name)
        status: dict[str, Any] = run.get("status") or {}
        return status if status.get("observedGeneration") == run["metadata"]["generation"] else None

    found: dict[str, Any] = wait_for(check, timeout=30, what=f"{name} to observe its spec")
    return found


def canary(cluster: Cluster, name: str = "canary") -> None:
    cluster.apply(simulated_run(name, [sim("a")]))
    cluster.wait_phase(name, "Completed", timeout=45)


def override(name: str, agent_id: str, *, approved: bool) -> dict[str, Any]:
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AgentQuotaOverride",
        "metadata": {"name": name},
        "spec": {
            "agentId": agent_id,
            "approved": approved,
            "approvedBy": "governance",
            "reason": "quarter end",
        },
    }


# --------------------------------------------------------------------------- B12


def test_pause_a_running_run_then_resume_it(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(simulated_run("pause", [sim("a", after=6), sim("b", dependsOn=["a"])]))
    running_node(cluster, "pause", "a")
    cluster.patch_spec("pause", {"desiredState": "Paused", "pauseReason": "maintenance"})
    status = cluster.wait_phase("pause", "Paused", "Completed", "Failed", timeout=30)
    assert status["phase"] == "Paused"
    assert status["pauseReason"] == "maintenance"
    assert "stopKind" not in status
    assert "executionClaim" not in status
    events = [r["event"] for r in lifecycle(status)]
    assert events[-2:] == ["run_pausing", "run_paused"]
    assert recorded(status, "run_paused")[0]["reason"] == "maintenance"
    # The attempt was cancelled by the pause: it does not count against the node.
    assert status["checkpoint"]["nodeAttempts"].get("a", 0) == 0
    assert "a" not in status["checkpoint"].get("nodeOutputs", {})

    cluster.patch_spec("pause", {"desiredState": "Running"})
    status = cluster.wait_phase("pause", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed"
    assert status["resumeReason"]
    assert "pauseReason" not in status
    assert len(recorded(status, "run_resumed")) == 1
    events = [r["event"] for r in lifecycle(status)]
    assert events[events.index("run_paused") :] == [
        "run_paused",
        "run_resumed",
        "run_started",
        "run_completed",
    ]
    assert status["checkpoint"]["nodeAttempts"] == {"a": 1, "b": 1}
    # With capacity free, the resumed run is admitted in the same decision: it never shows
    # a queueReason it does not have.
    resumed = recorded(status, "run_resumed")[0]["recordedAt"]
    assert recorded(status, "run_started")[-1]["recordedAt"] == resumed


def test_a_run_created_paused_waits_then_runs(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(simulated_run("born-paused", [sim("a")], desiredState="Paused"))
    status = cluster.wait_phase("born-paused", "Paused", "Completed", timeout=30)
    assert status["phase"] == "Paused"
    assert status["pauseReason"] == "paused by user"
    assert "startedAt" not in status
    cluster.patch_spec("born-paused", {"desiredState": "Running"})
    status = cluster.wait_phase("born-paused", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed"
    assert [r["event"] for r in lifecycle(status)] == [
        "run_queued",
        "run_paused",
        "run_resumed",
        "run_started",
        "run_completed",
    ]


# --------------------------------------------------------------------------- B13


def test_cancel_stops_a_running_run_and_is_a_no_op_when_terminal(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(
        simulated_run("stop", [sim("a", after=60)]),
        simulated_run("done", [sim("a")]),
    )
    running_node(cluster, "stop", "a")
    cluster.patch_spec("stop", {"desiredState": "Cancelled"})
    status = cluster.wait_phase("stop", "Cancelled", "Completed", "Failed", timeout=30)
    assert status["stopKind"] == "OperatorStopped"
    assert status.get("finishedAt")
    assert "executionClaim" not in status
    stopped = recorded(status, "run_stopped")
    assert len(stopped) == 1
    assert stopped[0]["stopKind"] == "OperatorStopped"
    wait_for(
        lambda: any(e["reason"] == "RunStopped" for e in cluster.events("stop")),
        timeout=15,
        what="a RunStopped Event",
    )

    done = cluster.wait_phase("done", "Completed", timeout=30)
    cluster.patch_spec("done", {"desiredState": "Cancelled"})
    observed(cluster, "done")
    time.sleep(1.5)
    after = cluster.status("done")
    assert after["phase"] == "Completed"
    assert "stopKind" not in after
    assert after["finishedAt"] == done["finishedAt"]
    assert lifecycle(after) == lifecycle(done)


# --------------------------------------------------------------------------- B14


def test_recover_resets_the_failed_node_once_per_request(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(
        simulated_run(
            "recover",
            [sim("a", outcome="needs_repair", maxAttempts=2), sim("b", dependsOn=["a"])],
        )
    )
    status = cluster.wait_phase("recover", "Failed", "Completed", timeout=45)
    assert status["phase"] == "Failed"
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2}
    first_finish = status["finishedAt"]

    cluster.patch_spec("recover", {"recover": {"requestId": "r1"}})
    status = wait_for(
        lambda: (
            (s := cluster.status("recover")).get("phase") == "Failed"
            and recorded(s, "run_recovered")
            and len(s["checkpoint"]["nodeAttemptVerdicts"]["a"]) == 4
            and s
        ),
        timeout=45,
        what="the recovered run to fail again",
    )
    recovered = recorded(status, "run_recovered")
    assert len(recovered) == 1
    assert recovered[0]["metadata"]["reset_nodes"] == ["a", "b"]
    # Attempts were reset: the node used its two attempts again, not four in a row.
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2}
    assert status["detail"] == "node `a` failed after 2/2 attempts"
    assert status["finishedAt"] >= first_finish
    assert [r["event"] for r in lifecycle(status)].count("run_started") == 2

    # The same requestId again is not a new request.
    cluster.patch_spec("recover", {"recover": {"requestId": "r1"}, "pauseReason": "touch"})
    observed(cluster, "recover")
    time.sleep(1.5)
    again = cluster.status("recover")
    assert again["phase"] == "Failed"
    assert len(recorded(again, "run_recovered")) == 1
    assert len(again["checkpoint"]["nodeAttemptVerdicts"]["a"]) == 4


# --------------------------------------------------------------------------- B6


def stale_reaped(
    manifest: dict[str, Any],
    *,
    reaped_seconds_ago: float,
    auto_resumes: int,
) -> dict[str, Any]:
    """What B5 leaves behind: Paused, StaleReaped, the interrupted node needs repair."""
    reaped_at = ts(-reaped_seconds_ago)
    return {
        "phase": "Paused",
        "stopKind": "StaleReaped",
        "stopReason": STALE,
        "pauseReason": STALE,
        "detail": "paused: no executor activity for 3s",
        "createdAt": ts(-reaped_seconds_ago - 60),
        "startedAt": ts(-reaped_seconds_ago - 50),
        "checkpoint": {
            "pendingNodes": ["a", "b"],
            "nodeAttempts": {"a": 1},
            "nodeOutputs": {"a": {"status": "needs_repair", "blocker_category": STALE}},
            "lifecycleHistory": [
                {"event": "run_queued", "recordedAt": ts(-reaped_seconds_ago - 60)},
                {"event": "run_started", "recordedAt": ts(-reaped_seconds_ago - 50)},
                {
                    "event": "run_paused_stale_no_provider_activity",
                    "recordedAt": reaped_at,
                    "reason": STALE,
                    "stopKind": "StaleReaped",
                },
            ],
        },
        "counters": {"autoResumes": auto_resumes},
        "automationSnapshot": manifest["spec"]["automation"],
    }


def two_nodes(name: str, **spec: Any) -> dict[str, Any]:
    return simulated_run(name, [sim("a"), sim("b", dependsOn=["a"])], **spec)


def test_stale_reaped_run_is_auto_resumed_within_the_window(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    run = two_nodes("reaped")
    cluster.apply(run)
    written = stale_reaped(run, reaped_seconds_ago=5, auto_resumes=0)
    cluster.patch_status("reaped", written)
    operators()
    status = cluster.wait_phase("reaped", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed", status.get("detail")
    resumed = recorded(status, "run_auto_resumed")
    assert len(resumed) == 1
    assert resumed[0]["reason"] == "auto_resume_after_stale_reap"
    reaped_at = written["checkpoint"]["lifecycleHistory"][-1]["recordedAt"]
    assert resumed[0]["metadata"] == {
        "auto_resume_window_ms": DEFAULT_WINDOW_MS,
        "stale_reaped_at_ms": ms(reaped_at),
    }
    assert status["counters"]["autoResumes"] == 1
    for cleared in ("stopKind", "stopReason", "pauseReason"):
        assert cleared not in status, cleared
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2, "b": 1}


def test_stale_reaped_run_stays_paused_when_b6_does_not_hold(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    cases = {
        "capped": (two_nodes("capped"), 5, 2),
        "too-old": (two_nodes("too-old"), 30 * 60, 0),
        "held": (two_nodes("held", desiredState="Paused"), 5, 0),
    }
    for name, (manifest, ago, resumes) in cases.items():
        cluster.apply(manifest)
        cluster.patch_status(
            name, stale_reaped(manifest, reaped_seconds_ago=ago, auto_resumes=resumes)
        )
    before = {name: cluster.run(name) for name in cases}
    operators()
    canary(cluster)
    time.sleep(3)
    for name, old in before.items():
        status = cluster.status(name)
        assert status["phase"] == "Paused", name
        assert status["stopKind"] == "StaleReaped", name
        assert recorded(status, "run_auto_resumed") == [], name
        assert status["counters"]["autoResumes"] == old["status"]["counters"]["autoResumes"]

    # What the operator paused only B6, B7 or B14 resumes: a recover request does.
    cluster.patch_spec("capped", {"recover": {"requestId": "after-cap"}})
    status = cluster.wait_phase("capped", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed"
    assert len(recorded(status, "run_recovered_from_pause")) == 1
    assert "stopKind" not in status


def test_stale_auto_resume_can_be_turned_off(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    run = two_nodes("off")
    cluster.apply(run)
    cluster.patch_status("off", stale_reaped(run, reaped_seconds_ago=5, auto_resumes=0))
    operators(TANDEM_DISABLE_STALE_AUTO_RESUME="1")
    canary(cluster)
    time.sleep(3)
    status = cluster.status("off")
    assert status["phase"] == "Paused"
    assert status["stopKind"] == "StaleReaped"
    assert recorded(status, "run_auto_resumed") == []


# --------------------------------------------------------------------------- B7


def test_guardrail_stop_is_resumed_by_an_approved_override(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    # Timers effectively off: the override's own watch event must re-queue the run.
    operators(TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS="3600")
    cluster.apply(
        simulated_run(
            "budget",
            [
                sim(
                    "a",
                    executor={"simulate": {"outcome": "completed", "usage": {"promptTokens": 50}}},
                ),
                sim("b", dependsOn=["a"]),
            ],
            execution={"maxTotalTokens": 10},
        )
    )
    status = cluster.wait_phase("budget", "Paused", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Paused"
    assert status["stopKind"] == "GuardrailStopped"
    assert "token budget" in status["pauseReason"]

    # Not approved, or naming somebody else: no resume.
    cluster.apply(
        override("pending", "agent", approved=False),
        override("someone-else", "other-agent", approved=True),
    )
    canary(cluster)
    time.sleep(2)
    status = cluster.status("budget")
    assert status["phase"] == "Paused"
    assert recorded(status, "run_auto_resumed") == []

    cluster.apply(override("pending", "agent", approved=True))
    status = cluster.wait_phase("budget", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed", status.get("detail")
    resumed = recorded(status, "run_auto_resumed")
    assert len(resumed) == 1
    assert resumed[0]["reason"] == "auto_resume_after_guardrail_override"
    assert resumed[0]["metadata"] == {"agent_ids": ["agent"], "stop_kind": "guardrail_stopped"}
    assert status["usage"]["totalTokens"] == 50
    assert status["checkpoint"]["nodeAttempts"] == {"a": 1, "b": 1}


def test_a_hand_written_paused_run_resumes_on_a_spec_change(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    """§3 and B12: a Paused status written by hand (no observedGeneration) is honoured.

    The operator takes it to have seen the spec as it first found it: no write for that
    alone (B3), and the next change of desiredState is acted on.
    """
    cluster.apply(simulated_run("by-hand", [sim("a"), sim("b", dependsOn=["a"])]))
    cluster.patch_status("by-hand", paused_by_hand())
    written = cluster.status("by-hand")
    operators()
    canary(cluster)  # the operator listed every run before it created this one
    assert cluster.status("by-hand") == written  # B3: nothing written

    cluster.patch_spec("by-hand", {"desiredState": "Paused"})
    assert observed(cluster, "by-hand")["phase"] == "Paused"
    cluster.patch_spec("by-hand", {"desiredState": "Running"})
    status = cluster.wait_phase("by-hand", "Completed", timeout=45)
    assert [r["event"] for r in recorded(status, "run_resumed")] == ["run_resumed"]
    assert status["checkpoint"]["nodeAttempts"] == {"a": 1, "b": 1}
