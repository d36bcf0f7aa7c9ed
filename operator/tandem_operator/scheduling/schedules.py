"""Schedules and retention (contract §9, B19–B20) as pure decisions.

An Automation with ``spec.schedule`` starts its own runs. Everything that decides what to do
lives here and reads no clock and no API: :func:`plan_schedule` takes the Automation, the
runs it owns and ``now_ms``, and returns a :class:`SchedulePlan` — the runs to create,
cancel and delete, the Events to emit, the Automation's new status and when to come back.
The runtime applies it (see "What the runtime does with a plan" below) and plans again when
the Automation or one of its runs changes, or at ``requeue_at_ms``. Planning again from the
state a plan produced changes nothing: no run, no Event, the same status.

The parts it is made of are modules of their own: ``scheduling.cron`` parses the schedule
and computes its due times (cron fields, shorthands, ``@every``, daylight saving time);
``scheduling.runs`` names the runs and writes the manifest of a new one; ``scheduling.retention``
picks the runs past the history limits and says when a finished run's time to live ends.

Which due times a plan acts on
------------------------------
``status.lastConsideredTime`` is the time up to which due times have been dealt with: a run
was created for them, or they were skipped. A plan looks at the due times after it and up to
``now_ms``. Without one (the first plan for an Automation) it starts from ``now_ms``: a
schedule acts from when the operator first sees it, not from the Automation's creation, so
adding a schedule to an old Automation does not start a run for a time long past.

- **B19d missed times.** Of the due times in that window only the latest may start a run,
  and only if it is at most ``startingDeadlineSeconds`` old (any age without a deadline); the
  others, and the latest too when it is past its deadline, are skipped with one Warning Event
  ``ScheduleMissed`` that counts them (counting stops at :data:`MISSED_COUNT_LIMIT`).
- **suspend.** A suspended schedule starts nothing, but its plans still move
  ``lastConsideredTime`` past each due time, and ask to come back at the next one. That is how
  "times missed while suspended are not caught up" is known: when ``suspend`` goes back to
  false, the times that passed while suspended are already behind ``lastConsideredTime``. The
  one thing that cannot be told apart is an unsuspend while the operator was down: the times
  between the last plan and the restart count as missed by the operator (B19d).
- **B19c concurrency.** The latest due time starts a run unless ``Forbid`` and a run of the
  schedule is not terminal (then it is skipped for good, with a Normal Event
  ``ScheduleSkipped``); ``Replace`` also asks to cancel (``desiredState: Cancelled``) every
  non-terminal run not already asked to.
- **B19a one run per due time.** The run's name is derived from its due time
  (``runs.run_name``), and runs carry the due time in an annotation. A run that already exists
  for a due time (its status write was lost) counts as created: no second run, no skip.
- **B20a history.** Terminal runs of the schedule beyond ``successfulRunsHistoryLimit``
  (Completed) and ``failedRunsHistoryLimit`` (Failed, Blocked, Cancelled) are deleted, oldest
  first by ``finishedAt``. Only runs the Automation controls (ownerReference with
  ``controller: true`` and its uid) count; runs that merely reference it are not its.
- **B20b time to live.** ``retention.ttl_due`` says when a finished run is to be deleted: its
  ``finishedAt`` plus ``ttlSecondsAfterFinished`` (or the operator's default). It is computed
  from the recorded ``finishedAt``, so a restart neither resets nor forgets the countdown.

What the runtime does with a plan
---------------------------------
1. Create each manifest of ``create`` (409 AlreadyExists is success: the name is the due time).
2. Patch ``spec.desiredState: Cancelled`` on each run in ``cancel``.
3. Delete each run in ``delete`` (404 is success).
4. Write ``status`` to the Automation's status subresource when it differs.
5. Emit ``events`` on the Automation.
6. Plan again at ``requeue_at_ms``, and whenever the Automation or a run it owns changes.

A step that fails is retried by planning again: every step is idempotent, and a lost status
write is recovered from the runs themselves. The plan needs the Automation's spec to parse
(``ScheduledAutomation.from_object`` raises pydantic's ``ValidationError`` otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from tandem_operator.api.models import AutomationStatus, Condition, ConditionStatus
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.scheduling.cron import (
    ParsedSchedule,
    ScheduleError,
    count_dues,
    latest_due,
    next_due,
    parse_schedule,
)
from tandem_operator.scheduling.retention import beyond_history
from tandem_operator.scheduling.runs import (
    ScheduledAutomation,
    ScheduledRun,
    run_manifest,
    run_order,
)

EVENT_SKIPPED: Final = "ScheduleSkipped"
"""Normal Event: Forbid skipped a due time because a run of the schedule was not terminal."""
EVENT_MISSED: Final = "ScheduleMissed"
"""Warning Event: due times passed while nothing planned (B19d); the message counts them."""
EVENT_REPLACED: Final = "ScheduleReplaced"
"""Normal Event: Replace asked the schedule's unfinished runs to cancel."""
EVENT_INVALID: Final = "InvalidSchedule"
"""Warning Event: the schedule cannot be used; also the reason of Stalled=True."""

REASON_SCHEDULED: Final = "Scheduled"
REASON_SUSPENDED: Final = "Suspended"
REASON_NO_SCHEDULE: Final = "NoSchedule"

MISSED_COUNT_LIMIT: Final = 1000
"""Missed due times counted one by one for the ScheduleMissed message before saying "more"."""

EventType = Literal["Normal", "Warning"]


# ------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class ScheduleEvent:
    """A Kubernetes Event to post on the Automation."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, kw_only=True)
class SchedulePlan:
    """What to do for one Automation now; see the module docstring for the order."""

    create: tuple[dict[str, Any], ...] = ()
    """AutomationRun manifests to create."""
    cancel: tuple[str, ...] = ()
    """Names of runs to patch with ``spec.desiredState: Cancelled``."""
    delete: tuple[str, ...] = ()
    """Names of runs to delete."""
    events: tuple[ScheduleEvent, ...] = ()
    status: AutomationStatus = field(default_factory=AutomationStatus)
    requeue_at_ms: int | None = None
    """When to plan again even if nothing changes; ``None``: only on a change."""


def plan_schedule(
    *, automation: ScheduledAutomation, runs: Sequence[ScheduledRun], now_ms: int
) -> SchedulePlan:
    """Decide what the Automation's schedule does at ``now_ms`` (B19a–B19d, B20a)."""
    owned = sorted(
        (r for r in runs if r.owner_uid == automation.uid and automation.uid),
        key=run_order,
    )
    schedule = automation.spec.schedule
    old = automation.status
    base = _Status(automation=automation, now_ms=now_ms)
    if schedule is None:
        return SchedulePlan(
            status=base.build(
                active=_active(owned),
                ready=("True", REASON_NO_SCHEDULE, "runs start when an AutomationRun names it"),
                stalled=None,
            )
        )
    try:
        parsed = parse_schedule(schedule)
    except ScheduleError as exc:
        message = str(exc)
        was = _condition(old.conditions, "Stalled")
        news: tuple[ScheduleEvent, ...] = ()
        if was is None or was.status != "True" or was.message != message:
            news = (ScheduleEvent("Warning", EVENT_INVALID, message),)
        return SchedulePlan(
            events=news,
            status=base.build(
                active=_active(owned),
                ready=("False", EVENT_INVALID, message),
                stalled=("True", EVENT_INVALID, message),
                next_ms=None,
            ),
        )

    considered = parse_ms(old.last_considered_time)
    if considered is None:
        considered = now_ms
    active = _active(owned)
    outcome = _DueOutcome()
    latest = latest_due(parsed, after_ms=considered, until_ms=now_ms)
    if latest is not None:
        outcome = _act_on_due(
            latest,
            automation=automation,
            parsed=parsed,
            after_ms=considered,
            active=active,
            existing=next((r for r in owned if r.scheduled_at_ms == latest), None),
            now_ms=now_ms,
        )
        considered = latest
        if outcome.run is not None:
            active = [*active, _created(outcome.run, latest, now_ms)]
    last_ms, last_name = outcome.started or (
        parse_ms(old.last_schedule_time),
        old.last_run_name,
    )

    delete = beyond_history(
        owned,
        successful=schedule.successful_runs_history_limit,
        failed=schedule.failed_runs_history_limit,
    )
    upcoming = next_due(parsed, now_ms)
    ready: tuple[ConditionStatus, str, str] = (
        ("False", REASON_SUSPENDED, "the schedule is suspended; no run is started")
        if schedule.suspend
        else ("True", REASON_SCHEDULED, f"runs start on the schedule {schedule.cron!r}")
    )
    status = base.build(
        active=active,
        ready=ready,
        stalled=("False", REASON_SCHEDULED, ""),
        next_ms=None if schedule.suspend else upcoming,
        last_ms=last_ms,
        last_name=last_name,
        considered_ms=considered,
    )
    return SchedulePlan(
        create=() if outcome.run is None else (outcome.run,),
        cancel=outcome.cancel,
        delete=tuple(delete),
        events=outcome.events,
        status=status,
        requeue_at_ms=upcoming,
    )


@dataclass(frozen=True, kw_only=True)
class _DueOutcome:
    """What the latest due time of a plan's window leads to."""

    run: dict[str, Any] | None = None
    """The manifest to create."""
    cancel: tuple[str, ...] = ()
    events: tuple[ScheduleEvent, ...] = ()
    started: tuple[int, str] | None = None
    """(due time, run name) of the run for this due time, new or found."""


def _act_on_due(
    due_ms: int,
    *,
    automation: ScheduledAutomation,
    parsed: ParsedSchedule,
    after_ms: int,
    active: Sequence[ScheduledRun],
    existing: ScheduledRun | None,
    now_ms: int,
) -> _DueOutcome:
    """B19a-B19d for the latest due time after ``after_ms``; the earlier ones are missed."""
    schedule = automation.spec.schedule
    assert schedule is not None
    replace = schedule.concurrency_policy == "Replace"
    if existing is not None:
        # Created by an earlier plan whose status write was lost: it counts as started.
        cancel = _to_cancel(active, keep=existing.name) if replace else []
        return _DueOutcome(cancel=tuple(cancel), started=(due_ms, existing.name))
    if schedule.suspend:
        return _DueOutcome()  # starts nothing; the time is behind lastConsideredTime from now on
    events: list[ScheduleEvent] = []
    deadline = schedule.starting_deadline_seconds
    too_late = deadline is not None and now_ms - due_ms > deadline * 1000
    missed = count_dues(parsed, after_ms=after_ms, before_ms=due_ms, limit=MISSED_COUNT_LIMIT)
    missed += 1 if too_late else 0
    if missed:
        events.append(_missed_event(missed, after_ms, due_ms, now_ms, deadline))
    if too_late:
        return _DueOutcome(events=tuple(events))
    if schedule.concurrency_policy == "Forbid" and active:
        events.append(
            ScheduleEvent(
                "Normal",
                EVENT_SKIPPED,
                f"skipped the run due at {format_ms(due_ms)}: "
                f"{_names(active)} not finished (concurrencyPolicy Forbid)",
            )
        )
        return _DueOutcome(events=tuple(events))
    manifest = run_manifest(automation, due_ms)
    name = manifest["metadata"]["name"]
    cancel = _to_cancel(active, keep=name) if replace else []
    if cancel:
        events.append(
            ScheduleEvent(
                "Normal",
                EVENT_REPLACED,
                f"cancelling {', '.join(cancel)} for the run due at {format_ms(due_ms)} "
                "(concurrencyPolicy Replace)",
            )
        )
    return _DueOutcome(
        run=manifest, cancel=tuple(cancel), events=tuple(events), started=(due_ms, name)
    )


def _active(owned: Sequence[ScheduledRun]) -> list[ScheduledRun]:
    return [r for r in owned if not r.terminal]


def _names(runs: Sequence[ScheduledRun]) -> str:
    names = [r.name for r in runs]
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _to_cancel(active: Sequence[ScheduledRun], *, keep: str) -> list[str]:
    return [r.name for r in active if r.name != keep and r.desired_state != "Cancelled"]


def _created(manifest: Mapping[str, Any], due_ms: int, now_ms: int) -> ScheduledRun:
    return ScheduledRun(
        name=manifest["metadata"]["name"],
        scheduled_at_ms=due_ms,
        created_at_ms=now_ms,
    )


def _missed_event(
    count: int, after_ms: int, latest_ms: int, now_ms: int, deadline: int | None
) -> ScheduleEvent:
    number = f"more than {MISSED_COUNT_LIMIT}" if count >= MISSED_COUNT_LIMIT else str(count)
    noun = "time" if count == 1 else "times"
    why = "" if deadline is None else f"; startingDeadlineSeconds is {deadline}"
    return ScheduleEvent(
        "Warning",
        EVENT_MISSED,
        f"skipped {number} missed schedule {noun} after {format_ms(after_ms)} "
        f"(latest due {format_ms(latest_ms)}, {(now_ms - latest_ms) // 1000}s ago{why})",
    )


def _condition(conditions: Sequence[Condition], kind: str) -> Condition | None:
    return next((c for c in conditions if c.type == kind), None)


@dataclass(frozen=True, kw_only=True)
class _Status:
    automation: ScheduledAutomation
    now_ms: int

    def build(
        self,
        *,
        active: Sequence[ScheduledRun],
        ready: tuple[ConditionStatus, str, str],
        stalled: tuple[ConditionStatus, str, str] | None,
        next_ms: int | None = None,
        last_ms: int | None = None,
        last_name: str | None = None,
        considered_ms: int | None = None,
    ) -> AutomationStatus:
        old = self.automation.status
        conditions = [c for c in old.conditions if c.type not in ("Ready", "Stalled")]
        conditions.append(self._set(old.conditions, "Ready", ready))
        if stalled is not None:
            conditions.append(self._set(old.conditions, "Stalled", stalled))
        considered = format_ms(considered_ms) if considered_ms is not None else None
        return old.model_copy(
            update={
                "observed_generation": self.automation.generation,
                "last_schedule_time": format_ms(last_ms)
                if last_ms is not None
                else old.last_schedule_time,
                "next_schedule_time": format_ms(next_ms) if next_ms is not None else None,
                "active_runs": [r.name for r in active],
                "active_run_count": len(active),
                "last_run_name": last_name if last_name is not None else old.last_run_name,
                "last_considered_time": considered or old.last_considered_time,
                "conditions": sorted(conditions, key=lambda c: c.type),
            }
        )

    def _set(
        self, conditions: Sequence[Condition], kind: str, value: tuple[ConditionStatus, str, str]
    ) -> Condition:
        status, reason, message = value
        was = _condition(conditions, kind)
        since = format_ms(self.now_ms)
        if was is not None and was.status == status:
            since = was.last_transition_time
        return Condition(
            type=kind,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=since,
            observed_generation=self.automation.generation,
        )
