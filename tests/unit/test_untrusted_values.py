"""Values the operator reads but does not control: hand-written status, overrides, Leases.

Each is either refused where it enters or read so that the operator fails closed: an
unusable status is reported (InvalidStatus), an override whose expiry cannot be read has
expired, and operators that watch different namespaces never share a Lease.
"""

from __future__ import annotations

from typing import Any

from tandem_operator.api.models import AutomationRunStatus, GateDecision
from tandem_operator.handlers.webhook import stamp_decisions
from tandem_operator.lifecycle.validation import new_entries, status_problems
from tandem_operator.runtime.leader import LEASE_NAME, lease_name
from tandem_operator.runtime.observation import overrides_in
from tandem_operator.runtime.store import Store

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00.000Z


def override(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AgentQuotaOverride",
        "metadata": {"namespace": "team", "name": name, "resourceVersion": "1"},
        "spec": {"agentId": "researcher", "approved": True, **spec},
    }


def test_an_override_whose_expiry_cannot_be_read_has_expired() -> None:
    store = Store(capacity=1)
    store.observe("overrides", override("open"))
    store.observe("overrides", override("later", expiresAt="2027-01-16T00:00:00Z"))
    store.observe("overrides", override("past", expiresAt="2027-01-14T00:00:00Z"))
    store.observe("overrides", override("words", expiresAt="tomorrow"))
    store.observe("overrides", override("no-such-day", expiresAt="2027-02-30T00:00:00Z"))
    assert sorted(o.name for o in overrides_in(store, "team", NOW)) == ["later", "open"]


def test_a_cost_that_is_not_a_decimal_makes_the_status_unusable() -> None:
    for cost, usable in (("0", True), ("12.50", True), ("1,50", False), ("NaN", False)):
        status = AutomationRunStatus.model_validate(
            {"phase": "Paused", "usage": {"estimatedCostUsd": cost}}
        )
        problems = status_problems(status, flow=None, snapshot_error=None)
        assert (problems == []) == usable, (cost, problems)
        if not usable:
            assert problems == [
                f"status.usage.estimatedCostUsd: {cost!r} is not a decimal number such as 1.25"
            ]


def test_new_decisions_are_found_wherever_they_were_inserted() -> None:
    old = [GateDecision(gate="review", decision="rework", request_id="r1")]
    inserted = GateDecision(gate="review", decision="approve")
    assert new_entries(old, [inserted, *old]) == [0]
    assert new_entries(old, [*old, inserted, inserted]) == [1, 2]
    assert new_entries(old, old) == []


def test_the_webhook_stamps_only_inserted_entries() -> None:
    old = {"gateDecisions": [{"gate": "review", "decision": "rework", "decidedBy": "alice"}]}
    new = {"gateDecisions": [{"gate": "review", "decision": "approve"}, *old["gateDecisions"]]}
    assert stamp_decisions(new, old, "bob") == [
        {"gate": "review", "decision": "approve", "decidedBy": "bob"},
        {"gate": "review", "decision": "rework", "decidedBy": "alice"},
    ]
    assert stamp_decisions(old, old, "bob") is None


def test_operators_that_watch_different_namespaces_have_different_leases() -> None:
    assert lease_name(None, lease_namespace="ops") == LEASE_NAME
    assert lease_name(["team-a"], lease_namespace="team-a") == LEASE_NAME
    a = lease_name(["team-a"], lease_namespace="ops")
    b = lease_name(["team-b"], lease_namespace="ops")
    assert a != b
    assert a.startswith(f"{LEASE_NAME}-")
    assert lease_name(["team-b", "team-a"], lease_namespace="ops") == lease_name(
        ["team-a", "team-b", "team-a"], lease_namespace="ops"
    )
    assert len(lease_name(["x" * 63] * 5, lease_namespace="ops")) <= 63
