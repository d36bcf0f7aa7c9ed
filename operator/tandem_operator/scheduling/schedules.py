"""Schedules and retention (contract §9, B19–B20) as pure decisions.

An Automation with ``spec.schedule`` starts its own runs. Everything that decides what to do
lives here and reads no clock and no API: :func:`plan_schedule` takes the Automation, the
runs it owns and ``now_ms``, and returns a :class:`SchedulePlan` — the runs to create,
cancel and delete, the Events to emit, the Automation's new status and when to come back.
The runtime applies it (see "What the runtime does with a plan" below) and plans again when
the Automation or one of its runs changes, or at ``requeue_at_ms``. Planning again from the
state a plan produced changes nothing: no run, no Event, the same status.

Due times
---------
``cron`` is five fields (minute hour day-of-month month day-of-week, evaluated by
``cronsim`` with Debian cron's rules: names, ranges, steps, ``L``, and "either day field" when
both are restricted), or a shorthand (``@hourly`` = ``0 * * * *``, ``@daily`` = ``0 0 * * *``,
``@weekly`` = ``0 0 * * 0``, ``@monthly`` = ``0 0 1 * *``), or ``@every <n>s|m|h``. Cron
fields are matched against the wall clock of ``timeZone``; ``@every`` is due at each whole
multiple of the interval since the Unix epoch, so its due times never depend on when an
operator started (a CronJob's ``@every`` counts from its last run instead).

Daylight saving time. Kubernetes' CronJob controller (``robfig/cron/v3``, ``SpecSchedule.Next``)
steps through hours in absolute time, so when clocks go forward a local time that does not
exist is never matched: ``30 2 * * *`` in Europe/Berlin does not run on the last Sunday of
March. We do the same: a due time whose wall-clock time does not exist is skipped. When
clocks go back, CronJob matches the repeated wall-clock time twice and starts two Jobs
(kubernetes/kubernetes#121594, open); that breaks "one run per due time" as users read it, so
here a wall-clock time that occurs twice is due once, at its first occurrence (as in Debian
cron, which does not re-run jobs in a repeated hour). ``@every`` is counted in absolute time
and is unaffected by either.

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
  (:func:`run_name`), and runs carry the due time in an annotation. A run that already exists
  for a due time (its status write was lost) counts as created: no second run, no skip.
- **B20a history.** Terminal runs of the schedule beyond ``successfulRunsHistoryLimit``
  (Completed) and ``failedRunsHistoryLimit`` (Failed, Blocked, Cancelled) are deleted, oldest
  first by ``finishedAt``. Only runs the Automation controls (ownerReference with
  ``controller: true`` and its uid) count; runs that merely reference it are not its.
- **B20b time to live.** :func:`ttl_due` says when a finished run is to be deleted: its
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

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tandem_operator.api.models import (
    API_VERSION,
    TERMINAL_PHASES,
    AutomationResourceSpec,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationStatus,
    Condition,
    ConditionStatus,
    Schedule,
)
from tandem_operator.lifecycle.clock import format_ms, parse_ms

AUTOMATION_LABEL: Final = "automation.tandem.dev/automation"
"""Label on every run a schedule creates: the Automation's name (shortened past 63)."""
SCHEDULED_AT_ANNOTATION: Final = "automation.tandem.dev/scheduled-at"
"""Annotation on every run a schedule creates: its due time, RFC 3339 in UTC."""

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

MAX_NAME: Final = 63
MISSED_COUNT_LIMIT: Final = 1000
"""Missed due times counted one by one for the ScheduleMissed message before saying "more"."""
_SCAN_LIMIT: Final = 100_000
"""Candidates examined for one answer; far more than any real expression needs."""

SHORTHANDS: Final[Mapping[str, str]] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
}
_EVERY_UNITS: Final[Mapping[str, int]] = {"s": 1, "m": 60, "h": 3600}
_MAX_EVERY_SECONDS: Final = 366 * 24 * 3600

SUCCESSFUL_PHASES: Final = frozenset({"Completed"})
FAILED_PHASES: Final = frozenset({"Failed", "Blocked", "Cancelled"})

EventType = Literal["Normal", "Warning"]


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message names the field and says why."""


# ------------------------------------------------------------------------ parsing, validation


@dataclass(frozen=True)
class ParsedSchedule:
    """A schedule ready to compute due times: a cron expression or a fixed interval."""

    zone: ZoneInfo
    expression: str | None = None
    """Five cron fields (shorthands expanded); ``None`` for ``@every``."""
    every_ms: int | None = None
    """The ``@every`` interval in milliseconds; ``None`` for cron."""


def parse_schedule(schedule: Schedule) -> ParsedSchedule:
    """Check what the schema cannot (field ranges, a real zone); raise :class:`ScheduleError`."""
    zone = _zone(schedule.time_zone)
    text = schedule.cron.strip()
    if text.startswith("@every"):
        return ParsedSchedule(zone=zone, every_ms=_every_seconds(text) * 1000)
    if text.startswith("@"):
        if text not in SHORTHANDS:
            raise ScheduleError(
                f"spec.schedule.cron: unknown shorthand {text!r}; use one of "
                f"{', '.join(SHORTHANDS)} or @every <n>s|m|h"
            )
        text = SHORTHANDS[text]
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"spec.schedule.cron: {schedule.cron!r} has {len(fields)} fields; a cron "
            "expression has five: minute hour day-of-month month day-of-week"
        )
    expression = " ".join(fields)
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ScheduleError(
            f"spec.schedule.cron: {schedule.cron!r} is not a valid cron expression: "
            f"{str(exc).lower()}"
        ) from None
    return ParsedSchedule(zone=zone, expression=expression)


def schedule_problem(schedule: Schedule) -> str | None:
    """Why the schedule cannot be used, or ``None``: for the admission webhook and Stalled."""
    try:
        parse_schedule(schedule)
    except ScheduleError as exc:
        return str(exc)
    return None


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"spec.schedule.timeZone: {name!r} is not a known IANA time zone "
            "(such as UTC or Europe/Berlin)"
        ) from None


def _every_seconds(text: str) -> int:
    parts = text.split()
    amount, unit = (parts[1][:-1], parts[1][-1:]) if len(parts) == 2 else ("", "")
    if not amount.isdigit() or unit not in _EVERY_UNITS or int(amount) < 1:
        raise ScheduleError(
            f"spec.schedule.cron: {text!r} is not @every <n>s|m|h with a whole n of at least 1"
        )
    seconds = int(amount) * _EVERY_UNITS[unit]
    if seconds > _MAX_EVERY_SECONDS:
        raise ScheduleError(f"spec.schedule.cron: {text!r} is longer than 366 days")
    return seconds


# ------------------------------------------------------------------------ due times


def next_due(schedule: Schedule | ParsedSchedule, after_ms: int) -> int | None:
    """The first due time strictly after ``after_ms``; ``None`` if there is none within 50 years.

    Raises :class:`ScheduleError` for a schedule that cannot be used.
    """
    parsed = schedule if isinstance(schedule, ParsedSchedule) else parse_schedule(schedule)
    return next(_dues(parsed, after_ms), None)


def _dues(parsed: ParsedSchedule, after_ms: int) -> Iterator[int]:
    """Due times strictly after ``after_ms``, in order (UTC milliseconds)."""
    if parsed.every_ms is not None:
        step = parsed.every_ms
        due = (after_ms // step + 1) * step
        while True:
            yield due
            due += step
    assert parsed.expression is not None
    zone = parsed.zone
    local = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(zone)
    # Walk wall-clock times (naive datetimes: no DST arithmetic in cronsim), then place each
    # in the zone. Starting at the wall-clock time of ``after_ms`` misses nothing: with the
    # first-occurrence rule no due instant later than ``after_ms`` has an earlier wall time.
    start = local.replace(tzinfo=None, microsecond=0, fold=0)
    walls = CronSim(parsed.expression, start)
    for _ in range(_SCAN_LIMIT):
        try:
            wall = next(walls)
        except StopIteration:
            return
        instant = _first_occurrence(wall, zone)
        if instant is None:
            continue  # a wall-clock time that does not exist that day: skipped (CronJob)
        due = int(instant.timestamp()) * 1000
        if due > after_ms:
            yield due


def _first_occurrence(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The first instant whose wall-clock time in ``zone`` is ``wall``; ``None`` in a gap."""
    candidate = wall.replace(tzinfo=zone, fold=0)
    if candidate.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return candidate


def latest_due(parsed: ParsedSchedule, *, after_ms: int, until_ms: int) -> int | None:
    """The last due time in ``(after_ms, until_ms]``, or ``None``."""
    if until_ms <= after_ms:
        return None
    if parsed.every_ms is not None:
        due = until_ms // parsed.every_ms * parsed.every_ms
        return due if due > after_ms else None
    # Look back over growing windows so that a long outage costs no more than a short one.
    for span in (_HOUR_MS, 2 * _DAY_MS, 35 * _DAY_MS, 400 * _DAY_MS, 60 * 366 * _DAY_MS):
        start = max(after_ms, until_ms - span)
        found = None
        for due in _dues(parsed, start):
            if due > until_ms:
                break
            found = due
        if found is not None or start == after_ms:
            return found
    return None


def count_dues(parsed: ParsedSchedule, *, after_ms: int, before_ms: int, limit: int) -> int:
    """How many due times lie in ``(after_ms, before_ms)``, counting at most ``limit``."""
    if before_ms <= after_ms:
        return 0
    if parsed.every_ms is not None:
        step = parsed.every_ms
        first = (after_ms // step + 1) * step
        return 0 if first >= before_ms else min(limit, (before_ms - 1 - first) // step + 1)
    count = 0
    for due in _dues(parsed, after_ms):
        if due >= before_ms or count >= limit:
            break
        count += 1
    return count


_HOUR_MS: Final = 3_600_000
_DAY_MS: Final = 24 * _HOUR_MS


# ------------------------------------------------------------------------ names


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(automation: str, due_ms: int) -> str:
    """``<automation>-<yyyymmddhhmmss>`` of the due time in UTC, at most 63 characters.

    Past 63 characters the Automation's name is cut and a hash of the whole name added
    (``<cut>-<hash8>-<stamp>``), so two Automations never share a run name for one due time.
    """
    stamp = datetime.fromtimestamp(due_ms // 1000, tz=UTC).strftime("%Y%m%d%H%M%S")
    name = f"{automation}-{stamp}"
    if len(name) <= MAX_NAME:
        return name
    digest = _digest(automation)
    keep = MAX_NAME - len(stamp) - len(digest) - 2
    return f"{automation[:keep].rstrip('-.')}-{digest}-{stamp}"


def automation_label_value(automation: str) -> str:
    """The Automation's name as a label value: itself, or cut with a hash past 63 characters."""
    if len(automation) <= MAX_NAME:
        return automation
    digest = _digest(automation)
    return f"{automation[: MAX_NAME - len(digest) - 1].rstrip('-.')}-{digest}"


# ------------------------------------------------------------------------ inputs


@dataclass(frozen=True, kw_only=True)
class ScheduledAutomation:
    """What a plan needs of the Automation."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: AutomationResourceSpec
    status: AutomationStatus

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ScheduledAutomation:
        meta = obj.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            spec=AutomationResourceSpec.model_validate(obj.get("spec") or {}),
            status=AutomationStatus.model_validate(obj.get("status") or {}),
        )


@dataclass(frozen=True, kw_only=True)
class ScheduledRun:
    """What a plan needs of one AutomationRun."""

    name: str
    owner_uid: str | None = None
    """uid of the controller ownerReference of kind Automation, if any."""
    phase: str | None = None
    desired_state: str = "Running"
    created_at_ms: int | None = None
    finished_at_ms: int | None = None
    scheduled_at_ms: int | None = None
    """The due time this run was created for (annotation), if a schedule created it."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ScheduledRun:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        owner = next(
            (
                ref.get("uid")
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller") and ref.get("kind") == "Automation"
            ),
            None,
        )
        annotations = meta.get("annotations") or {}
        return cls(
            name=meta.get("name", ""),
            owner_uid=owner,
            phase=status.get("phase"),
            desired_state=spec.get("desiredState") or "Running",
            created_at_ms=parse_ms(meta.get("creationTimestamp")),
            finished_at_ms=parse_ms(status.get("finishedAt")),
            scheduled_at_ms=parse_ms(annotations.get(SCHEDULED_AT_ANNOTATION)),
        )


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


def run_manifest(automation: ScheduledAutomation, due_ms: int) -> dict[str, Any]:
    """The AutomationRun a schedule creates for one due time (B19a)."""
    schedule = automation.spec.schedule
    template = schedule.run_template if schedule is not None else None
    labels = dict(template.labels or {}) if template else {}
    labels[AUTOMATION_LABEL] = automation_label_value(automation.name)
    annotations = dict(template.annotations or {}) if template else {}
    annotations[SCHEDULED_AT_ANNOTATION] = format_ms(due_ms)
    spec = AutomationRunSpec.model_validate(
        {
            "automationRef": {"name": automation.name},
            "triggerType": "scheduled",
            "runtimeContext": template.runtime_context if template else None,
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "AutomationRun",
        "metadata": {
            "name": run_name(automation.name, due_ms),
            "namespace": automation.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Automation",
                    "name": automation.name,
                    "uid": automation.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True),
    }


def plan_schedule(
    *, automation: ScheduledAutomation, runs: Sequence[ScheduledRun], now_ms: int
) -> SchedulePlan:
    """Decide what the Automation's schedule does at ``now_ms`` (B19a–B19d, B20a)."""
    owned = sorted(
        (r for r in runs if r.owner_uid == automation.uid and automation.uid),
        key=_run_order,
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

    delete = _beyond_history(
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


def _run_order(run: ScheduledRun) -> tuple[int, int, str]:
    due = run.scheduled_at_ms if run.scheduled_at_ms is not None else run.created_at_ms
    return (due if due is not None else 0, run.created_at_ms or 0, run.name)


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


def _beyond_history(owned: Sequence[ScheduledRun], *, successful: int, failed: int) -> list[str]:
    """B20a: terminal runs past the limits, oldest first by finishedAt."""

    def finished_order(run: ScheduledRun) -> tuple[int, tuple[int, int, str]]:
        return (run.finished_at_ms or 0, _run_order(run))

    delete: list[str] = []
    for phases, limit in ((SUCCESSFUL_PHASES, successful), (FAILED_PHASES, failed)):
        ended = sorted((r for r in owned if r.phase in phases), key=finished_order)
        delete.extend(r.name for r in ended[: max(0, len(ended) - limit)])
    return delete


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


# ------------------------------------------------------------------------ time to live (B20b)


def ttl_due(
    spec: AutomationRunSpec, status: AutomationRunStatus, default_ttl_seconds: int | None
) -> int | None:
    """When a finished run is to be deleted (ms; may be in the past), or ``None`` to keep it.

    ``spec.ttlSecondsAfterFinished`` wins over ``default_ttl_seconds``
    (``TANDEM_FINISHED_RUN_TTL_SECONDS``); with neither, the run is kept. Only terminal runs
    with a readable ``finishedAt`` have a deadline: it is that time plus the TTL, so it is the
    same after any restart. A run recovered out of its terminal phase (B14) has none again.
    """
    ttl = spec.ttl_seconds_after_finished
    if ttl is None:
        ttl = default_ttl_seconds
    if ttl is None or status.phase not in TERMINAL_PHASES:
        return None
    finished = parse_ms(status.finished_at)
    if finished is None:
        return None
    return finished + ttl * 1000
