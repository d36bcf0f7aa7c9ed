"""Schedules (contract §9): the Automation kind's spec with its schedule, and its status."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tandem_operator.api.base import MAX_TTL_SECONDS, ApiModel, Condition, FreeForm, Timestamp
from tandem_operator.api.flow import AutomationSpec

CRON = (
    r"^(@(hourly|daily|weekly|monthly)|@every [1-9][0-9]{0,5}[smh]"
    r"|[0-9A-Za-z*,/?#-]+( +[0-9A-Za-z*,/?#-]+){4})$"
)
"""Five cron fields, a shorthand, or ``@every <n>s|m|h``; field ranges are checked in Python."""
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
"""The shape of an IANA zone name; whether the zone exists is checked in Python."""
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
MAX_HISTORY_LIMIT = 100
LabelMap = Annotated[dict[str, str], Field(max_length=64)]


class RunTemplate(ApiModel):
    """What every run the schedule creates carries, besides what the operator sets."""

    labels: LabelMap | None = None
    """Labels for each run; automation.tandem.dev/automation is always set by the operator."""
    annotations: LabelMap | None = None
    """Annotations for each run; automation.tandem.dev/scheduled-at is always set by the
    operator."""
    runtime_context: FreeForm | None = None
    """spec.runtimeContext of each run: free-form data passed to every node attempt."""


class Schedule(ApiModel):
    """When an Automation runs by itself: one AutomationRun per due time (B19a)."""

    cron: str = Field(min_length=1, max_length=128, pattern=CRON)
    """When runs are due: five cron fields (minute hour day-of-month month day-of-week) read
    in timeZone, one of @hourly @daily @weekly @monthly, or @every <n>s|m|h for a fixed
    interval counted from the Unix epoch. Field ranges are checked by the admission webhook
    at apply, and by the operator, which reports a schedule it cannot use as Stalled."""
    time_zone: str = Field(default="UTC", min_length=1, max_length=64, pattern=TIME_ZONE)
    """IANA time zone name (such as Europe/Berlin) the cron fields are read in. A local time
    that does not exist (clocks go forward) is skipped; a local time that occurs twice
    (clocks go back) runs once, at its first occurrence."""
    concurrency_policy: ConcurrencyPolicy = "Forbid"
    """What a due time does while a run of the schedule is not terminal: Allow starts another
    run, Forbid skips the due time (Event ScheduleSkipped), Replace cancels the running ones
    (desiredState Cancelled) and starts the new one (B19c)."""
    starting_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)
    """A due time missed by more than this many seconds (the operator was down) is skipped;
    without it, the latest missed time starts however late (B19d)."""
    suspend: bool = False
    """When true the schedule starts nothing, and the times it misses are not caught up later;
    runs already started go on."""
    successful_runs_history_limit: int = Field(default=3, ge=0, le=MAX_HISTORY_LIMIT)
    """Completed runs of the schedule to keep; older ones are deleted (B20a)."""
    failed_runs_history_limit: int = Field(default=1, ge=0, le=MAX_HISTORY_LIMIT)
    """Failed, Blocked and Cancelled runs of the schedule to keep; older ones are deleted
    (B20a)."""
    run_template: RunTemplate | None = None
    """Labels, annotations and runtime context for the runs the schedule creates."""


class AutomationResourceSpec(AutomationSpec):
    """A reusable flow of agent nodes; runs reference it by name, and a schedule starts runs of
    it by itself."""

    schedule: Schedule | None = None
    """Starts runs of this Automation on a cron schedule; without it, runs are started by
    creating AutomationRuns that reference it."""


class AutomationStatus(ApiModel):
    """What the operator knows of an Automation's schedule (B19b)."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    last_schedule_time: Timestamp | None = None
    """The due time of the latest run the schedule created."""
    next_schedule_time: Timestamp | None = None
    """The next due time; unset while suspended or when the schedule cannot be used."""
    active_runs: list[str] = Field(default_factory=list)
    """Names of the schedule's runs that are not terminal, oldest first."""
    active_run_count: int = 0
    """How many runs of the schedule are not terminal (the length of activeRuns)."""
    last_run_name: str | None = None
    """Name of the latest run the schedule created."""
    last_considered_time: Timestamp | None = None
    """The time up to which due times have been dealt with: a run was started for them or they
    were skipped (Forbid, suspend, a missed deadline). Due times up to it are never started
    again. Set to the time the schedule was first seen, then moved to each due time."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready (the schedule is in use; False with reason Suspended while suspended) and Stalled
    (True when the schedule cannot be used, such as an invalid cron field or time zone)."""
