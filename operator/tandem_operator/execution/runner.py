"""In-flight attempts: one asyncio task per running node attempt, per run.

The runner owns the tasks and nothing else. When an attempt ends — with a result, an
error, or by cancellation — its :class:`AttemptOutcome` is queued for the run and the
node leaves ``in_flight`` in the same step, so the reconciler never sees a node that is
neither running nor reported. Outcomes stay queued until the reconciler has written a
status that accounts for them (``consume``); if the operator dies first, the attempt is
lost with the process and restart recovery (B1/B1r) decides what happens to the run.

Executor activity (any NDJSON line, a simulate start) is kept in memory per run: the
stale reaper (B5) reads it, and the reconciler persists it with the next status write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
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


class _Activity:
    def __init__(self, state: _RunAttempts, clock: Callable[[], int]) -> None:
        self._state = state
        self._clock = clock
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def activity(self) -> None:
        self._state.last_activity_ms = self._clock()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        # Executors check each report; the sum of many is capped here (MAX_TOKEN_COUNT).
        self.prompt_tokens = _capped(self.prompt_tokens + prompt_tokens)
        self.completion_tokens = _capped(self.completion_tokens + completion_tokens)


def _capped(tokens: int) -> int:
    """A token count an executor reported, within [0, ``MAX_TOKEN_COUNT``]."""
    return min(max(0, tokens), MAX_TOKEN_COUNT)


class AttemptRunner:
    """Starts, tracks and cancels node attempts; reports their outcomes."""

    def __init__(self, notify: Notify, *, clock: Callable[[], int]) -> None:
        self._notify = notify
        self._clock = clock
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

    def cancel(self, key: RunKey, node_ids: frozenset[str] | None = None) -> None:
        state = self._runs.get(key)
        if state is None:
            return
        for node_id, task in list(state.tasks.items()):
            if node_ids is None or node_id in node_ids:
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
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)

    async def _attempt(
        self, key: RunKey, state: _RunAttempts, request: AttemptRequest, executor: Executor
    ) -> None:
        activity = _Activity(state, self._clock)
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
        state.tasks.pop(request.node_id, None)
        state.outcomes.append(outcome)
        with contextlib.suppress(Exception):
            await self._notify(key)
