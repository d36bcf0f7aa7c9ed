"""In-flight attempts: one asyncio task per running node attempt, per run.

The runner owns the tasks and nothing else. When an attempt ends — with a result, an
error, or by cancellation — its :class:`AttemptOutcome` is queued for the run and the
node leaves ``in_flight`` in the same step, so the reconciler never sees a node that is
neither running nor reported. Outcomes stay queued until the reconciler has written a
status that accounts for them (``consume``); if the operator dies first, the attempt is
lost with the process and restart recovery (B1/B1r) decides what happens to the run.

Executor activity (any NDJSON line, a simulate start, a change of a Pod's status) is kept in
memory per run: the stale reaper (B5) reads it, and the reconciler persists it with the next
status write. So is what in-flight attempts have reported so far: their token usage (B21
counts it against the budgets while they run; ``on_usage`` is told of each report) and why
an attempt waits (a Pod that cannot start: B5 writes it into the verdict when it reaps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from tandem_operator.execution.types import (
    MAX_TOKEN_COUNT,
    AttemptRequest,
    Executor,
    ExecutorConfigError,
    TransientExecutorError,
)
from tandem_operator.lifecycle.contract import AttemptOutcome

log = logging.getLogger(__name__)

RunKey = tuple[str, str]
Notify = Callable[[RunKey], Awaitable[None]]


@dataclass
class _RunAttempts:
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    outcomes: list[AttemptOutcome] = field(default_factory=list)
    last_activity_ms: int | None = None
    activities: dict[str, _Activity] = field(default_factory=dict)
    """What each in-flight attempt reported so far."""


class _Activity:
    def __init__(
        self,
        state: _RunAttempts,
        clock: Callable[[], int],
        on_usage: Callable[[], None] | None = None,
    ) -> None:
        self._state = state
        self._clock = clock
        self._on_usage = on_usage
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.waiting_reason: str | None = None
        self.detached = False
        """Set before a cancellation that must leave the work running outside this process
        (shutdown, lost leadership): an executor whose work outlives it (a Pod) keeps it."""

    def activity(self) -> None:
        self._state.last_activity_ms = self._clock()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        # Executors check each report; the sum of many is capped here (MAX_TOKEN_COUNT).
        self.prompt_tokens = _capped(self.prompt_tokens + prompt_tokens)
        self.completion_tokens = _capped(self.completion_tokens + completion_tokens)
        if self._on_usage is not None and (prompt_tokens or completion_tokens):
            self._on_usage()

    def waiting(self, reason: str | None) -> None:
        """Why the attempt cannot make progress (``None``: it can)."""
        self.waiting_reason = reason


def _capped(tokens: int) -> int:
    """A token count an executor reported, within [0, ``MAX_TOKEN_COUNT``]."""
    return min(max(0, tokens), MAX_TOKEN_COUNT)


class AttemptRunner:
    """Starts, tracks and cancels node attempts; reports their outcomes."""

    def __init__(
        self,
        notify: Notify,
        *,
        clock: Callable[[], int],
        on_usage: Callable[[RunKey], None] | None = None,
    ) -> None:
        self._notify = notify
        self._clock = clock
        self._on_usage = on_usage
        self._runs: dict[RunKey, _RunAttempts] = {}

    def in_flight(self, key: RunKey) -> frozenset[str]:
        state = self._runs.get(key)
        return frozenset(state.tasks) if state else frozenset()

    def outcomes(self, key: RunKey) -> tuple[AttemptOutcome, ...]:
        state = self._runs.get(key)
        return tuple(state.outcomes) if state else ()

    def last_activity_ms(self, key: RunKey) -> int | None:
        state = self._runs.get(key)
        return state.last_activity_ms if state else None

    def in_flight_usage(self, key: RunKey) -> tuple[int, int]:
        """Prompt and completion tokens in-flight attempts have reported so far (B21)."""
        state = self._runs.get(key)
        if state is None:
            return 0, 0
        found = list(state.activities.values())
        return sum(a.prompt_tokens for a in found), sum(a.completion_tokens for a in found)

    def waiting(self, key: RunKey) -> Mapping[str, str]:
        """Why in-flight attempts wait, by node (only those that say so)."""
        state = self._runs.get(key)
        if state is None:
            return {}
        return {
            node: a.waiting_reason
            for node, a in state.activities.items()
            if a.waiting_reason is not None
        }

    def total_in_flight(self) -> int:
        return sum(len(s.tasks) for s in self._runs.values())

    def consume(self, key: RunKey, count: int) -> None:
        state = self._runs.get(key)
        if state is None:
            return
        del state.outcomes[:count]
        if not state.tasks and not state.outcomes:
            del self._runs[key]

    def start(self, key: RunKey, request: AttemptRequest, executor: Executor) -> None:
        state = self._runs.setdefault(key, _RunAttempts())
        if request.node_id in state.tasks:
            return
        state.last_activity_ms = self._clock()
        task = asyncio.create_task(
            self._attempt(key, state, request, executor),
            name=f"attempt {key[0]}/{key[1]} {request.node_id}#{request.attempt}",
        )
        state.tasks[request.node_id] = task

    def fail_to_start(self, key: RunKey, request: AttemptRequest, error: str) -> None:
        """Report an attempt that could not even start (e.g. its endpoint is missing)."""
        state = self._runs.setdefault(key, _RunAttempts())
        state.outcomes.append(
            AttemptOutcome(node_id=request.node_id, attempt=request.attempt, error=error)
        )

    def cancel(
        self, key: RunKey, node_ids: frozenset[str] | None = None, *, detach: bool = False
    ) -> None:
        """Cancel attempts; ``detach``: only stop following them (see ``_Activity.detached``)."""
        state = self._runs.get(key)
        if state is None:
            return
        for node_id, task in list(state.tasks.items()):
            if node_ids is None or node_id in node_ids:
                activity = state.activities.get(node_id)
                if activity is not None and detach:
                    activity.detached = True
                task.cancel()

    def forget(self, key: RunKey) -> None:
        """The run was deleted: cancel its attempts and drop what they report."""
        self.cancel(key)
        self._runs.pop(key, None)

    async def drain(self, grace_seconds: float) -> None:
        """B15: let in-flight attempts finish for up to ``grace_seconds``, then cancel."""
        tasks = [t for s in self._runs.values() for t in s.tasks.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for activity in (a for s in self._runs.values() for a in s.activities.values()):
            activity.detached = True  # the next operator adopts what outlives this one
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _attempt(
        self, key: RunKey, state: _RunAttempts, request: AttemptRequest, executor: Executor
    ) -> None:
        on_usage = self._on_usage
        activity = _Activity(
            state, self._clock, (lambda: on_usage(key)) if on_usage is not None else None
        )
        state.activities[request.node_id] = activity
        outcome: AttemptOutcome
        try:
            result = await executor.run(request, activity)
            outcome = AttemptOutcome(
                node_id=request.node_id,
                attempt=request.attempt,
                status=result.status,
                output=result.output,
                prompt_tokens=_capped(result.prompt_tokens or activity.prompt_tokens),
                completion_tokens=_capped(result.completion_tokens or activity.completion_tokens),
            )
        except asyncio.CancelledError:
            outcome = AttemptOutcome(
                node_id=request.node_id,
                attempt=request.attempt,
                cancelled=True,
                prompt_tokens=activity.prompt_tokens,
                completion_tokens=activity.completion_tokens,
            )
        except TransientExecutorError as exc:
            outcome = AttemptOutcome(
                node_id=request.node_id,
                attempt=request.attempt,
                transient=True,
                error=str(exc),
                prompt_tokens=activity.prompt_tokens,
                completion_tokens=activity.completion_tokens,
            )
        except ExecutorConfigError as exc:
            outcome = AttemptOutcome(
                node_id=request.node_id, attempt=request.attempt, error=str(exc)
            )
        except Exception as exc:
            log.exception("Attempt crashed run=%s/%s node=%s", *key, request.node_id)
            outcome = AttemptOutcome(
                node_id=request.node_id,
                attempt=request.attempt,
                error=f"executor error: {type(exc).__name__}: {exc}",
            )
        # The usage moves from the in-flight attempt to its outcome in one step.
        state.tasks.pop(request.node_id, None)
        state.activities.pop(request.node_id, None)
        state.outcomes.append(outcome)
        with contextlib.suppress(Exception):
            await self._notify(key)
