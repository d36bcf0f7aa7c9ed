"""Transient executor errors: how often a node retries and how long it waits (B10)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MAX_TRANSIENT_RETRIES = 5


BACKOFF_BASE_SECONDS = 2.0


BACKOFF_FACTOR = 2.5


BACKOFF_CAP_SECONDS = 8.0


def backoff_seconds(transient_failures: int) -> float:
    """Delay before retrying after ``transient_failures`` consecutive transient errors.

    ``2 s x 2.5^(n-1)``, capped at 8 s: 1 -> 2.0, 2 -> 5.0, 3 and later -> 8.0.  The cap is
    short on purpose: the caller also bounds the number of retries, and an agent endpoint
    that comes back should be used again soon.
    """
    if transient_failures < 1:
        raise ValueError(f"transient_failures must be >= 1, got {transient_failures}")
    # Clamp the exponent so huge counts cannot overflow the float before the cap applies.
    exponent = min(transient_failures - 1, 16)
    return min(BACKOFF_BASE_SECONDS * BACKOFF_FACTOR**exponent, BACKOFF_CAP_SECONDS)


def trailing_transient_errors(verdicts: Sequence[Mapping[str, Any]]) -> int:
    """Transient errors in a row at the end of a node's verdicts (the back-off count)."""
    count = 0
    for verdict in reversed(verdicts):
        if verdict.get("status") != "transient_error":
            break
        count += 1
    return count
