"""A run's status stays small however long the run lives: the bounds, through ``decide``.

etcd refuses objects over 1.5 MiB, and every status write sends the whole object back to
every watcher, so the operator promises that a run's status stays under 256 KiB for flows
of up to 100 nodes, whatever happens to the run. What grows without bound in a long run is
trimmed, and what is trimmed is counted:

- ``lifecycleHistory`` keeps the newest records (``TANDEM_LIFECYCLE_HISTORY_LIMIT``, and a
  byte budget for long reasons); ``counters.lifecycleRecords`` counts every record;
- ``nodeOutputs`` share a budget: the per-node cap shrinks as the flow grows, and a cut
  output is a marker (``truncated: true``, ``original_bytes``) keeping its ``status``;
- ``nodeAttemptVerdicts`` keep the newest verdicts of each node;
- reasons copied from the spec (pause reasons, gate decision reasons) are clipped.

The main test drives one 100-node run through 10,000 lifecycle records, with every node
retried and every output far over its cap, and measures the status as the API would store
it after every step.
"""

from __future__ import annotations

import json
from typing import Any

from tandem_operator.api.models import (
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    GateDecision,
)
from tandem_operator.api.settings import Settings
from tandem_operator.lifecycle.bounds import (
    HISTORY_BUDGET_BYTES,
    MAX_OUTPUT_BYTES,
    MAX_REASON_CHARS,
    MAX_VERDICTS,
    MIN_OUTPUT_BYTES,
    cap_output,
    output_limit,
)
from tandem_operator.lifecycle.contract import AttemptOutcome, Decision, Observation
from tandem_operator.lifecycle.engine import decide

T0 = 1_800_000_000_000
ME = "operator-a"
STATUS_LIMIT = 256 * 1024
BIG = "x" * 40_000
"""An output string far over any per-node cap."""


def status_bytes(status: AutomationRunStatus) -> int:
    return len(json.dumps(status.to_api()))


def wide_flow(count: int = 100) -> AutomationSpec:
    """``count - 1`` independent tasks with realistic ids and objectives, retried up to 10
    times, then a sign-off gate."""
    tasks = [
        {
            "id": f"summarise-source-{i:03d}",
            "agentId": "researcher",
            "objective": f"Summarise source {i} for the weekly digest. " * 6,
            "maxAttempts": 10,
            "timeoutSeconds": 600,
        }
        for i in range(count - 1)
    ]
    gate = {
        "id": "sign-off",
        "kind": "Approval",
        "dependsOn": [t["id"] for t in tasks[:16]],
        "approval": {"title": "Sign off the digest", "instructions": "Read it all. " * 20},
    }
    return AutomationSpec.model_validate(
        {
            "creatorId": "alice",
            "agents": [{"agentId": "researcher", "displayName": "Research agent"}],
            "execution": {"maxParallelNodes": 16},
            "nodes": [*tasks, gate],
        }
    )


class Driver:
    """Feeds decisions back as the reconciler does and keeps count of what they emitted."""

    def __init__(self, flow: AutomationSpec, *, settings: Settings | None = None) -> None:
        self.flow = flow
        self.settings = settings or Settings()
        self.spec = AutomationRunSpec.model_validate({"automation": flow.to_api()})
        self.status: AutomationRunStatus | None = None
        self.now = T0
        self.generation = 1
        self.in_flight: set[str] = set()
        self.records = 0
        self.events: list[str] = []
        self.largest = 0

    @property
    def s(self) -> AutomationRunStatus:
        assert self.status is not None
        return self.status

    def phase(self) -> str | None:
        return self.s.phase

    def set_spec(self, **changes: Any) -> None:
        self.spec = self.spec.model_copy(update=changes)
        self.generation += 1

    def decide(
        self, *, outcomes: tuple[AttemptOutcome, ...] = (), admit: bool = True, measure: bool
    ) -> Decision:
        self.now += 7
        finished = {o.node_id for o in outcomes}
        decision = decide(
            Observation(
                now_ms=self.now,
                settings=self.settings,
                instance=ME,
                live_instances=frozenset({ME}),
                generation=self.generation,
                spec=self.spec,
                status=self.status,
                definition=self.flow,
                admission="admit" if admit else "capacity",
                outcomes=outcomes,
                in_flight=frozenset(self.in_flight - finished),
                last_activity_ms=self.now,
            )
        )
        self.status = decision.status
        self.in_flight = (self.in_flight - finished - set(decision.cancel)) | {
            a.node_id for a in decision.start
        }
        self.records += len(decision.records)
        self.events.extend(r.event for r in decision.records)
        if measure:
            self.largest = max(self.largest, status_bytes(decision.status))
        return decision

    def report(self, node_id: str, status: str, *, measure: bool = True, **extra: Any) -> Decision:
        attempt = self.s.checkpoint.node_attempts[node_id]
        outcome = AttemptOutcome(node_id=node_id, attempt=attempt, status=status, **extra)
        return self.decide(outcomes=(outcome,), measure=measure)


def test_output_cap_shrinks_as_the_flow_grows() -> None:
    assert output_limit(1) == MAX_OUTPUT_BYTES
    assert output_limit(3) == MAX_OUTPUT_BYTES
    assert output_limit(50) == 2048
    assert output_limit(100) == MIN_OUTPUT_BYTES
    assert output_limit(10_000) == MIN_OUTPUT_BYTES
    assert all(output_limit(n) * n <= 100 * 1024 + MIN_OUTPUT_BYTES * n for n in range(1, 101))


def test_a_cut_output_keeps_its_status_and_says_how_big_it_was() -> None:
    small = {"status": "completed", "summary": "fine"}
    assert cap_output(small, limit=MIN_OUTPUT_BYTES) == small

    artifact = {"path": "/out/report.md", "contentDigest": "sha256:" + "a" * 64, "validated": True}
    big = {"status": "needs_repair", "blocker_category": "lint", "text": BIG, "artifact": artifact}
    marker = cap_output(big, limit=MIN_OUTPUT_BYTES)
    assert marker == {
        "status": "needs_repair",
        "blocker_category": "lint",
        "truncated": True,
        "original_bytes": len(json.dumps(big, separators=(",", ":"))),
        "artifact": artifact,
    }
    # An artifact reference that does not fit the cap itself is dropped with the rest.
    huge_artifact = {**artifact, "path": "/out/" + "p" * 2000}
    marker = cap_output({"status": "completed", "artifact": huge_artifact}, limit=1024)
    assert "artifact" not in marker
    assert marker["truncated"] is True
    assert len(json.dumps(marker)) <= 1024


def test_ten_thousand_records_on_a_100_node_run_stay_under_256_kib() -> None:
    flow = wide_flow()
    tasks = [n.id for n in flow.nodes if n.kind == "Task"]
    run = Driver(flow)
    run.decide(admit=False, measure=True)
    run.decide(measure=True)
    assert run.phase() == "Running"

    # Every task: four needs_repair attempts and a completed one, each with an output far
    # over its cap, so outputs and verdicts get as large as they can.
    tries: dict[str, int] = {}
    while run.in_flight:
        for node_id in sorted(run.in_flight):
            tries[node_id] = tries.get(node_id, 0) + 1
            verdict = "completed" if tries[node_id] == 5 else "needs_repair"
            run.report(node_id, verdict, output={"text": BIG, "try": tries[node_id]})
    assert run.phase() == "AwaitingApproval", run.s.detail
    assert sorted(run.s.checkpoint.completed_nodes) == sorted(tasks)

    # Pause and resume the run waiting at its gate until it has recorded 10,000 lifecycle
    # records (run_paused; run_resumed, run_started, run_awaiting_approval). A pause reason
    # of the longest length the spec allows makes the records as large as they get.
    paused = {"desired_state": "Paused", "pause_reason": "maintenance window " * 53}
    assert len(paused["pause_reason"]) <= 1024
    steps = 0
    while run.records < 10_000:
        measure = steps % 100 == 0
        run.set_spec(**paused)
        d = run.decide(measure=measure)
        assert run.phase() == "Paused", [r.event for r in d.records]
        run.set_spec(desired_state="Running", pause_reason=None)
        d = run.decide(measure=measure)
        assert run.phase() == "AwaitingApproval", [r.event for r in d.records]
        steps += 1

    run.set_spec(gate_decisions=[GateDecision(gate="sign-off", decision="approve")])
    run.decide(measure=True)
    status = run.s
    assert status.phase == "Completed", status.detail

    size = status_bytes(status)
    assert size < STATUS_LIMIT, f"final status is {size} bytes"
    assert run.largest < STATUS_LIMIT, f"status reached {run.largest} bytes on the way"
    # Nothing is lost from the counts: every record is counted, the newest are kept in order.
    assert run.records >= 10_000
    assert status.counters.lifecycle_records == run.records
    history = status.checkpoint.lifecycle_history
    assert 0 < len(history) <= Settings().lifecycle_history_limit
    assert [r.event for r in history] == run.events[-len(history) :]
    assert history[-1].event == "run_completed"
    # Every task output was cut to a marker that keeps its verdict.
    outputs = status.checkpoint.node_outputs
    for node_id in tasks:
        output = outputs[node_id]
        assert output["status"] == "completed", node_id
        assert output["truncated"] is True
        assert output["original_bytes"] > len(BIG)
        assert "text" not in output
    assert outputs["sign-off"] == {"status": "completed", "contract_kind": "approval_gate"}
    # Verdicts are bounded per node, newest last; attempts are all counted.
    for node_id in tasks:
        verdicts = status.checkpoint.node_attempt_verdicts[node_id]
        assert 0 < len(verdicts) <= MAX_VERDICTS
        assert verdicts[-1]["status"] == "completed"
        assert status.checkpoint.node_attempts[node_id] == 5
    # The measurement above is what the API server would store.
    assert AutomationRunStatus.model_validate(status.to_api()).to_api() == status.to_api()


def test_long_reasons_are_clipped_and_the_history_keeps_to_its_byte_budget() -> None:
    settings = Settings(lifecycle_history_limit=10_000)
    flow = AutomationSpec.model_validate(
        {
            "agents": [{"agentId": "a"}],
            "nodes": [
                {"id": "draft", "agentId": "a"},
                {
                    "id": "review",
                    "kind": "Approval",
                    "dependsOn": ["draft"],
                    "approval": {"decisions": ["approve", "rework", "cancel"]},
                },
            ],
        }
    )
    run = Driver(flow, settings=settings)
    run.decide(admit=False, measure=True)
    run.decide(measure=True)
    reason = "because " * 512  # 4096 characters, the most a gate decision reason may have
    decisions: list[GateDecision] = []
    for round_ in range(60):
        run.report("draft", "completed")
        assert run.phase() == "AwaitingApproval"
        decisions.append(
            GateDecision(gate="review", decision="rework", reason=reason, request_id=f"r{round_}")
        )
        run.set_spec(gate_decisions=list(decisions))
        run.decide(measure=True)
        assert run.phase() == "Running"
    status = run.s
    history = status.checkpoint.lifecycle_history
    assert status.counters.lifecycle_records == run.records
    assert len(history) < run.records, "the byte budget trimmed nothing"
    encoded = len(json.dumps([r.to_api() for r in history]))
    assert encoded <= HISTORY_BUDGET_BYTES + 1024
    assert [r.event for r in history] == run.events[-len(history) :]
    reworked = [r for r in history if r.event == "run_gate_reworked"]
    assert reworked
    assert all(len(r.reason or "") == MAX_REASON_CHARS for r in reworked)
    gate_history = status.checkpoint.gate_history
    assert len(gate_history) == 60
    assert all(len(e.reason or "") == MAX_REASON_CHARS for e in gate_history)
    assert gate_history[0].reason is not None
    assert gate_history[0].reason.endswith("...")
    assert run.largest < STATUS_LIMIT
