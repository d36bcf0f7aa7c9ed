"""Time in the lifecycle: integer milliseconds since the epoch, passed in, never read.

Nothing here reads the clock (an import contract keeps ``time`` out of ``api`` and
``lifecycle``): the wall clock enters at the edge, ``runtime.ports.WallClock``. Every rule
takes ``now_ms`` as an argument so tests control time and a restart neither
resets nor repeats a deadline: deadlines are computed from timestamps kept in status.
Timestamps in the API are RFC 3339 in UTC with milliseconds (``2026-11-24T01:02:03.456Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_ms(value: str | None) -> int | None:
    """Milliseconds of an RFC 3339 timestamp; ``None`` for a missing or unreadable one."""
    if not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)
