# mypy narrows ``run.s.phase`` after an assert and cannot see that ``decide`` changes it.
# mypy: disable-error-code="comparison-overlap"
"""The B-rules of the run lifecycle, one behaviour at a time, through ``decide``.

Each test builds an :class:`Observation` by hand (or walks a run there through earlier
decisions, exactly as the reconciler would feed them back) and checks the decision: phase,
detail strings, stop kinds, lifecycle records, events, attempts to start or cancel. Every
decision made here also passes :func:`check_update`, the invariants the contract puts on
every status update (scheduler only while Queued, claim only while Running or Pausing,
``finishedAt`` on terminal phases, ``updatedAt`` bumped exactly when something changed,
history bounded and counted, the observed status left untouched, the API round trip).

Statuses for restart scenarios are written as the API would hold them (camelCase dicts
validated by the model), the way a user or an old operator leaves them with
``kubectl patch --subresource=status``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import pytest

from tandem_operator.api.models import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    Checkpoint,
    GateDecision,
    Recover,
)
from tandem_operator.api.settings import Settings
from tandem_operator.api.vocabulary import QueueVerdict
from tandem_operator.api.vocabulary import event_reason as camel
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.lifecycle.contract import (
    AttemptOutcome,
    Decision,
    Observation,
    Override,
    StartAttempt,
)
from tandem_operator.lifecycle.engine import MAX_ROUNDS, decide
from tandem_operator.lifecycle.invariants import refresh_detail
from tandem_operator.lifecycle.recovery import RESTART_DETAIL
from tandem_operator.lifecycle.resumes import cap_reached, within_window

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00.000Z
ME = "operator-b"
DEAD = "operator-a"
SETTINGS = Settings()


# ------------------------------------------------------------------------------ builders


def make_flow(*nodes: dict[str, Any], **extra: Any) -> AutomationSpec:
    return AutomationSpec.model_validate(
        {
            "creatorId": "alice",
            "agents": [{"agentId": "researcher"}, {"agentId": "writer"}],
            "nodes": list(nodes),
            **extra,
        }
    )


def task(node_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "agentId": "researcher", "dependsOn": list(deps), **extra}


def gate(node_id: str, *deps: str, **approval: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "kind": "Approval",
        "dependsOn": list(deps),
        "approval": {"title": f"Review {node_id}", **approval},
    }


CHAIN = make_flow(task("collect"), task("draft", "collect"))
REVIEWED = make_flow(
    task("collect"),
    task("draft", "collect"),
    gate("review", "draft"),
    task("publish", "review"),
)


def hand_status(data: Mapping[str, Any]) -> AutomationRunStatus:
    """A status as the API server stores it (camelCase), parsed like the reconciler does."""
    return AutomationRunStatus.model_validate(data)


def running_status(
    flow: AutomationSpec,
    *,
    phase: str = "Running",
    claimant: str | None = DEAD,
    lease_expires_ms: int = T0 + 10_000,
    attempts: Mapping[str, int] | None = None,
    completed: Iterable[str] = (),
    outputs: Mapping[str, Any] | None = None,
    started_ms: int = T0 - 60_000,
    **extra: Any,
) -> AutomationRunStatus:
    """A run that an operator admitted and was executing when we look at it."""
    done = list(completed)
    data: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": 1,
        "createdAt": format_ms(started_ms - 1000),
        "startedAt": format_ms(started_ms),
        "updatedAt": format_ms(started_ms),
        "checkpoint": {
            "completedNodes": done,
            "pendingNodes": [n.id for n in flow.nodes if n.id not in done],
            "nodeAttempts": dict(attempts if attempts is not None else {"collect": 1}),
            "nodeOutputs": dict(outputs or {n: {"status": "completed"} for n in done}),
            "lastActivityAt": format_ms(started_ms),
        },
        "automationSnapshot": flow.to_api(),
        **extra,
    }
    for node_id in done:
        data["checkpoint"]["nodeAttempts"].setdefault(node_id, 1)
    if claimant is not None:
        data["executionClaim"] = {
            "claimant": claimant,
            "claimedAt": format_ms(started_ms),
            "leaseExpiresAt": format_ms(lease_expires_ms),
            "epoch": 1,
        }
    return hand_status(data)


# ------------------------------------------------------------------------------ invariants


def check_update(obs: Observation, before_dump: dict[str, Any] | None, d: Decision) -> None:
    """What the contract demands of every status update, whatever rule produced it."""
    s = d.status
    now = format_ms(obs.now_ms)
    if obs.status is not None:
        assert obs.status.model_dump() == before_dump, "decide mutated the observed status"
    if s.phase != "Queued":
        assert s.scheduler is None, f"scheduler left on a {s.phase} run"
    if s.phase not in ACTIVE_PHASES:
        assert s.execution_claim is None, f"execution claim left on a {s.phase} run"
    if s.phase in TERMINAL_PHASES:
        assert s.finished_at is not None
        assert s.checkpoint.awaiting_gate is None
    previous = obs.status
    if d.changed:
        assert s.updated_at == now
    else:
        assert previous is not None
        assert s.updated_at == previous.updated_at
        assert not d.records
    old_history = previous.checkpoint.lifecycle_history if previous else []
    old_count = previous.counters.lifecycle_records if previous else 0
    # History keeps the newest records, each added once, at most the limit of them.
    combined = [*old_history, *d.records]
    history = s.checkpoint.lifecycle_history
    assert len(history) <= obs.settings.lifecycle_history_limit
    assert history == combined[len(combined) - len(history) :]
    assert bool(history) == bool(combined)
    # A hand-written history its counter never saw is counted once, before the new records.
    counted_before = max(old_count, len(old_history)) if d.records else old_count
    assert s.counters.lifecycle_records == counted_before + len(d.records)
    reasons = [e.reason for e in d.events]
    for record in d.records:
        assert record.recorded_at == now
        assert camel(record.event) in reasons
    assert s.observed_generation == obs.generation
    api = s.to_api()
    assert AutomationRunStatus.model_validate(api).to_api() == api


class Run:
    """One run seen through successive decisions, as the reconciler would see it."""

    def __init__(
        self,
        flow: AutomationSpec,
        *,
        settings: Settings = SETTINGS,
        status: AutomationRunStatus | None = None,
        now: int = T0,
        **spec: Any,
    ) -> None:
        self.flow = flow
        self.settings = settings
        self.spec = AutomationRunSpec.model_validate({"automation": flow.to_api(), **spec})
        self.status = status
        self.now = now
        self.generation = 1
        self.in_flight: frozenset[str] = frozenset()
        self.decisions: list[Decision] = []

    def decide(
        self,
        *,
        live: Iterable[str] = (ME,),
        instance: str = ME,
        admission: QueueVerdict = "capacity",
        outcomes: Iterable[AttemptOutcome] = (),
        in_flight: Iterable[str] | None = None,
        **extra: Any,
    ) -> Decision:
        outcomes = tuple(outcomes)
        rounds = extra.pop("rounds", MAX_ROUNDS)
        finished = {o.node_id for o in outcomes}  # a reported attempt is no longer running
        if in_flight is None:
            in_flight = self.in_flight - finished
        obs = Observation(
            now_ms=self.now,
            settings=self.settings,
            instance=instance,
            live_instances=frozenset(live),
            generation=self.generation,
            spec=self.spec,
            status=self.status,
            definition=extra.pop("definition", self.flow),
            admission=admission,
            outcomes=outcomes,
            in_flight=frozenset(in_flight),
            **extra,
        )
        before = self.status.model_dump() if self.status is not None else None
        decision = decide(obs, rounds=rounds)
        check_update(obs, before, decision)
        self.status = decision.status
        self.in_flight = (obs.in_flight - finished) | {a.node_id for a in decision.start}
        self.decisions.append(decision)
        return decision

    # -- conveniences ----------------------------------------------------------------

    @property
    def s(self) -> AutomationRunStatus:
        assert self.status is not None
        return self.status

    @property
    def cp(self) -> Checkpoint:
        return self.s.checkpoint

    def set_spec(self, **changes: Any) -> None:
        self.spec = self.spec.model_copy(update=changes)
        self.generation += 1

    def start(self) -> Decision:
        """Create the run and admit it."""
        self.decide()
        return self.decide(admission="admit")

    def outcome(self, node_id: str, status: str = "completed", **extra: Any) -> AttemptOutcome:
        return AttemptOutcome(
            node_id=node_id,
            attempt=self.cp.node_attempts[node_id],
            status=status,
            **extra,
        )

    def report(self, node_id: str, status: str = "completed", **extra: Any) -> Decision:
        """The executor reports one attempt; the reconciler decides with the outcome."""
        return self.decide(outcomes=[self.outcome(node_id, status, **extra)])

    def advance(self, ms: int) -> None:
        self.now += ms

    def events(self) -> list[str]:
        return [r.event for d in self.decisions for r in d.records]


def record_events(d: Decision) -> list[str]:
    return [r.event for r in d.records]


def only_record(d: Decision, event: str) -> Any:
    found = [r for r in d.records if r.event == event]
    assert len(found) == 1, f"expected one {event} in {record_events(d)}"
    return found[0]


# ------------------------------------------------------------------------------ seed cases


def test_within_window_seed_cases() -> None:
    assert within_window(reaped_at_ms=9_500, now_ms=10_000, window_ms=1_000)
    assert not within_window(reaped_at_ms=7_000, now_ms=10_000, window_ms=1_000)


def test_cap_reached_seed_cases() -> None:
    assert not cap_reached(auto_resumes=0, cap=2)
    assert not cap_reached(auto_resumes=1, cap=2)
    assert cap_reached(auto_resumes=2, cap=2)
    assert cap_reached(auto_resumes=3, cap=2)
    assert not cap_reached(auto_resumes=2, cap=3)


def test_refresh_detail_seed_case() -> None:
    checkpoint = Checkpoint(
        completed_nodes=["collect"],
        pending_nodes=["draft"],
        node_attempts={"collect": 1, "draft": 1},
    )
    assert (
        refresh_detail("retrying node `collect` after transient provider failure", checkpoint)
        == "running node `draft` attempt 1"
    )


def test_refresh_detail_leaves_other_details_alone() -> None:
    checkpoint = Checkpoint(completed_nodes=["collect"], pending_nodes=["draft"])
    assert refresh_detail(None, checkpoint) is None
    assert refresh_detail("admitted", checkpoint) == "admitted"
    assert refresh_detail("running node `draft` attempt 1", checkpoint) == (
        "running node `draft` attempt 1"
    )
    # Nothing attempted next: the detail says the named node is done.
    assert refresh_detail("node `collect` needs repair; retrying", checkpoint) == (
        "completed node `collect`; continuing"
    )
    blocked = Checkpoint(
        completed_nodes=["collect"],
        pending_nodes=["draft", "final"],
        blocked_nodes=["draft"],
        node_attempts={"draft": 2, "final": 1},
    )
    assert refresh_detail("completed node `collect`", blocked) == "running node `final` attempt 1"


# ------------------------------------------------------------------------------ creation, B9


def test_a_new_run_is_queued_with_its_nodes_pending() -> None:
    run = Run(CHAIN)
    d = run.decide()
    assert d.changed
    assert run.s.phase == "Queued"
    assert run.s.created_at == format_ms(T0)
    assert run.cp.pending_nodes == ["collect", "draft"]
    assert run.s.scheduler is not None
    assert run.s.scheduler.queue_reason == "capacity"
    assert run.s.scheduler.queued_at == format_ms(T0)
    assert record_events(d) == ["run_queued"]
    assert run.s.progress == "0/2"
    assert not d.start


def test_admission_starts_the_first_node_and_claims_the_run() -> None:
    run = Run(CHAIN)
    run.decide()
    run.advance(500)
    d = run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert run.s.started_at == format_ms(T0 + 500)
    claim = run.s.execution_claim
    assert claim is not None
    assert claim.claimant == ME
    assert claim.epoch == 1
    assert claim.claimed_at == format_ms(T0 + 500)
    assert parse_ms(claim.lease_expires_at) == T0 + 500 + SETTINGS.claim_lease_seconds * 1000
    assert run.s.automation_snapshot == CHAIN.to_api()
    assert record_events(d) == ["run_started"]
    assert d.start == (StartAttempt(node_id="collect", attempt=1),)
    assert run.cp.node_attempts == {"collect": 1}
    assert run.s.detail == "running node `collect` attempt 1"
    assert run.s.scheduler is None


@pytest.mark.parametrize("verdict", ["capacity", "workspace_lock"])
def test_a_waiting_run_shows_why(verdict: QueueVerdict) -> None:
    run = Run(CHAIN)
    run.decide()
    run.advance(1000)
    d = run.decide(admission=verdict)
    assert run.s.phase == "Queued"
    assert run.s.scheduler is not None
    assert run.s.scheduler.queue_reason == verdict
    assert run.s.scheduler.queued_at == format_ms(T0)
    assert not d.start
    assert not d.records


def test_a_queued_run_waits_unchanged_while_nothing_changes() -> None:
    run = Run(CHAIN)
    run.decide()
    run.decide(admission="capacity")
    run.advance(60_000)
    d = run.decide(admission="capacity")
    assert not d.changed


def test_no_run_is_admitted_during_shutdown() -> None:
    run = Run(CHAIN)
    run.decide()
    d = run.decide(admission="admit", shutting_down=True)
    assert run.s.phase == "Queued"
    assert not d.start


def test_a_run_needing_runtime_context_without_it_fails() -> None:
    flow = make_flow(task("collect"), requiresRuntimeContext=True)
    run = Run(flow)
    d = run.decide()  # no need to wait for a slot: it can never run
    assert run.s.phase == "Failed"
    assert run.s.detail == "runtime context partition missing for automation run"
    assert run.cp.last_failure is not None
    assert run.cp.last_failure.node_id == "runtime_context"
    assert run.s.finished_at == format_ms(T0)
    assert record_events(d) == ["run_queued", "run_failed"]
    assert [e.type for e in d.events] == ["Normal", "Warning"]
    assert not d.start


def test_a_run_with_its_runtime_context_is_admitted() -> None:
    flow = make_flow(task("collect"), requiresRuntimeContext=True)
    run = Run(flow, runtimeContext={"tenant": "acme"})
    run.start()
    assert run.s.phase == "Running"


def test_a_run_whose_definition_is_missing_waits_with_a_warning() -> None:
    run = Run(CHAIN)
    run.decide(definition=None)
    d = run.decide(
        definition=None, definition_error="automation `nightly` not found", admission="admit"
    )
    assert run.s.phase == "Queued"
    assert run.s.detail == "automation `nightly` not found"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "AutomationUnresolved")]
    again = run.decide(
        definition=None, definition_error="automation `nightly` not found", admission="admit"
    )
    assert not again.changed
    assert not again.events
    run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert run.cp.pending_nodes == ["collect", "draft"]


def test_a_flow_with_a_dependency_cycle_fails_instead_of_blocking() -> None:
    flow = make_flow(task("collect", "draft"), task("draft", "collect"), task("free"))
    run = Run(flow)
    d = run.decide()
    assert run.s.phase == "Failed"
    assert run.s.detail in (
        "dependency cycle in flow: collect -> draft -> collect",
        "dependency cycle in flow: draft -> collect -> draft",
    )
    assert run.cp.last_failure is not None
    assert run.cp.last_failure.failure_kind == "invalid_definition"
    assert not d.start
    assert record_events(d) == ["run_queued", "run_failed"]


# ------------------------------------------------------------------------------ B10 nodes


def test_nodes_run_in_dependency_order_to_completion() -> None:
    run = Run(CHAIN)
    run.start()
    d = run.report("collect")
    assert run.cp.completed_nodes == ["collect"]
    assert run.cp.node_outputs["collect"] == {"status": "completed"}
    assert d.start == (StartAttempt(node_id="draft", attempt=1),)
    assert run.s.detail == "running node `draft` attempt 1"
    assert run.s.progress == "1/2"
    run.advance(1000)
    d = run.report("draft", output={"summary": "done"})
    assert run.s.phase == "Completed"
    assert run.s.detail == "completed"
    assert run.s.finished_at == format_ms(T0 + 1000)
    assert run.cp.node_outputs["draft"] == {"summary": "done", "status": "completed"}
    assert run.cp.pending_nodes == []
    assert record_events(d) == ["run_completed"]
    assert run.s.progress == "2/2"
    succeeded = {c.type: c.status for c in run.s.conditions}
    assert succeeded == {
        "Succeeded": "True",
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
        "AwaitingApproval": "False",
    }


def test_parallel_nodes_start_up_to_max_parallel_nodes() -> None:
    flow = make_flow(
        task("a"),
        task("b"),
        task("c"),
        task("join", "a", "b", "c"),
        execution={"maxParallelNodes": 2},
    )
    run = Run(flow)
    d = run.start()
    assert [a.node_id for a in d.start] == ["a", "b"]
    d = run.report("a")
    assert [a.node_id for a in d.start] == ["c"]
    assert run.in_flight == {"b", "c"}
    d = run.decide()
    assert not d.start
    assert not d.changed


def test_needs_repair_retries_until_attempts_run_out() -> None:
    run = Run(make_flow(task("collect", maxAttempts=2)))
    run.start()
    d = run.report("collect", "needs_repair")
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)
    assert run.cp.node_attempts == {"collect": 2}
    assert "collect" not in run.cp.node_outputs  # a new attempt clears the old output
    assert [v["status"] for v in run.cp.node_attempt_verdicts["collect"]] == ["needs_repair"]
    assert run.s.detail == "running node `collect` attempt 2"
    d = run.report("collect", "needs_repair")
    assert run.s.phase == "Failed"
    assert run.s.detail == "node `collect` failed after 2/2 attempts"
    assert run.cp.node_outputs["collect"]["status"] == "failed"
    assert run.cp.node_outputs["collect"]["exhausted"] is True
    assert run.cp.last_failure is not None
    assert run.cp.last_failure.failure_kind == "exhausted"
    assert record_events(d) == ["run_failed"]
    assert not d.start


def test_a_failed_node_fails_the_run_at_once() -> None:
    run = Run(CHAIN)
    run.start()
    d = run.report("collect", "failed")
    assert run.s.phase == "Failed"
    assert run.s.detail == "node `collect` failed after 1/3 attempts"
    assert run.cp.last_failure is not None
    assert run.cp.last_failure.node_id == "collect"
    assert run.cp.pending_nodes == ["collect", "draft"]
    assert not d.start


def test_an_executor_error_fails_the_node() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", error="agent endpoint `engine` not found")
    assert run.s.phase == "Failed"
    assert run.cp.node_outputs["collect"] == {
        "status": "failed",
        "error": "agent endpoint `engine` not found",
    }
    assert run.cp.last_failure is not None
    assert run.cp.last_failure.reason == "agent endpoint `engine` not found"
    assert run.cp.last_failure.failure_kind == "executor_error"


def test_an_unknown_status_counts_as_failed_and_case_does_not_matter() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", "Completed")
    assert run.cp.completed_nodes == ["collect"]
    run.report("draft", "exploded")
    assert run.s.phase == "Failed"
    assert run.cp.node_outputs["draft"]["status"] == "failed"


def test_a_blocked_node_blocks_its_descendants_and_the_run() -> None:
    flow = make_flow(
        task("collect"), task("draft", "collect"), task("side"), execution={"maxParallelNodes": 2}
    )
    run = Run(flow)
    run.start()
    run.report("collect", "blocked")
    assert run.cp.blocked_nodes == ["collect"]
    d = run.report("side")
    assert run.s.phase == "Blocked"
    assert run.s.detail == "blocked nodes: collect, draft"
    assert run.cp.blocked_nodes == ["collect", "draft"]
    assert record_events(d) == ["run_blocked"]
    assert run.s.finished_at is not None


def test_a_failed_output_left_at_the_end_fails_the_run() -> None:
    # Written by hand: nothing can run any more and one node's output is failed.
    flow = make_flow(task("collect"), task("side"))
    status = running_status(
        flow,
        claimant=ME,
        lease_expires_ms=T0 + 10**9,
        completed=["side"],
        outputs={"side": {"status": "completed"}, "collect": {"status": "failed"}},
    )
    run = Run(flow, status=status)
    d = run.decide(last_activity_ms=T0)
    assert run.s.phase == "Failed"
    assert run.s.detail == "node `collect` failed after 1/3 attempts"
    assert record_events(d) == ["run_failed"]
    assert not d.start


def test_an_attempt_lost_without_an_outcome_never_goes_past_max_attempts() -> None:
    # The last attempt was recorded, but no runner holds it (lost between write and start).
    flow = make_flow(task("collect", maxAttempts=2), task("draft", "collect"))
    status = running_status(flow, claimant=ME, lease_expires_ms=T0 + 10**9, attempts={"collect": 2})
    run = Run(flow, status=status)
    d = run.decide(in_flight=(), last_activity_ms=T0)
    assert not d.start
    assert run.s.phase == "Failed"
    assert run.s.detail == "node `collect` failed after 2/2 attempts"
    assert run.cp.node_outputs["collect"] == {"status": "failed", "exhausted": True}


def test_an_attempt_lost_with_attempts_left_is_started_again() -> None:
    status = running_status(CHAIN, claimant=ME, lease_expires_ms=T0 + 10**9)
    run = Run(CHAIN, status=status)
    d = run.decide(in_flight=(), last_activity_ms=T0)
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)


def test_shutdown_starts_nothing_and_leaves_cut_off_attempts_to_the_next_operator() -> None:
    run = Run(CHAIN)
    run.start()
    d = run.decide(
        outcomes=[run.outcome("collect", cancelled=True)], in_flight=(), shutting_down=True
    )
    assert not d.start
    assert run.s.phase == "Running"
    assert run.cp.node_attempts["collect"] == 1
    # The next operator (a new instance) finds the run orphaned: B1.
    d = run.decide(instance="operator-c", live={"operator-c"})
    assert run.s.phase == "Failed"
    assert run.s.stop_kind == "ServerRestart"


def test_stale_outcomes_are_ignored() -> None:
    run = Run(CHAIN)
    run.start()
    d = run.decide(
        outcomes=[
            AttemptOutcome(node_id="collect", attempt=7, status="completed"),
            AttemptOutcome(node_id="draft", attempt=1, status="completed"),
        ],
        in_flight={"collect"},
    )
    assert run.cp.completed_nodes == []
    assert d.consumed == 2
    assert not d.changed


def test_a_cancelled_attempt_does_not_count() -> None:
    run = Run(CHAIN)
    run.start()
    run.decide(outcomes=[run.outcome("collect", cancelled=True)], in_flight=())
    assert run.cp.node_attempts["collect"] == 1  # given back, then started again
    assert run.cp.node_attempt_verdicts["collect"][0]["status"] == "cancelled"
    assert run.in_flight == {"collect"}


def test_transient_errors_back_off_through_the_queue() -> None:
    run = Run(CHAIN)
    run.start()
    d = run.report("collect", transient=True, error="connection reset")
    assert run.s.phase == "Queued"
    assert run.s.scheduler is not None
    assert run.s.scheduler.queue_reason == "retry_backoff"
    assert run.s.scheduler.retry_after == format_ms(T0 + 2000)
    assert run.cp.node_retry_after == {"collect": format_ms(T0 + 2000)}
    assert run.cp.node_attempts["collect"] == 0
    assert run.s.detail == "retrying node `collect` after transient provider failure"
    assert record_events(d) == ["run_queued_retry_backoff"]
    assert run.s.execution_claim is None
    # Admission before the back-off ends changes nothing.
    run.advance(1999)
    d = run.decide(admission="admit")
    assert run.s.phase == "Queued"
    assert run.s.scheduler is not None
    assert run.s.scheduler.queue_reason == "retry_backoff"
    assert not d.changed
    run.advance(1)
    d = run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert d.start == (StartAttempt(node_id="collect", attempt=1),)
    assert run.cp.node_retry_after == {}


def test_transient_back_off_grows_then_gives_up_as_needs_repair() -> None:
    run = Run(make_flow(task("collect", maxAttempts=2)))
    run.start()
    delays = []
    for _ in range(4):
        started = run.now
        run.report("collect", transient=True, error="503")
        assert run.s.scheduler is not None
        retry_after = parse_ms(run.s.scheduler.retry_after)
        assert retry_after is not None
        delays.append(retry_after - started)
        run.now = retry_after
        run.decide(admission="admit")
        assert run.s.phase == "Running"
    assert delays == [2000, 5000, 8000, 8000]
    # The fifth transient error in a row is a needs_repair verdict on the attempt.
    d = run.report("collect", transient=True, error="503")
    assert run.s.phase == "Running"
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)
    statuses = [v["status"] for v in run.cp.node_attempt_verdicts["collect"]]
    assert statuses == ["transient_error"] * 5 + ["needs_repair"]


def test_a_transient_error_while_other_nodes_run_waits_inside_the_run() -> None:
    flow = make_flow(task("a"), task("b"), execution={"maxParallelNodes": 2})
    run = Run(flow)
    run.start()
    run.report("a", transient=True, error="reset")
    assert run.s.phase == "Running"
    assert run.in_flight == {"b"}
    run.advance(2000)
    d = run.decide()
    assert d.start == (StartAttempt(node_id="a", attempt=1),)


# ------------------------------------------------------------------------------ B17 usage


def test_usage_adds_up_and_is_priced() -> None:
    settings = dataclasses.replace(SETTINGS, token_cost_per_1k_usd=Decimal("0.5"))
    run = Run(CHAIN, settings=settings)
    run.start()
    run.report("collect", prompt_tokens=600, completion_tokens=400)
    assert run.s.usage.prompt_tokens == 600
    assert run.s.usage.completion_tokens == 400
    assert run.s.usage.total_tokens == 1000
    assert run.s.usage.estimated_cost_usd == "0.5"
    run.report("draft", prompt_tokens=1, completion_tokens=2)
    assert run.s.usage.total_tokens == 1003
    assert run.s.usage.estimated_cost_usd == "0.5015"


def test_usage_is_free_by_default() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", prompt_tokens=600, completion_tokens=400)
    assert run.s.usage.total_tokens == 1000
    assert run.s.usage.estimated_cost_usd == "0"


def test_usage_of_every_outcome_counts_even_after_a_failure() -> None:
    flow = make_flow(task("a"), task("b"), execution={"maxParallelNodes": 2})
    run = Run(flow)
    run.start()
    run.decide(
        outcomes=[
            run.outcome("a", "failed", prompt_tokens=10),
            run.outcome("b", "completed", prompt_tokens=20, completion_tokens=5),
        ]
    )
    assert run.s.phase == "Failed"
    assert run.s.usage.total_tokens == 35


def test_usage_reported_after_a_run_ended_still_counts() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(desired_state="Cancelled")
    run.decide()
    assert run.s.phase == "Cancelled"
    run.decide(outcomes=[run.outcome("collect", cancelled=True, prompt_tokens=42)])
    assert run.s.usage.prompt_tokens == 42
    assert run.s.phase == "Cancelled"


# ------------------------------------------------------------------------------ B8 guardrails


def test_a_token_budget_pauses_the_run() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"), execution={"maxTotalTokens": 100})
    run = Run(flow)
    run.start()
    d = run.report("collect", prompt_tokens=80, completion_tokens=21)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "GuardrailStopped"
    assert run.s.pause_reason == "token budget exceeded: 101 > maxTotalTokens 100"
    assert run.s.stop_reason == run.s.pause_reason
    record = only_record(d, "run_paused")
    assert record.stop_kind == "GuardrailStopped"
    assert not d.start
    assert run.s.execution_claim is None


def test_a_cost_budget_pauses_the_run() -> None:
    settings = dataclasses.replace(SETTINGS, token_cost_per_1k_usd=Decimal(2))
    flow = make_flow(
        task("collect"), task("draft", "collect"), execution={"maxTotalCostUsd": "1.50"}
    )
    run = Run(flow, settings=settings)
    run.start()
    run.report("collect", prompt_tokens=700)
    assert run.s.phase == "Running"
    run.report("draft", prompt_tokens=100)
    # 800 tokens at 2 USD per 1k = 1.6 > 1.50
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "GuardrailStopped"
    assert run.s.pause_reason == "cost budget exceeded: 1.6 > maxTotalCostUsd 1.50"


def test_a_runtime_budget_pauses_the_run_and_cancels_attempts() -> None:
    flow = make_flow(task("collect"), execution={"maxTotalRuntimeSeconds": 60})
    run = Run(flow)
    run.start()
    run.advance(60_000)
    assert run.decide().status.phase == "Running"
    run.advance(1)
    d = run.decide()
    assert run.s.phase == "Paused"
    assert run.s.pause_reason == "runtime budget exceeded: maxTotalRuntimeSeconds 60"
    assert d.cancel == {"collect"}
    # The cancelled attempt is given back: it was the operator's doing, not the node's.
    assert run.cp.node_attempts["collect"] == 0


def test_an_approved_override_lets_the_run_exceed_its_budgets() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"), execution={"maxTotalTokens": 10})
    run = Run(flow)
    run.start()
    override = Override(name="more-tokens", agent_id="researcher")
    run.report("collect", prompt_tokens=500)
    assert run.s.phase == "Paused"
    # B7 below; here: with the override present from the start the budget never stops it.
    other = Run(flow)
    other.decide()
    other.decide(admission="admit", overrides=[override])
    other.decide(outcomes=[other.outcome("collect", prompt_tokens=500)], overrides=[override])
    assert other.s.phase == "Running"
    other.decide(outcomes=[other.outcome("draft")], overrides=[override])
    assert other.s.phase == "Completed"


def test_an_override_for_the_creator_also_covers_the_run() -> None:
    flow = make_flow(task("collect"), execution={"maxTotalTokens": 10})
    run = Run(flow)
    run.decide()
    creator = [Override(name="alice-ok", agent_id="alice")]
    run.decide(admission="admit", overrides=creator)
    run.decide(
        outcomes=[run.outcome("collect", "needs_repair", prompt_tokens=99)], overrides=creator
    )
    assert run.s.phase == "Running"


# ------------------------------------------------------------------------------ B7


def guardrail_stopped(flow: AutomationSpec) -> Run:
    run = Run(flow)
    run.start()
    run.report("collect", prompt_tokens=500)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "GuardrailStopped"
    return run


BUDGETED = make_flow(task("collect"), task("draft", "collect"), execution={"maxTotalTokens": 10})


def test_an_approved_override_resumes_a_guardrail_stopped_run() -> None:
    run = guardrail_stopped(BUDGETED)
    run.advance(5000)
    d = run.decide(overrides=[Override(name="o", agent_id="researcher")], admission="admit")
    record = only_record(d, "run_auto_resumed")
    assert record.reason == "auto_resume_after_guardrail_override"
    assert record.metadata == {"agent_ids": ["researcher"], "stop_kind": "guardrail_stopped"}
    assert run.s.phase == "Running"
    assert run.s.stop_kind is None
    assert run.s.pause_reason is None
    assert d.start == (StartAttempt(node_id="draft", attempt=1),)


@pytest.mark.parametrize(
    ("overrides", "desired"),
    [
        ([], "Running"),
        ([Override(name="o", agent_id="someone-else")], "Running"),
        ([Override(name="o", agent_id="researcher")], "Paused"),
    ],
)
def test_a_guardrail_stopped_run_stays_paused_without_a_covering_override(
    overrides: list[Override], desired: str
) -> None:
    run = guardrail_stopped(BUDGETED)
    run.set_spec(desired_state=desired)
    run.advance(5000)
    run.decide(overrides=overrides, admission="admit")
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "GuardrailStopped"


def test_a_user_resume_does_not_lift_a_guardrail_stop() -> None:
    run = guardrail_stopped(BUDGETED)
    run.set_spec(desired_state="Paused")
    run.decide()
    run.set_spec(desired_state="Running")
    d = run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert not d.records


# ------------------------------------------------------------------------------ B5 stale reap


def stale_running(flow: AutomationSpec, **kw: Any) -> Run:
    run = Run(flow, status=running_status(flow, claimant=ME, lease_expires_ms=T0 + 10**9, **kw))
    return run


@pytest.mark.parametrize(
    ("timeout_seconds", "threshold"),
    [(None, 600_000), (60, 600_000), (540, 600_000), (900, 960_000)],
)
def test_stale_reap_waits_for_the_larger_of_the_setting_and_the_node_timeout(
    timeout_seconds: int | None, threshold: int
) -> None:
    node = (
        task("collect")
        if timeout_seconds is None
        else task("collect", timeoutSeconds=timeout_seconds)
    )
    flow = make_flow(node, task("draft", "collect"))
    last = T0 - 60_000
    run = stale_running(flow, started_ms=last)
    run.now = last + threshold - 1
    assert not run.decide(in_flight={"collect"}).changed
    run.now = last + threshold
    d = run.decide(in_flight={"collect"}, rounds=1)
    assert run.s.phase == "Paused"
    record = only_record(d, "run_paused_stale_no_provider_activity")
    assert record.metadata is not None
    assert record.metadata["stale_after_ms"] == threshold


def test_stale_reap_pauses_a_silent_run_for_repair() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"))
    run = stale_running(flow, started_ms=T0 - 600_000)
    d = run.decide(in_flight={"collect"}, last_activity_ms=T0 - 600_000, rounds=1)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "StaleReaped"
    assert run.s.pause_reason == "stale_no_provider_activity"
    assert run.s.stop_reason == "stale_no_provider_activity"
    assert run.cp.node_outputs["collect"] == {
        "status": "needs_repair",
        "blocker_category": "stale_no_provider_activity",
    }
    record = only_record(d, "run_paused_stale_no_provider_activity")
    assert record.stop_kind == "StaleReaped"
    assert d.cancel == {"collect"}
    assert run.s.execution_claim is None


def test_stale_reap_fails_a_run_whose_node_is_out_of_attempts() -> None:
    flow = make_flow(task("collect", maxAttempts=2), task("draft", "collect"))
    run = stale_running(flow, attempts={"collect": 2}, started_ms=T0 - 600_000)
    d = run.decide(in_flight={"collect"})
    assert run.s.phase == "Failed"
    assert run.s.stop_kind == "StaleReaped"
    assert run.cp.node_outputs["collect"] == {
        "status": "failed",
        "blocker_category": "stale_no_provider_activity",
    }
    assert run.s.detail == "node `collect` failed after 2/2 attempts"
    only_record(d, "run_failed_stale_no_provider_activity")
    assert [e.type for e in d.events] == ["Warning"]


def test_recent_executor_activity_prevents_a_stale_reap() -> None:
    flow = make_flow(task("collect"))
    run = stale_running(flow, started_ms=T0 - 3_600_000)
    d = run.decide(in_flight={"collect"}, last_activity_ms=T0 - 1000)
    assert run.s.phase == "Running"
    assert not d.changed


def test_a_node_started_recently_is_not_reaped_for_older_runner_activity() -> None:
    flow = make_flow(task("collect"))
    run = stale_running(flow, started_ms=T0 - 3_600_000)
    run.status = hand_status(
        {**run.s.to_api(), "checkpoint": {**run.cp.to_api(), "lastActivityAt": format_ms(T0 - 5)}}
    )
    run.decide(in_flight={"collect"}, last_activity_ms=T0 - 3_600_000)
    assert run.s.phase == "Running"


# ------------------------------------------------------------------------------ B6


def reaped(flow: AutomationSpec, *, settings: Settings = SETTINGS) -> Run:
    run = Run(flow, settings=settings)
    run.start()
    run.advance(settings.stale_running_ms)
    d = run.decide(last_activity_ms=T0, rounds=1)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "StaleReaped"
    assert d.cancel == {"collect"}
    run.in_flight = frozenset()  # the cancelled attempt has ended
    return run


def test_a_stale_reaped_run_is_resumed_automatically() -> None:
    run = reaped(CHAIN)
    reaped_at = run.now
    run.advance(1000)
    d = run.decide(admission="admit")
    record = only_record(d, "run_auto_resumed")
    assert record.reason == "auto_resume_after_stale_reap"
    assert record.metadata == {
        "auto_resume_window_ms": SETTINGS.stale_auto_resume_window_ms,
        "stale_reaped_at_ms": reaped_at,
    }
    assert run.s.counters.auto_resumes == 1
    assert run.s.phase == "Running"
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)
    assert run.s.stop_kind is None
    assert run.s.stop_reason is None
    assert run.s.pause_reason is None


def test_auto_resume_goes_through_the_queue() -> None:
    run = reaped(CHAIN)
    run.decide(admission="capacity")
    assert run.s.phase == "Queued"
    assert run.s.detail is None
    assert run.s.scheduler is not None
    assert run.s.scheduler.queue_reason == "capacity"


def test_auto_resume_stops_at_the_cap() -> None:
    settings = dataclasses.replace(SETTINGS, stale_auto_resume_max_attempts=1)
    run = Run(make_flow(task("collect", maxAttempts=5)), settings=settings)
    run.start()
    for _ in range(2):
        run.advance(settings.stale_running_ms)
        run.decide(last_activity_ms=run.now - settings.stale_running_ms, rounds=1)
        assert run.s.phase == "Paused"
        run.in_flight = frozenset()
        run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert run.s.counters.auto_resumes == 1
    assert run.events().count("run_auto_resumed") == 1


def test_auto_resume_needs_the_reap_within_the_window() -> None:
    run = reaped(CHAIN)
    run.advance(SETTINGS.stale_auto_resume_window_ms)
    # Exactly at the window's edge: still allowed.
    probe = Run(CHAIN, status=run.s, now=run.now)
    probe.decide()
    assert probe.s.phase == "Queued"
    run.advance(1)
    d = run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert not d.changed


def test_auto_resume_can_be_disabled() -> None:
    settings = dataclasses.replace(SETTINGS, stale_auto_resume_disabled=True)
    run = reaped(CHAIN, settings=settings)
    run.decide(admission="admit")
    assert run.s.phase == "Paused"


def test_auto_resume_respects_a_user_pause() -> None:
    run = reaped(CHAIN)
    run.set_spec(desired_state="Paused")
    run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "StaleReaped"


def test_auto_resume_needs_a_node_to_repair_with_attempts_left() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"))
    status = running_status(flow, claimant=None, phase="Paused").to_api()
    status.update(stopKind="StaleReaped", pauseReason="stale_no_provider_activity")
    status["checkpoint"]["lifecycleHistory"] = [
        {
            "event": "run_paused_stale_no_provider_activity",
            "recordedAt": format_ms(T0 - 1000),
            "stopKind": "StaleReaped",
        }
    ]
    cases = {
        "exhausted": ({"collect": 3}, {"collect": {"status": "needs_repair"}}, "Paused"),
        "failed output": ({"collect": 1}, {"collect": {"status": "failed"}}, "Paused"),
        "no output": ({"collect": 1}, {}, "Paused"),
        "upper case": ({"collect": 1}, {"collect": {"status": "NEEDS_REPAIR"}}, "Queued"),
    }
    for name, (attempts, outputs, phase) in cases.items():
        data = {**status, "checkpoint": {**status["checkpoint"]}}
        data["checkpoint"]["nodeAttempts"] = attempts
        data["checkpoint"]["nodeOutputs"] = outputs
        run = Run(flow, status=hand_status(data))
        run.decide()
        assert run.s.phase == phase, name


# ------------------------------------------------------------------------------ B1, B1r, B2, B3


@pytest.mark.parametrize(
    ("claimant", "lease_expires_ms", "live"),
    [
        (None, T0 + 10_000, {ME}),  # no claim
        (DEAD, T0 + 10_000, {ME}),  # claimant is not a live instance
        (DEAD, T0 - 1, {ME, DEAD}),  # lease expired
    ],
)
def test_an_orphaned_running_run_fails_on_restart(
    claimant: str | None, lease_expires_ms: int, live: set[str]
) -> None:
    run = Run(
        CHAIN, status=running_status(CHAIN, claimant=claimant, lease_expires_ms=lease_expires_ms)
    )
    d = run.decide(live=live, admission="admit")
    assert run.s.phase == "Failed"
    assert run.s.stop_kind == "ServerRestart"
    assert run.s.detail == RESTART_DETAIL == "automation run interrupted by server restart"
    assert run.s.stop_reason == RESTART_DETAIL
    record = only_record(d, "run_failed_server_restart")
    assert record.stop_kind == "ServerRestart"
    assert run.s.execution_claim is None
    assert run.s.finished_at == format_ms(T0)
    assert not d.start


@pytest.mark.parametrize(("claimant", "live"), [(ME, {ME}), (DEAD, {ME, DEAD})])
def test_a_run_with_a_live_claim_is_not_orphaned(claimant: str, live: set[str]) -> None:
    run = Run(CHAIN, status=running_status(CHAIN, claimant=claimant, lease_expires_ms=T0 + 1))
    run.decide(live=live, in_flight={"collect"})
    assert run.s.phase == "Running"


def test_restart_recovery_requeue_marks_interrupted_nodes_for_repair() -> None:
    settings = dataclasses.replace(SETTINGS, restart_recovery="requeue")
    run = Run(CHAIN, settings=settings, status=running_status(CHAIN))
    d = run.decide()
    assert run.s.phase == "Queued"
    assert run.cp.node_outputs["collect"] == {
        "status": "needs_repair",
        "blocker_category": "server_restart_interrupted",
    }
    record = only_record(d, "run_queued_for_resume_after_restart")
    assert record.metadata == {"interrupted_nodes": ["collect"]}
    assert run.s.execution_claim is None
    assert run.s.scheduler is not None
    d = run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)
    assert run.s.execution_claim is not None
    assert run.s.execution_claim.claimant == ME


def test_restart_recovery_requeue_fails_a_node_out_of_attempts() -> None:
    settings = dataclasses.replace(SETTINGS, restart_recovery="requeue")
    run = Run(CHAIN, settings=settings, status=running_status(CHAIN, attempts={"collect": 3}))
    d = run.decide()
    assert run.s.phase == "Failed"
    assert run.s.stop_kind == "ServerRestart"
    assert record_events(d) == ["run_failed_server_restart"]


def test_an_orphaned_pausing_run_settles_to_paused() -> None:
    run = Run(CHAIN, status=running_status(CHAIN, phase="Pausing"))
    run.set_spec(desired_state="Paused")
    d = run.decide()
    assert run.s.phase == "Paused"
    assert run.s.pause_reason == "automation run settled to paused after server restart"
    assert run.s.stop_kind is None
    record = only_record(d, "run_pausing_settled_on_restart")
    assert record.reason == run.s.pause_reason
    assert run.s.execution_claim is None
    # The interrupted attempt is given back, as when a pause settles normally.
    assert run.cp.node_attempts["collect"] == 0


def test_an_orphaned_pausing_run_keeps_its_pause_reason() -> None:
    status = running_status(CHAIN, phase="Pausing", pauseReason="maintenance window")
    run = Run(CHAIN, status=status, desiredState="Paused")
    run.decide()
    assert run.s.phase == "Paused"
    assert run.s.pause_reason == "maintenance window"


ARTIFACT = {"path": "reports/q3.md", "contentDigest": "sha256:0f1e", "validated": True}


@pytest.mark.parametrize("phase", ["Paused", "AwaitingApproval"])
def test_paused_and_awaiting_runs_are_left_alone_on_restart(phase: str) -> None:
    outputs = {"collect": {"status": "completed", "artifact": ARTIFACT}}
    extra: dict[str, Any] = {"pauseReason": "paused by user"} if phase == "Paused" else {}
    status = running_status(
        REVIEWED,
        phase=phase,
        claimant=None,
        completed=["collect", "draft"],
        outputs={**outputs, "draft": {"status": "completed"}},
        **extra,
    )
    if phase == "AwaitingApproval":
        status.checkpoint.awaiting_gate = hand_status(
            {
                "checkpoint": {
                    "awaitingGate": {"nodeId": "review", "requestedAt": format_ms(T0 - 1000)}
                }
            }
        ).checkpoint.awaiting_gate
        status.checkpoint.blocked_nodes = ["publish"]
    desired = "Paused" if phase == "Paused" else "Running"
    run = Run(REVIEWED, status=status, desiredState=desired)
    d = run.decide(live={"operator-c"})
    assert not d.changed
    assert not d.records
    assert run.s.phase == phase
    assert run.cp.node_outputs["collect"]["artifact"] == ARTIFACT
    if phase == "Paused":
        run.set_spec(desired_state="Running")
        d = run.decide(admission="admit")
        assert record_events(d) == ["run_resumed", "run_started", "run_awaiting_approval"]
        assert run.cp.node_outputs["collect"]["artifact"] == ARTIFACT


# ------------------------------------------------------------------------------ B11 gates


def at_gate(flow: AutomationSpec = REVIEWED, **spec: Any) -> Run:
    run = Run(flow, **spec)
    run.start()
    run.report("collect")
    d = run.report("draft")
    assert run.s.phase == "AwaitingApproval", record_events(d)
    return run


def test_a_gate_opens_when_only_approval_nodes_can_run() -> None:
    run = at_gate()
    d = run.decisions[-1]
    gate_state = run.cp.awaiting_gate
    assert gate_state is not None
    assert gate_state.node_id == "review"
    assert gate_state.title == "Review review"
    assert gate_state.decisions == ["approve", "rework", "cancel"]
    assert gate_state.requested_at == format_ms(run.now)
    assert run.cp.blocked_nodes == ["publish"]
    assert record_events(d) == ["run_awaiting_approval"]
    assert run.s.execution_claim is None
    conditions = {c.type: c.status for c in run.s.conditions}
    assert conditions["AwaitingApproval"] == "True"


def decide_gate(
    run: Run, decision: str, *, request_id: str | None = None, **extra: Any
) -> Decision:
    entry = GateDecision.model_validate(
        {
            "gate": "review",
            "decision": decision,
            "requestId": request_id,
            "decidedBy": "bob",
            **extra,
        }
    )
    run.set_spec(gate_decisions=[*run.spec.gate_decisions, entry])
    return run.decide(admission="admit")


def test_approve_completes_the_gate_and_continues() -> None:
    run = at_gate()
    d = decide_gate(run, "approve", request_id="r1", reason="looks good")
    assert "review" in run.cp.completed_nodes
    assert run.cp.node_outputs["review"] == {
        "status": "completed",
        "contract_kind": "approval_gate",
    }
    assert run.cp.blocked_nodes == []
    assert run.cp.awaiting_gate is None
    assert record_events(d) == ["run_gate_approved", "run_started"]
    assert d.start == (StartAttempt(node_id="publish", attempt=1),)
    [entry] = run.cp.gate_history
    assert (entry.node_id, entry.decision, entry.reason, entry.decided_by) == (
        "review",
        "approve",
        "looks good",
        "bob",
    )
    run.report("publish")
    assert run.s.phase == "Completed"


def test_a_quorum_counts_distinct_approvers_and_the_last_one_passes_the_gate() -> None:
    """B18c: with requiredApprovals 2, one approval keeps the gate waiting (listed in
    awaitingGate.approvals and gateHistory), the same user again adds nothing, and a
    second user passes it."""
    flow = make_flow(
        task("collect"),
        task("draft", "collect"),
        gate("review", "draft", requiredApprovals=2),
        task("publish", "review"),
    )
    run = at_gate(flow)
    d = decide_gate(run, "approve", decidedBy="alice")
    assert run.s.phase == "AwaitingApproval"
    gate_state = run.cp.awaiting_gate
    assert gate_state is not None
    assert [a.user for a in gate_state.approvals] == ["alice"]
    assert [(e.decision, e.decided_by) for e in run.cp.gate_history] == [("approve", "alice")]
    assert record_events(d) == []
    assert [e.reason for e in d.events] == ["GateApprovalRecorded"]
    assert run.s.detail == "awaiting approval at gate `review`: approved by alice (1/2)"

    d = decide_gate(run, "approve", decidedBy="alice")
    assert run.s.phase == "AwaitingApproval"
    assert [e.decided_by for e in run.cp.gate_history] == ["alice"]
    assert d.events == ()

    d = decide_gate(run, "approve", decidedBy="bob")
    assert record_events(d) == ["run_gate_approved", "run_started"]
    assert [e.decided_by for e in run.cp.gate_history] == ["alice", "bob"]
    assert "review" in run.cp.completed_nodes


def test_a_rework_in_a_quorum_acts_at_once_and_the_reopened_gate_asks_anew() -> None:
    flow = make_flow(
        task("collect"),
        task("draft", "collect"),
        gate("review", "draft", requiredApprovals=2),
        task("publish", "review"),
    )
    run = at_gate(flow)
    decide_gate(run, "approve", decidedBy="alice")
    d = decide_gate(run, "rework", decidedBy="bob")
    assert "run_gate_reworked" in record_events(d)
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"
    gate_state = run.cp.awaiting_gate
    assert gate_state is not None
    assert gate_state.approvals == []
    decide_gate(run, "approve", decidedBy="alice")
    assert run.s.phase == "AwaitingApproval"  # alice's earlier approval was for the old request


def test_a_node_blocked_before_the_gate_opened_still_blocks_the_run() -> None:
    flow = make_flow(gate("review"), task("side"))
    run = Run(flow)
    run.start()
    d = run.report("side", "blocked")
    assert run.s.phase == "AwaitingApproval", record_events(d)
    assert run.cp.blocked_nodes == ["side"]
    decide_gate(run, "approve")
    assert run.s.phase == "Blocked"
    assert run.s.detail == "blocked nodes: side"
    assert run.cp.completed_nodes == ["review"]


def test_approve_without_admission_waits_in_the_queue() -> None:
    run = at_gate()
    run.set_spec(gate_decisions=[GateDecision(gate="review", decision="approve")])
    run.decide(admission="capacity")
    assert run.s.phase == "Queued"
    assert run.s.detail == "gate `review` approved"


def test_rework_resets_the_targets_the_gate_and_their_descendants() -> None:
    run = at_gate()
    d = decide_gate(run, "rework", reason="needs sources")
    assert record_events(d) == ["run_gate_reworked", "run_started"]
    # No reworkTargets: the gate's upstream node `draft` is redone.
    assert run.cp.completed_nodes == ["collect"]
    assert run.cp.pending_nodes == ["draft", "review", "publish"]
    assert run.cp.blocked_nodes == []
    assert "draft" not in run.cp.node_outputs
    assert run.cp.node_attempts == {"collect": 1, "draft": 1}
    assert d.start == (StartAttempt(node_id="draft", attempt=1),)
    # Earlier outcomes stay on record.
    assert [v["status"] for v in run.cp.node_attempt_verdicts["draft"]] == ["completed"]
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"


def test_rework_targets_reset_their_whole_downstream() -> None:
    flow = make_flow(
        task("collect"),
        task("draft", "collect"),
        gate("review", "draft", reworkTargets=["collect"]),
        task("publish", "review"),
    )
    run = at_gate(flow)
    d = decide_gate(run, "rework")
    assert run.cp.completed_nodes == []
    assert run.cp.pending_nodes == ["collect", "draft", "review", "publish"]
    assert d.start == (StartAttempt(node_id="collect", attempt=1),)


def test_cancel_at_a_gate_cancels_the_run() -> None:
    run = at_gate()
    d = decide_gate(run, "cancel", reason="not needed")
    assert run.s.phase == "Cancelled"
    assert run.s.stop_kind == "Cancelled"
    assert run.s.stop_reason == "not needed"
    assert only_record(d, "run_cancelled").stop_kind == "Cancelled"
    assert run.cp.awaiting_gate is None
    assert run.cp.gate_history[0].decision == "cancel"


def test_a_decision_lands_in_gate_history_once() -> None:
    run = at_gate()
    decide_gate(run, "approve", request_id="r1")
    run.report("publish")
    assert run.s.phase == "Completed"
    # The same request again (a client retry) is not applied again and not rejected.
    d = decide_gate(run, "approve", request_id="r1")
    assert len(run.cp.gate_history) == 1
    assert not d.events
    assert not d.records


def test_a_decision_for_a_gate_that_is_not_awaiting_is_rejected() -> None:
    run = Run(REVIEWED)
    run.start()
    d = decide_gate(run, "approve", request_id="early")
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "GateDecisionRejected")]
    assert run.cp.gate_history == []
    assert run.s.phase == "Running"
    assert not d.records
    # Rejected once: the next decisions do not warn about it again.
    assert not run.decide().events


def test_a_decision_for_another_gate_is_rejected() -> None:
    run = at_gate()
    run.set_spec(gate_decisions=[GateDecision(gate="draft", decision="approve")])
    d = run.decide()
    assert [e.reason for e in d.events] == ["GateDecisionRejected"]
    assert "gate review is awaiting" in d.events[0].message
    assert run.s.phase == "AwaitingApproval"


def test_a_decision_the_gate_does_not_offer_is_rejected() -> None:
    flow = make_flow(task("draft"), gate("review", "draft", decisions=["approve"]))
    run = Run(flow)
    run.start()
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"
    d = decide_gate(run, "cancel")
    assert run.s.phase == "AwaitingApproval"
    assert [e.reason for e in d.events] == ["GateDecisionRejected"]
    assert run.cp.gate_history == []


@pytest.mark.parametrize(
    ("action", "phase", "event"),
    [
        ("cancel", "Cancelled", "run_cancelled"),
        ("resume", "Running", "run_gate_approved"),
    ],
)
def test_gate_expiry_applies_its_action(action: str, phase: str, event: str) -> None:
    flow = make_flow(
        task("draft"),
        gate("review", "draft", expiry={"afterSeconds": 3600, "action": action}),
        task("publish", "review"),
    )
    run = Run(flow)
    run.start()
    run.report("draft")
    run.advance(3_599_999)
    assert not run.decide(admission="admit").changed
    run.advance(1)
    d = run.decide(admission="admit")
    assert run.s.phase == phase
    assert event in record_events(d)
    [entry] = run.cp.gate_history
    assert entry.decided_by == "system:expiry"
    assert entry.metadata == {"source": "expiry"}


def test_gate_expiry_remind_records_once_and_keeps_waiting() -> None:
    flow = make_flow(
        task("draft"), gate("review", "draft", expiry={"afterSeconds": 60, "action": "remind"})
    )
    run = Run(flow)
    run.start()
    run.report("draft")
    run.advance(60_000)
    d = run.decide()
    record = only_record(d, "approval_gate_reminder_due")
    assert record.metadata == {"node_id": "review", "requested_at_ms": T0}
    assert run.s.phase == "AwaitingApproval"
    run.advance(60_000)
    assert not run.decide().changed


# ------------------------------------------------------------------------------ B4


def test_a_stale_gate_is_marked_once() -> None:
    settings = dataclasses.replace(SETTINGS, approval_gate_stale_after_ms=7_200_000)
    run = Run(REVIEWED, settings=settings)
    run.start()
    run.report("collect")
    run.report("draft")
    requested = run.now
    run.advance(7_199_999)
    assert not run.decide().changed
    run.advance(1)
    d = run.decide()
    record = only_record(d, "approval_gate_marked_stale")
    assert record.metadata == {
        "node_id": "review",
        "requested_at_ms": requested,
        "stale_after_ms": 7_200_000,
        "policy": "manual_only_visible_status",
    }
    assert run.s.detail == (
        "awaiting manual approval for gate `review` for at least 7200s; "
        "no automatic expiry action is configured"
    )
    gate_state = run.cp.awaiting_gate
    assert gate_state is not None
    assert gate_state.metadata == {
        "stale": True,
        "stale_policy": "manual_only_visible_status",
        "stale_after_ms": 7_200_000,
        "stale_marked_at_ms": run.now,
        "requested_at_ms": requested,
    }
    assert run.s.phase == "AwaitingApproval"
    for _ in range(3):
        run.advance(86_400_000)
        assert not run.decide().changed


def test_a_stale_gate_can_still_be_approved() -> None:
    run = at_gate()
    run.advance(SETTINGS.approval_gate_stale_after_ms)
    run.decide()
    decide_gate(run, "approve")
    assert run.s.phase == "Running"


# ------------------------------------------------------------------------------ B12 pause/resume


def test_pausing_a_queued_run_pauses_it_at_once() -> None:
    run = Run(CHAIN)
    run.decide()
    run.set_spec(desired_state="Paused", pause_reason="holiday")
    d = run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert run.s.pause_reason == "holiday"
    assert record_events(d) == ["run_paused"]
    assert run.s.scheduler is None


def test_pausing_a_running_run_goes_through_pausing() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(desired_state="Paused")
    d = run.decide()
    assert run.s.phase == "Pausing"
    assert run.s.pause_reason == "paused by user"
    assert d.cancel == {"collect"}
    assert record_events(d) == ["run_pausing"]
    assert run.s.execution_claim is not None
    d = run.decide(in_flight={"collect"})
    assert run.s.phase == "Pausing"
    assert not d.changed
    d = run.decide(outcomes=[run.outcome("collect", cancelled=True)], in_flight=())
    assert run.s.phase == "Paused"
    assert record_events(d) == ["run_paused"]
    assert run.cp.node_attempts["collect"] == 0
    assert run.s.execution_claim is None


def test_an_attempt_that_finishes_while_pausing_keeps_its_result() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(desired_state="Paused")
    run.decide()
    assert run.s.phase == "Pausing"
    run.decide(outcomes=[run.outcome("collect", "completed")], in_flight=())
    assert run.s.phase == "Paused"
    assert run.cp.completed_nodes == ["collect"]


def test_an_attempt_cut_short_by_a_pause_is_given_back_once() -> None:
    run = Run(make_flow(task("collect", maxAttempts=3)))
    run.start()
    run.report("collect", "needs_repair")
    assert run.cp.node_attempts["collect"] == 2
    run.set_spec(desired_state="Paused")
    run.decide()
    assert run.s.phase == "Pausing"
    # Whether the runner reports the cancellation or a transient error, attempt 2 is given
    # back exactly once: the node has had one attempt.
    run.decide(outcomes=[run.outcome("collect", transient=True, error="reset")], in_flight=())
    assert run.s.phase == "Paused"
    assert run.cp.node_attempts["collect"] == 1
    run.set_spec(desired_state="Running")
    d = run.decide(admission="admit")
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)


def test_a_failure_reported_while_pausing_fails_the_run() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(desired_state="Paused")
    run.decide()
    d = run.decide(outcomes=[run.outcome("collect", "failed")], in_flight=())
    assert run.s.phase == "Failed"
    assert record_events(d) == ["run_failed"]


def test_pausing_an_idle_running_run_records_both_steps() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(desired_state="Paused")
    d = run.decide(in_flight=())
    assert run.s.phase == "Paused"
    assert record_events(d) == ["run_pausing", "run_paused"]


def test_resume_requeues_a_user_paused_run() -> None:
    run = Run(CHAIN)
    run.decide()
    run.set_spec(desired_state="Paused")
    run.decide()
    run.set_spec(desired_state="Running")
    d = run.decide(admission="capacity")
    assert run.s.phase == "Queued"
    assert run.s.resume_reason == "resumed by user"
    assert run.s.pause_reason is None
    assert record_events(d) == ["run_resumed"]


def test_a_user_pause_and_resume_of_a_stale_reaped_run_waits_for_auto_resume() -> None:
    settings = dataclasses.replace(SETTINGS, stale_auto_resume_disabled=True)
    run = reaped(CHAIN, settings=settings)
    run.set_spec(desired_state="Paused")
    run.decide()
    run.set_spec(desired_state="Running")
    d = run.decide(admission="admit")
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "StaleReaped"
    assert not d.records


def test_pausing_at_a_gate_and_resuming_reopens_it() -> None:
    run = at_gate()
    run.set_spec(desired_state="Paused")
    run.decide()
    assert run.s.phase == "Paused"
    run.set_spec(desired_state="Running")
    run.advance(1000)
    run.decide(admission="admit")
    assert run.s.phase == "AwaitingApproval"
    assert run.cp.awaiting_gate is not None
    assert run.cp.awaiting_gate.requested_at == format_ms(run.now)


# ------------------------------------------------------------------------------ B13 cancel


@pytest.mark.parametrize("phase", ["Queued", "Running", "Paused", "AwaitingApproval"])
def test_cancel_stops_a_run_that_has_not_ended(phase: str) -> None:
    run = at_gate() if phase == "AwaitingApproval" else Run(CHAIN)
    if phase in ("Queued", "Paused"):
        run.decide()
    if phase == "Running":
        run.start()
    if phase == "Paused":
        run.set_spec(desired_state="Paused")
        run.decide()
    assert run.s.phase == phase
    run.set_spec(desired_state="Cancelled")
    d = run.decide(admission="admit")
    assert run.s.phase == "Cancelled"
    assert run.s.stop_kind == "OperatorStopped"
    record = only_record(d, "run_stopped")
    assert record.stop_kind == "OperatorStopped"
    assert not d.start
    if phase == "Running":
        assert d.cancel == {"collect"}


def test_cancel_is_a_no_op_on_terminal_runs() -> None:
    run = Run(make_flow(task("collect")))
    run.start()
    run.report("collect")
    assert run.s.phase == "Completed"
    run.set_spec(desired_state="Cancelled")
    d = run.decide()
    assert run.s.phase == "Completed"
    assert not d.records
    assert run.s.stop_kind is None


# ------------------------------------------------------------------------------ B14 recover


def failed_run() -> Run:
    run = Run(make_flow(task("collect"), task("draft", "collect"), task("final", "draft")))
    run.start()
    run.report("collect")
    run.report("draft", "failed")
    assert run.s.phase == "Failed"
    return run


def test_recover_resets_failed_nodes_and_their_descendants() -> None:
    run = failed_run()
    run.set_spec(recover=Recover(request_id="fix-1"))
    run.advance(1000)
    d = run.decide(admission="admit")
    record = only_record(d, "run_recovered")
    assert record.metadata == {"request_id": "fix-1", "reset_nodes": ["draft", "final"]}
    assert run.s.phase == "Running"
    assert run.s.finished_at is None
    assert run.s.resume_reason == "recovered by request fix-1"
    assert run.cp.completed_nodes == ["collect"]
    assert run.cp.last_failure is None
    assert d.start == (StartAttempt(node_id="draft", attempt=1),)


def test_recover_acts_once_per_request_id() -> None:
    run = failed_run()
    run.set_spec(recover=Recover(request_id="fix-1"))
    run.decide(admission="admit")
    run.report("draft", "failed")
    assert run.s.phase == "Failed"
    d = run.decide(admission="admit")
    assert run.s.phase == "Failed"
    assert not d.changed
    run.set_spec(recover=Recover(request_id="fix-2"))
    run.decide(admission="admit")
    assert run.s.phase == "Running"


def test_recover_from_pause_has_its_own_event() -> None:
    run = reaped(CHAIN, settings=dataclasses.replace(SETTINGS, stale_auto_resume_disabled=True))
    run.set_spec(recover=Recover(request_id="again"))
    d = run.decide(admission="capacity")
    assert record_events(d) == ["run_recovered_from_pause"]
    assert run.s.phase == "Queued"
    assert run.s.stop_kind is None


def test_recover_of_a_blocked_run_retries_the_blocked_nodes() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", "blocked")
    assert run.s.phase == "Blocked"
    run.set_spec(recover=Recover(request_id="unblock"))
    d = run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert run.cp.blocked_nodes == []
    assert d.start == (StartAttempt(node_id="collect", attempt=1),)


def test_recover_after_a_restart_failure_retries_the_interrupted_node() -> None:
    run = Run(CHAIN, status=running_status(CHAIN, attempts={"collect": 3}))
    run.decide()
    assert run.s.phase == "Failed"
    run.set_spec(recover=Recover(request_id="after-restart"))
    d = run.decide(admission="admit")
    assert run.s.phase == "Running"
    assert d.start == (StartAttempt(node_id="collect", attempt=1),)


def test_recover_is_ignored_on_a_run_that_has_not_stopped() -> None:
    run = Run(CHAIN)
    run.start()
    run.set_spec(recover=Recover(request_id="too-early"))
    d = run.decide(in_flight={"collect"})
    assert run.s.phase == "Running"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "RecoverIgnored")]
    assert not d.records


def test_recover_of_a_cancelled_run_is_ignored() -> None:
    run = Run(CHAIN)
    run.decide()
    run.set_spec(desired_state="Cancelled")
    run.decide()
    run.set_spec(desired_state="Running", recover=Recover(request_id="undo"))
    run.decide(admission="admit")
    assert run.s.phase == "Cancelled"


# ------------------------------------------------------------------------------ B16 via decide


def test_a_detail_naming_a_completed_node_moves_on() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"))
    status = running_status(
        flow,
        claimant=ME,
        lease_expires_ms=T0 + 10**9,
        completed=["collect"],
        attempts={"draft": 1},
        detail="retrying node `collect` after transient provider failure",
    )
    run = Run(flow, status=status)
    run.decide(in_flight={"draft"}, last_activity_ms=T0)
    assert run.s.detail == "running node `draft` attempt 1"


# ------------------------------------------------------------------------------ invariants


def test_history_is_bounded_but_counted() -> None:
    settings = dataclasses.replace(SETTINGS, lifecycle_history_limit=3)
    run = Run(CHAIN, settings=settings)
    run.decide()
    for _ in range(4):
        run.set_spec(desired_state="Paused")
        run.decide()
        run.set_spec(desired_state="Running")
        run.decide()
    assert len(run.cp.lifecycle_history) == 3
    assert run.s.counters.lifecycle_records == 9
    assert [r.event for r in run.cp.lifecycle_history] == [
        "run_resumed",
        "run_paused",
        "run_resumed",
    ]


def test_updated_at_moves_only_when_the_status_changes() -> None:
    run = Run(CHAIN)
    run.decide()
    run.decide(admission="capacity")
    stamp = run.s.updated_at
    run.advance(10_000)
    d = run.decide(admission="capacity")
    assert not d.changed
    assert run.s.updated_at == stamp
    run.advance(10_000)
    d = run.decide(admission="admit")
    assert d.changed
    assert run.s.updated_at == format_ms(run.now)


def test_a_spec_change_alone_is_observed() -> None:
    run = Run(CHAIN)
    run.decide()
    run.decide(admission="capacity")
    run.generation += 1
    d = run.decide(admission="capacity")
    assert d.changed
    assert run.s.observed_generation == run.generation
    assert all(c.observed_generation == run.generation for c in run.s.conditions)


def test_large_outputs_are_capped() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", output={"text": "x" * 40_000, "artifact": ARTIFACT})
    output = run.cp.node_outputs["collect"]
    assert output["status"] == "completed"
    assert output["artifact"] == ARTIFACT
    assert output["truncated"] is True
    assert output["original_bytes"] > 40_000
    assert "text" not in output


# ------------------------------------------------------------------------------ hardening


def test_a_decision_inserted_before_recorded_ones_is_applied_once() -> None:
    run = at_gate()
    decide_gate(run, "rework", request_id="r1")
    run.report("collect")
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"
    inserted = GateDecision(gate="review", decision="approve", reason="in front")
    run.set_spec(gate_decisions=[inserted, *run.spec.gate_decisions])
    d = run.decide(admission="admit")
    assert record_events(d)[0] == "run_gate_approved"
    assert [(e.decision, e.request_id) for e in run.cp.gate_history] == [
        ("rework", "r1"),
        ("approve", None),
    ]
    assert run.s.counters.gate_decisions_seen == 2
    # Deciding again (any number of times) applies nothing more.
    d = run.decide(admission="admit")
    assert "run_gate_approved" not in record_events(d)
    assert len(run.cp.gate_history) == 2


def test_a_shrinking_decision_list_neither_resets_nor_replays() -> None:
    run = at_gate()
    decide_gate(run, "rework", request_id="r1")
    keys = list(run.cp.gate_decision_keys or [])
    assert len(keys) == 1
    recorded = run.spec.gate_decisions
    run.set_spec(gate_decisions=[])
    run.decide(admission="admit")
    assert run.s.counters.gate_decisions_seen == 1
    assert run.cp.gate_decision_keys == keys
    run.report("collect")
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"
    run.set_spec(gate_decisions=recorded)  # the same entry back: already decided
    d = run.decide(admission="admit")
    assert run.s.phase == "AwaitingApproval"
    assert [e.reason for e in d.events] == []
    assert len(run.cp.gate_history) == 1


def test_the_same_decision_twice_without_request_id_counts_twice() -> None:
    run = at_gate()
    decide_gate(run, "rework")
    run.report("collect")
    run.report("draft")
    assert run.s.phase == "AwaitingApproval"
    decide_gate(run, "rework")
    assert [e.decision for e in run.cp.gate_history] == ["rework", "rework"]


def test_a_status_from_before_decision_keys_counts_its_first_entries_as_seen() -> None:
    run = at_gate()
    status = run.s.model_copy(deep=True)
    status.counters.gate_decisions_seen = 1
    run.status = status
    rejected = GateDecision(gate="review", decision="approve", request_id="old")
    run.spec = run.spec.model_copy(update={"gate_decisions": [rejected]})
    d = run.decide(admission="admit")
    assert not d.changed  # the old counter says it was seen: no write, nothing applied
    assert run.s.phase == "AwaitingApproval"
    assert run.cp.gate_decision_keys is None
    decide_gate(run, "approve", request_id="new")
    assert [e.request_id for e in run.cp.gate_history] == ["new"]
    assert run.cp.gate_decision_keys is not None
    assert len(run.cp.gate_decision_keys) == 2


def test_a_finished_run_keeps_its_detail() -> None:
    """B16 is for runs that go on: a Cancelled run's detail names what ended it."""
    run = at_gate()
    decide_gate(run, "cancel", reason="node `draft` is off topic")
    assert run.s.phase == "Cancelled"
    assert run.s.detail == "node `draft` is off topic"


def test_a_run_resumed_long_after_its_pause_is_not_reaped() -> None:
    """The attempt a pause gave back leaves its node without output: B5 must not count
    the paused time as silence."""
    run = Run(CHAIN)
    run.start()
    run.report("collect", "needs_repair")  # attempt 2 starts
    assert run.cp.node_attempts["collect"] == 2
    run.set_spec(desired_state="Paused")
    run.decide()
    run.decide(outcomes=[run.outcome("collect", cancelled=True)], in_flight=())
    assert run.s.phase == "Paused"
    assert run.cp.node_attempts["collect"] == 1
    run.advance(SETTINGS.stale_running_ms * 2)
    run.set_spec(desired_state="Running")
    d = run.decide(admission="admit")
    assert record_events(d) == ["run_resumed", "run_started"]
    assert d.start == (StartAttempt(node_id="collect", attempt=2),)
    assert run.cp.last_activity_at == format_ms(run.now)


def test_an_outcome_counts_as_executor_activity() -> None:
    flow = make_flow(task("a"), task("b"), execution={"maxParallelNodes": 2})
    run = Run(flow)
    run.start()
    run.advance(SETTINGS.stale_running_ms - 1000)
    run.report("a", transient=True, error="reset after a long stream")
    assert run.cp.last_activity_at == format_ms(run.now)
    run.advance(1500)  # past the threshold counted from the dispatch, not from the outcome
    d = run.decide()
    assert "run_paused_stale_no_provider_activity" not in record_events(d)


def test_absurd_token_counts_are_bounded() -> None:
    run = Run(CHAIN)
    run.start()
    run.report("collect", prompt_tokens=10**30, completion_tokens=10**30)
    usage = run.s.usage
    assert usage.prompt_tokens == 10**12
    assert usage.total_tokens == 2 * 10**12
    assert usage.total_tokens < 2**63
