"""The compact run cache (``runtime.store``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.runtime.store import LAST_APPLIED, CachedRun

REQUESTED_MS = parse_ms("2026-11-24T01:00:00.000Z")
assert REQUESTED_MS is not None

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
    run = CachedRun.of(body)
    assert run.key == ("team-a", "r1")
    assert (run.resource_version, run.generation) == (42, 3)
    assert run.created == "2026-11-24T00:00:00Z"
    assert (run.phase, run.desired_state, run.queue_reason) == ("Queued", "Paused", "capacity")
    assert run.retry_after_ms == REQUESTED_MS
    assert (run.has_flow, run.automation_ref, run.own_workspace) == (False, "nightly", None)
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
    run = CachedRun.of(body)
    assert (run.has_flow, run.own_workspace, run.desired_state) == (True, "/repo/a", "Paused")
    inline = run_body()
    inline["spec"] = {"automation": {"workspace": {"root": "/repo/b"}}}
    run = CachedRun.of(inline)
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
    run = CachedRun.of(body)
    assert run.resource_version == 0
    assert run.phase is None
    assert run.body() == body
