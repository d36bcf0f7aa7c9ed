"""When a settled run needs deciding again with nothing else new: its next deadline.

``decide`` returns this as ``Decision.requeue_at_ms`` (controller-runtime's
``RequeueAfter``): the earliest moment at which one of the time-based rules could change
the decision, all other inputs unchanged. Deciding before it changes nothing (a property
test holds ``decide`` to that); everything that is not time (a watch event, an outcome,
an admission verdict, an override appearing) reaches the run by another path.

- Queued: the scheduler's ``retryAfter`` (B10 back-off).
- AwaitingApproval: the gate's expiry (until a ``remind`` has fired) and B4's stale mark
  (once, and only for gates that wait on people alone).
- Running: a node's retry back-off, B5's reap time (last sign of life + threshold), B8's
  runtime budget, and the expiry of an override that keeps a budget from stopping the run.
- Running or Pausing claimed by another live instance: that claim's lease (B1, B1r, B2).
- Paused, terminal: none (B6 and B7 act at once when they can, or on a change of spec or
  an override, which arrive as events).
"""

from __future__ import annotations

from tandem_operator.api.vocabulary import holds_workspace
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.gates import gate_times
from tandem_operator.lifecycle.running import silence
from tandem_operator.lifecycle.work import Work


def next_deadline(w: Work) -> int | None:
    """The earliest future moment a time-based rule may act on ``w``'s settled status."""
    # A deadline that has passed without a change waits for more than time (a back-off
    # over, but no capacity yet): the next change is not time's.
    future = [t for t in _deadlines(w) if t is not None and t > w.obs.now_ms]
    return min(future) if future else None


def _deadlines(w: Work) -> list[int | None]:
    s, cp, phase = w.s, w.cp, w.s.phase
    out: list[int | None] = []
    if phase == "Queued" and s.scheduler is not None:
        out.append(parse_ms(s.scheduler.retry_after))
    gate = gate_times(w)
    if gate is not None:
        out.extend(t for t in (gate.expires_at_ms, gate.stale_at_ms) if t is not None)
    if phase == "Running":
        out.extend(parse_ms(at) for at in cp.node_retry_after.values())
        quiet = silence(w)
        if quiet is not None:
            out.append(quiet.reap_at_ms)
        flow = w.flow()
        started = parse_ms(s.started_at)
        if flow is not None and started is not None:
            runtime = flow.execution.max_total_runtime_seconds
            if runtime is not None:
                out.append(started + runtime * 1000 + 1)
        out.extend(o.expires_ms for o in w.covering_overrides())
    claim = s.execution_claim
    if holds_workspace(phase) and claim is not None and claim.claimant != w.obs.instance:
        expires = parse_ms(claim.lease_expires_at)
        out.append(None if expires is None else expires + 1)
    return out
