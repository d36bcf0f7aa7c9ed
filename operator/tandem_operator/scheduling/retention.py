"""Retention of a schedule's runs and of finished runs (contract §9, B20) as pure decisions.

**B20a history.** Terminal runs of the schedule beyond ``successfulRunsHistoryLimit``
(Completed) and ``failedRunsHistoryLimit`` (Failed, Blocked, Cancelled) are deleted, oldest
first by ``finishedAt``. Only runs the Automation controls (ownerReference with
``controller: true`` and its uid) count; runs that merely reference it are not its.

**B20b time to live.** :func:`ttl_due` says when a finished run is to be deleted: its
``finishedAt`` plus ``ttlSecondsAfterFinished`` (or the operator's default). It is computed
from the recorded ``finishedAt``, so a restart neither resets nor forgets the countdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from tandem_operator.api.models import TERMINAL_PHASES, AutomationRunSpec, AutomationRunStatus
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.scheduling.runs import ScheduledRun, run_order

SUCCESSFUL_PHASES: Final = frozenset({"Completed"})
FAILED_PHASES: Final = frozenset({"Failed", "Blocked", "Cancelled"})


# ------------------------------------------------------------------------ history (B20a)


def beyond_history(owned: Sequence[ScheduledRun], *, successful: int, failed: int) -> list[str]:
    """B20a: terminal runs past the limits, oldest first by finishedAt."""

    def finished_order(run: ScheduledRun) -> tuple[int, tuple[int, int, str]]:
        return (run.finished_at_ms or 0, run_order(run))

    delete: list[str] = []
    for phases, limit in ((SUCCESSFUL_PHASES, successful), (FAILED_PHASES, failed)):
        ended = sorted((r for r in owned if r.phase in phases), key=finished_order)
        delete.extend(r.name for r in ended[: max(0, len(ended) - limit)])
    return delete


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
    return expiry_ms(
        ttl_seconds=spec.ttl_seconds_after_finished,
        phase=status.phase,
        finished_at_ms=parse_ms(status.finished_at),
        default_ttl_seconds=default_ttl_seconds,
    )


def expiry_ms(
    *,
    ttl_seconds: int | None,
    phase: str | None,
    finished_at_ms: int | None,
    default_ttl_seconds: int | None,
) -> int | None:
    """:func:`ttl_due` over the four facts it reads (the store keeps them of every run)."""
    ttl = ttl_seconds if ttl_seconds is not None else default_ttl_seconds
    if ttl is None or phase not in TERMINAL_PHASES or finished_at_ms is None:
        return None
    return finished_at_ms + ttl * 1000
