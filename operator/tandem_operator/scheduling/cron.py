"""Due times of a schedule (contract §9, B19): ``spec.schedule`` parsed and stepped through.

Pure: no clock and no API. The schedule plan (``scheduling.schedules``) asks whether the
schedule can be used and which due times lie in a window.

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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tandem_operator.api.models import Schedule

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
