"""A run's attempts in the reconciler: the ones a decision starts, the ones a new claimant
adopts (C5) and follows again or stops, and the outcomes it counts.

Functions of the reconciler (:class:`AttemptHost`: what they read of it), called where
``runtime.reconciler`` says: :func:`adoptable` while it builds the Observation, the others
only after the status write succeeded, so an attempt never starts without its attempt
count recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from tandem_operator.api.models import AutomationRunSpec, AutomationRunStatus, AutomationSpec
from tandem_operator.api.vocabulary import holds_workspace
from tandem_operator.execution.container import LABEL_ATTEMPT, LABEL_NODE, pod_name, run_selector
from tandem_operator.execution.registry import ExecutorContext, ExecutorRegistry, Target
from tandem_operator.execution.runner import AttemptRunner
from tandem_operator.execution.types import AttemptRequest
from tandem_operator.lifecycle.contract import Decision, StartAttempt
from tandem_operator.runtime.metrics import OperatorMetrics
from tandem_operator.runtime.ports import PodReader
from tandem_operator.runtime.store import RunKey

# These lines are part of a reconcile: they keep the reconciler's logger name.
log = logging.getLogger("tandem_operator.runtime.reconciler")


class AttemptHost(ExecutorContext, Protocol):
    """What the functions here read of ``runtime.reconciler.Reconciler``; it also builds
    executors (:class:`ExecutorContext`)."""

    identity: str
    shutting_down: bool
    pods: PodReader | None
    runner: AttemptRunner
    executors: ExecutorRegistry
    metrics: OperatorMetrics

    def kick(self, key: RunKey) -> None: ...


async def adoptable(
    host: AttemptHost,
    key: RunKey,
    meta: Mapping[str, Any],
    status: AutomationRunStatus | None,
    definition: AutomationSpec | None,
) -> frozenset[str]:
    """C5: in-progress container attempts not followed here whose Pod still exists.

    Asked only of a Running or Pausing run claimed by another operator instance (after
    a restart or a failover) with an in-progress container node that no attempt of this
    process follows or reported: one list of the run's Pods by label. A run this
    instance claims never looks: its attempts are all followed here, and the Pod of an
    ended attempt kept for its logs must not be read twice.
    """
    if (
        host.pods is None
        or host.shutting_down
        or status is None
        or not holds_workspace(status.phase)
        or (status.execution_claim is not None and status.execution_claim.claimant == host.identity)
    ):
        return frozenset()
    cp = status.checkpoint
    followed = host.runner.in_flight(key) | {o.node_id for o in host.runner.outcomes(key)}
    blocked = set(cp.blocked_nodes)
    candidates = {
        n: cp.node_attempts[n]
        for n in cp.pending_nodes
        if n not in blocked
        and cp.node_attempts.get(n, 0) > 0
        and n not in cp.node_outputs
        and n not in followed
        and kind_name(host.executors, key, definition, n) == "container"
    }
    if not candidates:
        return frozenset()
    try:
        pods = await host.pods.list_pods(namespace=key[0], label_selector=run_selector(key[1]))
    except Exception as exc:
        log.warning("Listing Pods failed run=%s/%s error=%s", *key, exc)
        return frozenset()
    uid = str(meta.get("uid") or "")
    found = set()
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        labels = pod_meta.get("labels") or {}
        node = labels.get(LABEL_NODE)
        owners = {o.get("uid") for o in pod_meta.get("ownerReferences") or []}
        if (
            node in candidates
            and labels.get(LABEL_ATTEMPT) == str(candidates[node])
            and uid in owners
            and not pod_meta.get("deletionTimestamp")
        ):
            found.add(node)
    return frozenset(found)


def count_outcomes(
    host: AttemptHost, key: RunKey, consumed: int, definition: AutomationSpec | None
) -> None:
    outcomes = host.runner.outcomes(key)[:consumed]
    if not outcomes:
        return
    host.metrics.outcomes_applied(
        (kind_name(host.executors, key, definition, o.node_id), o) for o in outcomes
    )


def kind_name(
    executors: ExecutorRegistry, key: RunKey, definition: AutomationSpec | None, node_id: str
) -> str:
    target = _target(key, definition, node_id)
    return executors.kind_name(target) if target is not None else "none"


async def start_attempt(
    host: AttemptHost,
    key: RunKey,
    body: Mapping[str, Any],
    decision: Decision,
    spec: AutomationRunSpec,
    definition: AutomationSpec,
    start: StartAttempt,
) -> None:
    target = _target(key, definition, start.node_id)
    if target is None:
        return  # decide starts only nodes of the flow
    node, agent = target.node, target.agent
    cp = decision.status.checkpoint
    request = AttemptRequest(
        run_namespace=key[0],
        run_name=key[1],
        run_uid=str(body.get("metadata", {}).get("uid", "")),
        node_id=node.id,
        attempt=start.attempt,
        objective=node.objective or "",
        inputs={dep: cp.node_outputs.get(dep, {}) for dep in node.depends_on},
        runtime_context=spec.runtime_context or {},
        agent=agent.to_api() if agent else {},
    )
    try:
        executor = await host.executors.build(target, host)
    except Exception as exc:
        host.runner.fail_to_start(key, request, str(exc))
        host.kick(key)
        return
    host.runner.start(key, request, executor)


async def follow_adopted(
    host: AttemptHost,
    key: RunKey,
    body: Mapping[str, Any],
    decision: Decision,
    spec: AutomationRunSpec,
    definition: AutomationSpec,
    adopted: frozenset[str],
    observed: AutomationRunStatus,
) -> None:
    """C5: follow the adopted attempts again (their executor finds the Pod and reads
    its result), or stop them when the decision ended them (their Pod goes)."""
    cp = decision.status.checkpoint
    for node_id in sorted(adopted):
        attempt = observed.checkpoint.node_attempts.get(node_id, 0)
        keep = (
            holds_workspace(decision.status.phase)
            and node_id not in decision.cancel
            and cp.node_attempts.get(node_id) == attempt
            and node_id not in cp.node_outputs
        )
        if keep:
            start = StartAttempt(node_id=node_id, attempt=attempt)
            await start_attempt(host, key, body, decision, spec, definition, start)
            continue
        target = _target(key, definition, node_id)
        if target is None or host.pods is None:
            continue
        name = pod_name(key[1], node_id, attempt)
        try:
            await host.pods.delete_pod(namespace=key[0], name=name)
        except Exception as exc:
            log.warning("Could not delete Pod pod=%s/%s error=%s", key[0], name, exc)
        else:
            host.metrics.pod_event("deleted")


def _target(key: RunKey, definition: AutomationSpec | None, node_id: str) -> Target | None:
    if definition is None:
        return None
    node = next((n for n in definition.nodes if n.id == node_id), None)
    if node is None:
        return None
    agent = next((a for a in definition.agents if a.agent_id == node.agent_id), None)
    return Target(namespace=key[0], node=node, agent=agent)
