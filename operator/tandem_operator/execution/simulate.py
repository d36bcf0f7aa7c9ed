"""A deterministic, network-free executor for demos, tests and dry runs of a flow.

:class:`SimulateExecutor` plays a fixed script: one ``activity()`` at start, an
``asyncio.sleep(after_seconds)``, one ``usage()`` report, then an :class:`AttemptResult`
with the configured outcome.  Nothing depends on the request, the clock or randomness, so a
flow run in simulation always takes the same path.

The special outcome ``stall`` reports nothing and never returns: it waits until its task is
cancelled.  It exists to exercise the reconciler's stale-attempt reaping, which must notice
an attempt that stopped reporting activity and cancel it.

The configuration is checked when the attempt runs, not when the executor is built, so a
bad simulation spec surfaces where every other permanent problem does: as an
:class:`ExecutorConfigError` from :meth:`SimulateExecutor.run`, which the caller turns into
a failed attempt.
"""

from __future__ import annotations

import asyncio
import copy
import math
from collections.abc import Mapping
from typing import Any, Final

from tandem_operator.execution.types import (
    MAX_TOKEN_COUNT,
    RESULT_STATUSES,
    AttemptRequest,
    AttemptResult,
    ExecutorActivity,
    ExecutorConfigError,
)

__all__ = ["STALL", "SimulateExecutor"]

STALL: Final[str] = "stall"
"""The outcome that never finishes (until cancelled)."""


class SimulateExecutor:
    """Pretends to run an agent: sleep, report usage, return a fixed outcome."""

    def __init__(
        self,
        *,
        outcome: str,
        after_seconds: float,
        output: Mapping[str, Any],
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self._outcome = outcome
        self._after_seconds = after_seconds
        # Copied so later changes to the caller's mapping cannot leak into results.
        self._output: dict[str, Any] = copy.deepcopy(dict(output))
        self._prompt_tokens = prompt_tokens
        self._completion_tokens = completion_tokens

    def _check(self) -> None:
        if self._outcome != STALL and self._outcome not in RESULT_STATUSES:
            allowed = ", ".join(sorted([*RESULT_STATUSES, STALL]))
            raise ExecutorConfigError(
                f"simulate: unknown outcome {self._outcome!r} (expected one of {allowed})"
            )
        if not math.isfinite(self._after_seconds) or self._after_seconds < 0:
            raise ExecutorConfigError(
                f"simulate: afterSeconds must be a finite number >= 0, got {self._after_seconds}"
            )
        if not (
            0 <= self._prompt_tokens <= MAX_TOKEN_COUNT
            and 0 <= self._completion_tokens <= MAX_TOKEN_COUNT
        ):
            raise ExecutorConfigError(f"simulate: token counts must be from 0 to {MAX_TOKEN_COUNT}")

    async def run(self, request: AttemptRequest, activity: ExecutorActivity) -> AttemptResult:
        """Play the script; ``stall`` waits forever and only ends by cancellation."""
        self._check()
        if self._outcome == STALL:
            # A future nobody resolves: the only way out is CancelledError.
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable: a stalled simulation never resumes")
        activity.activity()
        await asyncio.sleep(self._after_seconds)
        activity.usage(self._prompt_tokens, self._completion_tokens)
        return AttemptResult(
            status=self._outcome,
            output={**copy.deepcopy(self._output), "status": self._outcome},
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
        )
