"""The work queue: which runs to reconcile, when, and never two reconciles of one run at once.

As controller-runtime's work queue: a key kicked many times before its reconcile starts is
reconciled once (``kick`` de-duplicates), and a key kicked while its reconcile is under way
is reconciled once more after it ends, however often it was kicked meanwhile (client-go's
"dirty" set): one reconcile under way and at most one to follow, per key. So a burst of
kicks (every freed slot kicks the whole admissible queue) costs one reconcile per run, not
one per kick. Each key has its own lock besides, for reconciles that do not come through
the queue; different runs proceed concurrently. There is no cap on how many: a reconcile
that waits for a slot holds back the outcomes it would record, and runs that wait longer
for their first decision find the capacity taken and are written Queued first, one more
write each. A reconcile that raised
(the API server unreachable, etcd down) is retried after ``retry_after_failure_ms``,
doubled with each failure in a row up to ``MAX_RETRY_AFTER_FAILURE_MS``; and
each key has at most one wake-up, the deadline its last decision returned
(``Decision.requeue_at_ms``), replaced by every new one.

Memory follows the keys that exist: a wake-up leaves the queue when it fires, and after a
reconcile of a key that no longer exists (``alive``) the queue drops its lock and wake-up
and calls ``gone``, so that the owner of the queue can drop what it keeps for the key
too (a reconcile under way when the object was deleted may have set them again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tandem_operator.runtime.ports import Clock

log = logging.getLogger(__name__)

RunKey = tuple[str, str]
Handler = Callable[[RunKey, float], Awaitable[None]]
"""Reconciles one key; the float is when it was first kicked (monotonic seconds)."""

RETRY_AFTER_FAILURE_MS = 2000
MAX_RETRY_AFTER_FAILURE_MS = 300_000
"""A key that keeps failing is retried at most this far apart (5 minutes)."""
CLOSE_SECONDS = 5.0
WAKE_SLACK_SECONDS = 0.05
"""A wake-up fires this much after its deadline, so the rule finds its time has come."""


class WorkQueue:
    def __init__(
        self,
        handler: Handler,
        *,
        clock: Clock,
        retry_after_failure_ms: int = RETRY_AFTER_FAILURE_MS,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._retry_ms = retry_after_failure_ms
        self._pending: set[RunKey] = set()
        """Kicked, reconcile not started yet."""
        self._active: set[RunKey] = set()
        """Reconcile under way."""
        self._dirty: dict[RunKey, float] = {}
        """Kicked while under way (when first kicked): reconciled again once it ends."""
        self._locks: dict[RunKey, asyncio.Lock] = {}
        self._wakeups: dict[RunKey, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._failures: dict[RunKey, int] = {}
        self.alive: Callable[[RunKey], bool] = lambda key: True
        """Whether a key still exists (a failed reconcile of a deleted run is not retried)."""
        self.gone: Callable[[RunKey], None] = lambda key: None
        """Called after a reconcile of a key that no longer exists."""

    def kick(self, key: RunKey) -> None:
        """Reconcile ``key`` soon, once, however many times it is kicked meanwhile."""
        if key in self._pending:
            return
        if key in self._active:
            self._dirty.setdefault(key, self._clock.monotonic())
            return
        self._start(key, self._clock.monotonic())

    def _start(self, key: RunKey, kicked_at: float) -> None:
        self._pending.add(key)
        self.spawn(self._run(key, kicked_at), name=f"reconcile {key[0]}/{key[1]}")

    def lock(self, key: RunKey) -> asyncio.Lock:
        """The lock that serialises ``key``'s reconciles."""
        return self._locks.setdefault(key, asyncio.Lock())

    def wake_at(self, key: RunKey, at_ms: int | None) -> None:
        """Replace ``key``'s wake-up with one at ``at_ms`` (none for ``None``)."""
        old = self._wakeups.pop(key, None)
        if old is not None:
            old.cancel()
        if at_ms is None:
            return
        delay = max(0.0, (at_ms - self._clock.now_ms()) / 1000) + WAKE_SLACK_SECONDS
        self._wakeups[key] = asyncio.get_running_loop().call_later(delay, self._wake, key)

    def _wake(self, key: RunKey) -> None:
        self._wakeups.pop(key, None)
        self.kick(key)

    def forget(self, key: RunKey) -> None:
        """The run is gone: no wake-up, no lock (unless a reconcile holds it now)."""
        self.wake_at(key, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._failures.pop(key, None)

    def spawn(self, coro: Awaitable[None], *, name: str) -> None:
        """Run ``coro`` as a task the queue keeps until it ends (and waits for on close)."""

        async def wrapped() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(wrapped(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: RunKey, kicked_at: float) -> None:
        self._pending.discard(key)
        self._active.add(key)
        try:
            await self._handler(key, kicked_at)
        except Exception:
            # The back-off wake-up below is the retry; kicks meanwhile wait for it.
            self._dirty.pop(key, None)
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
            log.exception("Reconcile failed run=%s/%s failures=%d", *key, failures + 1)
            if self.alive(key):
                delay = min(self._retry_ms * 2 ** min(failures, 16), MAX_RETRY_AFTER_FAILURE_MS)
                self.wake_at(key, self._clock.now_ms() + delay)
        else:
            self._failures.pop(key, None)
        finally:
            self._active.discard(key)
            again = self._dirty.pop(key, None)
            if again is not None:
                self._start(key, again)
        if not self.alive(key) and key not in self._pending:
            self.forget(key)
            self.gone(key)

    def __len__(self) -> int:
        """Keys the queue keeps anything for (locks, wake-ups, pending kicks)."""
        return len(
            self._locks.keys()
            | self._wakeups.keys()
            | self._pending
            | self._active
            | self._dirty.keys()
            | self._failures.keys()
        )

    async def close(self) -> None:
        """Cancel every wake-up and wait (a bounded while) for reconciles under way."""
        for handle in self._wakeups.values():
            handle.cancel()
        self._wakeups.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CLOSE_SECONDS)

    @property
    def busy(self) -> bool:
        return bool(self._tasks)
