"""Automatic resumes and admission: B6 (stale reap), B7 (quota override), B9 (admission).

B6 and B7 re-queue runs the operator paused; B9 starts a Queued run when the scheduler's
verdict (capacity, workspace lock, computed by the runtime over every run) says so, after
checking what only a started run can violate (runtime context, a cyclic flow).
"""

from __future__ import annotations

from tandem_operator.api.models import Scheduler
from tandem_operator.api.vocabulary import STALE_REAP_EVENTS
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.flow import find_cycle
from tandem_operator.lifecycle.work import Work

RUNTIME_CONTEXT_DETAIL = "runtime context partition missing for automation run"


def within_window(*, reaped_at_ms: int, now_ms: int, window_ms: int) -> bool:
    """B6: a stale reap at ``reaped_at_ms`` may still be auto-resumed at ``now_ms``."""
    return now_ms - reaped_at_ms <= window_ms


def cap_reached(*, auto_resumes: int, cap: int) -> bool:
    """B6: the run has used up its automatic resumes."""
    return auto_resumes >= cap


def _latest_reap_ms(w: Work) -> int | None:
    for rec in reversed(w.cp.lifecycle_history):
        if rec.stop_kind == "StaleReaped" or rec.event in STALE_REAP_EVENTS:
            return parse_ms(rec.recorded_at)
    # The record may have been trimmed from a bounded history; the checkpoint keeps its time.
    return parse_ms(w.cp.last_stale_reap_at)


def stale_auto_resume(w: Work) -> None:
    """B6: re-queue a stale-reaped run within the window and under the cap."""
    cfg = w.obs.settings
    if (
        w.s.phase != "Paused"
        or w.s.stop_kind != "StaleReaped"
        or w.obs.spec.desired_state != "Running"
        or cfg.stale_auto_resume_disabled
        or cap_reached(
            auto_resumes=w.s.counters.auto_resumes, cap=cfg.stale_auto_resume_max_attempts
        )
    ):
        return
    reaped = _latest_reap_ms(w)
    if reaped is None or not within_window(
        reaped_at_ms=reaped, now_ms=w.obs.now_ms, window_ms=cfg.stale_auto_resume_window_ms
    ):
        return
    completed = set(w.cp.completed_nodes)
    repairable = False
    for node_id, output in w.cp.node_outputs.items():
        node = w.node(node_id)
        limit = node.max_attempts if node else 3
        if (
            node_id not in completed
            and str(output.get("status", "")).lower() == "needs_repair"
            and w.cp.node_attempts.get(node_id, 0) < limit
        ):
            repairable = True
            break
    if not repairable:
        return
    w.clear_stop()
    w.queue()
    w.s.counters.auto_resumes += 1
    w.record(
        "run_auto_resumed",
        reason="auto_resume_after_stale_reap",
        metadata={
            "auto_resume_window_ms": cfg.stale_auto_resume_window_ms,
            "stale_reaped_at_ms": reaped,
        },
    )


def guardrail_auto_resume(w: Work) -> None:
    """B7: an approved quota override re-queues a guardrail-stopped run."""
    if (
        w.s.phase != "Paused"
        or w.s.stop_kind != "GuardrailStopped"
        or w.obs.spec.desired_state != "Running"
    ):
        return
    covering = w.covering_overrides()
    if not covering:
        return
    w.clear_stop()
    w.queue()
    w.record(
        "run_auto_resumed",
        reason="auto_resume_after_guardrail_override",
        metadata={
            "agent_ids": sorted({o.agent_id for o in covering}),
            "stop_kind": "guardrail_stopped",
        },
    )


def admit(w: Work) -> None:
    """B9: start a Queued run when the scheduler allows it."""
    if w.s.phase != "Queued" or w.obs.spec.desired_state != "Running":
        return
    if w.obs.definition is None:
        message = w.obs.definition_error or "automation definition is not available"
        w.stalled = message
        if w.s.detail != message:
            w.s.detail = message
            w.warn("AutomationUnresolved", message)
        return
    flow = w.obs.definition
    if flow.requires_runtime_context and not w.obs.spec.runtime_context:
        w.fail(
            detail=RUNTIME_CONTEXT_DETAIL,
            stop_reason=RUNTIME_CONTEXT_DETAIL,
            node_id="runtime_context",
            failure_kind="runtime_context_missing",
        )
        return
    cycle = find_cycle(flow)
    if cycle is not None:
        # CEL cannot reject a cycle at admission; without this check the nodes on it would
        # never become runnable and the run would end Blocked for no visible reason.
        detail = f"dependency cycle in flow: {' -> '.join(cycle)}"
        w.fail(
            detail=detail, stop_reason=detail, node_id=cycle[0], failure_kind="invalid_definition"
        )
        return
    if not w.cp.pending_nodes and not w.cp.completed_nodes and not w.cp.blocked_nodes:
        w.cp.pending_nodes = [n.id for n in flow.nodes]
    scheduler = w.s.scheduler or Scheduler(queued_at=w.now)
    retry_after = parse_ms(scheduler.retry_after)
    if w.obs.shutting_down:
        return
    if retry_after is not None and retry_after > w.obs.now_ms:
        w.s.scheduler = scheduler.model_copy(update={"queue_reason": "retry_backoff"})
        return
    if w.obs.admission != "admit":
        w.s.scheduler = scheduler.model_copy(
            update={"queue_reason": w.obs.admission, "retry_after": None}
        )
        return
    w.phase_to("Running")
    w.claim()
    w.s.started_at = w.s.started_at or w.now
    # B5 counts silence while attempts run: not across the time the run waited or was
    # paused, nor from an attempt a pause or a retry gave back (its node has no output).
    w.cp.last_activity_at = w.now
    if w.s.automation_snapshot is None:
        w.s.automation_snapshot = flow.to_api()
    w.s.detail = "admitted"
    w.record("run_started", reason="admitted")
