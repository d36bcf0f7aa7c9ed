"""The compact run cache and the lifecycle tick's filter (``lifecycle.timers``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tandem_operator.handlers.cache import LAST_APPLIED, CachedRun
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.lifecycle.timers import ALWAYS, timer_due_ms

STALE = 3_600_000
REQUESTED = "2026-11-24T01:00:00.000Z"
REQUESTED_MS = parse_ms(REQUESTED)
assert REQUESTED_MS is not None


def gate_status(*, metadata: dict[str, Any] | None = None, expiry: Any = None) -> dict[str, Any]:
    approval: dict[str, Any] = {"title": "ship it"}
    if expiry is not None:
        approval["expiry"] = expiry
    return {
        "phase": "AwaitingApproval",
        "automationSnapshot": {"nodes": [{"id": "gate", "kind": "Approval", "approval": approval}]},
        "checkpoint": {
            "awaitingGate": {"nodeId": "gate", "requestedAt": REQUESTED, "metadata": metadata or {}}
        },
    }


@pytest.mark.parametrize(
    ("status", "due"),
    [
        (None, ALWAYS),
        ({}, ALWAYS),
        ({"phase": "Queued"}, ALWAYS),
        ({"phase": "Running"}, ALWAYS),
        ({"phase": "Pausing"}, ALWAYS),
        ({"phase": "Paused", "stopKind": "StaleReaped"}, ALWAYS),
        ({"phase": "Paused", "stopKind": "GuardrailStopped"}, ALWAYS),
        ({"phase": "Paused"}, None),
        ({"phase": "Paused", "stopKind": "Cancelled"}, None),
        ({"phase": "Completed"}, None),
        ({"phase": "Failed", "stopKind": "ServerRestart"}, None),
        ({"phase": "Cancelled"}, None),
        ({"phase": "Blocked"}, None),
        ({"phase": "SomethingNew"}, ALWAYS),
        ("not a status", ALWAYS),
    ],
)
def test_phases(status: Any, due: int | None) -> None:
    assert timer_due_ms(status, stale_after_ms=STALE) == due


def test_a_fresh_gate_is_due_when_it_turns_stale() -> None:
    assert timer_due_ms(gate_status(), stale_after_ms=STALE) == REQUESTED_MS + STALE


def test_a_gate_marked_stale_is_never_due_again() -> None:
    assert timer_due_ms(gate_status(metadata={"stale": True}), stale_after_ms=STALE) is None


def test_an_expiry_earlier_than_staleness_comes_first() -> None:
    status = gate_status(expiry={"afterSeconds": 60, "action": "cancel"})
    assert timer_due_ms(status, stale_after_ms=STALE) == REQUESTED_MS + 60_000


def test_a_reminder_fires_once() -> None:
    expiry = {"afterSeconds": 60, "action": "remind"}
    assert timer_due_ms(gate_status(expiry=expiry), stale_after_ms=STALE) == REQUESTED_MS + 60_000
    reminded = gate_status(expiry=expiry, metadata={"reminder_due": True})
    assert timer_due_ms(reminded, stale_after_ms=STALE) == REQUESTED_MS + STALE
    both = gate_status(expiry=expiry, metadata={"reminder_due": True, "stale": True})
    assert timer_due_ms(both, stale_after_ms=STALE) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s["checkpoint"].pop("awaitingGate"),
        lambda s: s["checkpoint"]["awaitingGate"].update(requestedAt="yesterday"),
        lambda s: s["checkpoint"]["awaitingGate"].update(requestedAt=17),
        lambda s: s["checkpoint"]["awaitingGate"].update(metadata=["stale"]),
        lambda s: s.update(checkpoint="gone"),
    ],
)
def test_an_unreadable_gate_is_always_due(mangle: Any) -> None:
    status = gate_status(metadata={"stale": True})
    mangle(status)
    assert timer_due_ms(status, stale_after_ms=STALE) == ALWAYS


def test_an_unreadable_expiry_is_due_at_once() -> None:
    status = gate_status(metadata={"stale": True}, expiry={"afterSeconds": "soon"})
    assert timer_due_ms(status, stale_after_ms=STALE) == REQUESTED_MS


# ------------------------------------------------------------------------------ the cache


def run_body(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {
            "name": "r1",
            "namespace": "team-a",
            "uid": "u-1",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2026-11-24T00:00:00Z",
            "labels": {"app": "x"},
            "annotations": {LAST_APPLIED: '{"spec": "again"}', "team": "a"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"automationRef": {"name": "nightly"}, "desiredState": "Paused"},
        "status": status,
    }


def test_the_cache_keeps_facts_and_the_object_without_bookkeeping() -> None:
    retry = format_ms(REQUESTED_MS)
    body = run_body(phase="Queued", scheduler={"queueReason": "capacity", "retryAfter": retry})
    run = CachedRun.of(body, stale_after_ms=STALE)
    assert run.key == ("team-a", "r1")
    assert (run.resource_version, run.generation) == (42, 3)
    assert run.created == "2026-11-24T00:00:00Z"
    assert (run.phase, run.desired_state, run.queue_reason) == ("Queued", "Paused", "capacity")
    assert run.retry_after_ms == REQUESTED_MS
    assert (run.has_flow, run.automation_ref, run.own_workspace) == (False, "nightly", None)
    assert run.timer_due_ms == ALWAYS
    kept = run.body()
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "a"}
    expected = json.loads(json.dumps(body))
    del expected["metadata"]["managedFields"]
    del expected["metadata"]["annotations"][LAST_APPLIED]
    assert kept == expected
    assert body["metadata"]["managedFields"], "the caller's object is not changed"
    kept["status"]["phase"] = "Running"
    assert run.body()["status"]["phase"] == "Queued", "each body() is a fresh copy"
    assert run.reference() == {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {"namespace": "team-a", "name": "r1", "uid": "u-1"},
    }


def test_the_workspace_comes_from_the_snapshot_or_the_inline_flow() -> None:
    body = run_body(phase="Running", automationSnapshot={"workspace": {"root": "/repo/a"}})
    run = CachedRun.of(body, stale_after_ms=STALE)
    assert (run.has_flow, run.own_workspace, run.desired_state) == (True, "/repo/a", "Paused")
    inline = run_body()
    inline["spec"] = {"automation": {"workspace": {"root": "/repo/b"}}}
    run = CachedRun.of(inline, stale_after_ms=STALE)
    assert (run.phase, run.has_flow, run.own_workspace, run.desired_state) == (
        None,
        True,
        "/repo/b",
        "Running",
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"metadata": "x", "spec": [], "status": 7},
        {"metadata": {"resourceVersion": "abc", "generation": "two"}, "status": {"phase": 3}},
        {"spec": {"automationRef": "nightly"}, "status": {"scheduler": {"retryAfter": 5}}},
    ],
)
def test_a_malformed_object_is_cached_without_raising(body: dict[str, Any]) -> None:
    run = CachedRun.of(body, stale_after_ms=STALE)
    assert run.resource_version == 0
    assert run.phase is None
    assert run.timer_due_ms == ALWAYS
    assert run.body() == body
