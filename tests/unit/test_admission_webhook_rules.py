"""What the admission webhook decides and how it is registered, without an API server."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tandem_operator.handlers.webhook import (
    DECISIONS_CHANGED,
    Registration,
    automation_problems,
    configurations,
    install_name,
    stamp_decisions,
)
from tandem_operator.lifecycle.validation import run_problems

FLOW: dict[str, Any] = {
    "nodes": [
        {"id": "draft"},
        {
            "id": "review",
            "kind": "Approval",
            "dependsOn": ["draft"],
            "approval": {"approvers": {"users": ["alice"], "groups": ["release-managers"]}},
        },
        {"id": "open", "kind": "Approval", "dependsOn": ["draft"]},
    ]
}


def spec(*decisions: dict[str, Any], flow: dict[str, Any] | None = FLOW) -> dict[str, Any]:
    out: dict[str, Any] = {"gateDecisions": list(decisions)}
    if flow is not None:
        out["automation"] = copy.deepcopy(flow)
    else:
        out["automationRef"] = {"name": "nightly"}
    return out


def decision(gate: str = "review", by: str | None = "alice", **extra: str) -> dict[str, Any]:
    out = {"gate": gate, "decision": "approve", **extra}
    if by is not None:
        out["decidedBy"] = by
    return out


# --------------------------------------------------------------------------- identity


def test_new_decisions_are_stamped_with_the_user_whatever_they_said() -> None:
    stamped = stamp_decisions(spec(decision(by="mallory"), decision(by=None)), None, "alice")
    assert stamped is not None
    assert [d["decidedBy"] for d in stamped] == ["alice", "alice"]


def test_recorded_decisions_are_left_as_they_are() -> None:
    old = spec(decision(by="bob", requestId="r1"))
    new = spec(decision(by="bob", requestId="r1"), decision(by=None, requestId="r2"))
    stamped = stamp_decisions(new, old, "alice")
    assert stamped is not None
    assert [d["decidedBy"] for d in stamped] == ["bob", "alice"]
    assert stamp_decisions(old, old, "alice") is None


def test_a_recorded_decision_sent_again_without_its_name_gets_it_back() -> None:
    """kubectl apply of a manifest that lists earlier decisions without decidedBy."""
    old = spec(decision(by="bob", requestId="r1"))
    new = spec(decision(by=None, requestId="r1"), decision(by=None, requestId="r2"))
    stamped = stamp_decisions(new, old, "alice")
    assert stamped is not None
    assert [d["decidedBy"] for d in stamped] == ["bob", "alice"]
    # A changed entry is not repaired into the recorded one: it is a new entry, stamped with
    # its writer, and the recorded one is missing, which the schema's append-only rule refuses.
    changed = spec(decision(by=None, requestId="other"))
    assert (stamp_decisions(changed, old, "alice") or [{}])[0]["decidedBy"] == "alice"
    # Wherever the recorded entry sits, it gets its name back.
    moved = spec(decision(by=None, requestId="r2"), decision(by=None, requestId="r1"))
    assert [d["decidedBy"] for d in stamp_decisions(moved, old, "alice") or []] == [
        "alice",
        "bob",
    ]


def test_a_decided_by_that_is_not_the_user_is_refused() -> None:
    problems = run_problems(
        spec(decision(by="mallory")), old_spec=None, status=None, user="alice", groups=[]
    )
    assert problems == [
        "spec.gateDecisions[0].decidedBy: `mallory` is not the user writing the decision (`alice`)"
    ]


# --------------------------------------------------------------------------- allow-lists


@pytest.mark.parametrize(
    ("user", "groups", "allowed"),
    [
        ("alice", [], True),
        ("carol", ["system:authenticated", "release-managers"], True),
        ("bob", ["system:authenticated"], False),
    ],
)
def test_approvers_by_user_and_by_group(user: str, groups: list[str], allowed: bool) -> None:
    problems = run_problems(
        spec(decision(by=user)), old_spec=None, status=None, user=user, groups=groups
    )
    if allowed:
        assert problems == []
    else:
        assert problems == [
            f"spec.gateDecisions[0]: user `{user}` may not decide gate `review` "
            "(approvers: users alice; groups release-managers)"
        ]


def test_a_gate_without_approvers_takes_anyone() -> None:
    problems = run_problems(
        spec(decision("open", by="bob")), old_spec=None, status=None, user="bob", groups=[]
    )
    assert problems == []


def test_the_snapshot_decides_once_the_run_is_admitted() -> None:
    """An inline flow edited after admission does not change who may decide."""
    edited = spec(decision(by="bob"))
    edited["automation"]["nodes"][1]["approval"]["approvers"]["users"] = ["bob"]
    status = {"automationSnapshot": FLOW}
    problems = run_problems(edited, old_spec=None, status=status, user="bob", groups=[])
    assert problems
    assert "user `bob` may not decide gate `review`" in problems[0]


def test_only_new_decisions_are_checked() -> None:
    old = spec(decision(by="bob"))  # recorded before the allow-list was enforced
    new = spec(decision(by="bob"), decision(by="alice"))
    assert run_problems(new, old_spec=old, status=None, user="alice", groups=[]) == []


def test_an_unresolved_automation_ref_run_takes_no_decisions() -> None:
    problems = run_problems(
        spec(decision(by="alice"), flow=None), old_spec=None, status=None, user="alice"
    )
    assert problems == [
        "spec.gateDecisions[0]: the run's flow is not resolved yet, so no gate of it is "
        "waiting; decide once the run is AwaitingApproval"
    ]
    resolved = run_problems(
        spec(decision(by="alice"), flow=None),
        old_spec=None,
        status={"automationSnapshot": FLOW},
        user="alice",
    )
    assert resolved == []


def test_without_a_request_user_identity_and_allow_lists_are_not_checked() -> None:
    assert run_problems(spec(decision(by="mallory")), old_spec=None, status=None) == []


# --------------------------------------------------------------------------- registration


def automation_spec(**schedule: Any) -> dict[str, Any]:
    return {**FLOW, "schedule": {"runTemplate": {}, **schedule}}


@pytest.mark.parametrize(
    ("schedule", "field", "words"),
    [
        ({"cron": "61 * * * *"}, "spec.schedule.cron", "61"),
        ({"cron": "0 0 31 2 *"}, "spec.schedule.cron", "day-of-month"),
        ({"cron": "@daily", "timeZone": "Mars/Olympus_Mons"}, "spec.schedule.timeZone", "Mars"),
    ],
)
def test_a_schedule_the_operator_cannot_use_is_refused_naming_the_field(
    schedule: dict[str, Any], field: str, words: str
) -> None:
    problems = automation_problems(automation_spec(**schedule))
    assert len(problems) == 1
    assert problems[0].startswith(f"{field}: ")
    assert words in problems[0]


def test_a_usable_schedule_passes_and_flow_and_schedule_problems_are_both_named() -> None:
    assert automation_problems(automation_spec(cron="*/5 * * * *", timeZone="Europe/Berlin")) == []
    assert automation_problems(FLOW) == []
    cyclic = {
        "nodes": [{"id": "a", "dependsOn": ["b"]}, {"id": "b", "dependsOn": ["a"]}],
        "schedule": {"cron": "61 * * * *", "runTemplate": {}},
    }
    assert automation_problems(cyclic) == [
        "spec.nodes: dependsOn forms a cycle: a -> b -> a",
        "spec.schedule.cron: '61 * * * *' is not a valid cron expression: bad minute",
    ]


def test_a_spec_the_models_cannot_read_is_left_to_the_schema() -> None:
    assert automation_problems({"nodes": "not a list"}) == []


def registration(**kw: Any) -> Registration:
    base: dict[str, Any] = {
        "name": install_name("team-a"),
        "namespaces": ["team-b", "team-a"],
        "ca_bundle": b"PEM",
        "url": "https://127.0.0.1:9443",
    }
    return Registration(**{**base, **kw})


def test_each_install_has_its_own_names_and_namespaces() -> None:
    mutating, validating = configurations(registration())
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    for config in (mutating, validating):
        assert config["metadata"]["name"] == "tandem-operator-team-a.automation.tandem.dev"
        for hook in config["webhooks"]:
            assert hook["namespaceSelector"] == {
                "matchExpressions": [
                    {
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": ["team-a", "team-b"],
                    }
                ]
            }
    (everywhere, _) = configurations(registration(namespaces=None))
    assert everywhere["webhooks"][0]["namespaceSelector"] == {}


def test_decisions_fail_closed_and_the_rest_fails_open() -> None:
    mutating, validating = configurations(registration())
    summary = [
        (
            h["name"],
            h["rules"][0]["resources"],
            h["failurePolicy"],
            [c["expression"] for c in h.get("matchConditions", [])],
            h["clientConfig"]["url"],
        )
        for h in [*mutating["webhooks"], *validating["webhooks"]]
    ]
    url = "https://127.0.0.1:9443"
    assert summary == [
        (
            "gate-decisions.automation.tandem.dev",
            ["automationruns"],
            "Fail",
            [DECISIONS_CHANGED],
            f"{url}/stamp-decisions",
        ),
        (
            "runs.automation.tandem.dev",
            ["automationruns"],
            "Ignore",
            [f"!({DECISIONS_CHANGED})"],
            f"{url}/validate-run",
        ),
        (
            "automations.automation.tandem.dev",
            ["automations"],
            "Ignore",
            [],
            f"{url}/validate-automation",
        ),
    ]
    # The status subresource never goes through the webhook (the operator's own writes).
    for hook in [*mutating["webhooks"], *validating["webhooks"]]:
        assert all("/" not in r for r in hook["rules"][0]["resources"])
        assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]


def test_a_service_registration_names_the_service_and_path() -> None:
    service = {"namespace": "ops", "name": "op-webhook", "port": 443}
    (mutating, _) = configurations(registration(url=None, service=service))
    assert mutating["webhooks"][0]["clientConfig"] == {
        "service": {**service, "path": "/stamp-decisions"},
        "caBundle": "UEVN",
    }
    with pytest.raises(ValueError, match="url or a service"):
        configurations(registration(url=None))
