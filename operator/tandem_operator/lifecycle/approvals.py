"""Who may decide a gate, and when enough people have approved it (B18b, B18c).

Pure functions, no I/O: the admission webhook asks :func:`may_decide` before a decision is
stored, and the engine's gate rule asks :func:`apply_approval` what a stored decision does.

Quorum. A gate with ``approval.requiredApprovals: N`` passes when N *distinct* users have
approved its *current request*. A request starts when the gate starts waiting
(``awaitingGate.requestedAt``); a rework sends the run back upstream and the gate, when it
waits again, is a new request with a new ``requestedAt`` and no approvals. So the approvals
of a request are the ``approve`` entries of gateHistory for that gate decided at or after
its ``requestedAt``, one per user (the first one counts). ``awaitingGate.approvals`` is the
same list kept next to the gate for people and tools to read; :func:`approvals_so_far`
rebuilds it from gateHistory, so a hand-written or trimmed ``approvals`` list never lets a
gate pass with fewer distinct users than required.

What one decision does (:func:`apply_approval`):

- ``rework`` and ``cancel`` act at once, whoever of the allowed users writes them, however
  many approvals the request has;
- ``approve`` by a user who already approved this request adds nothing (no gateHistory
  entry, the gate keeps waiting);
- ``approve`` by a new user is recorded; the gate passes when the distinct approvers reach
  ``requiredApprovals``;
- ``approve`` without a user (a decision stored before admission stamped ``decidedBy``)
  passes a gate that needs one approval, and is not counted towards a larger quorum,
  since it cannot be told apart from another approval by the same person.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from tandem_operator.api.models import (
    Approval,
    AwaitingGate,
    GateApproval,
    GateHistoryEntry,
)
from tandem_operator.lifecycle.clock import parse_ms

ApprovalAction = Literal["pass", "wait", "duplicate", "unidentified", "rework", "cancel"]
"""What the engine does with one decision:

- ``pass``: complete the gate node (B11 approve);
- ``wait``: record the approval in gateHistory and ``awaitingGate.approvals``; keep waiting;
- ``duplicate``: this user already approved this request; record nothing, keep waiting;
- ``unidentified``: an approval without a user on a gate that needs several; record
  nothing, keep waiting (the engine may say so with a Warning event);
- ``rework`` / ``cancel``: B11 as before, at once.
"""


@dataclass(frozen=True, kw_only=True)
class ApprovalOutcome:
    """The verdict on one decision for the awaiting gate."""

    action: ApprovalAction
    approvals: tuple[GateApproval, ...]
    """The request's approvals after this decision (unchanged unless it was counted)."""
    required: int
    """The gate's requiredApprovals."""

    @property
    def records(self) -> bool:
        """Whether the decision lands in gateHistory."""
        return self.action in ("pass", "wait", "rework", "cancel")

    @property
    def count(self) -> str:
        """``2/3``: distinct approvals so far out of those required."""
        return f"{len(self.approvals)}/{self.required}"


def required_approvals(approval: Approval | None) -> int:
    """The gate's requiredApprovals (1 when the node has no approval block)."""
    return approval.required_approvals if approval is not None else 1


def may_decide(approval: Approval | None, *, user: str, groups: Iterable[str]) -> bool:
    """B18b: ``user`` (with its authenticated ``groups``) is allowed to decide the gate.

    Without ``approvers`` anyone who may patch the run decides; with it, the user must be
    listed by name or belong to a listed group. An empty allow-list allows nobody.
    """
    if approval is None or approval.approvers is None:
        return True
    approvers = approval.approvers
    return user in approvers.users or any(g in approvers.groups for g in groups)


def approvals_so_far(
    gate_history: Sequence[GateHistoryEntry], awaiting_gate: AwaitingGate
) -> list[GateApproval]:
    """The distinct users who approved the gate's current request, in the order they did.

    The current request is the one that started at ``awaitingGate.requestedAt``; entries
    for the same gate from before it (an earlier request, before a rework) do not count,
    nor do approvals recorded before the gate's latest ``rework`` or ``cancel`` entry (a
    request that ended in the same millisecond the next one began). Entries without
    ``decidedBy`` are not counted (see the module docstring).
    """
    since = parse_ms(awaiting_gate.requested_at)
    seen: set[str] = set()
    found: list[GateApproval] = []
    for entry in gate_history:
        if entry.node_id != awaiting_gate.node_id:
            continue
        if entry.decision != "approve":
            seen.clear()
            found.clear()
            continue
        if not entry.decided_by or entry.decided_by in seen:
            continue
        if since is not None:
            decided = parse_ms(entry.decided_at)
            if decided is None or decided < since:
                continue
        seen.add(entry.decided_by)
        found.append(GateApproval(user=entry.decided_by, decided_at=entry.decided_at))
    return found


def apply_approval(
    *,
    awaiting_gate: AwaitingGate,
    gate_history: Sequence[GateHistoryEntry],
    approval: Approval | None,
    decision: str,
    user: str | None,
    decided_at: str,
) -> ApprovalOutcome:
    """What ``decision`` by ``user`` at ``decided_at`` does to the awaiting gate.

    ``decision`` must already be one the gate allows, and ``user`` one :func:`may_decide`
    admitted; this function only counts. ``approval`` is the gate node's approval block.
    """
    required = required_approvals(approval)
    so_far = tuple(approvals_so_far(gate_history, awaiting_gate))
    if decision in ("rework", "cancel"):
        action: ApprovalAction = "rework" if decision == "rework" else "cancel"
        return ApprovalOutcome(action=action, approvals=so_far, required=required)
    if not user:
        if required <= 1:
            return ApprovalOutcome(action="pass", approvals=so_far, required=required)
        return ApprovalOutcome(action="unidentified", approvals=so_far, required=required)
    if any(a.user == user for a in so_far):
        return ApprovalOutcome(action="duplicate", approvals=so_far, required=required)
    after = (*so_far, GateApproval(user=user, decided_at=decided_at))
    action = "pass" if len(after) >= required else "wait"
    return ApprovalOutcome(action=action, approvals=after, required=required)


def with_approvals(
    awaiting_gate: AwaitingGate, gate_history: Sequence[GateHistoryEntry]
) -> AwaitingGate:
    """A copy of ``awaiting_gate`` whose ``approvals`` is :func:`approvals_so_far`."""
    return awaiting_gate.model_copy(
        update={"approvals": approvals_so_far(gate_history, awaiting_gate)}
    )
