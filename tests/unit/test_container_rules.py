"""The rules the container executor adds to ``decide``: adoption of attempts that outlive
the operator (C5), budgets counted while an attempt runs (B21), and why a reaped attempt
waited (B5 with a Pod that never started)."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

from test_engine_rules import (
    CHAIN,
    DEAD,
    ME,
    SETTINGS,
    T0,
    Run,
    make_flow,
    record_events,
    running_status,
    task,
)

PARALLEL = make_flow(task("a"), task("b"), execution={"maxParallelNodes": 2})


# -- C5 -------------------------------------------------------------------------------------


def test_an_orphaned_run_whose_attempt_is_adopted_runs_on_under_a_new_claim() -> None:
    run = Run(CHAIN, status=running_status(CHAIN, claimant=DEAD))
    d = run.decide(in_flight={"collect"}, adopted=frozenset({"collect"}))
    assert run.s.phase == "Running"
    assert not d.records
    assert not d.start
    assert not d.cancel
    assert run.s.execution_claim is not None
    assert run.s.execution_claim.claimant == ME
    assert run.cp.node_attempts == {"collect": 1}
    # The adopted attempt's result is counted once, as any other.
    d = run.report("collect")
    assert run.cp.completed_nodes == ["collect"]
    assert [s.node_id for s in d.start] == ["draft"]


def test_gone_attempts_next_to_adopted_ones_follow_b1() -> None:
    status = running_status(PARALLEL, attempts={"a": 1, "b": 1})
    run = Run(PARALLEL, status=status)
    d = run.decide(in_flight={"a"}, adopted=frozenset({"a"}))
    assert run.s.phase == "Failed"
    assert run.s.stop_kind == "ServerRestart"
    assert d.cancel == {"a"}  # the adopted attempt goes with the run
    assert record_events(d) == ["run_failed_server_restart"]


def test_with_requeue_only_the_gone_attempt_is_retried() -> None:
    settings = dataclasses.replace(SETTINGS, restart_recovery="requeue")
    status = running_status(PARALLEL, attempts={"a": 1, "b": 1})
    run = Run(PARALLEL, settings=settings, status=status)
    d = run.decide(in_flight={"a"}, adopted=frozenset({"a"}))
    assert run.s.phase == "Running"
    assert "run_queued_for_resume_after_restart" not in record_events(d)
    assert [(s.node_id, s.attempt) for s in d.start] == [("b", 2)]
    assert run.s.execution_claim is not None
    assert run.s.execution_claim.claimant == ME


def test_nothing_adopted_is_b1_as_before() -> None:
    run = Run(CHAIN, status=running_status(CHAIN))
    d = run.decide()
    assert run.s.phase == "Failed"
    assert record_events(d) == ["run_failed_server_restart"]


# -- B21 ------------------------------------------------------------------------------------


def test_in_flight_usage_past_the_token_budget_stops_the_attempt() -> None:
    flow = make_flow(task("collect"), task("draft", "collect"), execution={"maxTotalTokens": 100})
    run = Run(flow)
    run.start()
    assert run.decide(in_flight_tokens=100).status.phase == "Running"
    d = run.decide(in_flight_tokens=101)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "GuardrailStopped"
    assert run.s.pause_reason == "token budget exceeded: 101 > maxTotalTokens 100"
    assert d.cancel == {"collect"}
    assert run.cp.node_attempts["collect"] == 0
    # The cancelled attempt brings the usage reported so far.
    run.decide(outcomes=[run.outcome("collect", cancelled=True, prompt_tokens=101)])
    assert run.s.usage.total_tokens == 101
    assert run.s.phase == "Paused"


def test_in_flight_usage_counts_against_the_cost_budget() -> None:
    settings = dataclasses.replace(SETTINGS, token_cost_per_1k_usd=Decimal(2))
    flow = make_flow(task("collect"), execution={"maxTotalCostUsd": "1.00"})
    run = Run(flow, settings=settings)
    run.start()
    run.decide(in_flight_tokens=501)
    assert run.s.phase == "Paused"
    assert run.s.pause_reason == "cost budget exceeded: 1.002 > maxTotalCostUsd 1.00"


# -- B5 with a reason -----------------------------------------------------------------------


def test_a_reaped_attempt_that_waited_says_why() -> None:
    settings = dataclasses.replace(SETTINGS, stale_auto_resume_disabled=True)
    run = Run(CHAIN, settings=settings, status=running_status(CHAIN, claimant=ME))
    run.now = T0 + SETTINGS.stale_running_ms
    waiting = {"collect": "Pod Pending: ErrImagePull: no such image"}
    run.decide(in_flight={"collect"}, waiting=waiting)
    assert run.s.phase == "Paused"
    assert run.s.stop_kind == "StaleReaped"
    output = run.cp.node_outputs["collect"]
    assert output["error"] == waiting["collect"]
    assert output["blocker_category"] == "stale_no_provider_activity"
    (verdict,) = run.cp.node_attempt_verdicts["collect"]
    assert verdict["attempt"] == 1
    assert verdict["error"] == waiting["collect"]
