"""The container executor end to end: nodes run as Pods on the local control plane's fake
Nodes (contract §7, C1–C5), and budgets are enforced while an attempt streams usage (B21).

The Pods' fate is scripted with their ``tandem.test/*`` annotations, which the operator
copies from ``executor.container.podAnnotations`` (kwok plays the kubelet). Every Pod the
operator makes is seen through a watch of the test namespace that starts before the run is
created, so none is missed however fast it comes and goes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import Cluster, OperatorProcess, simulated_run, wait_for
from test_kwok_pods import PodWatch, deleted, phase_is

from agentserver import AgentServer, Result, Usage
from tandem_operator.devcluster.nodes import (
    POD_DELAY,
    POD_EXIT_CODE,
    POD_PHASE,
    POD_REASON,
    POD_TERMINATION_MESSAGE,
)
from tandem_operator.devcluster.session import KubeSession

IMAGE = "registry.example.com/agents/test:1"
LABELS = (
    "automation.tandem.dev/run",
    "automation.tandem.dev/node",
    "automation.tandem.dev/attempt",
)
TIMEOUT = 60.0

Pod = dict[str, Any]


def box(
    node_id: str,
    *,
    result: dict[str, Any] | None = None,
    deps: tuple[str, ...] = (),
    delay: str = "300ms",
    **fate: str,
) -> dict[str, Any]:
    """A container node whose Pod ends after ``delay`` with ``result`` as its message."""
    annotations = {POD_DELAY: delay, **fate}
    if result is not None:
        annotations[POD_TERMINATION_MESSAGE] = json.dumps(result)
    return {
        "id": node_id,
        "agentId": "agent",
        "dependsOn": list(deps),
        "executor": {"container": {"image": IMAGE, "podAnnotations": annotations}},
    }


def forever(node_id: str, **extra: Any) -> dict[str, Any]:
    """A container node whose Pod runs until it is deleted."""
    node = box(node_id, **{POD_PHASE: "Running"})
    node.update(extra)
    return node


@pytest.fixture
def pods(kwok_nodes: KubeSession, namespace: str) -> Iterator[PodWatch]:
    watch = PodWatch(kwok_nodes, namespace)
    try:
        yield watch
    finally:
        watch.close()


def created(watch: PodWatch) -> list[str]:
    """Names of the Pods the watch saw added, in order."""
    return [name for name, versions in watch.seen.items() if versions[0]["_event"] == "ADDED"]


def run_pods(cluster: Cluster, run: str) -> list[str]:
    listing = json.loads(
        cluster.kubectl("get", "pods", "-l", f"automation.tandem.dev/run={run}", "-o", "json")
    )
    return [p["metadata"]["name"] for p in listing["items"]]


def drain(watch: PodWatch, seconds: float = 0.5) -> None:
    """Read the watch's backlog (the events of the last ``seconds``)."""
    with contextlib.suppress(AssertionError):
        watch.until("\0", lambda pod: False, timeout=seconds)


def history(status: dict[str, Any]) -> list[str]:
    return [r["event"] for r in status["checkpoint"].get("lifecycleHistory", [])]


# -- C1–C3: a flow of Pods ------------------------------------------------------------------


def test_three_container_nodes_complete_one_pod_per_attempt(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    operators()
    flow = [
        box("fetch", result={"status": "completed", "output": {"n": 3}, "promptTokens": 10}),
        box(
            "draft",
            deps=("fetch",),
            result={"status": "completed", "output": {"text": "t"}, "completionTokens": 20},
        ),
        box(
            "check",
            deps=("draft",),
            result={"status": "completed", "promptTokens": 1, "completionTokens": 2},
        ),
    ]
    cluster.apply(simulated_run("digest", flow, runtimeContext={"tenant": "a"}))
    status = cluster.wait_phase("digest", "Completed", timeout=TIMEOUT)
    run = cluster.run("digest")
    cp = status["checkpoint"]
    assert cp["nodeOutputs"]["fetch"] == {"n": 3, "status": "completed"}
    assert cp["nodeOutputs"]["draft"] == {"text": "t", "status": "completed"}
    assert cp["nodeAttempts"] == {"fetch": 1, "draft": 1, "check": 1}
    assert status["usage"]["promptTokens"] == 11
    assert status["usage"]["completionTokens"] == 22
    for name in ("digest-fetch-1", "digest-draft-1", "digest-check-1"):
        pods.until(name, deleted)
    assert created(pods) == ["digest-fetch-1", "digest-draft-1", "digest-check-1"]
    draft = pods.seen["digest-draft-1"][0]
    labels = draft["metadata"]["labels"]
    assert [labels[k] for k in LABELS] == ["digest", "draft", "1"]
    (owner,) = draft["metadata"]["ownerReferences"]
    assert owner["uid"] == run["metadata"]["uid"]
    assert owner["kind"] == "AutomationRun"
    assert owner["controller"] is True
    spec = draft["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    attempt = json.loads(next(e["value"] for e in c["env"] if e["name"] == "TANDEM_ATTEMPT"))
    assert attempt["run"] == {
        "namespace": cluster.namespace,
        "name": "digest",
        "uid": run["metadata"]["uid"],
    }
    assert attempt["node"] == "draft"
    assert attempt["attempt"] == 1
    assert attempt["inputs"] == {"fetch": {"n": 3, "status": "completed"}}
    assert attempt["runtimeContext"] == {"tenant": "a"}
    assert run_pods(cluster, "digest") == []


def test_needs_repair_makes_a_new_pod_per_attempt_up_to_max_attempts(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    operators()
    node = box("x", result={"status": "needs_repair"})
    node["maxAttempts"] = 3
    cluster.apply(simulated_run("repair", [node]))
    status = cluster.wait_phase("repair", "Failed", timeout=TIMEOUT)
    assert status["checkpoint"]["nodeAttempts"]["x"] == 3
    for name in ("repair-x-1", "repair-x-2", "repair-x-3"):
        pods.until(name, deleted)
    assert created(pods) == ["repair-x-1", "repair-x-2", "repair-x-3"]


@pytest.mark.parametrize(
    ("fate", "words"),
    [
        ({POD_PHASE: "Failed", POD_EXIT_CODE: "3"}, "exited with code 3"),
        ({POD_PHASE: "Failed", POD_EXIT_CODE: "137", POD_REASON: "OOMKilled"}, "OOMKilled"),
        ({}, "without a result"),
        ({POD_TERMINATION_MESSAGE: "done!"}, "not JSON"),
    ],
    ids=["exit-code", "oom-killed", "no-result", "invalid-result"],
)
def test_a_pod_without_a_valid_result_fails_the_attempt_and_says_why(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    pods: PodWatch,
    fate: dict[str, str],
    words: str,
) -> None:
    operators()
    node = box("x", **fate)
    node["maxAttempts"] = 1
    cluster.apply(simulated_run("broken", [node]))
    status = cluster.wait_phase("broken", "Failed", timeout=TIMEOUT)
    (verdict,) = status["checkpoint"]["nodeAttemptVerdicts"]["x"]
    assert verdict["status"] == "failed"
    assert words in verdict["error"]
    assert "broken-x-1" in verdict["error"]
    assert words in status["checkpoint"]["lastFailure"]["reason"]
    pods.until("broken-x-1", deleted)


def test_an_evicted_pod_is_a_transient_error_and_the_next_attempt_gets_a_new_pod(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    operators()
    cluster.apply(simulated_run("evicted", [forever("x")]))
    first = pods.until("evicted-x-1", phase_is("Running"))
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "evicted-x-1", "namespace": cluster.namespace},
    }
    cluster.kubectl(
        "create",
        "--raw",
        f"/api/v1/namespaces/{cluster.namespace}/pods/evicted-x-1/eviction",
        "-f",
        "-",
        input=json.dumps(eviction),
    )
    # Back-off (2 s), then the same node's attempt again: attempt 1 was given back.
    second = pods.until("evicted-x-1", lambda p: p["metadata"]["uid"] != first["metadata"]["uid"])
    assert second["metadata"]["labels"]["automation.tandem.dev/attempt"] == "1"
    status = wait_for(
        lambda: (
            (s := cluster.status("evicted"))
            and s.get("checkpoint", {}).get("nodeAttemptVerdicts", {}).get("x")
            and s
        ),
        timeout=TIMEOUT,
        what="a verdict for the evicted attempt",
    )
    (verdict, *_) = status["checkpoint"]["nodeAttemptVerdicts"]["x"]
    assert verdict["status"] == "transient_error"
    assert "deleted before it ended" in verdict["error"]
    cluster.patch_spec("evicted", {"desiredState": "Cancelled"})
    cluster.wait_phase("evicted", "Cancelled", timeout=TIMEOUT)
    wait_for(lambda: run_pods(cluster, "evicted") == [], timeout=TIMEOUT, what="no Pods left")


def test_a_pod_pending_past_the_stale_threshold_is_reaped_with_its_reason(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    # Six silent seconds: ample for the fake kubelet to report why the Pod waits.
    operators(TANDEM_STALE_RUNNING_MS="6000", TANDEM_DISABLE_STALE_AUTO_RESUME="1")
    cluster.apply(simulated_run("stuck", [box("x", **{POD_PHASE: "Pending"})]))
    status = cluster.wait_phase("stuck", "Paused", timeout=TIMEOUT)
    assert status["stopKind"] == "StaleReaped"
    output = status["checkpoint"]["nodeOutputs"]["x"]
    assert output["blocker_category"] == "stale_no_provider_activity"
    assert "ErrImagePull" in output["error"]
    (verdict,) = status["checkpoint"]["nodeAttemptVerdicts"]["x"]
    assert "ErrImagePull" in verdict["error"]
    pods.until("stuck-x-1", deleted)


def test_pause_and_cancel_delete_the_running_pod_and_resume_starts_again(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    operators()
    cluster.apply(simulated_run("paused", [forever("x")]))
    first = pods.until("paused-x-1", phase_is("Running"))
    cluster.patch_spec("paused", {"desiredState": "Paused"})
    cluster.wait_phase("paused", "Paused", timeout=TIMEOUT)
    # Paused is written only once the Pod is gone: the resumed attempt has the same number,
    # so the same Pod name, and must not meet the old Pod.
    assert cluster.kubectl("get", "pods", "-o", "name").strip() == ""
    gone = pods.until("paused-x-1", deleted)
    assert gone["metadata"]["uid"] == first["metadata"]["uid"]
    cluster.patch_spec("paused", {"desiredState": "Running"})
    again = pods.until(
        "paused-x-1",
        lambda p: p["metadata"]["uid"] != first["metadata"]["uid"] and phase_is("Running")(p),
    )
    cluster.patch_spec("paused", {"desiredState": "Cancelled"})
    cluster.wait_phase("paused", "Cancelled", timeout=TIMEOUT)
    pods.until(
        "paused-x-1", lambda p: deleted(p) and p["metadata"]["uid"] == again["metadata"]["uid"]
    )


# -- C5: adoption across restarts -----------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail", "requeue"])
def test_a_restarted_operator_adopts_the_running_pod(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    pods: PodWatch,
    policy: str,
) -> None:
    first = operators(TANDEM_RESTART_RECOVERY=policy)
    result = {"status": "completed", "output": {"by": "pod"}, "promptTokens": 5}
    cluster.apply(simulated_run("adopt", [box("x", result=result, delay="6s")]))
    pods.until("adopt-x-1", phase_is("Running"))
    first.kill()
    operators(TANDEM_RESTART_RECOVERY=policy)
    status = cluster.wait_phase("adopt", "Completed", timeout=TIMEOUT)
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"x": 1}
    assert cp["nodeOutputs"]["x"] == {"by": "pod", "status": "completed"}
    assert status["usage"]["promptTokens"] == 5
    assert [v["status"] for v in cp["nodeAttemptVerdicts"]["x"]] == ["completed"]
    events = history(status)
    assert "run_queued_for_resume_after_restart" not in events
    assert "run_failed_server_restart" not in events
    pods.until("adopt-x-1", deleted)
    drain(pods)
    assert created(pods) == ["adopt-x-1"]


def test_a_new_leader_adopts_the_running_pod(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    replicas = [operators(), operators()]
    result = {"status": "completed", "output": {"by": "pod"}}
    cluster.apply(simulated_run("failover", [box("x", result=result, delay="6s")]))
    pods.until("failover-x-1", phase_is("Running"))
    # The leader is the replica that claimed the run; identities are <host>-<pid>-<random>.
    claimant = cluster.status("failover")["executionClaim"]["claimant"]
    pid = int(claimant.rsplit("-", 2)[1])
    (leader,) = [r for r in replicas if r.proc is not None and r.proc.pid == pid]
    leader.kill()
    status = cluster.wait_phase("failover", "Completed", timeout=TIMEOUT)
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"x": 1}
    assert cp["nodeOutputs"]["x"] == {"by": "pod", "status": "completed"}
    assert "run_failed_server_restart" not in history(status)
    pods.until("failover-x-1", deleted)
    drain(pods)
    assert created(pods) == ["failover-x-1"]


def test_a_pod_gone_while_the_operator_was_down_follows_b1(
    cluster: Cluster, operators: Callable[..., OperatorProcess], pods: PodWatch
) -> None:
    first = operators()
    cluster.apply(simulated_run("lost", [forever("x")]))
    pods.until("lost-x-1", phase_is("Running"))
    first.kill()
    cluster.kubectl("delete", "pod", "lost-x-1", "--wait=true")
    operators()
    status = cluster.wait_phase("lost", "Failed", timeout=TIMEOUT)
    assert status["stopKind"] == "ServerRestart"


# -- B21: budgets while an attempt streams usage ---------------------------------------------


def test_streamed_usage_past_the_token_budget_stops_the_attempt_at_once(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    operators()
    steps = [Usage(prompt_tokens=100, completion_tokens=0, delay=0.5) for _ in range(40)]
    agent.script(node="x", steps=[*steps, Result()])
    node = {"id": "x", "agentId": "researcher"}
    agents = [{"agentId": "researcher", "endpointRef": {"name": "engine"}}]
    cluster.apply(
        simulated_run("budget", [node], agents=agents, execution={"maxTotalTokens": 1000})
    )
    agent.wait_until(lambda: bool(agent.requests_for("x")), within=TIMEOUT)
    started = agent.requests_for("x")[0].monotonic
    status = cluster.wait_phase("budget", "Paused", timeout=TIMEOUT)
    # Crossed at the 11th line (1100 > 1000), about 5.5 s after the request.
    assert agent.wait_until(lambda: bool(agent.disconnects), within=10)
    disconnect = agent.disconnects[0]
    assert disconnect.monotonic - started < 5.5 + 2.0
    assert status["stopKind"] == "GuardrailStopped"
    assert "token budget exceeded" in status["stopReason"]
    final = wait_for(
        lambda: (s := cluster.status("budget"))["usage"]["totalTokens"] > 1000 and s,
        timeout=TIMEOUT,
        what="the usage so far kept",
    )
    assert final["usage"]["totalTokens"] < 2000  # far below the stream's 4000
    assert final["checkpoint"]["nodeAttempts"].get("x", 0) == 0
    time.sleep(1)
    assert len(agent.requests_for("x")) == 1
