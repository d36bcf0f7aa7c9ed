"""Recovery of orphaned runs, applied before any other rule (B1, B1r, B2).

A Running or Pausing run is orphaned when its execution claim is missing, expired, or held
by an operator instance that is no longer alive. What happens to it depends on
``TANDEM_RESTART_RECOVERY``: ``fail`` (B1) or ``requeue`` (B1r, B1 for nodes out of
attempts); a Pausing run settles to Paused (B2). The other rules see the result.

C5: attempts that outlive the operator (a container attempt whose Pod still exists,
``Observation.adopted``) are not interrupted. A Running run whose in-progress attempts are
all adopted is claimed by this operator and runs on; when some are adopted and others are
gone, the gone ones follow B1 (the run fails, and the adopted attempts are stopped with it)
or B1r for that node alone (it is retried, the run stays Running).
"""

from __future__ import annotations

from tandem_operator.api.vocabulary import holds_workspace
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.work import Work

RESTART_DETAIL = "automation run interrupted by server restart"


PAUSING_SETTLED_REASON = "automation run settled to paused after server restart"


def _orphaned(w: Work) -> bool:
    claim = w.s.execution_claim
    if claim is None:
        return True
    if claim.claimant == w.obs.instance:
        return False
    if claim.claimant not in w.obs.live_instances:
        return True
    expires = parse_ms(claim.lease_expires_at)
    return expires is not None and expires < w.obs.now_ms


def _fail_on_restart(w: Work) -> None:
    w.fail(
        detail=RESTART_DETAIL,
        stop_reason=RESTART_DETAIL,
        failure_kind="server_restart",
        event="run_failed_server_restart",
        stop_kind="ServerRestart",
        warning=False,
    )


def recover_orphan(w: Work) -> None:
    """B1, B1r, B2: settle a Running or Pausing run whose executor is gone."""
    if not holds_workspace(w.s.phase) or not _orphaned(w):
        return
    if w.s.phase == "Pausing":
        # As when a pause settles normally (_settle_pausing), the attempts the pause cut
        # short do not count against their nodes; otherwise a resume could go past
        # maxAttempts.
        w.release_in_flight_attempts()
        w.pause(
            reason=w.s.pause_reason or PAUSING_SETTLED_REASON,
            event="run_pausing_settled_on_restart",
        )
        return
    adopted = [n for n in w.in_progress() if n in w.obs.adopted]
    interrupted = [n for n in w.in_progress() if n not in w.obs.adopted]
    if adopted:
        _adopt(w, interrupted)
        return
    if w.obs.settings.restart_recovery == "fail":
        _fail_on_restart(w)
        return
    for node_id in interrupted:
        node = w.node(node_id)
        if node is not None and w.cp.node_attempts.get(node_id, 0) >= node.max_attempts:
            _fail_on_restart(w)
            return
    for node_id in interrupted:
        w.set_output(
            node_id, {"status": "needs_repair", "blocker_category": "server_restart_interrupted"}
        )
    w.queue()
    w.record(
        "run_queued_for_resume_after_restart",
        reason="requeued after server restart",
        metadata={"interrupted_nodes": interrupted},
    )


def _adopt(w: Work, interrupted: list[str]) -> None:
    """C5: some attempts live on; the others follow B1, or B1r node by node."""
    if interrupted and w.obs.settings.restart_recovery == "fail":
        w.stop_in_flight()
        _fail_on_restart(w)
        return
    for node_id in interrupted:
        node = w.node(node_id)
        if node is not None and w.cp.node_attempts.get(node_id, 0) >= node.max_attempts:
            w.stop_in_flight()
            _fail_on_restart(w)
            return
    for node_id in interrupted:
        w.set_output(
            node_id, {"status": "needs_repair", "blocker_category": "server_restart_interrupted"}
        )
    w.claim()
