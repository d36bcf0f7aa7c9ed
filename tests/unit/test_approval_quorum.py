"""Who may decide a gate and when a quorum of approvals passes it (B18b, B18c), purely."""

from __future__ import annotations

from tandem_operator.api.models import Approval, Approvers, AwaitingGate, GateHistoryEntry
from tandem_operator.lifecycle.approvals import (
    apply_approval,
    approvals_so_far,
    may_decide,
    required_approvals,
    with_approvals,
)

REQUESTED = "2026-11-30T10:00:00.000Z"


def gate(requested_at: str = REQUESTED) -> AwaitingGate:
    return AwaitingGate(node_id="review", requested_at=requested_at, decisions=["approve"])


def approved(user: str | None, at: str = "2026-11-30T10:05:00.000Z", **kw: str) -> GateHistoryEntry:
    fields = {"node_id": "review", "decision": "approve", "decided_at": at, **kw}
    return GateHistoryEntry(decided_by=user, **fields)


def decide(
    decision: str,
    user: str | None,
    *,
    history: list[GateHistoryEntry] | None = None,
    required: int = 2,
) -> tuple[str, list[str]]:
    outcome = apply_approval(
        awaiting_gate=gate(),
        gate_history=history or [],
        approval=Approval(required_approvals=required),
        decision=decision,
        user=user,
        decided_at="2026-11-30T10:10:00.000Z",
    )
    return outcome.action, [a.user for a in outcome.approvals]


# --------------------------------------------------------------------------- allow-lists


def test_without_approvers_anyone_may_decide() -> None:
    assert may_decide(None, user="anyone", groups=[])
    assert may_decide(Approval(), user="anyone", groups=[])


def test_approvers_admit_listed_users_and_members_of_listed_groups() -> None:
    approval = Approval(approvers=Approvers(users=["alice"], groups=["release-managers"]))
    assert may_decide(approval, user="alice", groups=["system:authenticated"])
    assert may_decide(approval, user="bob", groups=["system:authenticated", "release-managers"])
    assert not may_decide(approval, user="mallory", groups=["system:authenticated"])
    # A user named like a group is not a member of it, and the reverse.
    assert not may_decide(approval, user="release-managers", groups=[])
    assert not may_decide(approval, user="carol", groups=["alice"])


def test_an_empty_allow_list_allows_nobody() -> None:
    assert not may_decide(Approval(approvers=Approvers()), user="alice", groups=["admins"])


def test_required_approvals_defaults_to_one() -> None:
    assert required_approvals(None) == 1
    assert required_approvals(Approval()) == 1
    assert required_approvals(Approval(required_approvals=3)) == 3


# --------------------------------------------------------------------------- quorum


def test_distinct_users_pass_the_gate() -> None:
    assert decide("approve", "alice") == ("wait", ["alice"])
    assert decide("approve", "bob", history=[approved("alice")]) == ("pass", ["alice", "bob"])


def test_a_second_approval_by_the_same_user_adds_nothing() -> None:
    action, users = decide("approve", "alice", history=[approved("alice")])
    assert (action, users) == ("duplicate", ["alice"])
    outcome = apply_approval(
        awaiting_gate=gate(),
        gate_history=[approved("alice")],
        approval=Approval(required_approvals=2),
        decision="approve",
        user="alice",
        decided_at="2026-11-30T10:10:00.000Z",
    )
    assert not outcome.records
    assert outcome.count == "1/2"


def test_one_approval_passes_a_gate_that_needs_one() -> None:
    assert decide("approve", "alice", required=1) == ("pass", ["alice"])


def test_rework_and_cancel_act_at_once_whatever_the_count() -> None:
    history = [approved("alice")]
    assert decide("rework", "bob", history=history) == ("rework", ["alice"])
    assert decide("cancel", "carol", history=history, required=5) == ("cancel", ["alice"])
    assert decide("cancel", "alice", history=history)[0] == "cancel"


def test_a_reworked_gate_asks_anew() -> None:
    """Approvals of an earlier request of the gate (before its requestedAt) do not count."""
    earlier = [approved("alice", at="2026-11-30T09:00:00.000Z")]
    assert decide("approve", "bob", history=earlier) == ("wait", ["bob"])
    assert decide("approve", "alice", history=earlier) == ("wait", ["alice"])


def test_approvals_before_the_gates_last_rework_do_not_count() -> None:
    """Even when the rework and the new request share a millisecond."""
    history = [
        approved("alice", at=REQUESTED),
        GateHistoryEntry(
            node_id="review", decision="rework", decided_by="bob", decided_at=REQUESTED
        ),
        approved("carol", at=REQUESTED),
    ]
    assert [a.user for a in approvals_so_far(history, gate())] == ["carol"]


def test_approvals_of_other_gates_and_other_decisions_do_not_count() -> None:
    history = [
        approved("alice", node_id="other"),
        GateHistoryEntry(
            node_id="review", decision="rework", decided_by="bob", decided_at=REQUESTED
        ),
    ]
    assert approvals_so_far(history, gate()) == []


def test_an_approval_without_a_user_passes_only_a_single_approval_gate() -> None:
    assert decide("approve", None, required=1) == ("pass", [])
    assert decide("approve", None, history=[approved("alice")]) == ("unidentified", ["alice"])
    # Nor does such an entry in gateHistory count towards a quorum.
    assert approvals_so_far([approved(None)], gate()) == []


def test_approvals_so_far_keeps_each_users_first_approval_in_order() -> None:
    history = [
        approved("bob", at="2026-11-30T10:01:00.000Z"),
        approved("alice", at="2026-11-30T10:02:00.000Z"),
        approved("bob", at="2026-11-30T10:03:00.000Z"),
    ]
    so_far = approvals_so_far(history, gate())
    assert [(a.user, a.decided_at) for a in so_far] == [
        ("bob", "2026-11-30T10:01:00.000Z"),
        ("alice", "2026-11-30T10:02:00.000Z"),
    ]
    assert with_approvals(gate(), history).approvals == so_far


def test_hand_written_approvals_do_not_pass_a_gate() -> None:
    """The count comes from gateHistory, not from awaitingGate.approvals as written."""
    forged = gate().model_copy(update={"approvals": [{"user": "x"}, {"user": "y"}]})
    outcome = apply_approval(
        awaiting_gate=forged,
        gate_history=[],
        approval=Approval(required_approvals=3),
        decision="approve",
        user="alice",
        decided_at="2026-11-30T10:10:00.000Z",
    )
    assert outcome.action == "wait"
    assert outcome.count == "1/3"


def test_a_gate_without_requested_at_counts_all_its_approvals() -> None:
    history = [approved("alice", at="2020-01-01T00:00:00.000Z")]
    assert [a.user for a in approvals_so_far(history, gate(requested_at=""))] == ["alice"]
