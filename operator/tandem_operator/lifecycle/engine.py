"""The lifecycle of an AutomationRun as one pure function: ``decide(observation) -> Decision``.

Everything the rules need is in the :class:`~tandem_operator.lifecycle.contract.Observation`
(the run's spec and status, the clock, the settings, the scheduler's verdict, which operator
instances are alive, what the executors reported); everything they produce is in the
:class:`~tandem_operator.lifecycle.contract.Decision`. No I/O happens here: the runtime
applies the decision as one status patch and only then acts on it, so a failed write never
leaves a started attempt without its record.

``decide`` is a declared pipeline of rule groups, each a module readable against its rules:

====================  =============================================  ==================
stage                 rules                                          module
====================  =============================================  ==================
recovery              B1, B1r, B2 (before anything else)             ``recovery``
user control          B13 cancel, B14 recover                        ``control``
gates                 B11 decisions and expiry, B4 stale marking      ``gates``
pause and resume      B12                                            ``control``
automatic resumes     B6, B7, then B9 admission                      ``resumes``
execution, budgets    B10 outcomes, B17 usage, B8, B5, dispatch      ``running``
settling a pause      B12                                            ``control``
invariants            update invariants, B16, conditions, bounds     ``invariants``
====================  =============================================  ==================

**It settles.** Some rules act on the result of others (a stale reap, then B6; an approved
gate, then admission, then dispatch): ``decide`` applies the pipeline again to its own
result until nothing changes, as if the runtime had decided again on the status it just
wrote, so one call reaches the fixed point and one write carries it. Attempts started by an
earlier round count as in flight in the later ones.

**It says when to come back.** ``Decision.requeue_at_ms`` is the earliest moment a
time-based rule (retry back-off, gate expiry, B4, B5, B8's runtime budget, an expiring
override or a foreign claim's lease) could change the decision; deciding earlier with the
same inputs changes nothing (``lifecycle.deadlines``). The runtime's wake-ups and the
lifecycle tick's filter both read it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tandem_operator.api.models import AutomationRunStatus, LifecycleRecord, Scheduler
from tandem_operator.api.vocabulary import is_terminal
from tandem_operator.lifecycle import control, gates, recovery, resumes, running
from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import (
    Decision,
    Event,
    Observation,
    StartAttempt,
)
from tandem_operator.lifecycle.deadlines import next_deadline
from tandem_operator.lifecycle.invariants import finalize
from tandem_operator.lifecycle.work import Work

MAX_ROUNDS = 8
"""Rounds of the pipeline before ``decide`` gives up settling (the rules settle in two or
three; a decision that has not settled says so in ``Decision.settled``)."""


def _initial_status(obs: Observation) -> AutomationRunStatus:
    status = AutomationRunStatus(phase="Queued", created_at=format_ms(obs.now_ms))
    if obs.definition is not None:
        status.checkpoint.pending_nodes = [n.id for n in obs.definition.nodes]
    status.scheduler = Scheduler(queued_at=status.created_at)
    return status


def _pipeline(w: Work) -> None:
    """Every rule group once, in the contract's order."""
    recovery.recover_orphan(w)
    if control.cancel(w):
        running.apply_outcomes(w)
        return
    control.recover(w)
    gates.gate_decisions(w)
    gates.gate_timers(w)
    if is_terminal(w.s.phase):
        # Attempts that end after the run did still bring their usage (B17).
        running.apply_outcomes(w)
        return
    control.pause_resume(w)
    resumes.stale_auto_resume(w)
    resumes.guardrail_auto_resume(w)
    resumes.admit(w)
    running.apply_outcomes(w)
    running.budgets(w)
    running.stale_reap(w)
    running.dispatch(w)
    control.settle_pausing(w)


_DERIVED = frozenset({"conditions", "progress", "updated_at", "observed_generation"})


def _core_changed(before: AutomationRunStatus, after: AutomationRunStatus) -> bool:
    """A field other than those derived from the rest changed: a change worth a write.

    Model equality compares field values recursively, as comparing two ``model_dump``s
    would, without serialising a status that may hold 100 nodes' outputs twice per decide.
    """
    return any(
        getattr(before, name) != getattr(after, name)
        for name in AutomationRunStatus.model_fields
        if name not in _DERIVED
    )


def _generation_moved(before: AutomationRunStatus, generation: int) -> bool:
    """The spec changed since the operator last wrote status: say so in observedGeneration.

    A status without ``observedGeneration`` (written by hand, or by an older operator) is
    not rewritten just to add it: B3 promises no write to a Paused or AwaitingApproval run
    on restart, and the next real change records the generation anyway.
    """
    return before.observed_generation is not None and before.observed_generation != generation


_SHARED_PARTS: Any = {
    "automation_snapshot": True,
    "checkpoint": {"lifecycle_history", "gate_history", "node_outputs", "node_attempt_verdicts"},
}


STALLED_BY_RUNTIME = frozenset({"InvalidStatus", "StatusRejected"})
"""Stalled reasons the reconciler writes: a status it could not use, a write refused."""


def _reported_invalid(status: AutomationRunStatus) -> bool:
    """The reconciler stalled this run over a status it could not use (``InvalidStatus``)
    or could not write (``StatusRejected``).

    The run is decided again only once someone fixed the status, and that decision must
    be written even when it changes nothing else, or ``Stalled`` would stay True.
    """
    return any(
        c.type == "Stalled" and c.status == "True" and c.reason in STALLED_BY_RUNTIME
        for c in status.conditions
    )


def _private_copy(status: AutomationRunStatus) -> AutomationRunStatus:
    """A copy of ``status`` for the rules to change, cheap enough for 100-node statuses.

    The bulky parts are shared, not copied: the automation snapshot (no rule changes it
    once set) and the records, gateHistory entries, node outputs and verdicts, which the
    rules only ever add, replace or drop (their containers are copied), never change in
    place. The rest goes through a dump and a validation, pydantic-core work that is many
    times faster than ``model_copy(deep=True)``.
    """
    cp = status.checkpoint
    copy = AutomationRunStatus.model_validate(status.model_dump(exclude=_SHARED_PARTS))
    copy.automation_snapshot = status.automation_snapshot
    copy.checkpoint.lifecycle_history = list(cp.lifecycle_history)
    copy.checkpoint.gate_history = list(cp.gate_history)
    copy.checkpoint.node_outputs = dict(cp.node_outputs)
    copy.checkpoint.node_attempt_verdicts = {
        node_id: list(verdicts) for node_id, verdicts in cp.node_attempt_verdicts.items()
    }
    return copy


def decide(obs: Observation, *, rounds: int = MAX_ROUNDS) -> Decision:
    """Apply every rule to one run until it settles; say what to write, do and when to return.

    ``rounds`` bounds the passes of the pipeline; ``rounds=1`` is one pass, which tests of
    a single rule use to see its own result before the others act on it.
    """
    fresh = obs.status is None
    before = obs.status or _initial_status(obs)
    current = before
    records: list[LifecycleRecord] = []
    events: list[Event] = []
    start: list[StartAttempt] = []
    cancel: set[str] = set()
    round_obs = obs
    settled = False
    w = Work(obs, _private_copy(before))
    for round_number in range(rounds):
        if round_number:
            w = Work(round_obs, _private_copy(current))
        elif fresh:
            w.record("run_queued", reason="created")
        _pipeline(w)
        finalize(w)
        records += w.records
        events += w.events
        start += w.start
        cancel |= w.cancel
        acted = bool(w.records or w.events or w.start or w.cancel)
        moved = _core_changed(current, w.s)
        current = w.s
        if not acted and not moved:
            settled = True
            break
        # Decide again on this result, as the runtime would after writing it: the
        # outcomes are accounted for, the attempts just started are in flight.
        round_obs = replace(
            round_obs,
            status=current,
            outcomes=(),
            in_flight=round_obs.in_flight | {s.node_id for s in w.start},
        )
    changed = (
        fresh
        or _core_changed(before, current)
        or _generation_moved(before, obs.generation)
        or _reported_invalid(before)
    )
    if changed:
        current.updated_at = w.now
    return Decision(
        status=current,
        changed=changed,
        records=tuple(records),
        events=tuple(events),
        start=tuple(start),
        cancel=frozenset(cancel),
        consumed=len(obs.outcomes),
        requeue_at_ms=next_deadline(w) if settled else obs.now_ms,
        settled=settled,
    )
