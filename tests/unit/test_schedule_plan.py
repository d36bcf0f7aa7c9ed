"""Schedules and retention (contract §9): due times, run names, the plan, time to live.

The plan is exercised the way the runtime will use it: a small in-memory world applies each
plan (create, cancel, delete, status) and plans again, so idempotence, "one run per due
time" and the history limits are checked on the state the runtime would really hold.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem_operator.api.models import (
    AutomationResourceSpec,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationStatus,
    Schedule,
)
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.scheduling.cron import (
    ScheduleError,
    count_dues,
    latest_due,
    next_due,
    parse_schedule,
    schedule_problem,
)
from tandem_operator.scheduling.retention import ttl_due
from tandem_operator.scheduling.runs import (
    AUTOMATION_LABEL,
    SCHEDULED_AT_ANNOTATION,
    ScheduledAutomation,
    ScheduledRun,
    automation_label_value,
    run_name,
)
from tandem_operator.scheduling.schedules import (
    EVENT_INVALID,
    EVENT_MISSED,
    EVENT_REPLACED,
    EVENT_SKIPPED,
    MISSED_COUNT_LIMIT,
    SchedulePlan,
    plan_schedule,
)

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
UID = "0f6c1e5a-0000-4000-8000-000000000001"
FLOW: dict[str, Any] = {"nodes": [{"id": "work", "executor": {"simulate": {}}}]}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def ms(text: str) -> int:
    value = parse_ms(text)
    assert value is not None
    return value


def dues(schedule: Schedule, after: str, count: int) -> list[str]:
    out, at = [], ms(after)
    for _ in range(count):
        nxt = next_due(schedule, at)
        assert nxt is not None
        out.append(format_ms(nxt))
        at = nxt
    return out


def automation(
    *,
    status: AutomationStatus | None = None,
    name: str = "nightly",
    generation: int = 1,
    **schedule: Any,
) -> ScheduledAutomation:
    spec = dict(FLOW)
    if schedule:
        spec["schedule"] = schedule
    return ScheduledAutomation(
        name=name,
        namespace="team-a",
        uid=UID,
        generation=generation,
        spec=AutomationResourceSpec.model_validate(spec),
        status=status or AutomationStatus(),
    )


def seen_at(auto: ScheduledAutomation, now: int) -> ScheduledAutomation:
    """The Automation after a first plan at ``now`` (the schedule acts from then on)."""
    plan = plan_schedule(automation=auto, runs=[], now_ms=now)
    assert plan.create == ()
    return replace(auto, status=plan.status)


class World:
    """What the API server would hold after the runtime applied each plan."""

    def __init__(self, auto: ScheduledAutomation) -> None:
        self.auto = auto
        self.runs: dict[str, ScheduledRun] = {}
        self.created: list[str] = []
        self.events: list[tuple[str, str]] = []

    def plan(self, now: int) -> SchedulePlan:
        return plan_schedule(automation=self.auto, runs=list(self.runs.values()), now_ms=now)

    def step(self, now: int) -> SchedulePlan:
        plan = self.plan(now)
        for manifest in plan.create:
            run = ScheduledRun.from_object({**manifest, "metadata": {**manifest["metadata"]}})
            assert run.name not in self.runs, "a second run for one due time"
            self.runs[run.name] = replace(run, created_at_ms=now)
            self.created.append(run.name)
        for name in plan.cancel:
            self.runs[name] = replace(self.runs[name], desired_state="Cancelled")
        for name in plan.delete:
            del self.runs[name]
        self.events.extend((e.reason, e.message) for e in plan.events)
        self.auto = replace(self.auto, status=plan.status)
        return plan

    def finish(self, name: str, phase: str, at: int) -> None:
        self.runs[name] = replace(self.runs[name], phase=phase, finished_at_ms=at)


def assert_settled(world: World, now: int) -> None:
    """Planning again from the state a plan produced changes nothing."""
    again = world.plan(now)
    assert (again.create, again.cancel, again.delete, again.events) == ((), (), (), ())
    assert again.status == world.auto.status


# ------------------------------------------------------------------------ due times


def test_five_fields_are_read_in_utc_by_default() -> None:
    assert dues(Schedule(cron="0 2 * * *"), "2026-11-30T12:00:00Z", 2) == [
        "2026-12-01T02:00:00.000Z",
        "2026-12-02T02:00:00.000Z",
    ]


def test_next_due_is_strictly_after() -> None:
    schedule = Schedule(cron="0 * * * *")
    assert next_due(schedule, ms("2026-11-30T12:00:00Z")) == ms("2026-11-30T13:00:00Z")
    assert next_due(schedule, ms("2026-11-30T11:59:59.999Z")) == ms("2026-11-30T12:00:00Z")


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("@hourly", ["2026-11-30T13:00:00.000Z", "2026-11-30T14:00:00.000Z"]),
        ("@daily", ["2026-12-01T00:00:00.000Z", "2026-12-02T00:00:00.000Z"]),
        ("@weekly", ["2026-12-06T00:00:00.000Z", "2026-12-13T00:00:00.000Z"]),  # Sundays
        ("@monthly", ["2026-12-01T00:00:00.000Z", "2027-01-01T00:00:00.000Z"]),
        ("*/15 9-17 * * MON-FRI", ["2026-11-30T12:45:00.000Z", "2026-11-30T13:00:00.000Z"]),
    ],
)
def test_shorthands_and_cron_syntax(cron: str, expected: list[str]) -> None:
    assert dues(Schedule(cron=cron), "2026-11-30T12:34:56Z", 2) == expected


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("@every 30s", ["2026-11-30T12:35:00.000Z", "2026-11-30T12:35:30.000Z"]),
        ("@every 5m", ["2026-11-30T12:35:00.000Z", "2026-11-30T12:40:00.000Z"]),
        ("@every 2h", ["2026-11-30T14:00:00.000Z", "2026-11-30T16:00:00.000Z"]),
    ],
)
def test_every_counts_from_the_unix_epoch(cron: str, expected: list[str]) -> None:
    assert dues(Schedule(cron=cron), "2026-11-30T12:34:56Z", 2) == expected
    # The zone does not move an interval.
    assert dues(Schedule(cron=cron, time_zone="Asia/Kolkata"), "2026-11-30T12:34:56Z", 2) == (
        expected
    )


def test_cron_fields_are_read_in_the_time_zone() -> None:
    schedule = Schedule(cron="0 9 * * *", time_zone="America/New_York")
    assert dues(schedule, "2026-07-01T00:00:00Z", 1) == ["2026-07-01T13:00:00.000Z"]  # EDT
    assert dues(schedule, "2026-12-01T00:00:00Z", 1) == ["2026-12-01T14:00:00.000Z"]  # EST


def test_dst_a_local_time_that_does_not_exist_is_skipped() -> None:
    # Europe/Berlin springs forward at 02:00 on 2026-03-29: 02:30 does not exist that day.
    schedule = Schedule(cron="30 2 * * *", time_zone="Europe/Berlin")
    assert dues(schedule, "2026-03-27T12:00:00Z", 3) == [
        "2026-03-28T01:30:00.000Z",  # CET
        "2026-03-30T00:30:00.000Z",  # CEST; the 29th has no 02:30
        "2026-03-31T00:30:00.000Z",
    ]


def test_dst_a_repeated_local_time_runs_once_at_its_first_occurrence() -> None:
    # Europe/Berlin falls back at 03:00 on 2026-10-25: 02:30 happens twice that day.
    schedule = Schedule(cron="30 2 * * *", time_zone="Europe/Berlin")
    assert dues(schedule, "2026-10-24T12:00:00Z", 2) == [
        "2026-10-25T00:30:00.000Z",  # 02:30 CEST, the first; 02:30 CET (01:30Z) is not due
        "2026-10-26T01:30:00.000Z",
    ]
    every20 = Schedule(cron="*/20 * * * *", time_zone="Europe/Berlin")
    assert dues(every20, "2026-10-25T00:30:00Z", 3) == [
        "2026-10-25T00:40:00.000Z",  # 02:40 CEST
        "2026-10-25T02:00:00.000Z",  # 03:00 CET: the repeated 02:00-02:59 runs nothing
        "2026-10-25T02:20:00.000Z",
    ]


def test_dst_new_york_gap_and_repeat() -> None:
    gap = Schedule(cron="30 2 * * *", time_zone="America/New_York")
    assert dues(gap, "2026-03-07T12:00:00Z", 2) == [
        "2026-03-09T06:30:00.000Z",  # 2026-03-08 02:30 does not exist; next day EDT
        "2026-03-10T06:30:00.000Z",
    ]
    repeat = Schedule(cron="30 1 * * *", time_zone="America/New_York")
    assert dues(repeat, "2026-10-31T12:00:00Z", 2) == [
        "2026-11-01T05:30:00.000Z",  # 01:30 EDT; 01:30 EST (06:30Z) is not due
        "2026-11-02T06:30:00.000Z",
    ]


def test_a_rare_day_is_found_years_ahead() -> None:
    leap = Schedule(cron="0 0 29 2 *")
    assert dues(leap, "2026-11-30T00:00:00Z", 2) == [
        "2028-02-29T00:00:00.000Z",
        "2032-02-29T00:00:00.000Z",
    ]


def test_latest_due_and_count() -> None:
    parsed = parse_schedule(Schedule(cron="0 * * * *"))
    start, until = ms("2026-11-30T00:30:00Z"), ms("2026-11-30T05:10:00Z")
    assert latest_due(parsed, after_ms=start, until_ms=until) == ms("2026-11-30T05:00:00Z")
    assert count_dues(parsed, after_ms=start, before_ms=ms("2026-11-30T05:00:00Z"), limit=99) == 4
    assert count_dues(parsed, after_ms=start, before_ms=until, limit=3) == 3
    assert latest_due(parsed, after_ms=until, until_ms=until) is None
    sparse = parse_schedule(Schedule(cron="0 0 1 1 *"))  # once a year, long outage
    assert latest_due(sparse, after_ms=ms("2020-06-01T00:00:00Z"), until_ms=until) == ms(
        "2026-01-01T00:00:00Z"
    )
    every = parse_schedule(Schedule(cron="@every 1m"))
    assert count_dues(every, after_ms=0, before_ms=10 * MINUTE, limit=100) == 9
    assert count_dues(every, after_ms=0, before_ms=10 * MINUTE + 1, limit=100) == 10
    assert latest_due(every, after_ms=0, until_ms=10 * MINUTE) == 10 * MINUTE


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("cron", "zone", "message"),
    [
        (
            "61 * * * *",
            "UTC",
            "spec.schedule.cron: '61 * * * *' is not a valid cron expression: bad minute",
        ),
        ("0 24 * * *", "UTC", "bad hour"),
        ("0 0 32 * *", "UTC", "bad day-of-month"),
        ("0 0 * 13 *", "UTC", "bad month"),
        ("0 0 * * 8", "UTC", "bad day-of-week"),
        ("0 0 30 2 *", "UTC", "bad day-of-month"),
        ("0 2 * *", "UTC", "has 4 fields; a cron expression has five"),
        ("0 0 2 * * *", "UTC", "has 6 fields"),
        ("@yearly", "UTC", "unknown shorthand '@yearly'"),
        ("@every 0m", "UTC", "is not @every <n>s|m|h"),
        ("@every 9999h", "UTC", "longer than 366 days"),
        (
            "@daily",
            "Mars/Olympus",
            "spec.schedule.timeZone: 'Mars/Olympus' is not a known IANA time zone",
        ),
        ("@daily", "Europe/berlin", "is not a known IANA time zone"),
    ],
)
def test_what_the_schema_cannot_say_is_a_clear_message(cron: str, zone: str, message: str) -> None:
    schedule = Schedule.model_construct(cron=cron, time_zone=zone)
    problem = schedule_problem(schedule)
    assert problem is not None
    assert message in problem
    with pytest.raises(ScheduleError, match=re.escape(message)):
        next_due(schedule, 0)


@pytest.mark.parametrize("cron", ["0 2 * * *", "@hourly", "@every 45s", "0 0 L * *", "5 4 * * SUN"])
def test_valid_schedules_have_no_problem(cron: str) -> None:
    assert schedule_problem(Schedule(cron=cron, time_zone="Europe/Berlin")) is None


# ------------------------------------------------------------------------ names


def test_run_names_come_from_the_due_time() -> None:
    assert run_name("nightly", ms("2026-12-01T02:00:00Z")) == "nightly-20261201020000"


@given(
    name=st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True),
    a=st.integers(min_value=0, max_value=4_000_000_000),
    b=st.integers(min_value=0, max_value=4_000_000_000),
)
@settings(max_examples=300, deadline=None)
def test_run_names_are_short_valid_stable_and_unique_per_due_time(
    name: str, a: int, b: int
) -> None:
    first = run_name(name, a * 1000)
    assert first == run_name(name, a * 1000)
    assert len(first) <= 63
    assert DNS_SUBDOMAIN.match(first), first
    assert (first == run_name(name, b * 1000)) == (a == b)
    label = automation_label_value(name)
    assert len(label) <= 63
    assert LABEL_VALUE.match(label), label


def test_long_names_are_cut_with_a_hash_of_the_whole_name() -> None:
    base = "a" * 70
    one, two = run_name(base + "x", 0), run_name(base + "y", 0)
    assert one != two
    assert len(one) == 63
    assert one.endswith("-19700101000000")
    assert automation_label_value(base + "x") != automation_label_value(base + "y")
    assert automation_label_value("short") == "short"


# ------------------------------------------------------------------------ the plan

T0 = ms("2026-11-30T01:30:00Z")
DUE = ms("2026-11-30T02:00:00Z")


def test_a_new_schedule_acts_from_when_it_is_first_seen() -> None:
    plan = plan_schedule(automation=automation(cron="0 2 * * *"), runs=[], now_ms=T0)
    assert plan.create == ()
    assert plan.events == ()
    assert plan.status.last_considered_time == format_ms(T0)
    assert plan.status.next_schedule_time == format_ms(DUE)
    assert plan.requeue_at_ms == DUE
    assert plan.status.observed_generation == 1
    ready = {c.type: c for c in plan.status.conditions}
    assert (ready["Ready"].status, ready["Ready"].reason) == ("True", "Scheduled")
    assert ready["Stalled"].status == "False"


def test_a_due_time_creates_one_run_owned_by_the_automation() -> None:
    world = World(
        seen_at(
            automation(
                cron="0 2 * * *",
                runTemplate={
                    "labels": {"team": "a", AUTOMATION_LABEL: "spoofed"},
                    "annotations": {"note": "x"},
                    "runtimeContext": {"tenant": "t1"},
                },
            ),
            T0,
        )
    )
    plan = world.step(DUE + 1500)
    [manifest] = plan.create
    meta = manifest["metadata"]
    assert manifest["apiVersion"] == "automation.tandem.dev/v1alpha1"
    assert manifest["kind"] == "AutomationRun"
    assert meta["name"] == "nightly-20261130020000"
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {"team": "a", AUTOMATION_LABEL: "nightly"}
    assert meta["annotations"] == {"note": "x", SCHEDULED_AT_ANNOTATION: format_ms(DUE)}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "Automation",
            "name": "nightly",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert manifest["spec"] == {
        "automationRef": {"name": "nightly"},
        "triggerType": "scheduled",
        "runtimeContext": {"tenant": "t1"},
    }
    AutomationRunSpec.model_validate(manifest["spec"])  # a valid run spec
    status = plan.status
    assert status.last_schedule_time == format_ms(DUE)
    assert status.last_run_name == "nightly-20261130020000"
    assert status.active_runs == ["nightly-20261130020000"]
    assert status.active_run_count == 1
    assert status.next_schedule_time == format_ms(DUE + DAY)
    assert plan.requeue_at_ms == DUE + DAY
    assert plan.events == ()
    assert_settled(world, DUE + 1500)
    assert_settled(world, DUE + HOUR)


def test_a_lost_status_write_does_not_create_a_second_run() -> None:
    auto = seen_at(automation(cron="0 2 * * *"), T0)
    first = plan_schedule(automation=auto, runs=[], now_ms=DUE)
    run = ScheduledRun.from_object(first.create[0])
    # The run was created but the status write was lost: plan again from the old status.
    again = plan_schedule(automation=auto, runs=[run], now_ms=DUE + MINUTE)
    assert again.create == ()
    assert again.events == ()
    assert again.status.last_run_name == run.name
    assert again.status.last_schedule_time == format_ms(DUE)
    assert again.status.active_runs == [run.name]


def test_a_lost_status_write_under_replace_still_cancels_the_older_runs() -> None:
    world = World(seen_at(automation(cron="0 * * * *", concurrencyPolicy="Replace"), T0))
    world.step(ms("2026-11-30T02:00:00Z"))
    before = world.auto
    plan = world.plan(ms("2026-11-30T03:00:00Z"))
    new = ScheduledRun.from_object(plan.create[0])
    # The run was created, but neither the cancel nor the status write happened.
    runs = [*world.runs.values(), new]
    again = plan_schedule(automation=before, runs=runs, now_ms=ms("2026-11-30T03:01:00Z"))
    assert again.create == ()
    assert again.cancel == ("nightly-20261130020000",)
    assert again.status.last_run_name == new.name


def test_forbid_skips_a_due_time_while_a_run_is_not_terminal() -> None:
    world = World(seen_at(automation(cron="0 * * * *"), T0))
    world.step(ms("2026-11-30T02:00:00Z"))
    plan = world.step(ms("2026-11-30T03:00:00Z"))
    assert plan.create == ()
    [event] = plan.events
    assert event.type == "Normal"
    assert event.reason == EVENT_SKIPPED
    assert "2026-11-30T03:00:00.000Z" in event.message
    assert "nightly-20261130020000" in event.message
    assert plan.status.last_run_name == "nightly-20261130020000"
    assert_settled(world, ms("2026-11-30T03:30:00Z"))
    # The skipped time is not run later, even when the blocking run ends before the next.
    world.finish("nightly-20261130020000", "Completed", ms("2026-11-30T03:10:00Z"))
    later = world.step(ms("2026-11-30T03:20:00Z"))
    assert later.create == ()
    assert later.status.active_runs == []
    assert world.step(ms("2026-11-30T04:00:00Z")).create[0]["metadata"]["name"] == (
        "nightly-20261130040000"
    )


def test_allow_starts_every_due_run() -> None:
    world = World(seen_at(automation(cron="0 * * * *", concurrencyPolicy="Allow"), T0))
    world.step(ms("2026-11-30T02:00:00Z"))
    plan = world.step(ms("2026-11-30T03:00:00Z"))
    assert len(plan.create) == 1
    assert plan.cancel == ()
    assert plan.status.active_runs == ["nightly-20261130020000", "nightly-20261130030000"]
    assert plan.status.active_run_count == 2


def test_replace_cancels_the_unfinished_runs_and_starts_the_new_one() -> None:
    world = World(seen_at(automation(cron="0 * * * *", concurrencyPolicy="Replace"), T0))
    world.step(ms("2026-11-30T02:00:00Z"))
    plan = world.step(ms("2026-11-30T03:00:00Z"))
    assert [m["metadata"]["name"] for m in plan.create] == ["nightly-20261130030000"]
    assert plan.cancel == ("nightly-20261130020000",)
    [event] = plan.events
    assert event.reason == EVENT_REPLACED
    assert_settled(world, ms("2026-11-30T03:00:01Z"))
    # A run asked to cancel is not asked again, and still counts until it is terminal.
    assert world.auto.status.active_run_count == 2


def test_missed_times_start_only_the_latest_within_the_deadline() -> None:
    world = World(seen_at(automation(cron="0 * * * *", startingDeadlineSeconds=300), T0))
    # The operator was down from 01:30 to 05:04: 02:00, 03:00, 04:00 and 05:00 passed.
    plan = world.step(ms("2026-11-30T05:04:00Z"))
    assert [m["metadata"]["name"] for m in plan.create] == ["nightly-20261130050000"]
    [event] = plan.events
    assert (event.type, event.reason) == ("Warning", EVENT_MISSED)
    assert "skipped 3 missed schedule times" in event.message
    assert_settled(world, ms("2026-11-30T05:04:00Z"))


def test_missed_times_past_the_deadline_start_nothing() -> None:
    world = World(seen_at(automation(cron="0 * * * *", startingDeadlineSeconds=300), T0))
    plan = world.step(ms("2026-11-30T05:06:00Z"))  # 05:00 is 6 minutes late
    assert plan.create == ()
    [event] = plan.events
    assert "skipped 4 missed schedule times" in event.message
    assert "startingDeadlineSeconds is 300" in event.message
    assert plan.status.last_considered_time == "2026-11-30T05:00:00.000Z"
    assert plan.requeue_at_ms == ms("2026-11-30T06:00:00Z")
    assert_settled(world, ms("2026-11-30T05:07:00Z"))


def test_without_a_deadline_the_latest_missed_time_starts_however_late() -> None:
    world = World(seen_at(automation(cron="0 2 * * *"), T0))
    plan = world.step(T0 + 10 * DAY)
    assert [m["metadata"]["name"] for m in plan.create] == ["nightly-20261209020000"]
    assert "skipped 9 missed" in plan.events[0].message


def test_a_long_outage_is_counted_up_to_a_limit() -> None:
    world = World(seen_at(automation(cron="* * * * *"), T0))
    plan = world.step(T0 + 30 * DAY)
    assert len(plan.create) == 1
    assert f"more than {MISSED_COUNT_LIMIT}" in plan.events[0].message


def test_suspend_starts_nothing_and_does_not_catch_up() -> None:
    world = World(seen_at(automation(cron="0 * * * *", suspend=True), T0))
    for hour in ("02", "03", "04"):
        plan = world.step(ms(f"2026-11-30T{hour}:00:00Z"))
        assert (plan.create, plan.events) == ((), ())
        assert plan.status.next_schedule_time is None
        assert plan.requeue_at_ms == ms(f"2026-11-30T{hour}:00:00Z") + HOUR
    ready = {c.type: c for c in world.auto.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("False", "Suspended")
    # Unsuspended at 04:30: the times missed while suspended are not run.
    schedule = world.auto.spec.schedule
    assert schedule is not None
    resumed = schedule.model_copy(update={"suspend": False})
    world.auto = replace(
        world.auto, spec=world.auto.spec.model_copy(update={"schedule": resumed}), generation=2
    )
    plan = world.step(ms("2026-11-30T04:30:00Z"))
    assert (plan.create, plan.events) == ((), ())
    ready = {c.type: c for c in plan.status.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("True", "Scheduled")
    assert plan.status.observed_generation == 2
    assert [m["metadata"]["name"] for m in world.step(ms("2026-11-30T05:00:00Z")).create] == [
        "nightly-20261130050000"
    ]


def test_history_limits_delete_the_oldest_terminal_runs() -> None:
    world = World(
        seen_at(
            automation(
                cron="0 * * * *",
                concurrencyPolicy="Allow",
                successfulRunsHistoryLimit=2,
                failedRunsHistoryLimit=1,
            ),
            T0,
        )
    )
    names = []
    for hour in range(2, 9):
        at = T0 + 30 * MINUTE + (hour - 2) * HOUR
        names.append(world.step(at).create[0]["metadata"]["name"])
    outcomes = ["Completed", "Failed", "Completed", "Blocked", "Completed", "Cancelled"]
    for i, (name, phase) in enumerate(zip(names, outcomes, strict=False)):
        world.finish(name, phase, T0 + 10 * HOUR + i * MINUTE)
    plan = world.step(T0 + 10 * HOUR + 30 * MINUTE)
    # Completed: 02, 04, 06 -> keep the two newest. Failed, Blocked, Cancelled: 03, 05, 07
    # -> keep the newest.
    assert sorted(plan.delete) == sorted([names[0], names[1], names[3]])
    assert plan.status.active_runs == [names[6], "nightly-20261130120000"]
    assert_settled(world, T0 + 10 * HOUR + 31 * MINUTE)


def test_runs_the_automation_does_not_control_are_not_its_own() -> None:
    auto = seen_at(automation(cron="0 * * * *", successfulRunsHistoryLimit=0), T0)
    manual = ScheduledRun(name="by-hand", phase="Completed", finished_at_ms=T0)
    other = ScheduledRun(name="other", owner_uid="someone-else", phase="Running")
    plan = plan_schedule(automation=auto, runs=[manual, other], now_ms=T0 + MINUTE)
    assert plan.delete == ()
    assert plan.status.active_runs == []


def test_an_invalid_schedule_is_stalled_and_starts_nothing() -> None:
    auto = automation()
    bad = replace(
        auto,
        spec=auto.spec.model_copy(
            update={"schedule": Schedule.model_construct(cron="0 25 * * *", time_zone="UTC")}
        ),
    )
    world = World(bad)
    plan = world.step(T0)
    assert plan.create == ()
    assert plan.requeue_at_ms is None
    [event] = plan.events
    assert (event.type, event.reason) == ("Warning", EVENT_INVALID)
    assert "bad hour" in event.message
    stalled = {c.type: c for c in plan.status.conditions}["Stalled"]
    assert (stalled.status, stalled.reason) == ("True", EVENT_INVALID)
    assert "spec.schedule.cron" in stalled.message
    assert_settled(world, T0 + HOUR)  # the Warning is posted once, not on every plan


def test_an_automation_without_schedule_only_reports() -> None:
    plan = plan_schedule(automation=automation(), runs=[], now_ms=T0)
    assert (plan.create, plan.cancel, plan.delete, plan.events) == ((), (), (), ())
    assert plan.requeue_at_ms is None
    assert {c.type: c.reason for c in plan.status.conditions} == {"Ready": "NoSchedule"}


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    world = World(seen_at(automation(cron="0 * * * *"), T0))
    before = {c.type: c.last_transition_time for c in world.auto.status.conditions}
    world.step(T0 + 2 * HOUR)
    after = {c.type: c.last_transition_time for c in world.auto.status.conditions}
    assert before == after


def test_parsing_objects_from_the_api() -> None:
    auto = ScheduledAutomation.from_object(
        {
            "metadata": {"name": "n", "namespace": "ns", "uid": UID, "generation": 3},
            "spec": {**FLOW, "schedule": {"cron": "@daily"}},
            "status": {"lastConsideredTime": "2026-11-30T00:00:00.000Z"},
        }
    )
    assert auto.spec.schedule is not None
    assert auto.spec.schedule.concurrency_policy == "Forbid"
    assert auto.status.last_considered_time == "2026-11-30T00:00:00.000Z"
    run = ScheduledRun.from_object(
        {
            "metadata": {
                "name": "n-20261130000000",
                "creationTimestamp": "2026-11-30T00:00:01Z",
                "annotations": {SCHEDULED_AT_ANNOTATION: "2026-11-30T00:00:00.000Z"},
                "ownerReferences": [
                    {"kind": "Automation", "uid": UID, "controller": True, "name": "n"}
                ],
            },
            "spec": {"automationRef": {"name": "n"}, "desiredState": "Paused"},
            "status": {"phase": "Completed", "finishedAt": "2026-11-30T00:05:00.000Z"},
        }
    )
    assert run.owner_uid == UID
    assert run.scheduled_at_ms == ms("2026-11-30T00:00:00Z")
    assert run.finished_at_ms == ms("2026-11-30T00:05:00Z")
    assert run.created_at_ms == ms("2026-11-30T00:00:01Z")
    assert run.desired_state == "Paused"
    assert run.terminal
    assert ScheduledRun.from_object({"metadata": {"name": "x"}}).owner_uid is None


# ------------------------------------------------------------------------ properties


@given(
    policy=st.sampled_from(["Allow", "Forbid", "Replace"]),
    cron=st.sampled_from(["*/7 * * * *", "@every 5m", "0 * * * *", "*/20 1-3 * * *"]),
    deadline=st.one_of(st.none(), st.integers(min_value=1, max_value=3 * 3600)),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=1, max_value=4 * HOUR),  # time to the next plan
            st.sampled_from([None, "Completed", "Failed", "Cancelled"]),  # one run ends
        ),
        min_size=1,
        max_size=25,
    ),
    limits=st.tuples(st.integers(0, 3), st.integers(0, 3)),
)
@settings(max_examples=150, deadline=None)
def test_any_history_of_plans_keeps_the_schedules_promises(
    policy: str,
    cron: str,
    deadline: int | None,
    steps: list[tuple[int, str | None]],
    limits: tuple[int, int],
) -> None:
    schedule: dict[str, Any] = {
        "cron": cron,
        "timeZone": "Europe/Berlin",
        "concurrencyPolicy": policy,
        "successfulRunsHistoryLimit": limits[0],
        "failedRunsHistoryLimit": limits[1],
    }
    if deadline is not None:
        schedule["startingDeadlineSeconds"] = deadline
    start = ms("2026-10-24T23:00:00Z")  # spans the night Berlin falls back
    world = World(seen_at(automation(**schedule), start))
    assert world.auto.spec.schedule is not None
    parsed = parse_schedule(world.auto.spec.schedule)
    now = start
    for gap, outcome in steps:
        now += gap
        plan = world.step(now)
        # At most one run per plan, for a due time no later than now and never twice.
        assert len(plan.create) <= 1
        for manifest in plan.create:
            due = ms(manifest["metadata"]["annotations"][SCHEDULED_AT_ANNOTATION])
            assert due <= now
            assert next_due(parsed, due - 1) == due
            if deadline is not None:
                assert now - due <= deadline * 1000
        assert plan.requeue_at_ms is None or plan.requeue_at_ms > now
        assert_settled(world, now)
        active = [r for r in world.runs.values() if not r.terminal]
        if policy == "Forbid":
            assert len(active) <= 1
        if policy == "Replace":
            assert sum(r.desired_state != "Cancelled" for r in active) <= 1
        ended_ok = [r for r in world.runs.values() if r.phase == "Completed"]
        ended_bad = [r for r in world.runs.values() if r.terminal and r.phase != "Completed"]
        assert len(ended_ok) <= limits[0]
        assert len(ended_bad) <= limits[1]
        if outcome is not None and active:
            world.finish(active[0].name, outcome, now)
    assert len(set(world.created)) == len(world.created)


# ------------------------------------------------------------------------ time to live (B20b)


def _run(
    phase: str | None, finished: str | None, ttl: int | None = None
) -> tuple[AutomationRunSpec, AutomationRunStatus]:
    spec = AutomationRunSpec.model_validate(
        {"automationRef": {"name": "a"}, "ttlSecondsAfterFinished": ttl}
    )
    return spec, AutomationRunStatus.model_validate({"phase": phase, "finishedAt": finished})


@pytest.mark.parametrize("phase", ["Completed", "Blocked", "Failed", "Cancelled"])
def test_a_finished_run_is_due_for_deletion_ttl_after_finished_at(phase: str) -> None:
    spec, status = _run(phase, "2026-11-30T10:00:00.000Z", ttl=3600)
    assert ttl_due(spec, status, None) == ms("2026-11-30T11:00:00Z")
    # The spec wins over the operator's default.
    assert ttl_due(spec, status, 60) == ms("2026-11-30T11:00:00Z")


def test_the_default_ttl_applies_when_the_spec_sets_none() -> None:
    spec, status = _run("Completed", "2026-11-30T10:00:00.000Z")
    assert ttl_due(spec, status, 60) == ms("2026-11-30T10:01:00Z")
    assert ttl_due(spec, status, None) is None  # unset: keep


def test_zero_ttl_deletes_at_once() -> None:
    spec, status = _run("Failed", "2026-11-30T10:00:00.000Z", ttl=0)
    assert ttl_due(spec, status, None) == ms("2026-11-30T10:00:00Z")


@pytest.mark.parametrize(
    ("phase", "finished"),
    [
        ("Running", None),
        ("Paused", "2026-11-30T10:00:00.000Z"),  # recovered out of a terminal phase
        ("Queued", None),
        (None, None),
        ("Completed", None),  # no finishedAt to count from
        ("Completed", "not a time"),
    ],
)
def test_only_finished_runs_with_a_finish_time_expire(
    phase: str | None, finished: str | None
) -> None:
    spec, status = _run(phase, finished, ttl=10)
    assert ttl_due(spec, status, 10) is None


def test_the_countdown_survives_a_restart() -> None:
    # Nothing but finishedAt is read: the same answer before and after any restart.
    spec, status = _run("Completed", "2026-11-30T10:00:00.000Z", ttl=86_400)
    reread = AutomationRunStatus.model_validate(status.to_api())
    assert ttl_due(spec, reread, None) == ttl_due(spec, status, None) == ms("2026-12-01T10:00:00Z")
