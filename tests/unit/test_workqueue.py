"""The work queue's promise per key: one reconcile under way and at most one to follow.

Each test holds a reconcile open with an event, kicks meanwhile, and counts what the
handler saw; time is a fake clock, so the kick times the handler receives are exact.
"""

from __future__ import annotations

import asyncio

from tests.unit.fakes import FakeClock, run_async

from tandem_operator.runtime.workqueue import WorkQueue

KEY = ("team-a", "r1")
OTHER = ("team-a", "r2")
T0 = 1_700_000_000_000


class Handler:
    """Records each reconcile's (key, kicked_at); the first one waits for ``release``."""

    def __init__(self, *, fail_first: bool = False) -> None:
        self.calls: list[tuple[tuple[str, str], float]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail_first = fail_first

    async def __call__(self, key: tuple[str, str], kicked_at: float) -> None:
        self.calls.append((key, kicked_at))
        if len(self.calls) == 1:
            self.started.set()
            await self.release.wait()
            if self.fail_first:
                raise RuntimeError("API server unreachable")


async def _settle(queue: WorkQueue) -> None:
    """Let every reconcile the queue started run to its end (no real time passes)."""
    for _ in range(1000):
        await asyncio.sleep(0)
        if not queue.busy:
            return
    raise AssertionError("the queue did not come to rest")


@run_async
async def test_kicks_before_the_reconcile_starts_make_one_reconcile() -> None:
    clock = FakeClock(T0)
    handler = Handler()
    handler.release.set()
    queue = WorkQueue(handler, clock=clock)
    for _ in range(5):
        queue.kick(KEY)
    await _settle(queue)
    assert handler.calls == [(KEY, T0 / 1000)]


@run_async
async def test_kicks_while_a_reconcile_is_under_way_make_exactly_one_more() -> None:
    clock = FakeClock(T0)
    handler = Handler()
    queue = WorkQueue(handler, clock=clock)
    queue.kick(KEY)
    await handler.started.wait()
    # Kicked 20 times while the first reconcile runs (every freed slot kicks the whole
    # admissible queue): the run is reconciled once more, with the first of those kicks
    # as its trigger, not 20 times.
    for step in range(20):
        clock.ms = T0 + 100 + step
        queue.kick(KEY)
    queue.kick(OTHER)  # another key is not held up
    await _settle_other(handler, OTHER)
    handler.release.set()
    await _settle(queue)
    assert handler.calls == [(KEY, T0 / 1000), (OTHER, (T0 + 119) / 1000), (KEY, (T0 + 100) / 1000)]


async def _settle_other(handler: Handler, key: tuple[str, str]) -> None:
    for _ in range(100):
        if any(k == key for k, _ in handler.calls):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{key} was not reconciled while another key's reconcile ran")


@run_async
async def test_a_failed_reconcile_is_retried_by_its_back_off_not_by_kicks_meanwhile() -> None:
    clock = FakeClock(T0)
    handler = Handler(fail_first=True)
    queue = WorkQueue(handler, clock=clock, retry_after_failure_ms=60_000)
    queue.kick(KEY)
    await handler.started.wait()
    queue.kick(KEY)
    handler.release.set()
    await _settle(queue)
    # Only the failed reconcile ran; its retry is the wake-up a minute on.
    assert handler.calls == [(KEY, T0 / 1000)]
    assert KEY in queue._wakeups
    await queue.close()


@run_async
async def test_a_key_kicked_after_its_reconcile_ended_is_reconciled_again() -> None:
    clock = FakeClock(T0)
    handler = Handler()
    handler.release.set()
    queue = WorkQueue(handler, clock=clock)
    queue.kick(KEY)
    await _settle(queue)
    clock.ms = T0 + 5
    queue.kick(KEY)
    await _settle(queue)
    assert handler.calls == [(KEY, T0 / 1000), (KEY, (T0 + 5) / 1000)]
