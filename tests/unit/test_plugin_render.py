"""The kubectl plugin's pure parts: rendering and the patches it would send.

Runs are hand-built dicts shaped like what the API server returns; time is passed in.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tandem_operator.cli.client import PluginError
from tandem_operator.cli.plugin import build_parser
from tandem_operator.cli.render import (
    human_duration,
    node_state,
    node_tree,
    pending_gate_decisions,
    progress,
    render_describe,
    render_history,
    render_list,
    render_node_tree,
)
from tandem_operator.cli.writes import (
    control_patch,
    gate_decision_patch,
    resume_note,
    start_manifest,
)
from tandem_operator.lifecycle.clock import parse_ms

NOW = parse_ms("2026-11-24T01:05:00.000Z") or 0

NODES: list[dict[str, Any]] = [
    {"id": "collect"},
    {"id": "draft", "dependsOn": ["collect"]},
    {"id": "lint", "dependsOn": ["collect"], "maxAttempts": 5},
    {
        "id": "review",
        "kind": "Approval",
        "dependsOn": ["draft", "lint"],
        "approval": {"title": "Review it"},
    },
    {"id": "publish", "dependsOn": ["review"]},
]


def record(event: str, at: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    out = {"event": event, "recordedAt": f"2026-11-24T{at}Z", **extra}
    if reason:
        out["reason"] = reason
    return out


def gated_run(**status: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "phase": "AwaitingApproval",
        "detail": "awaiting approval at gate `review`",
        "createdAt": "2026-11-24T01:00:00.000Z",
        "usage": {
            "promptTokens": 10,
            "completionTokens": 5,
            "totalTokens": 15,
            "estimatedCostUsd": "0.0075",
        },
        "checkpoint": {
            "completedNodes": ["collect", "draft", "lint"],
            "pendingNodes": ["review", "publish"],
            "blockedNodes": ["publish"],
            "nodeAttempts": {"collect": 1, "draft": 2, "lint": 1},
            "awaitingGate": {
                "nodeId": "review",
                "title": "Review it",
                "instructions": "Read the draft.\nCheck the facts.",
                "decisions": ["approve", "rework"],
                "requestedAt": "2026-11-24T01:01:00.000Z",
            },
            "lifecycleHistory": [
                record("run_queued", "01:00:00.000", "created"),
                record("run_started", "01:00:00.100", "admitted"),
                record("run_awaiting_approval", "01:01:00.000"),
            ],
        },
        "counters": {"lifecycleRecords": 3},
    }
    base.update(status)
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {
            "name": "gated",
            "namespace": "team-a",
            "creationTimestamp": "2026-11-24T01:00:00Z",
            "resourceVersion": "42",
        },
        "spec": {"automation": {"nodes": NODES}},
        "status": base,
    }


# --------------------------------------------------------------------------- ages


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (119, "119s"),
        (120, "2m"),
        (200, "3m20s"),
        (600, "10m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60 * 7, "3h7m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (20 * 86400, "20d"),
        (800 * 86400, "2y70d"),
    ],
)
def test_ages_read_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds * 1000) == text


def test_a_clock_slightly_behind_is_not_an_error() -> None:
    assert human_duration(-500) == "0s"
    assert human_duration(-5000) == "<invalid>"


# --------------------------------------------------------------------------- list


def test_list_table() -> None:
    fresh = {"metadata": {"name": "new", "namespace": "team-a"}, "spec": {}}
    text = render_list([gated_run(), fresh], now_ms=NOW)
    assert text.splitlines() == [
        "NAME    PHASE              NODES   DETAIL                               AGE",
        "gated   AwaitingApproval   3/5     awaiting approval at gate `review`   5m",
        "new     -                  -                                            <unknown>",
    ]


def test_list_all_namespaces_sorts_by_namespace_and_truncates_detail() -> None:
    other = gated_run(detail="x" * 100)
    other["metadata"] = {**other["metadata"], "namespace": "a-first", "name": "zed"}
    rows = render_list([gated_run(), other], now_ms=NOW, with_namespace=True).splitlines()
    assert rows[0].split() == ["NAMESPACE", "NAME", "PHASE", "NODES", "DETAIL", "AGE"]
    assert rows[1].split()[:2] == ["a-first", "zed"]
    assert "x" * 57 + "..." in rows[1]
    assert "x" * 58 not in rows[1]
    assert rows[2].split()[:2] == ["team-a", "gated"]


def test_progress_prefers_status_then_counts_the_flow() -> None:
    assert progress(gated_run(progress="9/9")) == "9/9"
    assert progress(gated_run()) == "3/5"
    assert progress({"metadata": {}, "spec": {}}) == "-"


# --------------------------------------------------------------------------- node tree


def test_node_tree_follows_depends_on() -> None:
    lines = node_tree(NODES, gated_run()["status"]["checkpoint"])
    assert [
        (line.prefix + line.node_id, line.state, line.attempts, line.note) for line in lines
    ] == [
        ("collect", "completed", "1/3", ""),
        ("├─ draft", "completed", "2/3", ""),
        ("│  └─ review", "awaiting-approval", "-", "gate; after: lint"),
        ("│     └─ publish", "blocked", "0/3", ""),
        ("└─ lint", "completed", "1/5", ""),
    ]
    assert render_node_tree(lines) == [
        "collect            completed           1/3",
        "├─ draft           completed           2/3",
        "│  └─ review       awaiting-approval   -     gate; after: lint",
        "│     └─ publish   blocked             0/3",
        "└─ lint            completed           1/5",
    ]


def test_node_tree_lists_unreachable_nodes_at_the_top() -> None:
    cyclic: list[dict[str, Any]] = [
        {"id": "a", "dependsOn": ["b"]},
        {"id": "b", "dependsOn": ["a"]},
        {"id": "c"},
    ]
    lines = node_tree(cyclic, {})
    assert [(line.prefix, line.node_id) for line in lines] == [
        ("", "c"),
        ("", "a"),
        ("└─ ", "b"),
    ]


@pytest.mark.parametrize(
    ("checkpoint", "state"),
    [
        ({"completedNodes": ["n"]}, "completed"),
        ({"awaitingGate": {"nodeId": "n"}, "pendingNodes": ["n"]}, "awaiting-approval"),
        ({"blockedNodes": ["n"]}, "blocked"),
        ({"pendingNodes": ["n"], "nodeOutputs": {"n": {"status": "failed"}}}, "failed"),
        ({"pendingNodes": ["n"], "nodeAttempts": {"n": 2}}, "in-progress"),
        (
            {
                "pendingNodes": ["n"],
                "nodeAttempts": {"n": 1},
                "nodeOutputs": {"n": {"status": "NEEDS_REPAIR"}},
            },
            "needs-repair",
        ),
        ({"pendingNodes": ["n"]}, "pending"),
        ({}, "pending"),
    ],
)
def test_node_states(checkpoint: dict[str, Any], state: str) -> None:
    assert node_state("n", checkpoint) == state


# --------------------------------------------------------------------------- describe


def test_describe_shows_the_tree_the_gate_and_the_history() -> None:
    text = render_describe(gated_run(), now_ms=NOW)
    assert text.splitlines() == [
        "Name:           gated",
        "Namespace:      team-a",
        "Phase:          AwaitingApproval",
        "Detail:         awaiting approval at gate `review`",
        "Desired state:  Running",
        "Created:        2026-11-24T01:00:00.000Z (5m ago)",
        "Usage:          15 tokens (prompt 10, completion 5), estimated cost $0.0075",
        "Nodes:",
        "  collect            completed           1/3",
        "  ├─ draft           completed           2/3",
        "  │  └─ review       awaiting-approval   -     gate; after: lint",
        "  │     └─ publish   blocked             0/3",
        "  └─ lint            completed           1/5",
        "Gate:",
        "  Node:         review",
        "  Title:        Review it",
        "  Instructions: Read the draft.",
        "                Check the facts.",
        "  Decisions:    approve, rework",
        "  Requested:    2026-11-24T01:01:00.000Z (4m ago)",
        "  Approvers:    anyone who may patch the run",
        "  Approvals:    0/1",
        "Lifecycle (last 3 of 3):",
        "  AGE     EVENT                   STOP KIND   REASON",
        "  5m      run_queued              -           created",
        "  4m59s   run_started             -           admitted",
        "  4m      run_awaiting_approval   -",
    ]


def test_describe_says_who_may_approve_and_who_did() -> None:
    run = copy.deepcopy(gated_run())
    review = next(n for n in run["spec"]["automation"]["nodes"] if n["id"] == "review")
    review["approval"]["approvers"] = {"users": ["alice"], "groups": ["release-managers"]}
    review["approval"]["requiredApprovals"] = 2
    cp = run["status"]["checkpoint"]
    cp["gateHistory"] = [
        {
            "nodeId": "review",
            "decision": "approve",
            "decidedBy": "alice",
            "decidedAt": "2026-11-24T01:02:00.000Z",
        }
    ]
    lines = render_describe(run, now_ms=NOW).splitlines()
    assert "  Approvers:    users alice; groups release-managers" in lines
    # Counted from gateHistory when the operator has not listed approvals yet...
    assert "  Approvals:    1/2 (alice)" in lines
    assert "  review approve by alice at 2026-11-24T01:02:00.000Z" in lines
    # ... and as the operator lists them once it does.
    cp["awaitingGate"]["approvals"] = [{"user": "bob"}, {"user": "carol"}]
    assert "  Approvals:    2/2 (bob, carol)" in render_describe(run, now_ms=NOW).splitlines()


def test_describe_a_stopped_run() -> None:
    run = gated_run(
        phase="Paused",
        stopKind="GuardrailStopped",
        stopReason="token budget exceeded: 120 > maxTotalTokens 100",
        pauseReason="token budget exceeded: 120 > maxTotalTokens 100",
    )
    run["status"]["checkpoint"].pop("awaitingGate")
    run["status"]["checkpoint"]["lastFailure"] = {
        "nodeId": "draft",
        "reason": "node `draft` reported failed",
        "failureKind": "failed",
    }
    text = render_describe(run, now_ms=NOW)
    assert (
        "Stop:           GuardrailStopped: token budget exceeded: 120 > maxTotalTokens 100" in text
    )
    assert "Pause reason:   token budget exceeded" in text
    assert "Last failure:   node draft: node `draft` reported failed (failed)" in text
    assert "Gate:           none awaiting" in text


def test_describe_marks_a_stale_gate_and_a_pending_decision() -> None:
    run = gated_run()
    gate = run["status"]["checkpoint"]["awaitingGate"]
    gate["metadata"] = {"stale": True, "stale_after_ms": 86_400_000}
    run["spec"]["gateDecisions"] = [{"gate": "review", "decision": "approve", "requestId": "r9"}]
    text = render_describe(run, now_ms=NOW)
    assert "  Stale:        yes (after 86400s)" in text
    assert "  Pending:      approve for gate review (requestId r9)" in text


def test_describe_with_a_referenced_automation_and_trimmed_history() -> None:
    run = {
        "metadata": {"name": "ref", "namespace": "team-a"},
        "spec": {"automationRef": {"name": "nightly"}},
    }
    text = render_describe(run, now_ms=NOW)
    assert "Phase:          - (not yet seen by the operator)" in text
    assert "  (flow not available)" in text
    assert "Lifecycle (last 0 of 0):\n  (none)" in text
    with_flow = render_describe(run, now_ms=NOW, automation={"nodes": [{"id": "only"}]})
    assert "  only   pending   0/3" in with_flow

    records = [record("run_resumed", f"01:0{i}:00.000") for i in range(3)]
    long = gated_run(counters={"lifecycleRecords": 40})
    long["status"]["checkpoint"]["lifecycleHistory"] = records * 5
    assert "Lifecycle (last 10 of 40):" in render_describe(long, now_ms=NOW)


# --------------------------------------------------------------------------- history


def test_history_table_says_when_records_were_trimmed() -> None:
    run = gated_run(counters={"lifecycleRecords": 5})
    run["status"]["checkpoint"]["lifecycleHistory"].append(
        record("run_paused", "01:04:00.000", "stale_no_provider_activity", stopKind="StaleReaped")
    )
    lines = render_history(run, now_ms=NOW).splitlines()
    assert lines[0].split() == ["AGE", "EVENT", "STOP", "KIND", "REASON"]
    assert lines[4].split() == ["60s", "run_paused", "StaleReaped", "stale_no_provider_activity"]
    assert lines[-1] == "(1 older records were trimmed from status)"
    assert render_history({"metadata": {}}, now_ms=NOW) == "No lifecycle records."


# --------------------------------------------------------------------------- gate decisions


def test_gate_decision_appends_with_a_version_test() -> None:
    ops = gate_decision_patch(
        gated_run(), decision="approve", gate=None, reason="looks good", request_id="r1"
    )
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
        {
            "op": "add",
            "path": "/spec/gateDecisions",
            "value": [
                {"gate": "review", "decision": "approve", "requestId": "r1", "reason": "looks good"}
            ],
        },
    ]
    run = gated_run()
    run["spec"]["gateDecisions"] = [{"gate": "old", "decision": "approve", "requestId": "r0"}]
    run["status"]["counters"]["gateDecisionsSeen"] = 1
    ops = gate_decision_patch(run, decision="rework", gate="review", reason=None, request_id="r2")
    assert ops[1] == {
        "op": "add",
        "path": "/spec/gateDecisions/-",
        "value": {"gate": "review", "decision": "rework", "requestId": "r2"},
    }


def test_gate_decision_refusals() -> None:
    done = gated_run(phase="Completed")
    done["status"]["checkpoint"].pop("awaitingGate")
    with pytest.raises(
        PluginError, match=r'"gated" has no gate awaiting a decision \(phase Completed\)'
    ):
        gate_decision_patch(done, decision="approve", gate=None, reason=None, request_id="r")
    with pytest.raises(
        PluginError, match=r'gate "publish" is not awaiting .* waits at gate "review"'
    ):
        gate_decision_patch(
            gated_run(), decision="approve", gate="publish", reason=None, request_id="r"
        )
    with pytest.raises(PluginError, match=r'does not allow "cancel" \(allowed: approve, rework\)'):
        gate_decision_patch(gated_run(), decision="cancel", gate=None, reason=None, request_id="r")


def test_a_decision_already_waiting_for_the_operator_is_not_doubled() -> None:
    run = gated_run()
    run["spec"]["gateDecisions"] = [{"gate": "review", "decision": "approve", "requestId": "r1"}]
    assert [d["requestId"] for d in pending_gate_decisions(run)] == ["r1"]
    with pytest.raises(
        PluginError, match=r"already has a decision waiting.*approve \(requestId r1\)"
    ):
        gate_decision_patch(run, decision="rework", gate=None, reason=None, request_id="r2")

    # Applied earlier (in gateHistory), even if the counter is missing: not pending.
    run["status"]["checkpoint"]["gateHistory"] = [
        {"nodeId": "review", "decision": "approve", "requestId": "r1"}
    ]
    assert pending_gate_decisions(run) == []
    gate_decision_patch(run, decision="rework", gate=None, reason=None, request_id="r2")


# --------------------------------------------------------------------------- spec controls


def test_control_patches_carry_the_resource_version() -> None:
    running = gated_run(phase="Running")
    assert control_patch(running, action="pause", reason="night") == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"desiredState": "Paused", "pauseReason": "night"},
    }
    assert control_patch(running, action="pause")["spec"]["pauseReason"] is None
    assert control_patch(running, action="resume")["spec"] == {
        "desiredState": "Running",
        "pauseReason": None,
    }
    assert control_patch(running, action="cancel")["spec"] == {"desiredState": "Cancelled"}
    recover = control_patch(gated_run(phase="Failed"), action="recover")["spec"]["recover"]
    assert recover["requestId"].startswith("kubectl-")
    assert recover != control_patch(gated_run(phase="Failed"), action="recover")["spec"]["recover"]


@pytest.mark.parametrize(
    ("phase", "action", "message"),
    [
        ("Completed", "cancel", r'"gated" is Completed; nothing to cancel$'),
        ("Cancelled", "pause", r'"gated" is Cancelled; nothing to pause$'),
        ("Failed", "resume", r"is Failed; nothing to resume \(use `recover`"),
        ("Running", "recover", r"is Running; only Failed, Paused or Blocked runs can be recovered"),
    ],
)
def test_control_refusals(phase: str, action: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        control_patch(gated_run(phase=phase), action=action)


def test_resume_explains_operator_pauses() -> None:
    assert resume_note(gated_run(phase="Paused")) is None
    note = resume_note(gated_run(phase="Paused", stopKind="StaleReaped"))
    assert note is not None
    assert "StaleReaped" in note
    assert "recover" in note


# --------------------------------------------------------------------------- arguments


def test_connection_options_work_before_and_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-n", "team-a", "--kubeconfig", "/k", "describe", "x"])
    after = parser.parse_args(["describe", "x", "-n", "team-a"])
    assert (before.namespace, str(before.kubeconfig), before.name) == ("team-a", "/k", "x")
    assert (after.namespace, after.kubeconfig) == ("team-a", None)
    gate = parser.parse_args(["cancel-gate", "x", "--gate", "review", "--reason", "no"])
    assert (gate.gate, gate.reason) == ("review", "no")


# -- start: a manual run of an Automation ---------------------------------------------


def scheduled_automation(**schedule: Any) -> dict[str, Any]:
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "Automation",
        "metadata": {"name": "nightly", "namespace": "team-a", "uid": "u-1"},
        "spec": {"nodes": [], "schedule": {"cron": "@daily", **schedule}},
    }


def test_start_builds_a_manual_run_owned_by_the_automation() -> None:
    template = {
        "labels": {"team": "reports"},
        "annotations": {"owner": "alice"},
        "runtimeContext": {"region": "eu"},
    }
    manifest = start_manifest(scheduled_automation(runTemplate=template), name="now")
    assert manifest == {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {
            "name": "now",
            "namespace": "team-a",
            "labels": {"team": "reports", "automation.tandem.dev/automation": "nightly"},
            "annotations": {"owner": "alice"},
            "ownerReferences": [
                {
                    "apiVersion": "automation.tandem.dev/v1alpha1",
                    "kind": "Automation",
                    "name": "nightly",
                    "uid": "u-1",
                    "controller": True,
                }
            ],
        },
        "spec": {
            "automationRef": {"name": "nightly"},
            "triggerType": "manual",
            "runtimeContext": {"region": "eu"},
        },
    }


def test_start_without_a_name_or_template_lets_the_api_server_name_it() -> None:
    automation = scheduled_automation()
    del automation["spec"]["schedule"]
    manifest = start_manifest(automation)
    meta = manifest["metadata"]
    assert meta["generateName"] == "nightly-manual-"
    assert "name" not in meta
    assert "annotations" not in meta
    assert "scheduled-at" not in str(meta)
    assert manifest["spec"] == {"automationRef": {"name": "nightly"}, "triggerType": "manual"}


def test_start_is_a_command() -> None:
    args = build_parser().parse_args(["start", "nightly", "--name", "n1", "-n", "x"])
    assert (args.automation, args.name, args.namespace) == ("nightly", "n1", "x")
