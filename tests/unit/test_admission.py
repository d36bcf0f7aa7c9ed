"""The admission pass (B9) over hand-made run slots, and its fairness as a property.

The pass is pure: it sees every run the operator knows and gives each eligible Queued run
a verdict. Examples pin down the order (oldest first, then name), the capacity count (only
Running and Pausing runs hold a slot) and the workspace lock; a hypothesis property checks
that no younger run is admitted for a workspace an older eligible run is waiting for.
"""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem_operator.scheduling.admission import (
    AdmissionQueue,
    FlowFacts,
    RunSlot,
    Waiting,
    admission_pass,
)

NS = "team-a"


def slot(
    name: str,
    created: str,
    *,
    phase: str | None = "Queued",
    workspace: str | None = None,
    eligible: bool = True,
    namespace: str = NS,
) -> RunSlot:
    return RunSlot(
        key=(namespace, name),
        created=f"2026-11-24T01:00:{created}Z",
        phase=phase,
        workspace=workspace,
        eligible=eligible,
    )


def admitted(verdicts: Mapping[tuple[str, str], str]) -> set[str]:
    return {key[1] for key, verdict in verdicts.items() if verdict == "admit"}


def test_oldest_queued_runs_are_admitted_first() -> None:
    runs = [slot("young", "03"), slot("old", "01"), slot("middle", "02")]
    verdicts = admission_pass(runs, capacity=2)
    assert verdicts == {
        (NS, "old"): "admit",
        (NS, "middle"): "admit",
        (NS, "young"): "capacity",
    }


def test_runs_created_in_the_same_second_go_by_name() -> None:
    runs = [slot("b-run", "01"), slot("a-run", "01"), slot("c-run", "01")]
    assert admitted(admission_pass(runs, capacity=1)) == {"a-run"}
    assert admitted(admission_pass(runs, capacity=2)) == {"a-run", "b-run"}


def test_only_running_and_pausing_runs_take_capacity() -> None:
    runs = [
        slot("running", "00", phase="Running"),
        slot("pausing", "00", phase="Pausing"),
        slot("paused", "00", phase="Paused"),
        slot("gate", "00", phase="AwaitingApproval"),
        slot("done", "00", phase="Completed"),
        slot("next", "01"),
        slot("after", "02"),
    ]
    assert admission_pass(runs, capacity=3) == {(NS, "next"): "admit", (NS, "after"): "capacity"}
    assert admission_pass(runs, capacity=2) == {
        (NS, "next"): "capacity",
        (NS, "after"): "capacity",
    }


def test_a_run_without_a_phase_is_queued() -> None:
    assert admission_pass([slot("new", "01", phase=None)], capacity=1) == {(NS, "new"): "admit"}


def test_ineligible_and_non_queued_runs_get_no_verdict() -> None:
    runs = [slot("backing-off", "01", eligible=False), slot("paused", "01", phase="Paused")]
    assert admission_pass(runs, capacity=5) == {}


def test_a_running_run_locks_its_workspace() -> None:
    runs = [
        slot("holder", "00", phase="Running", workspace="/ws/reports"),
        slot("same", "01", workspace="/ws/reports"),
        slot("other", "02", workspace="/ws/other"),
        slot("none", "03"),
    ]
    assert admission_pass(runs, capacity=8) == {
        (NS, "same"): "workspace_lock",
        (NS, "other"): "admit",
        (NS, "none"): "admit",
    }


def test_paused_and_awaiting_runs_hold_no_workspace_lock() -> None:
    runs = [
        slot("paused", "00", phase="Paused", workspace="/ws"),
        slot("gate", "00", phase="AwaitingApproval", workspace="/ws"),
        slot("next", "01", workspace="/ws"),
    ]
    assert admission_pass(runs, capacity=8) == {(NS, "next"): "admit"}


def test_a_pausing_run_still_holds_its_workspace() -> None:
    runs = [
        slot("pausing", "00", phase="Pausing", workspace="/ws"),
        slot("next", "01", workspace="/ws"),
    ]
    assert admission_pass(runs, capacity=8) == {(NS, "next"): "workspace_lock"}


def test_the_pass_admits_one_run_per_free_workspace() -> None:
    runs = [
        slot("first", "01", workspace="/ws"),
        slot("second", "02", workspace="/ws"),
        slot("third", "03", workspace="/ws"),
    ]
    assert admission_pass(runs, capacity=8) == {
        (NS, "first"): "admit",
        (NS, "second"): "workspace_lock",
        (NS, "third"): "workspace_lock",
    }


def test_a_younger_run_does_not_overtake_an_older_one_waiting_for_capacity() -> None:
    runs = [
        slot("busy", "00", phase="Running"),
        slot("older", "01", workspace="/ws"),
        slot("younger", "02", workspace="/ws"),
    ]
    verdicts = admission_pass(runs, capacity=1)
    assert verdicts == {(NS, "older"): "capacity", (NS, "younger"): "capacity"}


def test_a_run_blocked_by_its_workspace_leaves_the_slot_to_the_next_run() -> None:
    runs = [
        slot("holder", "00", phase="Running", workspace="/ws"),
        slot("locked", "01", workspace="/ws"),
        slot("free", "02", workspace="/elsewhere"),
    ]
    assert admission_pass(runs, capacity=2) == {
        (NS, "locked"): "workspace_lock",
        (NS, "free"): "admit",
    }


def test_namespaces_share_capacity_and_workspaces_by_root() -> None:
    runs = [
        slot("a", "01", workspace="/shared", namespace="ns-1"),
        slot("a", "02", workspace="/shared", namespace="ns-2"),
    ]
    assert admission_pass(runs, capacity=8) == {
        ("ns-1", "a"): "admit",
        ("ns-2", "a"): "workspace_lock",
    }


# ------------------------------------------------------------------------------ property

PHASES = [None, "Queued", "Queued", "Queued", "Running", "Pausing", "Paused", "Completed"]


@st.composite
def run_sets(draw: st.DrawFn) -> list[RunSlot]:
    count = draw(st.integers(min_value=0, max_value=12))
    runs = []
    for index in range(count):
        runs.append(
            RunSlot(
                key=(draw(st.sampled_from(["ns-1", "ns-2"])), f"run-{index:02d}"),
                created=f"2026-11-24T01:00:{draw(st.integers(0, 5)):02d}Z",
                phase=draw(st.sampled_from(PHASES)),
                workspace=draw(st.sampled_from([None, "/ws/a", "/ws/b"])),
                eligible=draw(st.booleans()) or draw(st.booleans()),
            )
        )
    return runs


@settings(max_examples=200, deadline=None)
@given(runs=run_sets(), capacity=st.integers(min_value=1, max_value=4))
def test_admission_is_fair_and_within_limits(runs: list[RunSlot], capacity: int) -> None:
    verdicts = admission_pass(runs, capacity=capacity)
    by_key = {r.key: r for r in runs}
    active = [r for r in runs if r.phase in ("Running", "Pausing")]
    queued = [r for r in runs if r.phase in (None, "Queued") and r.eligible]
    assert set(verdicts) == {r.key for r in queued}

    chosen = [by_key[k] for k, v in verdicts.items() if v == "admit"]
    # Capacity: admitted runs only fill free slots.
    assert len(chosen) <= max(0, capacity - len(active))
    # Workspace lock: no two holders of one workspace, none next to an active holder.
    held = [r.workspace for r in active if r.workspace]
    new = [r.workspace for r in chosen if r.workspace]
    assert len(new) == len(set(new))
    assert not set(new) & set(held)

    def order(r: RunSlot) -> tuple[str, str, str]:
        return (r.created, r.key[1], r.key[0])

    for young in chosen:
        for old in queued:
            if order(old) >= order(young) or verdicts[old.key] == "admit":
                continue
            # A younger run is never admitted while an older one waits for capacity, nor
            # for a workspace the younger one takes.
            assert verdicts[old.key] != "capacity"
            assert not (old.workspace and old.workspace == young.workspace)
    # A workspace_lock verdict names a workspace that really is held.
    for run in queued:
        if verdicts[run.key] == "workspace_lock":
            assert run.workspace in held or run.workspace in new


# ------------------------------------------------------------------ the incremental queue


def _queue_of(runs: list[RunSlot], capacity: int) -> AdmissionQueue:
    """An AdmissionQueue fed the same runs, one update at a time, in a shuffled history."""
    queue = AdmissionQueue(capacity=capacity, referenced=lambda ns, name: FlowFacts(False, None))
    for run in runs:
        # Each run first appears as new, then moves to its phase: updates replace.
        queue.update(run.key, phase=None, waiting=_waiting(run))
        queue.update(run.key, phase=run.phase, waiting=_waiting(run))
    return queue


def _waiting(run: RunSlot) -> Waiting:
    return Waiting(
        key=run.key,
        created=run.created,
        desired_running=run.eligible,
        retry_after_ms=None,
        own_workspace=run.workspace,
        automation_ref=None,
        has_flow=True,
    )


@settings(max_examples=300, deadline=None)
@given(runs=run_sets(), capacity=st.integers(min_value=1, max_value=4))
def test_the_incremental_queue_answers_as_the_whole_pass(
    runs: list[RunSlot], capacity: int
) -> None:
    """Every verdict of ``AdmissionQueue`` (asked one run at a time, as the reconciler asks)
    is the verdict ``admission_pass`` gives the same runs, and ``admissible`` lists exactly
    the runs the pass admits, oldest first."""
    verdicts = admission_pass(runs, capacity=capacity)
    queue = _queue_of(runs, capacity)
    for run in runs:
        if run.phase in (None, "Queued"):
            expected = verdicts.get(run.key, "capacity")
            assert queue.verdict(_waiting(run), 0) == expected, run
    admitted_by_pass = sorted(
        (k for k, v in verdicts.items() if v == "admit"),
        key=lambda k: next((r.created, r.key[1], r.key[0]) for r in runs if r.key == k),
    )
    assert queue.admissible(0) == admitted_by_pass
    assert queue.busy == sum(1 for r in runs if r.phase in ("Running", "Pausing"))


def test_a_paused_run_asks_as_if_it_were_queued() -> None:
    """A Paused run about to be resumed takes its place by age among the waiting runs."""
    older = slot("older", "00", workspace="/ws/a")
    paused = slot("paused", "01", phase="Paused", workspace="/ws/b")
    queue = _queue_of([older, paused], capacity=1)
    assert queue.verdict(_waiting(paused), 0) == "capacity"  # older takes the only slot
    queue = _queue_of([older, paused], capacity=2)
    assert queue.verdict(_waiting(paused), 0) == "admit"
    assert queue.admissible(0) == [older.key]  # asking changed nothing


def test_deleting_a_holder_frees_its_slot_and_workspace() -> None:
    holder = slot("holder", "00", phase="Running", workspace="/ws/a")
    waiting = slot("waiting", "01", workspace="/ws/a")
    queue = _queue_of([holder, waiting], capacity=1)
    assert queue.verdict(_waiting(waiting), 0) == "workspace_lock"
    queue.update(holder.key, phase=None, waiting=None)
    assert queue.verdict(_waiting(waiting), 0) == "admit"
    assert queue.admissible(0) == [waiting.key]
