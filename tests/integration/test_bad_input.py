"""Bad input: refused at ``kubectl apply`` when the schema can say so, reported when it cannot.

Two kinds of bad input reach the operator's API:

- **Manifests** users apply. Everything the schema and CEL can check is refused by the API
  server before the operator sees it, with a message naming the field. This module adds to
  the corpus of ``test_api_surface`` (CEL and schema cases for runs) and
  ``test_admission_webhook`` (graph checks): bounds, enums, required fields and lengths of
  all four kinds.
- **Status written by hand** (``kubectl patch --subresource=status``), which the schema can
  only check for types. A status the operator cannot act on safely (see
  ``lifecycle.validation.status_problems``) gets one Warning Event ``InvalidStatus`` and
  ``Stalled=True`` naming the field; nothing else in it changes, the operator keeps
  running, and other runs are not affected. A fixed status is picked up again.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from support import REPO, Cluster, OperatorProcess, sim, simulated_run, ts, wait_for

from tandem_operator.api.models import AutomationRunStatus, AutomationSpec
from tandem_operator.devcluster.session import KubeSession, unique_namespace_name
from tandem_operator.lifecycle.validation import is_timestamp, status_problems

API_VERSION = "automation.tandem.dev/v1alpha1"

# ------------------------------------------------------------------------- the corpus


def _run() -> dict[str, Any]:
    docs = list(
        yaml.safe_load_all((REPO / "examples" / "automationrun-simulated.yaml").read_text())
    )
    run: dict[str, Any] = docs[0]
    return run


def _nodes(run: dict[str, Any]) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = run["spec"]["automation"]["nodes"]
    return nodes


def _run_with(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    run = _run()
    change(run)
    return run


def _endpoint(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentEndpoint", "metadata": {}, "spec": spec}


def _override(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentQuotaOverride", "metadata": {}, "spec": spec}


def _automation(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Automation", "metadata": {}, "spec": spec}


def _many_nodes(count: int) -> Callable[[dict[str, Any]], None]:
    def change(run: dict[str, Any]) -> None:
        run["spec"]["automation"]["nodes"] = [
            sim(f"n{i}") | {"agentId": "researcher"} for i in range(count)
        ]

    return change


def _wide_depends_on(run: dict[str, Any]) -> None:
    nodes = [sim(f"n{i}") | {"agentId": "researcher"} for i in range(17)]
    nodes.append(sim("join", dependsOn=[n["id"] for n in nodes]) | {"agentId": "researcher"})
    run["spec"]["automation"]["nodes"] = nodes


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a dotted path (list indexes as numbers) in a run manifest."""

    def change(run: dict[str, Any]) -> None:
        target: Any = run
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[parts[-1]] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(run: dict[str, Any]) -> None:
        target: Any = run
        parts = path.split(".")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[parts[-1]]

    return change


REVIEW = "spec.automation.nodes.2"
"""The approval gate of the example run."""

INVALID: list[tuple[str, dict[str, Any], str]] = [
    # -- AutomationRun: nodes
    (
        "node timeoutSeconds 0",
        _run_with(_set("spec.automation.nodes.0.timeoutSeconds", 0)),
        "spec.automation.nodes[0].timeoutSeconds",
    ),
    (
        "objective longer than 4096",
        _run_with(_set("spec.automation.nodes.0.objective", "o" * 4097)),
        "spec.automation.nodes[0].objective",
    ),
    ("101 nodes", _run_with(_many_nodes(101)), "spec.automation.nodes: Too many"),
    ("dependsOn with 17 entries", _run_with(_wide_depends_on), "dependsOn: Too many"),
    (
        "node without id",
        _run_with(_drop("spec.automation.nodes.0.id")),
        "spec.automation.nodes[0].id: Required",
    ),
    (
        "simulate afterSeconds negative",
        _run_with(_set("spec.automation.nodes.0.executor.simulate.afterSeconds", -1)),
        "simulate.afterSeconds",
    ),
    (
        "simulate promptTokens negative",
        _run_with(_set("spec.automation.nodes.0.executor.simulate.usage.promptTokens", -5)),
        "usage.promptTokens",
    ),
    (
        "executor endpointRef without name",
        _run_with(_set("spec.automation.nodes.0.executor", {"endpointRef": {}})),
        "executor.endpointRef.name: Required",
    ),
    # -- AutomationRun: approval gates
    (
        "expiry action bogus",
        _run_with(_set(f"{REVIEW}.approval.expiry", {"afterSeconds": 60, "action": "explode"})),
        "spec.automation.nodes[2].approval.expiry.action",
    ),
    (
        "expiry afterSeconds 0",
        _run_with(_set(f"{REVIEW}.approval.expiry", {"afterSeconds": 0, "action": "cancel"})),
        "spec.automation.nodes[2].approval.expiry.afterSeconds",
    ),
    (
        "approval decision bogus",
        _run_with(_set(f"{REVIEW}.approval.decisions", ["approve", "shrug"])),
        "spec.automation.nodes[2].approval.decisions[1]",
    ),
    # -- AutomationRun: the rest of the flow and the run
    (
        "maxParallelNodes 0",
        _run_with(_set("spec.automation.execution.maxParallelNodes", 0)),
        "spec.automation.execution.maxParallelNodes",
    ),
    (
        "maxTotalTokens 0",
        _run_with(_set("spec.automation.execution.maxTotalTokens", 0)),
        "spec.automation.execution.maxTotalTokens",
    ),
    (
        "agent without agentId",
        _run_with(_set("spec.automation.agents", [{"displayName": "nobody"}])),
        "spec.automation.agents[0].agentId: Required",
    ),
    (
        "empty workspace root",
        _run_with(_set("spec.automation.workspace", {"root": ""})),
        "spec.automation.workspace.root",
    ),
    (
        "executionProfile bogus",
        _run_with(_set("spec.executionProfile", "Careless")),
        "spec.executionProfile",
    ),
    (
        "pauseReason longer than 1024",
        _run_with(_set("spec.pauseReason", "p" * 1025)),
        "spec.pauseReason",
    ),
    (
        "gate decision bogus",
        _run_with(_set("spec.gateDecisions", [{"gate": "review", "decision": "maybe"}])),
        "spec.gateDecisions[0].decision",
    ),
    (
        "gate decision without gate",
        _run_with(_set("spec.gateDecisions", [{"decision": "approve"}])),
        "spec.gateDecisions[0].gate: Required",
    ),
    ("recover without requestId", _run_with(_set("spec.recover", {})), "spec.recover.requestId"),
    # -- Automation
    (
        "Automation with 0 nodes",
        _automation(agents=[{"agentId": "a"}], nodes=[]),
        "spec.nodes: Invalid value",
    ),
    ("Automation without nodes", _automation(agents=[{"agentId": "a"}]), "spec.nodes: Required"),
    (
        "schedule cron with four fields",
        _automation(nodes=[sim("a")], schedule={"cron": "0 2 * *"}),
        "spec.schedule.cron",
    ),
    (
        "schedule @every without a unit",
        _automation(nodes=[sim("a")], schedule={"cron": "@every 10"}),
        "spec.schedule.cron",
    ),
    (
        "schedule time zone not an IANA name",
        _automation(nodes=[sim("a")], schedule={"cron": "@daily", "timeZone": "../etc/passwd"}),
        "spec.schedule.timeZone",
    ),
    (
        "schedule concurrencyPolicy unknown",
        _automation(nodes=[sim("a")], schedule={"cron": "@daily", "concurrencyPolicy": "Queue"}),
        "spec.schedule.concurrencyPolicy",
    ),
    (
        "schedule history limit over 100",
        _automation(nodes=[sim("a")], schedule={"cron": "@daily", "failedRunsHistoryLimit": 101}),
        "spec.schedule.failedRunsHistoryLimit",
    ),
    (
        "run ttlSecondsAfterFinished negative",
        _run_with(_set("spec.ttlSecondsAfterFinished", -1)),
        "spec.ttlSecondsAfterFinished",
    ),
    # -- AgentEndpoint
    (
        "AgentEndpoint url not http(s)",
        _endpoint(url="ftp://agents.example/v1"),
        "spec.url: Invalid value",
    ),
    ("AgentEndpoint without url", _endpoint(timeoutSeconds=30), "spec.url: Required"),
    (
        "AgentEndpoint timeoutSeconds 0",
        _endpoint(url="http://agents.example", timeoutSeconds=0),
        "spec.timeoutSeconds",
    ),
    (
        "AgentEndpoint timeoutSeconds over a day",
        _endpoint(url="http://agents.example", timeoutSeconds=86401),
        "spec.timeoutSeconds",
    ),
    (
        "AgentEndpoint secret ref without key",
        _endpoint(url="http://agents.example", authSecretRef={"name": "token"}),
        "spec.authSecretRef.key: Required",
    ),
    # -- AgentQuotaOverride
    ("AQO without agentId", _override(approved=True), "spec.agentId: Required"),
    ("AQO with empty agentId", _override(agentId="", approved=True), "spec.agentId"),
    ("AQO approved not a boolean", _override(agentId="a", approved="yes"), "spec.approved"),
    (
        # Unreadable, it would never expire: governance must fail closed.
        "AQO expiresAt not a time",
        _override(agentId="a", approved=True, expiresAt="tomorrow"),
        "spec.expiresAt",
    ),
]

CEL_AND_SCHEMA_CASES = 21
"""Invalid run manifests in ``test_api_surface.INVALID``."""
WEBHOOK_CASES = 6
"""Manifests the admission webhook refuses in ``test_admission_webhook``."""


def test_the_corpus_of_refused_manifests_has_at_least_thirty_distinct_cases() -> None:
    from test_api_surface import INVALID as SURFACE

    assert len(SURFACE) == CEL_AND_SCHEMA_CASES
    manifests = [json.dumps(m, sort_keys=True) for _, m, _ in [*SURFACE, *INVALID]]
    assert len(set(manifests)) == len(manifests), "two cases are the same manifest"
    assert len({name for name, _, _ in INVALID}) == len(INVALID)
    assert len(manifests) + WEBHOOK_CASES >= 30


@pytest.fixture(scope="module")
def bad_input_cluster(crds: KubeSession) -> Iterator[Cluster]:
    """One namespace for every refused manifest: none of them is ever stored."""
    name = unique_namespace_name("bad-input")
    crds.kubectl("create", "namespace", name)
    yield Cluster(crds, name)
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize(("case", "manifest", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_is_refused_naming_the_field(
    bad_input_cluster: Cluster, case: str, manifest: dict[str, Any], field: str
) -> None:
    cluster = bad_input_cluster
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = "bad"
    result = cluster.apply_result(manifest)
    assert result.returncode != 0, f"{case}: accepted"
    assert field in result.stderr, result.stderr
    plural = {
        "AutomationRun": "automationruns",
        "Automation": "automations",
        "AgentEndpoint": "agentendpoints",
        "AgentQuotaOverride": "agentquotaoverrides",
    }[manifest["kind"]]
    stored = cluster.kubectl("get", plural, "bad", "--ignore-not-found", "-o", "name")
    assert stored.strip() == ""


# ------------------------------------------------------------------- malformed status


def _flow_run(name: str) -> dict[str, Any]:
    return simulated_run(name, [sim("a"), sim("b", dependsOn=["a"])])


def _gated_run(name: str) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("draft"),
            {"id": "review", "kind": "Approval", "dependsOn": ["draft"], "approval": {}},
            sim("publish", dependsOn=["review"]),
        ],
    )


def _history() -> list[dict[str, Any]]:
    return [
        {"event": "run_queued", "recordedAt": ts(-30), "reason": "created"},
        {"event": "run_started", "recordedAt": ts(-20), "reason": "admitted"},
    ]


def _running(manifest: dict[str, Any], **checkpoint: Any) -> dict[str, Any]:
    """A Running run whose operator died while node ``a`` ran (no claim: orphaned)."""
    return {
        "phase": "Running",
        "createdAt": ts(-30),
        "startedAt": ts(-20),
        "updatedAt": ts(-5),
        "detail": "running node `a` attempt 1",
        "checkpoint": {
            "pendingNodes": ["a", "b"],
            "nodeAttempts": {"a": 1},
            "lifecycleHistory": _history(),
            **checkpoint,
        },
        "automationSnapshot": manifest["spec"]["automation"],
    }


def _awaiting(manifest: dict[str, Any], *, gate: dict[str, Any] | None) -> dict[str, Any]:
    checkpoint: dict[str, Any] = {
        "completedNodes": ["draft"],
        "pendingNodes": ["review", "publish"],
        "blockedNodes": ["publish"],
        "nodeAttempts": {"draft": 1},
        "nodeOutputs": {"draft": {"status": "completed"}},
        "lifecycleHistory": _history(),
    }
    if gate is not None:
        checkpoint["awaitingGate"] = gate
    return {
        "phase": "AwaitingApproval",
        "createdAt": ts(-30),
        "startedAt": ts(-20),
        "updatedAt": ts(-5),
        "detail": "awaiting approval at gate `review`",
        "checkpoint": checkpoint,
        "automationSnapshot": manifest["spec"]["automation"],
    }


def _case_bad_snapshot() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("bad-snapshot")
    status = _running(run)
    # Free-form in the schema, so the API server stores it; also not a usable workspace.
    status["automationSnapshot"] = {"nodes": "not-a-list", "workspace": "nowhere"}
    return run, status, "status.automationSnapshot is not a valid flow: "


def _case_bad_started_at() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("bad-started-at")
    status = _running(run)
    status["startedAt"] = "yesterday"
    return run, status, "status.startedAt: 'yesterday' is not an RFC 3339 timestamp"


def _case_bad_recorded_at() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("bad-recorded-at")
    status = _running(run)
    status["checkpoint"]["lifecycleHistory"][1]["recordedAt"] = "2026-13-45T99:00:00.000Z"
    return run, status, "status.checkpoint.lifecycleHistory[1].recordedAt"


def _case_unknown_pending() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("unknown-pending")
    status = _running(run, pendingNodes=["a", "b", "phantom"])
    return run, status, "status.checkpoint.pendingNodes: phantom not a node of this run's flow"


def _case_ghost_gate() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _gated_run("ghost-gate")
    status = _awaiting(run, gate={"nodeId": "ghost", "requestedAt": ts(-5)})
    return run, status, "status.checkpoint.awaitingGate.nodeId: `ghost` is not an approval gate"


def _case_task_as_gate() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _gated_run("task-as-gate")
    status = _awaiting(run, gate={"nodeId": "draft", "requestedAt": ts(-5)})
    return run, status, "status.checkpoint.awaitingGate.nodeId: `draft` is not an approval gate"


def _case_no_gate() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _gated_run("no-gate")
    status = _awaiting(run, gate=None)
    return run, status, "status.checkpoint.awaitingGate: missing on an AwaitingApproval run"


def _case_bad_cost() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("bad-cost")
    status = _running(run)
    status["usage"] = {"totalTokens": 10, "estimatedCostUsd": "1,50"}
    return run, status, "status.usage.estimatedCostUsd: '1,50' is not a decimal number"


def _case_no_phase() -> tuple[dict[str, Any], dict[str, Any], str]:
    run = _flow_run("no-phase")
    status = _running(run)
    del status["phase"]
    return run, status, "status.phase: missing from a status that records a run"


MALFORMED = [
    _case_bad_snapshot,
    _case_bad_started_at,
    _case_bad_recorded_at,
    _case_unknown_pending,
    _case_ghost_gate,
    _case_task_as_gate,
    _case_no_gate,
    _case_bad_cost,
    _case_no_phase,
]


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


def _without_conditions(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "conditions"}


def _invalid_events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        e
        for e in cluster.events(name)
        if e.get("reason") == "InvalidStatus" and e.get("type") == "Warning"
    ]


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("2026-11-24T01:02:03.456Z", True),
        ("2026-11-24T01:02:03Z", True),
        ("2026-11-24T01:02:03.456+01:00", True),
        ("2026-11-24", False),
        ("2026-11-24 01:02:03Z", False),
        ("2026-11-24T01:02:03", False),
        ("2026-13-45T99:00:00.000Z", False),
        ("yesterday", False),
        ("", False),
    ],
)
def test_what_counts_as_an_rfc3339_timestamp(value: str, valid: bool) -> None:
    assert is_timestamp(value) is valid


def test_what_the_operator_tolerates_in_a_hand_written_status() -> None:
    """Entries no rule reads are kept; before admission the flow may still change."""
    run = _flow_run("tolerant")
    flow = AutomationSpec.model_validate(run["spec"]["automation"])
    admitted = AutomationRunStatus.model_validate(
        _running(run, nodeAttempts={"a": 1, "retired": 4}, nodeRetryAfter={"retired": "x"})
    )
    problems = status_problems(admitted, flow=flow, snapshot_error=None)
    assert problems == [
        "status.checkpoint.nodeRetryAfter.retired: 'x' is not an RFC 3339 timestamp"
    ]
    admitted.checkpoint.node_retry_after = {}
    assert status_problems(admitted, flow=flow, snapshot_error=None) == []
    # Queued, never admitted (no snapshot): the pending list predates an edited flow.
    queued = AutomationRunStatus.model_validate(
        {"phase": "Queued", "checkpoint": {"pendingNodes": ["a", "b", "renamed"]}}
    )
    assert status_problems(queued, flow=flow, snapshot_error=None) == []


def test_malformed_status_is_reported_and_left_alone(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    """Nine kinds of unusable status, one healthy run and one tolerated oddity, at once."""
    cases = [make() for make in MALFORMED]
    for run, status, _ in cases:
        cluster.apply(run)
        cluster.patch_status(run["metadata"]["name"], status)
    written = {
        run["metadata"]["name"]: cluster.status(run["metadata"]["name"]) for run, _, _ in cases
    }

    # Tolerated: attempts recorded for a node the flow does not have are kept and ignored.
    odd = _flow_run("extra-attempts")
    cluster.apply(odd)
    cluster.patch_status("extra-attempts", _running(odd, nodeAttempts={"a": 1, "retired-node": 3}))
    healthy = simulated_run("healthy", [sim("first"), sim("second", dependsOn=["first"])])
    cluster.apply(healthy)

    operator = operators(TANDEM_RESTART_RECOVERY="requeue")

    cluster.wait_phase("healthy", "Completed", timeout=60)
    odd_status = cluster.wait_phase("extra-attempts", "Completed", timeout=60)
    assert odd_status["checkpoint"]["nodeAttempts"]["retired-node"] == 3
    assert odd_status["checkpoint"]["nodeAttempts"]["a"] == 2  # attempt 1 was interrupted
    assert _conditions(odd_status)["Stalled"]["status"] == "False"

    for run, _, message in cases:
        name = run["metadata"]["name"]

        def stalled(name: str = name) -> dict[str, Any] | None:
            status = cluster.status(name)
            condition = _conditions(status).get("Stalled")
            return status if condition and condition["status"] == "True" else None

        status = wait_for(stalled, timeout=60, what=f"{name} to be Stalled")
        condition = _conditions(status)["Stalled"]
        assert condition["reason"] == "InvalidStatus", condition
        assert message in condition["message"], condition
        assert _without_conditions(status) == _without_conditions(written[name]), name
        events = wait_for(
            lambda name=name: _invalid_events(cluster, name), timeout=30, what="the event"
        )
        assert message in events[0]["message"]

    # Still nothing else: the timer has re-checked every run a few times meanwhile.
    time.sleep(3)
    for run, _, _ in cases:
        name = run["metadata"]["name"]
        status = cluster.status(name)
        assert _without_conditions(status) == _without_conditions(written[name]), name
        events = _invalid_events(cluster, name)
        assert sum(e.get("count", 1) for e in events) == 1, f"{name}: reported more than once"
    assert operator.alive
    log = operator.log()
    assert "Traceback" not in log, log[-4000:]


def test_a_fixed_status_is_picked_up_again(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    run, status, message = _case_bad_started_at()
    name = run["metadata"]["name"]
    cluster.apply(run)
    cluster.patch_status(name, status)
    operator = operators(TANDEM_RESTART_RECOVERY="requeue")
    wait_for(
        lambda: _conditions(cluster.status(name)).get("Stalled", {}).get("status") == "True",
        timeout=60,
        what="the run to be Stalled",
    )
    assert message in _conditions(cluster.status(name))["Stalled"]["message"]

    cluster.patch_status(name, {"startedAt": ts(-20)})
    done = cluster.wait_phase(name, "Completed", timeout=60)
    stalled = _conditions(done)["Stalled"]
    assert stalled["status"] == "False"
    assert stalled["reason"] != "InvalidStatus"
    events = [r["event"] for r in done["checkpoint"]["lifecycleHistory"]]
    assert "run_queued_for_resume_after_restart" in events
    assert operator.alive
    assert "Traceback" not in operator.log()
