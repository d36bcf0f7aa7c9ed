"""Execution and budgets: outcomes (B10), usage (B17), budgets (B8), stale reaping (B5),
and dispatch of runnable nodes and gates, down to the run's end (B10, B11).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tandem_operator.api.models import MAX_TOKEN_COUNT, AwaitingGate, Node, Scheduler
from tandem_operator.api.vocabulary import NODE_STATUSES, holds_workspace
from tandem_operator.lifecycle.bounds import (
    MAX_USAGE_TOKENS,
    MAX_VERDICT_ERROR_CHARS,
    MAX_VERDICTS,
    clip,
)
from tandem_operator.lifecycle.clock import format_ms, parse_ms
from tandem_operator.lifecycle.contract import StartAttempt
from tandem_operator.lifecycle.flow import descendants, nodes_by_id
from tandem_operator.lifecycle.retry import (
    MAX_TRANSIENT_RETRIES,
    backoff_seconds,
    trailing_transient_errors,
)
from tandem_operator.lifecycle.work import Work

STALE_REAP_REASON = "stale_no_provider_activity"


def _node_failed(w: Work, node_id: str, node: Node | None, reason: str, kind: str) -> None:
    attempts = w.cp.node_attempts.get(node_id, 0)
    limit = node.max_attempts if node else attempts
    detail = f"node `{node_id}` failed after {attempts}/{limit} attempts"
    w.stop_in_flight()
    w.fail(
        detail=detail,
        stop_reason=reason,
        node_id=node_id,
        failure_kind=kind,
        metadata={"node_id": node_id},
    )


def apply_outcomes(w: Work) -> None:
    """B10/B17: fold executor outcomes into the checkpoint."""
    cost_per_1k = w.obs.settings.token_cost_per_1k_usd
    for out in w.obs.outcomes:
        if out.prompt_tokens or out.completion_tokens:
            usage = w.s.usage
            prompt = min(max(0, out.prompt_tokens), MAX_TOKEN_COUNT)
            completion = min(max(0, out.completion_tokens), MAX_TOKEN_COUNT)
            usage.prompt_tokens = min(usage.prompt_tokens + prompt, MAX_USAGE_TOKENS)
            usage.completion_tokens = min(usage.completion_tokens + completion, MAX_USAGE_TOKENS)
            total = prompt + completion
            usage.total_tokens = min(usage.total_tokens + total, MAX_USAGE_TOKENS)
            cost = Decimal(usage.estimated_cost_usd or "0") + Decimal(total) / 1000 * cost_per_1k
            usage.estimated_cost_usd = _decimal_text(cost)
        # B12: attempts may finish while the run is Pausing; their results count.
        if not holds_workspace(w.s.phase):
            continue
        # An outcome is executor activity (B5): a node given back by a transient error
        # waits for its retry without looking silent since its attempt was dispatched.
        w.cp.last_activity_at = w.now
        node_id = out.node_id
        if (
            node_id not in w.cp.pending_nodes
            or w.cp.node_attempts.get(node_id, 0) != out.attempt
            or node_id in w.cp.node_outputs
        ):
            continue
        if w.s.phase == "Pausing" and (out.cancelled or out.transient):
            # The attempt was cut short by the pause: _settle_pausing gives it back, once.
            continue
        node = w.node(node_id)
        verdicts = w.cp.node_attempt_verdicts.setdefault(node_id, [])
        if out.cancelled:
            if w.obs.shutting_down:
                # B15: cut off by the shutdown grace period, not by a rule. The attempt stays
                # in progress so the next operator applies B1/B1r to it, as after a crash.
                continue
            w.cp.node_attempts[node_id] = max(0, out.attempt - 1)
            verdicts.append({"attempt": out.attempt, "status": "cancelled", "at": w.now})
            del verdicts[:-MAX_VERDICTS]
            continue
        if out.transient:
            failures = 1 + trailing_transient_errors(verdicts)
            verdicts.append(
                {
                    "attempt": out.attempt,
                    "status": "transient_error",
                    "error": clip(out.error, MAX_VERDICT_ERROR_CHARS),
                }
            )
            del verdicts[:-MAX_VERDICTS]
            if failures < MAX_TRANSIENT_RETRIES:
                w.cp.node_attempts[node_id] = max(0, out.attempt - 1)
                delay_ms = int(backoff_seconds(failures) * 1000)
                w.cp.node_retry_after[node_id] = format_ms(w.obs.now_ms + delay_ms)
                w.s.detail = f"retrying node `{node_id}` after transient provider failure"
                continue
            status, output = (
                "needs_repair",
                {
                    "status": "needs_repair",
                    "blocker_category": "transient_executor_error",
                    "error": out.error,
                },
            )
        elif out.error is not None:
            status, output = "failed", {"status": "failed", "error": out.error}
        else:
            reported = out.status.lower()
            status = reported if reported in NODE_STATUSES else "failed"
            output = {**out.output, "status": status}
        verdict: dict[str, Any] = {"attempt": out.attempt, "status": status, "at": w.now}
        if out.error is not None and not out.transient:
            # Why the executor failed the attempt (a Pod's exit code, OOMKilled, no result).
            verdict["error"] = clip(out.error, MAX_VERDICT_ERROR_CHARS)
        verdicts.append(verdict)
        del verdicts[:-MAX_VERDICTS]
        limit = node.max_attempts if node else 1
        if status == "needs_repair" and out.attempt >= limit:
            w.set_output(node_id, {**output, "status": "failed", "exhausted": True})
            _node_failed(w, node_id, node, f"node `{node_id}` exhausted its attempts", "exhausted")
            # The remaining outcomes still bring their usage (B17).
            continue
        w.set_output(node_id, output)
        if status == "completed":
            w.cp.completed_nodes = [*w.cp.completed_nodes, node_id]
            w.cp.pending_nodes = [n for n in w.cp.pending_nodes if n != node_id]
            w.s.detail = f"completed node `{node_id}`"
        elif status == "blocked":
            w.cp.pending_nodes = [n for n in w.cp.pending_nodes if n != node_id]
            w.cp.blocked_nodes = [*w.cp.blocked_nodes, node_id]
        elif status == "failed":
            if out.error is not None:
                # The executor could not run the attempt (no such endpoint, 401, protocol
                # error): lastFailure carries its message, which names the cause.
                _node_failed(w, node_id, node, out.error, "executor_error")
            else:
                _node_failed(w, node_id, node, f"node `{node_id}` reported failed", "failed")
            continue
        else:
            w.s.detail = f"node `{node_id}` needs repair; retrying"


def _decimal_text(value: Decimal) -> str:
    text = format(value.quantize(Decimal("0.000001")).normalize(), "f")
    return text if text != "-0" else "0"


def budgets(w: Work) -> None:
    """B8: a budget exceeded without an approved override pauses the run."""
    flow = w.flow()
    if w.s.phase != "Running" or flow is None or w.covering_overrides():
        return
    ex = flow.execution
    exceeded: str | None = None
    started = parse_ms(w.s.started_at)
    # B21: usage that attempts still running reported counts as it arrives.
    tokens = w.s.usage.total_tokens + w.obs.in_flight_tokens
    cost = (
        Decimal(w.s.usage.estimated_cost_usd or "0")
        + Decimal(w.obs.in_flight_tokens) / 1000 * w.obs.settings.token_cost_per_1k_usd
    )
    if ex.max_total_tokens is not None and tokens > ex.max_total_tokens:
        exceeded = f"token budget exceeded: {tokens} > maxTotalTokens {ex.max_total_tokens}"
    elif ex.max_total_cost_usd is not None and cost > Decimal(ex.max_total_cost_usd):
        exceeded = (
            f"cost budget exceeded: {_decimal_text(cost)} > maxTotalCostUsd {ex.max_total_cost_usd}"
        )
    elif (
        ex.max_total_runtime_seconds is not None
        and started is not None
        and w.obs.now_ms - started > ex.max_total_runtime_seconds * 1000
    ):
        exceeded = f"runtime budget exceeded: maxTotalRuntimeSeconds {ex.max_total_runtime_seconds}"
    if exceeded is None:
        return
    w.stop_in_flight()
    w.release_in_flight_attempts()
    w.pause(reason=exceeded, stop_kind="GuardrailStopped", stop_reason=exceeded, detail=exceeded)


@dataclass(frozen=True, kw_only=True)
class Silence:
    """B5's measure of a Running run: which nodes wait, since when, and for how long."""

    nodes: list[str]
    last_activity_ms: int
    threshold_ms: int

    @property
    def reap_at_ms(self) -> int:
        return self.last_activity_ms + self.threshold_ms


def silence(w: Work) -> Silence | None:
    """How long a Running run's executor has been silent, if it has attempts in progress.

    The threshold is max(``TANDEM_STALE_RUNNING_MS``, the longest in-progress node timeout
    + 60 s); the latest sign of life is the runner's (any streamed line) or
    ``checkpoint.lastActivityAt`` (which survives restarts): the last dispatch, outcome or
    admission to Running, so time spent Queued or Paused never counts as silence.
    """
    if w.s.phase != "Running":
        return None
    progressing = w.in_progress()
    if not progressing:
        return None
    timeouts = [
        (node.timeout_seconds or 0) * 1000 + 60_000
        for node_id in progressing
        if (node := w.node(node_id)) is not None and node.timeout_seconds
    ]
    threshold = max([w.obs.settings.stale_running_ms, *timeouts])
    seen = [t for t in (w.obs.last_activity_ms, parse_ms(w.cp.last_activity_at)) if t is not None]
    last = max(seen) if seen else parse_ms(w.s.started_at)
    if last is None:
        return None
    return Silence(nodes=progressing, last_activity_ms=last, threshold_ms=threshold)


def stale_reap(w: Work) -> None:
    """B5: a Running run whose executor went silent is reaped."""
    quiet = silence(w)
    if quiet is None or w.obs.now_ms < quiet.reap_at_ms:
        return
    progressing, threshold, last = quiet.nodes, quiet.threshold_ms, quiet.last_activity_ms
    failed_node: str | None = None
    for node_id in progressing:
        node = w.node(node_id)
        limit = node.max_attempts if node else 1
        exhausted = w.cp.node_attempts.get(node_id, 0) >= limit
        output: dict[str, str] = {
            "status": "failed" if exhausted else "needs_repair",
            "blocker_category": STALE_REAP_REASON,
        }
        waiting = w.obs.waiting.get(node_id)
        if waiting is not None:
            # Why the attempt made no progress, as its executor saw it (a Pod that could
            # not start): in the output and in the attempt's verdict.
            output["error"] = clip(waiting, MAX_VERDICT_ERROR_CHARS) or ""
            verdicts = w.cp.node_attempt_verdicts.setdefault(node_id, [])
            verdicts.append(
                {
                    "attempt": w.cp.node_attempts.get(node_id, 0),
                    "status": output["status"],
                    "error": output["error"],
                    "at": w.now,
                }
            )
            del verdicts[:-MAX_VERDICTS]
        w.set_output(node_id, output)
        if exhausted and failed_node is None:
            failed_node = node_id
    w.stop_in_flight()
    w.s.stop_kind = "StaleReaped"
    w.cp.last_stale_reap_at = w.now
    metadata = {"stale_after_ms": threshold, "last_activity_ms": last, "nodes": progressing}
    if failed_node is not None:
        node = w.node(failed_node)
        attempts = w.cp.node_attempts.get(failed_node, 0)
        w.fail(
            detail=f"node `{failed_node}` failed after {attempts}/"
            f"{node.max_attempts if node else attempts} attempts",
            stop_reason=STALE_REAP_REASON,
            node_id=failed_node,
            failure_kind="stale",
            event="run_failed_stale_no_provider_activity",
            reason=STALE_REAP_REASON,
            stop_kind="StaleReaped",
            metadata=metadata,
        )
        return
    w.pause(
        reason=STALE_REAP_REASON,
        event="run_paused_stale_no_provider_activity",
        stop_kind="StaleReaped",
        stop_reason=STALE_REAP_REASON,
        detail=f"paused: no executor activity for {threshold // 1000}s",
        metadata=metadata,
    )


def dispatch(w: Work) -> None:
    """B10/B11: start runnable nodes, open a gate, or finish the run."""
    flow = w.flow()
    if w.s.phase != "Running" or flow is None:
        return
    nodes = nodes_by_id(flow)
    completed = set(w.cp.completed_nodes)
    blocked = set(w.cp.blocked_nodes)
    in_flight = set(w.obs.in_flight) - w.cancel
    runnable: list[Node] = []
    for node_id in w.cp.pending_nodes:
        node = nodes.get(node_id)
        if node is None or node_id in blocked or node_id in in_flight:
            continue
        if not all(dep in completed for dep in node.depends_on):
            continue
        output = w.cp.node_outputs.get(node_id)
        if output is not None and str(output.get("status", "")).lower() != "needs_repair":
            continue
        runnable.append(node)
    tasks = [n for n in runnable if n.kind == "Task"]
    gates = [n for n in runnable if n.kind == "Approval"]
    backing_off = {
        n.id: at
        for n in tasks
        if (at := parse_ms(w.cp.node_retry_after.get(n.id))) is not None and at > w.obs.now_ms
    }
    tasks = [n for n in tasks if n.id not in backing_off]
    if backing_off and not tasks and not in_flight:
        retry_after = format_ms(min(backing_off.values()))
        w.phase_to("Queued")
        w.s.scheduler = Scheduler(
            queue_reason="retry_backoff", queued_at=w.now, retry_after=retry_after
        )
        w.record(
            "run_queued_retry_backoff",
            reason=w.s.detail,
            metadata={"retry_after": retry_after, "nodes": sorted(backing_off)},
        )
        return
    if tasks:
        if w.obs.shutting_down:
            # B15: no new attempt; the run waits Running for the next operator (B1/B1r).
            return
        spent = [n for n in tasks if w.cp.node_attempts.get(n.id, 0) >= n.max_attempts]
        if spent:
            # An attempt that ended without an outcome (lost between the status write and
            # the start, or interrupted by hand-edited status) used the node's last attempt:
            # never start one past maxAttempts.
            node = spent[0]
            previous = w.cp.node_outputs.get(node.id) or {}
            w.set_output(node.id, {**previous, "status": "failed", "exhausted": True})
            _node_failed(w, node.id, node, f"node `{node.id}` exhausted its attempts", "exhausted")
            return
        slots = flow.execution.max_parallel_nodes - len(in_flight)
        for node in tasks[: max(0, slots)]:
            attempt = w.cp.node_attempts.get(node.id, 0) + 1
            w.cp.node_attempts[node.id] = attempt
            w.cp.node_outputs.pop(node.id, None)
            w.cp.node_retry_after.pop(node.id, None)
            w.cp.last_activity_at = w.now
            w.s.detail = f"running node `{node.id}` attempt {attempt}"
            w.start.append(StartAttempt(node_id=node.id, attempt=attempt))
        return
    if in_flight or w.in_progress() or backing_off:
        return
    if gates:
        gate = gates[0]
        approval = gate.approval
        w.cp.awaiting_gate = AwaitingGate(
            node_id=gate.id,
            title=approval.title if approval else None,
            instructions=approval.instructions if approval else None,
            decisions=list(approval.decisions) if approval else ["approve", "rework", "cancel"],
            rework_targets=list(approval.rework_targets) if approval else [],
            requested_at=w.now,
            metadata={},
        )
        below = descendants(flow, {gate.id})
        held = set(w.cp.blocked_nodes)
        pending = set(w.cp.pending_nodes)
        w.cp.blocked_nodes = [
            # Nodes blocked by their own outcome are no longer pending; they stay blocked
            # (approving the gate must not turn the run Completed without them).
            *(n for n in w.cp.blocked_nodes if n not in pending),
            *(n for n in w.cp.pending_nodes if n in below or n in held),
        ]
        w.phase_to("AwaitingApproval")
        w.s.detail = f"awaiting approval at gate `{gate.id}`"
        w.record(
            "run_awaiting_approval",
            reason=approval.title if approval and approval.title else gate.id,
            metadata={"node_id": gate.id},
        )
        return
    remaining = [n for n in w.cp.pending_nodes if n not in blocked]
    if remaining:
        # Nodes whose dependencies can never complete (a blocked upstream).
        w.cp.blocked_nodes = [*w.cp.blocked_nodes, *remaining]
        blocked |= set(remaining)
    failed = [n for n, out in w.cp.node_outputs.items() if str(out.get("status", "")) == "failed"]
    if failed:
        _node_failed(w, failed[0], nodes.get(failed[0]), "node failed", "failed")
    elif blocked:
        w.phase_to("Blocked")
        w.s.detail = f"blocked nodes: {', '.join(sorted(blocked))}"
        w.record("run_blocked", reason=w.s.detail, warning=True)
    else:
        w.phase_to("Completed")
        w.s.detail = "completed"
        w.record("run_completed", reason="all nodes completed")
