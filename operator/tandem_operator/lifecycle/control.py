"""User control: cancel (B13), recover (B14), pause and resume (B12), settling a pause.

Level-based on the spec: ``desiredState`` says where the run should be, a new
``recover.requestId`` asks for one recover. Cancel overrides every other rule.
"""

from __future__ import annotations

from tandem_operator.api.vocabulary import (
    OPERATOR_PAUSES,
    RECOVERABLE_PHASES,
    LifecycleEvent,
    is_terminal,
)
from tandem_operator.lifecycle.flow import descendants
from tandem_operator.lifecycle.work import Work


def cancel(w: Work) -> bool:
    """B13: desiredState Cancelled stops any run that has not ended."""
    if w.obs.spec.desired_state != "Cancelled" or is_terminal(w.s.phase):
        return False
    w.stop_in_flight()
    w.phase_to("Cancelled")
    w.s.stop_kind = "OperatorStopped"
    w.s.stop_reason = "cancelled by user"
    w.s.detail = "cancelled by user"
    w.record("run_stopped", reason="cancelled by user", stop_kind="OperatorStopped")
    return True


def recover(w: Work) -> None:
    """B14: a new recover.requestId resets failed or blocked nodes and re-queues."""
    request = w.obs.spec.recover
    if request is None or request.request_id == w.cp.recover_request_id:
        return
    w.cp.recover_request_id = request.request_id
    if w.s.phase not in RECOVERABLE_PHASES:
        w.warn(
            "RecoverIgnored",
            f"recover request {request.request_id} ignored: run is {w.s.phase}, "
            "not Failed, Paused or Blocked",
        )
        return
    was = w.s.phase
    failed = {
        n
        for n, out in w.cp.node_outputs.items()
        if str(out.get("status", "")).lower() in ("failed", "blocked")
    }
    # Nodes interrupted without an output (a B1 restart failure) count as failed: left
    # alone, their next attempt would go past maxAttempts.
    roots = failed | set(w.cp.blocked_nodes) | set(w.in_progress())
    flow = w.flow()
    reset = roots | (descendants(flow, roots) if flow else set())
    w.reset_nodes(reset)
    w.clear_stop()
    w.s.finished_at = None
    w.s.resume_reason = f"recovered by request {request.request_id}"
    w.cp.last_failure = None
    w.queue()
    event: LifecycleEvent = "run_recovered_from_pause" if was == "Paused" else "run_recovered"
    w.record(
        event,
        reason=w.s.resume_reason,
        metadata={"request_id": request.request_id, "reset_nodes": sorted(reset)},
    )


def pause_resume(w: Work) -> None:
    """B12: level-based on spec.desiredState."""
    desired = w.obs.spec.desired_state
    phase = w.s.phase
    if desired == "Paused":
        reason = w.obs.spec.pause_reason or "paused by user"
        if phase in ("Queued", "AwaitingApproval"):
            w.s.stop_kind = None
            w.pause(reason=reason)
        elif phase == "Running":
            w.stop_in_flight()
            w.phase_to("Pausing")
            w.s.pause_reason = reason
            w.record("run_pausing", reason=reason)
        return
    if desired == "Running" and phase == "Paused":
        if w.s.stop_kind in OPERATOR_PAUSES:
            return
        seen = w.s.observed_generation
        if seen is None or w.obs.generation <= seen:
            # B3: a Paused run whose spec has not changed since the operator last wrote it
            # stays Paused; resuming is a change of spec.desiredState the operator sees.
            return
        w.clear_stop()
        w.s.resume_reason = "resumed by user"
        w.queue()
        w.record("run_resumed", reason="resumed by user")


def settle_pausing(w: Work) -> None:
    """B12: a Pausing run whose in-flight attempts have ended becomes Paused."""
    if w.s.phase != "Pausing" or w.obs.in_flight:
        return
    w.release_in_flight_attempts()
    if w.obs.spec.desired_state == "Running":
        # Resumed while its attempts were still stopping: nothing left to pause.
        w.clear_stop()
        w.s.resume_reason = "resumed by user"
        w.queue()
        w.record("run_resumed", reason="resumed by user")
        return
    w.pause(reason=w.s.pause_reason or "paused by user")
