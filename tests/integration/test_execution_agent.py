"""Node execution on a real HTTP agent endpoint (B10, contract §6), end to end.

The operator runs as its own process against the real control plane and POSTs each node
attempt to an :class:`~agentserver.AgentServer` in this test process, found through the
AgentEndpoint ``engine`` (``agent`` fixture) with a bearer token from a Secret. The server
records every request and how many were in flight at once, so the tests check what the
agent actually saw — order, parallelism, inputs, auth, retry timing — next to what the
run's status says.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from support import Cluster, OperatorProcess, simulated_run, wait_for

from agentserver import Activity, AgentServer, Drop, HttpStatus, Result, Sleep, Stall, Usage

AGENT = {"agentId": "researcher", "endpointRef": {"name": "engine"}}


def task(node_id: str, **extra: Any) -> dict[str, Any]:
    """A Task node run by the ``researcher`` agent on the agent's endpoint."""
    return {"id": node_id, "agentId": "researcher", "objective": f"do {node_id}", **extra}


def agent_run(name: str, nodes: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return simulated_run(name, nodes, agents=[AGENT], **spec)


def secret_token(cluster: Cluster) -> str:
    data = cluster.get("secret", "engine-token")["data"]["token"]
    return base64.b64decode(data).decode()


def event_names(status: dict[str, Any]) -> list[str]:
    return [r["event"] for r in status["checkpoint"]["lifecycleHistory"]]


@pytest.mark.parametrize("parallel", [1, 2])
def test_dag_runs_in_dependency_order_within_max_parallel_nodes(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    agent: AgentServer,
    parallel: int,
) -> None:
    # Seconds each node spends on the agent before its result; b and c long enough that,
    # started together, they overlap even on a loaded machine.
    work = {"a": 0.3, "b": 1.5, "c": 1.5, "d": 0.1}
    for node in "abcd":
        agent.script(
            node=node,
            steps=[
                Activity(),
                Sleep(work[node]),
                Usage(prompt_tokens=3, completion_tokens=1),
                Result(output={"status": "completed", "value": f"{node}-out"}),
            ],
        )
    operators()
    cluster.apply(
        agent_run(
            "dag",
            [
                task("a"),
                task("b", dependsOn=["a"]),
                task("c", dependsOn=["a"]),
                task("d", dependsOn=["b", "c"]),
            ],
            execution={"maxParallelNodes": parallel},
            runtimeContext={"tenant": "acme"},
        )
    )
    status = cluster.wait_phase("dag", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert sorted(cp["completedNodes"]) == ["a", "b", "c", "d"]

    requests = agent.requests
    by_node = {r.node: r for r in requests}
    assert len(requests) == 4
    assert set(by_node) == set("abcd")
    a, b, c, d = (by_node[n] for n in "abcd")
    # A node is requested only after every dependency has answered (each takes >= work).
    assert min(b.monotonic, c.monotonic) - a.monotonic >= work["a"]
    assert d.monotonic - max(b.monotonic, c.monotonic) >= work["b"]
    assert agent.max_in_flight == parallel
    if parallel == 1:
        assert abs(b.monotonic - c.monotonic) >= work["b"]

    # What the agent received: identity, the upstream outputs, context, agent, auth.
    meta = cluster.run("dag")["metadata"]
    assert d.body["run"] == {"namespace": cluster.namespace, "name": "dag", "uid": meta["uid"]}
    assert d.body["attempt"] == 1
    assert d.body["objective"] == "do d"
    assert d.body["inputs"] == {
        "b": {"status": "completed", "value": "b-out"},
        "c": {"status": "completed", "value": "c-out"},
    }
    assert a.body["inputs"] == {}
    assert d.body["runtimeContext"] == {"tenant": "acme"}
    assert d.body["agent"] == AGENT
    token = secret_token(cluster)
    assert all(r.headers.get("authorization") == f"Bearer {token}" for r in requests)
    assert status["usage"]["totalTokens"] == 16


def test_needs_repair_every_time_fails_at_the_attempt_cap(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(node="x", steps=[Activity(), Result(status="needs_repair")])
    operators()
    cluster.apply(agent_run("repair", [task("x", maxAttempts=3)]))
    status = cluster.wait_phase("repair", "Failed", "Completed", timeout=60)
    assert status["phase"] == "Failed"
    assert status["detail"] == "node `x` failed after 3/3 attempts"
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"x": 3}
    verdicts = cp["nodeAttemptVerdicts"]["x"]
    assert [(v["attempt"], v["status"]) for v in verdicts] == [
        (1, "needs_repair"),
        (2, "needs_repair"),
        (3, "needs_repair"),
    ]
    assert cp["lastFailure"]["nodeId"] == "x"
    assert [r.attempt for r in agent.requests_for("x")] == [1, 2, 3]


def test_needs_repair_once_then_completed(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(node="x", attempt=1, steps=[Result(status="needs_repair")])
    operators()
    cluster.apply(agent_run("repaired", [task("x", maxAttempts=3), task("w", dependsOn=["x"])]))
    status = cluster.wait_phase("repaired", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    cp = status["checkpoint"]
    assert cp["nodeAttempts"] == {"x": 2, "w": 1}
    assert [v["status"] for v in cp["nodeAttemptVerdicts"]["x"]] == ["needs_repair", "completed"]
    assert cp["nodeOutputs"]["x"]["status"] == "completed"
    assert [r.attempt for r in agent.requests_for("x")] == [1, 2]


def test_failed_node_fails_the_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(
        node="x", steps=[Result(status="failed", output={"status": "failed", "why": "boom"})]
    )
    operators()
    cluster.apply(agent_run("broken", [task("x", maxAttempts=3), task("w", dependsOn=["x"])]))
    status = cluster.wait_phase("broken", "Failed", "Completed", timeout=60)
    assert status["phase"] == "Failed"
    assert status["detail"] == "node `x` failed after 1/3 attempts"
    cp = status["checkpoint"]
    assert cp["lastFailure"]["nodeId"] == "x"
    assert cp["nodeOutputs"]["x"] == {"status": "failed", "why": "boom"}
    assert "w" not in cp["nodeAttempts"]
    assert status["finishedAt"]
    assert event_names(status)[-1] == "run_failed"
    assert [r.node for r in agent.requests] == ["x"]
    warnings = [e for e in cluster.events("broken") if e["type"] == "Warning"]
    assert any(e["reason"] == "RunFailed" for e in warnings)


def test_transient_errors_back_off_then_succeed(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    # First an HTTP 500, then a stream dropped mid-way, then the default (completed).
    agent.script(node="x", steps=[HttpStatus(500, body="overloaded")], times=1)
    agent.script(node="x", steps=[Activity(), Drop()], times=1)
    operators()
    cluster.apply(agent_run("flaky", [task("x", maxAttempts=3)]))
    seen: set[str] = set()

    def finished() -> dict[str, Any] | None:
        status = cluster.status("flaky")
        if status.get("phase") == "Queued":
            seen.add((status.get("scheduler") or {}).get("queueReason") or "")
        return status if status.get("phase") in ("Completed", "Failed") else None

    status = wait_for(finished, timeout=60, interval=0.1, what="flaky run to finish")
    assert status["phase"] == "Completed", status.get("detail")
    assert "retry_backoff" in seen

    times = [r.monotonic for r in agent.requests_for("x")]
    assert len(times) == 3
    # Backoff 2 s after the first transient error, 2 s x 2.5 after the second.
    assert times[1] - times[0] >= 1.9
    assert times[2] - times[1] >= 4.9
    cp = status["checkpoint"]
    # Transient errors are not attempts of the node: every request was attempt 1.
    assert [r.attempt for r in agent.requests_for("x")] == [1, 1, 1]
    assert cp["nodeAttempts"] == {"x": 1}
    verdicts = [v["status"] for v in cp["nodeAttemptVerdicts"]["x"]]
    assert verdicts == ["transient_error", "transient_error", "completed"]
    backoffs = [r for r in cp["lifecycleHistory"] if r["event"] == "run_queued_retry_backoff"]
    assert len(backoffs) == 2
    assert all(r["metadata"]["nodes"] == ["x"] for r in backoffs)
    # The agent ended both broken exchanges itself; the operator never hung up on it.
    assert agent.disconnects == []

    # Every transition was announced, including those reconciled from wake-ups and ticks.
    def announced() -> bool:
        reasons = Counter(e["reason"] for e in cluster.events("flaky"))
        return reasons["RunStarted"] == 3 and reasons["RunQueuedRetryBackoff"] == 2

    wait_for(announced, timeout=30, what="an Event for every lifecycle record")
    assert Counter(e["reason"] for e in cluster.events("flaky"))["RunCompleted"] == 1


def test_endpoint_of_another_namespace_is_never_reached(
    cluster: Cluster, agent: AgentServer, tmp_path: Any
) -> None:
    """The operator watches both namespaces, so it knows the endpoint and still refuses it."""
    other = f"other-{uuid.uuid4().hex[:8]}"
    cluster.kube.kubectl("create", "namespace", other)
    try:
        cluster.kube.kubectl(
            "-n",
            other,
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "automation.tandem.dev/v1alpha1",
                    "kind": "AgentEndpoint",
                    "metadata": {"name": "remote"},
                    "spec": {"url": agent.url},
                }
            ),
        )
        operator = OperatorProcess(
            kube=cluster.kube,
            namespace=cluster.namespace,
            also_watch=(other,),
            log_path=tmp_path / "operator.log",
        ).start()
        try:
            # Prove the operator sees the other namespace: a run there does reach the agent.
            cluster.kube.kubectl(
                "-n",
                other,
                "apply",
                "-f",
                "-",
                input=json.dumps(
                    simulated_run(
                        "local",
                        [task("x", executor={"endpointRef": {"name": "remote"}})],
                        agents=[{"agentId": "researcher"}],
                    )
                ),
            )
            wait_for(
                lambda: agent.requests_for("x"),
                timeout=60,
                what="the run in the endpoint's own namespace to reach the agent",
            )
            agent.clear_records()
            cluster.apply(
                simulated_run(
                    "foreign",
                    [task("w", executor={"endpointRef": {"name": "remote"}})],
                    agents=[{"agentId": "researcher"}],
                )
            )
            status = cluster.wait_phase("foreign", "Failed", "Completed", timeout=60)
        finally:
            operator.kill()
    finally:
        cluster.kube.kubectl("delete", "namespace", other, "--wait=false", check=False)
    assert status["phase"] == "Failed"
    assert status["detail"] == "node `w` failed after 1/3 attempts"
    failure = status["checkpoint"]["lastFailure"]
    assert failure["nodeId"] == "w"
    expected = f"AgentEndpoint remote not found in namespace {cluster.namespace}"
    assert expected in failure["reason"]
    assert expected in status["checkpoint"]["nodeOutputs"]["w"]["error"]
    assert agent.requests_for("w") == []
    assert all(r.body["run"]["namespace"] == other for r in agent.requests)


def test_endpoint_credential_problems_fail_the_attempt_with_the_cause(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    """A missing Secret stops the attempt before any request; a wrong token gets a 401."""

    def endpoint(name: str, secret: str) -> dict[str, Any]:
        return {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "AgentEndpoint",
            "metadata": {"name": name},
            "spec": {"url": agent.url, "authSecretRef": {"name": secret, "key": "token"}},
        }

    cluster.apply(
        endpoint("unsigned", "nowhere"),
        endpoint("impostor", "stale-token"),
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "stale-token"},
            "stringData": {"token": "expired"},
        },
    )
    operators()
    cluster.apply(
        simulated_run(
            "no-secret",
            [task("p", executor={"endpointRef": {"name": "unsigned"}})],
            agents=[{"agentId": "researcher"}],
        ),
        simulated_run(
            "bad-token",
            [task("q", executor={"endpointRef": {"name": "impostor"}})],
            agents=[{"agentId": "researcher"}],
        ),
    )
    missing = cluster.wait_phase("no-secret", "Failed", "Completed", timeout=60)
    rejected = cluster.wait_phase("bad-token", "Failed", "Completed", timeout=60)

    assert missing["phase"] == "Failed"
    assert missing["detail"] == "node `p` failed after 1/3 attempts"
    assert missing["checkpoint"]["lastFailure"]["reason"] == (
        f"Secret nowhere of AgentEndpoint unsigned not found in namespace {cluster.namespace}"
    )
    assert agent.requests_for("p") == []

    # 401 is permanent: no retries, and the agent's answer is quoted.
    assert rejected["phase"] == "Failed"
    assert rejected["detail"] == "node `q` failed after 1/3 attempts"
    reason = rejected["checkpoint"]["lastFailure"]["reason"]
    assert "HTTP 401" in reason
    assert "missing or wrong bearer token" in reason
    (request,) = agent.requests_for("q")
    assert request.headers["authorization"] == "Bearer expired"


def test_a_run_resumed_after_the_stale_threshold_is_not_reaped(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    """B5 counts silence while attempts run, not while the run is paused.

    Paused during the node's second attempt (which the pause gives back: attempts 1, no
    output) and resumed later than TANDEM_STALE_RUNNING_MS after that attempt started,
    the run dispatches the attempt again instead of reaping it in the same write.
    """
    stale_ms = 6000
    agent.script(node="x", attempt=1, steps=[Activity(), Result(status="needs_repair")], times=1)
    agent.script(node="x", attempt=2, steps=[Activity(), Stall()], times=1)
    operators(TANDEM_STALE_RUNNING_MS=str(stale_ms))
    cluster.apply(agent_run("resumed", [task("x", maxAttempts=3)]))
    wait_for(lambda: len(agent.requests_for("x")) == 2, timeout=30, what="attempt 2 to start")
    cluster.patch_spec("resumed", {"desiredState": "Paused"})
    paused = cluster.wait_phase("resumed", "Paused", timeout=30)
    assert paused.get("stopKind") is None, paused.get("detail")
    assert paused["checkpoint"]["nodeAttempts"] == {"x": 1}
    assert "x" not in paused["checkpoint"]["nodeOutputs"]
    dispatched = agent.requests_for("x")[1].monotonic
    wait_for(
        lambda: time.monotonic() > dispatched + stale_ms / 1000 + 1,
        timeout=30,
        what="the stale threshold to pass since attempt 2 started",
    )

    cluster.patch_spec("resumed", {"desiredState": "Running"})
    status = cluster.wait_phase("resumed", "Completed", "Failed", timeout=45)
    assert status["phase"] == "Completed", status.get("detail")
    events = event_names(status)
    assert "run_paused_stale_no_provider_activity" not in events, events
    assert [r.attempt for r in agent.requests_for("x")] == [1, 2, 2]


def test_an_absurd_token_count_is_a_protocol_error_not_a_wedged_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    """A usage line past any real count (and past the API server's 64-bit integers) is a
    malformed line: the attempt ends as a transient error, retried and then failed with the
    reason, instead of a status write the API server refuses for ever."""
    agent.script(node="x", steps=[Activity(), Usage(10**30, 5), Result()])
    operators()
    cluster.apply(agent_run("absurd", [task("x", maxAttempts=1)]))
    status = cluster.wait_phase("absurd", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Failed", status.get("detail")
    output = status["checkpoint"]["nodeOutputs"]["x"]
    assert "promptTokens must be an integer from 0 to 1000000000000" in output["error"]
    assert status["usage"]["totalTokens"] == 0
