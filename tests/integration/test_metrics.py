"""Prometheus metrics, scraped from a real operator process over HTTP.

The operator is started with ``--metrics-port`` on a free port and the tests read
``/metrics`` the way Prometheus does, parsing the text format with prometheus_client's
own parser. Counters are checked by exact amounts against what the run's status says
happened (its lifecycle history, its attempt verdicts), gauges against the phases the
runs are in while the scrape happens.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

from agentserver import Activity, AgentServer, Drop, Result

P = "tandem_automation_"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a labelled counter that never moved has no sample yet: 0."""
    return samples.get((P + name, frozenset(labels.items())), 0.0)


def metrics_operator(operators: Callable[..., OperatorProcess], **env: str) -> int:
    port = free_port()
    proc = operators(TANDEM_EXTRA_ARGS=f"--metrics-port={port}", **env)

    def up() -> bool:
        try:
            scrape(port)
        except OSError:
            return False
        return True

    wait_for(up, timeout=30, what="/metrics to answer", describe=proc.log)
    return port


def history(status: dict[str, Any]) -> Counter[str]:
    return Counter(r["event"] for r in status["checkpoint"]["lifecycleHistory"])


def assert_transitions_match(samples: Samples, status: dict[str, Any]) -> None:
    """Every lifecycle record the run has was counted once, and nothing else was."""
    counted = {
        dict(labels)["event"]: v
        for (name, labels), v in samples.items()
        if name == P + "transitions_total" and v
    }
    assert counted == dict(history(status))


def test_gate_and_retry_move_the_counters_by_exact_amounts(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    # draft: a dropped stream (transient), then needs_repair, then completed (the default).
    agent.script(node="draft", steps=[Drop()], times=1)
    agent.script(node="draft", steps=[Activity(), Result(status="needs_repair")], times=1)
    port = metrics_operator(operators)
    before = scrape(port)
    assert value(before, "runs", phase="AwaitingApproval") == 0
    assert value(before, "transitions_total", event="run_started") == 0

    nodes: list[dict[str, Any]] = [
        {"id": "draft", "agentId": "researcher", "objective": "draft it"},
        {
            "id": "review",
            "kind": "Approval",
            "dependsOn": ["draft"],
            "approval": {"title": "Review the draft", "decisions": ["approve", "rework"]},
        },
        sim("publish", dependsOn=["review"]),
    ]
    agents: list[dict[str, Any]] = [
        {"agentId": "researcher", "endpointRef": {"name": "engine"}},
        {"agentId": "agent"},
    ]
    cluster.apply(simulated_run("gated", nodes, agents=agents))
    waiting = cluster.wait_phase("gated", "AwaitingApproval", timeout=60)
    verdicts = [v["status"] for v in waiting["checkpoint"]["nodeAttemptVerdicts"]["draft"]]
    assert verdicts == ["transient_error", "needs_repair", "completed"]

    during = scrape(port)
    assert value(during, "runs", phase="AwaitingApproval") == 1
    assert value(during, "runs", phase="Completed") == 0
    assert value(during, "transitions_total", event="run_awaiting_approval") == 1
    # Admitted, backed off after the dropped stream, admitted again.
    assert value(during, "transitions_total", event="run_started") == 2
    assert value(during, "transitions_total", event="run_queued_retry_backoff") == 1
    assert_transitions_match(during, waiting)
    agent_kind = {"executor": "agent_endpoint"}
    assert value(during, "executor_attempts_total", status="transient", **agent_kind) == 1
    assert value(during, "executor_attempts_total", status="needs_repair", **agent_kind) == 1
    assert value(during, "executor_attempts_total", status="completed", **agent_kind) == 1
    assert value(during, "executor_attempts_total", executor="simulate", status="completed") == 0
    assert value(during, "queue_depth", queue_reason="retry_backoff") == 0
    # One observation per stored decision that carried a transition.
    observed = value(during, "transition_latency_seconds_count")
    assert 1 <= observed <= sum(history(waiting).values())
    assert value(during, "transition_latency_seconds_sum") > 0

    cluster.patch_spec(
        "gated",
        {"gateDecisions": [{"gate": "review", "decision": "approve", "requestId": "r1"}]},
    )
    done = cluster.wait_phase("gated", "Completed", timeout=60)

    after = scrape(port)
    assert value(after, "runs", phase="Completed") == 1
    assert value(after, "runs", phase="AwaitingApproval") == 0
    assert value(after, "transitions_total", event="run_started") == 3
    assert value(after, "transitions_total", event="run_gate_approved") == 1
    assert value(after, "transitions_total", event="run_completed") == 1
    assert_transitions_match(after, done)
    assert value(after, "executor_attempts_total", status="completed", **agent_kind) == 1
    assert value(after, "executor_attempts_total", executor="simulate", status="completed") == 1
    assert value(after, "transition_latency_seconds_count") > observed
    assert value(after, "stale_gates_marked_total") == 0
    assert value(after, "reaps_total", outcome="paused") == 0
    assert (P + "status_write_conflicts_total", frozenset()) in after
    assert (P + "process_resident_memory_bytes", frozenset()) not in after
    assert ("process_resident_memory_bytes", frozenset()) in after


def test_queue_and_workspace_gauges_come_from_the_cache(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    port = metrics_operator(operators, TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS="1")
    cluster.apply(simulated_run("holder", [sim("a", after=120)], workspace="/ws/shared"))
    cluster.wait_phase("holder", "Running", timeout=30)
    cluster.apply(
        simulated_run("same-workspace", [sim("a")], workspace="/ws/shared"),
        simulated_run("no-slot", [sim("a")]),
    )

    def queued() -> Samples | None:
        samples = scrape(port)
        if value(samples, "runs", phase="Queued") == 2 and not value(
            samples, "queue_depth", queue_reason="none"
        ):
            return samples
        return None

    samples = wait_for(queued, timeout=30, what="two queued runs with a queue reason")
    assert value(samples, "runs", phase="Running") == 1
    assert value(samples, "queue_depth", queue_reason="workspace_lock") == 1
    assert value(samples, "queue_depth", queue_reason="capacity") == 1
    assert value(samples, "workspace_locks_held") == 1
    assert cluster.status("same-workspace")["scheduler"]["queueReason"] == "workspace_lock"

    # Cancelling the holder frees the slot and the workspace: both queued runs finish.
    cluster.patch_spec("holder", {"desiredState": "Cancelled"})
    for name in ("same-workspace", "no-slot"):
        cluster.wait_phase(name, "Completed", timeout=60)
    samples = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "executor_attempts_total", executor="simulate", status="cancelled")
            and s
        ),
        timeout=30,
        what="the cancelled attempt of the holder to be applied",
    )
    assert value(samples, "executor_attempts_total", executor="simulate", status="cancelled") == 1
    assert value(samples, "executor_attempts_total", executor="simulate", status="completed") == 2
    assert value(samples, "runs", phase="Completed") == 2
    assert value(samples, "runs", phase="Cancelled") == 1
    assert value(samples, "workspace_locks_held") == 0
    assert sum(value(samples, "queue_depth", queue_reason=r) for r in ("capacity", "none")) == 0


def test_stale_gate_and_reaps_are_counted_once(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    port = metrics_operator(
        operators,
        TANDEM_APPROVAL_GATE_STALE_AFTER_MS="1000",
        TANDEM_STALE_RUNNING_MS="2000",
    )
    gate = {"id": "sign-off", "kind": "Approval", "approval": {"title": "Sign off"}}
    cluster.apply(
        simulated_run("old-gate", [gate]),
        # Reaped twice: the first leaves attempts (Paused, then auto-resumed), the second
        # finds the node out of attempts (Failed).
        simulated_run("silent", [sim("a", outcome="stall", maxAttempts=2)]),
    )
    failed = cluster.wait_phase("silent", "Failed", timeout=60)
    wait_for(
        lambda: (
            cluster.status("old-gate")
            .get("checkpoint", {})
            .get("awaitingGate", {})
            .get("metadata", {})
            .get("stale")
        ),
        timeout=30,
        what="the gate to be marked stale",
    )
    time.sleep(3)  # several lifecycle ticks: the stale gate must not be counted again
    samples = scrape(port)
    assert value(samples, "stale_gates_marked_total") == 1
    assert value(samples, "transitions_total", event="approval_gate_marked_stale") == 1
    assert value(samples, "reaps_total", outcome="paused") == 1
    assert value(samples, "reaps_total", outcome="failed") == 1
    assert value(samples, "auto_resumes_total", reason="auto_resume_after_stale_reap") == 1
    assert value(samples, "auto_resumes_total", reason="auto_resume_after_guardrail_override") == 0
    assert history(failed)["run_auto_resumed"] == 1
    # Each reap cancelled the stalled attempt; the cancellation was applied as an outcome.
    assert value(samples, "executor_attempts_total", executor="simulate", status="cancelled") == 2
    assert value(samples, "runs", phase="AwaitingApproval") == 1
    assert value(samples, "runs", phase="Failed") == 1
