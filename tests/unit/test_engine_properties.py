"""Properties of the lifecycle over random histories of one run.

Hypothesis draws a small flow (tasks and approval gates, attempts, timeouts, budgets), the
settings, and then a sequence of steps: spec changes (``desiredState``, gate decisions,
recover requests), executor outcomes of random statuses for the attempts the engine
started, admission verdicts, quota overrides, operator restarts with the old instance dead
or still alive, graceful shutdowns, and clock jumps from milliseconds to days. Every step
is one ``decide``; its status is fed back as the next observation's status, exactly as the
reconciler does after a successful write.

After every step the invariants of the contract must hold (see :func:`check_step`). The
example count is modest by default; raise it with ``TANDEM_PROPERTY_EXAMPLES`` to search
harder, e.g. ``TANDEM_PROPERTY_EXAMPLES=5000``.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tandem_operator.api.models import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    GateDecision,
    Recover,
)
from tandem_operator.api.settings import Settings
from tandem_operator.api.vocabulary import QueueVerdict
from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import AttemptOutcome, Decision, Observation, Override
from tandem_operator.lifecycle.engine import decide

T0 = 1_800_000_000_000
EXAMPLES = int(os.environ.get("TANDEM_PROPERTY_EXAMPLES", "200"))

# Clock jumps: within a back-off, around the stale thresholds used below, hours, days.
JUMPS = [0, 1, 999, 2_000, 5_000, 8_000, 59_999, 60_000, 120_000, 1_200_000, 3_600_000, 86_400_000]


# ------------------------------------------------------------------------------ strategies


@st.composite
def flows(draw: st.DrawFn) -> AutomationSpec:
    count = draw(st.integers(min_value=1, max_value=5))
    nodes: list[dict[str, Any]] = []
    for index in range(count):
        node_id = f"n{index}"
        earlier = [n["id"] for n in nodes]
        deps = sorted(draw(st.sets(st.sampled_from(earlier), max_size=2))) if earlier else []
        node: dict[str, Any] = {
            "id": node_id,
            "agentId": "researcher",
            "dependsOn": deps,
            "maxAttempts": draw(st.integers(min_value=1, max_value=3)),
        }
        if draw(st.integers(0, 3)) == 0:
            node["kind"] = "Approval"
            del node["agentId"]
            approval: dict[str, Any] = {
                "title": f"gate {node_id}",
                "decisions": draw(
                    st.sampled_from(
                        [["approve", "rework", "cancel"], ["approve", "rework"], ["approve"]]
                    )
                ),
            }
            if deps and draw(st.integers(0, 1)) == 1:
                approval["reworkTargets"] = [draw(st.sampled_from(deps))]
            if draw(st.integers(0, 2)) == 0:
                approval["expiry"] = {
                    "afterSeconds": draw(st.sampled_from([60, 3600])),
                    "action": draw(st.sampled_from(["cancel", "resume", "remind"])),
                }
            node["approval"] = approval
        elif draw(st.booleans()):
            node["timeoutSeconds"] = draw(st.sampled_from([30, 120, 600]))
        nodes.append(node)
    execution: dict[str, Any] = {"maxParallelNodes": draw(st.integers(1, 3))}
    if draw(st.integers(0, 3)) == 0:
        execution["maxTotalTokens"] = draw(st.sampled_from([50, 500]))
    if draw(st.integers(0, 4)) == 0:
        execution["maxTotalRuntimeSeconds"] = draw(st.sampled_from([60, 7200]))
    return AutomationSpec.model_validate(
        {
            "creatorId": "alice",
            "agents": [{"agentId": "researcher"}],
            "requiresRuntimeContext": draw(st.integers(0, 9)) == 0,
            "execution": execution,
            "nodes": nodes,
        }
    )


@st.composite
def run_settings(draw: st.DrawFn) -> Settings:
    return Settings(
        approval_gate_stale_after_ms=draw(st.sampled_from([60_000, 3_600_000])),
        stale_auto_resume_window_ms=draw(st.sampled_from([1_200_000, 86_400_000])),
        stale_auto_resume_max_attempts=draw(st.integers(1, 3)),
        stale_auto_resume_disabled=draw(st.integers(0, 4)) == 0,
        stale_running_ms=draw(st.sampled_from([60_000, 600_000])),
        restart_recovery=draw(st.sampled_from(["fail", "requeue"])),
        token_cost_per_1k_usd=draw(st.sampled_from([Decimal(0), Decimal("0.25")])),
        lifecycle_history_limit=draw(st.integers(2, 12)),
        claim_lease_seconds=draw(st.sampled_from([15, 3600])),
    )


STEP_KINDS = [
    "outcomes",
    "outcomes",
    "outcomes",
    "tick",
    "tick",
    "desired",
    "gate",
    "recover",
    "restart",
    "shutdown",
]


# ------------------------------------------------------------------------------ the model


@dataclasses.dataclass
class World:
    """Everything outside the engine: spec, clock, operator instances, running attempts."""

    flow: AutomationSpec
    settings: Settings
    spec: AutomationRunSpec
    now: int = T0
    instance: str = "op-0"
    live: frozenset[str] = frozenset({"op-0"})
    generation: int = 1
    status: AutomationRunStatus | None = None
    running: dict[str, int] = dataclasses.field(default_factory=dict)
    """node id → attempt running in the current instance"""
    activity_ms: int | None = None
    restarts: int = 0
    requests: int = 0
    # Accumulated over the whole history for the invariants:
    records_seen: int = 0
    stale_marks: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)


def check_step(world: World, obs: Observation, before: dict[str, Any] | None, d: Decision) -> None:
    """The invariants every single decision must keep."""
    s = d.status
    prev = obs.status
    cfg = obs.settings
    if prev is not None:
        assert prev.model_dump() == before, "decide mutated the observed status"

    # Terminal stays terminal, except by recover (B14).
    if prev is not None and prev.phase in TERMINAL_PHASES and s.phase != prev.phase:
        assert any(r.event.startswith("run_recovered") for r in d.records), (
            f"{prev.phase} -> {s.phase} without recover: {[r.event for r in d.records]}"
        )
    # Auto-resumes are capped.
    assert s.counters.auto_resumes <= cfg.stale_auto_resume_max_attempts
    # A gate is marked stale at most once per gate request.
    for record in d.records:
        if record.event == "approval_gate_marked_stale":
            assert record.metadata is not None
            key = (record.metadata["node_id"], record.metadata["requested_at_ms"])
            world.stale_marks[key] += 1
            assert world.stale_marks[key] == 1, f"gate {key} marked stale twice"
    # History: bounded, counted, and each record added exactly once.
    world.records_seen += len(d.records)
    assert len(s.checkpoint.lifecycle_history) <= cfg.lifecycle_history_limit
    assert s.counters.lifecycle_records == world.records_seen
    old_history = prev.checkpoint.lifecycle_history if prev else []
    combined = [*old_history, *d.records]
    history = s.checkpoint.lifecycle_history
    assert history == combined[len(combined) - len(history) :]
    assert bool(history) == bool(combined)
    # Every phase change leaves a record.
    if prev is None or prev.phase != s.phase:
        assert d.records, f"{prev.phase if prev else None} -> {s.phase} without a record"
    # Scheduler only while Queued; claim only while Running or Pausing; finishedAt on terminal.
    if s.phase != "Queued":
        assert s.scheduler is None
    if s.phase not in ACTIVE_PHASES:
        assert s.execution_claim is None
    else:
        assert s.execution_claim is not None
    if s.phase in TERMINAL_PHASES:
        assert s.finished_at is not None
    # updatedAt moves exactly when something was worth writing.
    if d.changed:
        assert s.updated_at == format_ms(obs.now_ms)
    else:
        assert prev is not None
        assert s.updated_at == prev.updated_at
        assert not d.records
    # Attempts: never past maxAttempts; only a Running run starts any, one per node.
    nodes = {n.id: n for n in world.flow.nodes}
    for node_id, attempts in s.checkpoint.node_attempts.items():
        assert 0 <= attempts <= nodes[node_id].max_attempts, (node_id, attempts)
    if d.start:
        assert s.phase == "Running"
        assert not obs.shutting_down, "an attempt started during shutdown (B15)"
        started = [a.node_id for a in d.start]
        assert len(started) == len(set(started))
        assert not set(started) & obs.in_flight - d.cancel
        for attempt in d.start:
            assert s.checkpoint.node_attempts[attempt.node_id] == attempt.attempt
            assert nodes[attempt.node_id].kind == "Task"
        in_flight_after = (obs.in_flight - d.cancel) | set(started)
        assert len(in_flight_after) <= world.flow.execution.max_parallel_nodes
    # Node bookkeeping stays consistent.
    cp = s.checkpoint
    assert not set(cp.completed_nodes) & set(cp.pending_nodes)
    assert len(cp.completed_nodes) == len(set(cp.completed_nodes))
    assert set(cp.completed_nodes) | set(cp.pending_nodes) | set(cp.blocked_nodes) <= set(nodes)
    if s.phase == "Completed":
        assert sorted(cp.completed_nodes) == sorted(nodes)
    if s.phase == "AwaitingApproval":
        assert cp.awaiting_gate is not None
        assert nodes[cp.awaiting_gate.node_id].kind == "Approval"
    # The status survives the API round trip.
    api = s.to_api()
    assert AutomationRunStatus.model_validate(api).to_api() == api


def step(world: World, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(STEP_KINDS), label="step")
    outcomes: list[AttemptOutcome] = []
    shutting_down = False
    if kind == "tick":
        world.now += data.draw(st.sampled_from(JUMPS), label="jump")
    elif kind == "desired":
        desired = data.draw(
            st.sampled_from(["Running", "Running", "Paused", "Paused", "Cancelled"]),
            label="desiredState",
        )
        reason = data.draw(st.sampled_from([None, "maintenance"]), label="pauseReason")
        world.spec = world.spec.model_copy(
            update={"desired_state": desired, "pause_reason": reason}
        )
        world.generation += 1
    elif kind == "gate":
        gates = [n.id for n in world.flow.nodes if n.kind == "Approval"] or ["n0"]
        entry = GateDecision(
            gate=data.draw(st.sampled_from([*gates, "n0"]), label="gate"),
            decision=data.draw(st.sampled_from(["approve", "rework", "cancel"]), label="decision"),
            request_id=data.draw(st.sampled_from([None, "r1", "r2", "r3"]), label="requestId"),
        )
        world.spec = world.spec.model_copy(
            update={"gate_decisions": [*world.spec.gate_decisions, entry]}
        )
        world.generation += 1
    elif kind == "recover":
        world.requests += 1
        request = data.draw(st.sampled_from([f"fix-{world.requests}", "fix-1"]), label="recover")
        world.spec = world.spec.model_copy(update={"recover": Recover(request_id=request)})
        world.generation += 1
    elif kind == "restart":
        # The process dies with its attempts; a new instance (new identity) takes over. The
        # old one may still look alive (its Lease not yet expired) or be gone.
        old = world.instance
        world.restarts += 1
        world.instance = f"op-{world.restarts}"
        old_alive = data.draw(st.booleans(), label="old instance alive")
        world.live = frozenset({world.instance, old} if old_alive else {world.instance})
        world.running = {}
        world.activity_ms = None
        world.now += data.draw(st.sampled_from([0, 1_000, 60_000]), label="downtime")
    elif kind == "shutdown":
        shutting_down = True
    else:  # outcomes for some of the attempts in flight
        for node_id in sorted(world.running):
            if not data.draw(st.booleans(), label=f"report {node_id}"):
                continue
            attempt = world.running.pop(node_id)
            shape = data.draw(
                st.sampled_from(
                    [
                        "completed",
                        "completed",
                        "needs_repair",
                        "failed",
                        "blocked",
                        "Completed",
                        "bogus",
                        "transient",
                        "cancelled",
                        "error",
                    ]
                ),
                label="outcome",
            )
            tokens = data.draw(st.sampled_from([0, 0, 30, 400]), label="tokens")
            outcomes.append(
                AttemptOutcome(
                    node_id=node_id,
                    attempt=attempt,
                    status=shape if shape not in ("transient", "cancelled", "error") else "failed",
                    output={"note": shape},
                    prompt_tokens=tokens,
                    completion_tokens=tokens // 3,
                    transient=shape == "transient",
                    cancelled=shape == "cancelled",
                    error="boom" if shape in ("transient", "error") else None,
                )
            )
        if outcomes:
            world.activity_ms = world.now
        world.now += data.draw(st.sampled_from([0, 10, 1_000]), label="latency")

    verdict: QueueVerdict = data.draw(
        st.sampled_from(["admit", "admit", "capacity", "workspace_lock"]), label="admission"
    )
    overrides = (
        [Override(name="more", agent_id=data.draw(st.sampled_from(["researcher", "alice"])))]
        if data.draw(st.integers(0, 5), label="override") == 0
        else []
    )
    obs = dataclasses.replace(
        _without_news(world, world.now),
        admission=verdict,
        overrides=overrides,
        outcomes=tuple(outcomes),
        shutting_down=shutting_down,
    )
    before = world.status.model_dump() if world.status is not None else None
    d = decide(obs)
    check_step(world, obs, before, d)
    world.status = d.status
    for started in d.start:
        world.running[started.node_id] = started.attempt
        world.activity_ms = world.now
    event(f"phase {d.status.phase}")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data(), flow=flows(), cfg=run_settings())
def test_lifecycle_invariants_hold_over_random_histories(
    data: st.DataObject, flow: AutomationSpec, cfg: Settings
) -> None:
    spec = AutomationRunSpec.model_validate(
        {
            "automation": flow.to_api(),
            "runtimeContext": {"tenant": "acme"} if data.draw(st.booleans()) else None,
        }
    )
    world = World(flow=flow, settings=cfg, spec=spec)
    length = data.draw(st.integers(min_value=1, max_value=40), label="steps")
    for _ in range(length):
        step(world, data)


def _random_history(data: st.DataObject, flow: AutomationSpec, cfg: Settings) -> World:
    spec = AutomationRunSpec.model_validate(
        {"automation": flow.to_api(), "runtimeContext": {"tenant": "acme"}}
    )
    world = World(flow=flow, settings=cfg, spec=spec)
    for _ in range(data.draw(st.integers(min_value=1, max_value=15), label="steps")):
        step(world, data)
    assert world.status is not None
    return world


def _without_news(world: World, now: int) -> Observation:
    """What the reconciler sees of the world at ``now`` when nothing new has happened."""
    return Observation(
        now_ms=now,
        settings=world.settings,
        instance=world.instance,
        live_instances=world.live,
        generation=world.generation,
        spec=world.spec,
        status=world.status,
        definition=world.flow,
        admission="capacity",
        in_flight=frozenset(world.running),
        last_activity_ms=world.activity_ms,
    )


def _settle(world: World) -> None:
    """Decide until nothing changes with the clock stopped (a decision may enable another,
    e.g. approve then admit); it must converge within a few rounds."""
    for _ in range(6):
        d = decide(_without_news(world, world.now))
        world.status = d.status
        for attempt in d.start:
            world.running[attempt.node_id] = attempt.attempt
        if not d.changed:
            assert not d.records
            assert not d.start
            return
    raise AssertionError("the lifecycle did not settle with the clock stopped")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), flow=flows(), cfg=run_settings())
def test_deciding_twice_without_news_changes_nothing(
    data: st.DataObject, flow: AutomationSpec, cfg: Settings
) -> None:
    """Level-based: a decision applied and observed again, with nothing new, is a no-op."""
    _settle(_random_history(data, flow, cfg))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), flow=flows(), cfg=run_settings())
def test_one_decision_settles(data: st.DataObject, flow: AutomationSpec, cfg: Settings) -> None:
    """``decide`` reaches its own fixed point: deciding again on its result, with the
    attempts it started in flight and nothing else new, changes nothing."""
    world = _random_history(data, flow, cfg)
    d = decide(_without_news(world, world.now))
    assert d.settled
    world.status = d.status
    for attempt in d.start:
        world.running[attempt.node_id] = attempt.attempt
    again = decide(_without_news(world, world.now))
    assert not again.changed, (world.status.phase, again.records)
    assert not again.records
    assert not again.events
    assert not again.start


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), flow=flows(), cfg=run_settings())
def test_deciding_before_the_returned_deadline_changes_nothing(
    data: st.DataObject, flow: AutomationSpec, cfg: Settings
) -> None:
    """``Decision.requeue_at_ms`` is the earliest moment time alone can change the run: the
    wake-ups and the lifecycle tick skip runs until then, so deciding at any earlier moment
    (or at any moment, when it says never) must be a no-op."""
    world = _random_history(data, flow, cfg)
    d = decide(_without_news(world, world.now))
    world.status = d.status
    for attempt in d.start:
        world.running[attempt.node_id] = attempt.attempt
    due = d.requeue_at_ms
    event(f"due: {'never' if due is None else 'later'}")
    assert due is None or due > world.now
    horizon = due if due is not None else world.now + 100 * 86_400_000
    later = data.draw(st.integers(min_value=world.now, max_value=max(world.now, horizon - 1)))
    again = decide(_without_news(world, later))
    assert not again.changed, (world.status.phase, again.records)
    assert not again.start
