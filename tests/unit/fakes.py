"""Fakes the runtime's unit tests share: a clock, merge-patch application, an async runner.

The runtime is handed its clock and API client (``runtime.ports``); these stand in for the
real ones so a reconcile or a schedule plan runs in milliseconds with time set by the test.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any


class FakeClock:
    """Wall-clock milliseconds the test sets; monotonic seconds follow them."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000


def apply_merge_patch(old: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``old`` with a JSON merge patch applied, as the API server applies one."""
    out = dict(old)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = apply_merge_patch(out[key], value)
        else:
            out[key] = value
    return out


def run_async(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh event loop (no plugin needed)."""

    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(test())

    return wrapper
