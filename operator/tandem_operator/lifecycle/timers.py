"""When a time-based rule may next fire for a run, read from its raw status alone.

The lifecycle tick (``handlers.operator``) re-checks runs at an interval; re-checking every
cached run would make an operator with thousands of parked runs busy at rest for nothing.
``timer_due_ms`` says from when a tick can matter for one run, so the tick skips the rest:

- Queued, Running, Pausing and new runs: always (admission, B5 stale reaping, which
  depends on executor activity the status does not show, retries and settling).
- AwaitingApproval: from the earlier of B4 (``requestedAt`` + the stale-after setting,
  until the gate is marked stale) and the gate's expiry (until a ``remind`` expiry has
  fired); never once both are spent.
- Paused: always when the operator paused it (StaleReaped may auto-resume by B6,
  GuardrailStopped by B7); never when a user did (only a spec change resumes it, and that
  arrives as a watch event).
- Terminal phases: never.

The answer may be early (a reconcile then finds nothing to do and writes nothing), never
late: anything unreadable means "always", and the reconcile reports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tandem_operator.lifecycle.clock import parse_ms

ALWAYS = 0
"""Due at any time: the tick reconciles the run every interval."""

_TICKED_ALWAYS = frozenset({"Queued", "Running", "Pausing"})
_OPERATOR_PAUSES = frozenset({"StaleReaped", "GuardrailStopped"})
_TERMINAL = frozenset({"Completed", "Blocked", "Failed", "Cancelled"})


def timer_due_ms(status: Any, *, stale_after_ms: int) -> int | None:
    """The first moment (ms since the epoch) a timer rule may fire; ``None`` for never."""
    if not isinstance(status, Mapping):
        return ALWAYS
    phase = status.get("phase")
    if phase is None or phase in _TICKED_ALWAYS:
        return ALWAYS
    if phase in _TERMINAL:
        return None
    if phase == "Paused":
        return ALWAYS if status.get("stopKind") in _OPERATOR_PAUSES else None
    if phase == "AwaitingApproval":
        return _gate_due_ms(status, stale_after_ms=stale_after_ms)
    return ALWAYS


def _gate_due_ms(status: Mapping[str, Any], *, stale_after_ms: int) -> int | None:
    checkpoint = status.get("checkpoint")
    gate = checkpoint.get("awaitingGate") if isinstance(checkpoint, Mapping) else None
    if not isinstance(gate, Mapping):
        return ALWAYS
    requested = (
        parse_ms(gate.get("requestedAt")) if isinstance(gate.get("requestedAt"), str) else None
    )
    if requested is None:
        return ALWAYS
    metadata = gate.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return ALWAYS
    times: list[int] = []
    if not metadata.get("stale"):
        times.append(requested + stale_after_ms)
    expiry = _expiry(status.get("automationSnapshot"), gate.get("nodeId"))
    if expiry is not None:
        after, action = expiry
        if action != "remind" or not metadata.get("reminder_due"):
            times.append(requested + after * 1000)
    return min(times) if times else None


def _expiry(snapshot: Any, node_id: Any) -> tuple[int, str] | None:
    """(afterSeconds, action) of the gate node's expiry in the status snapshot, if any."""
    nodes = snapshot.get("nodes") if isinstance(snapshot, Mapping) else None
    if not isinstance(nodes, list):
        return None
    for node in nodes:
        if isinstance(node, Mapping) and node.get("id") == node_id:
            approval = node.get("approval")
            expiry = approval.get("expiry") if isinstance(approval, Mapping) else None
            if not isinstance(expiry, Mapping):
                return None
            after = expiry.get("afterSeconds")
            if isinstance(after, int) and not isinstance(after, bool):
                return after, str(expiry.get("action", ""))
            return (0, "")  # unreadable: due at once, the reconcile says what is wrong
    return None
