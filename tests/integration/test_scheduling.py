"""Admission (B9) on the real control plane: capacity, workspace locks, order, definitions.

The concurrency test starts many short simulated runs at once and checks the scheduler
two ways: by sampling every run's phase with ``kubectl`` while they run (what a user
watching ``kubectl get aruns -w`` would see), and afterwards by replaying the exact
``run_started`` / ``run_completed`` record times of every run, which catches overlaps
shorter than a sampling interval.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

from tandem_operator.api.models import AutomationSpec
from tandem_operator.lifecycle.clock import parse_ms

WORKSPACES = ("/ws/alpha", "/ws/beta", "/ws/gamma")
CAPACITY = 4


def _interval(status: dict[str, Any]) -> tuple[int, int]:
    """(started, finished) ms of a run that went Queued → Running → Completed once."""
    history = status["checkpoint"]["lifecycleHistory"]
    started = [r for r in history if r["event"] == "run_started"]
    done = [r for r in history if r["event"] == "run_completed"]
    events = [r["event"] for r in history]
    assert len(started) == 1, events
    assert len(done) == 1, events
    begin, end = parse_ms(started[0]["recordedAt"]), parse_ms(done[0]["recordedAt"])
    assert begin is not None
    assert end is not None
    return begin, end


def _max_overlap(intervals: list[tuple[int, int]]) -> int:
    # An end and a start at the same millisecond: the slot was freed first.
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@dataclass(frozen=True)
class _Seen:
    """One run as one ``kubectl get`` showed it."""

    phase: str | None
    workspace: str | None
    queue_reason: str | None
    has_scheduler: bool
    has_claim: bool


class _Sampler(threading.Thread):
    """Lists every run with kubectl in a loop and keeps each listing (name → _Seen)."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(name="run-sampler", daemon=True)
        self.cluster = cluster
        self.samples: list[dict[str, _Seen]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            items = json.loads(self.cluster.kubectl("get", "aruns", "-o", "json"))["items"]
            sample = {}
            for item in items:
                status = item.get("status") or {}
                sample[item["metadata"]["name"]] = _Seen(
                    phase=status.get("phase"),
                    workspace=(item["spec"]["automation"].get("workspace") or {}).get("root"),
                    queue_reason=(status.get("scheduler") or {}).get("queueReason"),
                    has_scheduler="scheduler" in status,
                    has_claim="executionClaim" in status,
                )
            self.samples.append(sample)


def test_capacity_and_workspace_locks_hold_and_order_is_kept(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    # 30 runs over 3 workspaces, then 6 without a workspace: with only 3 workspaces the
    # locks alone would keep at most 3 running, so the free runs make the capacity bind.
    runs: list[tuple[str, str | None]] = [
        (f"run-{i:02d}", WORKSPACES[i % len(WORKSPACES)]) for i in range(30)
    ]
    runs += [(f"run-{i:02d}", None) for i in range(30, 36)]
    operators(TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS=str(CAPACITY))
    sampler = _Sampler(cluster)
    sampler.start()
    try:
        # One apply: kubectl creates them in order, so creationTimestamp never decreases
        # along the list, and within a second the zero-padded names keep the same order.
        cluster.apply(
            *(
                simulated_run(
                    name,
                    [sim("work", after=0.2 if workspace else 1.0)],
                    workspace=workspace,
                )
                for name, workspace in runs
            )
        )

        def all_done() -> bool:
            last = sampler.samples[-1] if sampler.samples else {}
            return all(name in last and last[name].phase == "Completed" for name, _ in runs)

        wait_for(all_done, timeout=240, interval=0.5, what="every run to complete")
    finally:
        sampler.stop.set()
        sampler.join(timeout=30)

    items = json.loads(cluster.kubectl("get", "aruns", "-o", "json"))["items"]
    by_name = {item["metadata"]["name"]: item for item in items}
    created = sorted(by_name, key=lambda n: (by_name[n]["metadata"]["creationTimestamp"], n))
    assert created == [name for name, _ in runs], "precondition: creation order is name order"

    # What kubectl showed while they ran.
    assert len(sampler.samples) >= 5
    reasons: set[str | None] = set()
    for sample in sampler.samples:
        active = [seen for seen in sample.values() if seen.phase in ("Running", "Pausing")]
        assert sum(1 for seen in active if seen.phase == "Running") <= CAPACITY, sample
        per_workspace = Counter(seen.workspace for seen in active if seen.workspace)
        assert all(count == 1 for count in per_workspace.values()), sample
        for seen in sample.values():
            # scheduler only while Queued, executionClaim only while Running or Pausing.
            assert seen.has_scheduler == (seen.phase == "Queued"), seen
            assert seen.has_claim == (seen.phase in ("Running", "Pausing")), seen
            if seen.phase == "Queued":
                reasons.add(seen.queue_reason)
    assert {"capacity", "workspace_lock"} <= reasons

    # What the runs recorded, to the millisecond.
    statuses = {name: by_name[name]["status"] for name, _ in runs}
    assert all(s["phase"] == "Completed" for s in statuses.values())
    intervals = {name: _interval(statuses[name]) for name, _ in runs}
    assert _max_overlap(list(intervals.values())) == CAPACITY
    grouped: dict[str | None, list[str]] = defaultdict(list)
    for name, workspace in runs:
        grouped[workspace].append(name)
    for workspace in WORKSPACES:
        names = grouped[workspace]
        assert _max_overlap([intervals[n] for n in names]) == 1, workspace
        started = sorted(names, key=lambda n: (statuses[n]["startedAt"], n))
        assert started == names, f"start order in {workspace} is not creation order"
    free = grouped[None]
    assert sorted(free, key=lambda n: (statuses[n]["startedAt"], n)) == free


def test_runtime_context_required_and_missing_fails_at_admission(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    missing = simulated_run("no-context", [sim("a")])
    given = simulated_run("with-context", [sim("a")], runtimeContext={"partition": "eu-1"})
    for manifest in (missing, given):
        manifest["spec"]["automation"]["requiresRuntimeContext"] = True
    operators()
    cluster.apply(missing, given)
    status = cluster.wait_phase("no-context", "Failed", "Completed", timeout=60)
    assert status["phase"] == "Failed"
    assert status["detail"] == "runtime context partition missing for automation run"
    assert status["checkpoint"]["lastFailure"]["nodeId"] == "runtime_context"
    assert status["checkpoint"].get("nodeAttempts", {}) == {}
    assert "startedAt" not in status
    assert status["finishedAt"]
    ok = cluster.wait_phase("with-context", "Completed", "Failed", timeout=60)
    assert ok["phase"] == "Completed", ok.get("detail")


def test_run_waits_for_its_automation_and_snapshots_it_at_admission(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    cluster.apply(
        {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "AutomationRun",
            "metadata": {"name": "by-ref"},
            "spec": {"automationRef": {"name": "nightly"}},
        }
    )

    def unresolved() -> list[dict[str, Any]]:
        return [
            e
            for e in cluster.events("by-ref")
            if e["type"] == "Warning" and e["reason"] == "AutomationUnresolved"
        ]

    (warning,) = wait_for(unresolved, timeout=60, what="a Warning about the missing Automation")
    assert "nightly" in warning["message"]
    status = cluster.status("by-ref")
    assert status["phase"] == "Queued"
    assert "nightly" in status["detail"]
    assert "automationSnapshot" not in status

    time.sleep(2)  # lifecycle ticks: still waiting, and warned once, not on every tick
    assert cluster.phase("by-ref") == "Queued"
    assert len(unresolved()) == 1
    assert unresolved()[0].get("count", 1) == 1

    automation = {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "Automation",
        "metadata": {"name": "nightly"},
        "spec": {
            "creatorId": "alice",
            "agents": [{"agentId": "agent"}],
            "nodes": [sim("collect", after=2), sim("report", dependsOn=["collect"])],
        },
    }
    cluster.apply(automation)
    admitted_spec = cluster.get("automation", "nightly")["spec"]
    cluster.wait_phase("by-ref", "Running", "Completed", "Failed", timeout=60)

    # Changing the Automation now must not change the admitted run.
    changed = json.loads(json.dumps(automation))
    changed["spec"]["nodes"] = [sim("other", outcome="failed")]
    cluster.apply(changed)
    status = cluster.wait_phase("by-ref", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    assert status["checkpoint"]["completedNodes"] == ["collect", "report"]
    snapshot = status["automationSnapshot"]
    assert [n["id"] for n in snapshot["nodes"]] == ["collect", "report"]
    assert snapshot["creatorId"] == "alice"
    # The snapshot is the definition as the operator resolved it (defaults filled in).
    assert AutomationSpec.model_validate(snapshot) == AutomationSpec.model_validate(admitted_spec)
