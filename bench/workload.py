"""The runs the benchmark creates, and the statuses it writes by hand: pure builders.

Three flows, all with simulated executors so that no agent is involved:

* ``chain``: three Task nodes ``a → b → c`` that complete at once (``afterSeconds: 0``),
  the throughput workload; ``container_chain`` is the same flow with every node run by the
  container executor, one Pod per attempt on the control plane's fake Nodes (kwok ends
  each Pod with a valid result, scripted by the ``tandem.test/*`` Pod annotations that the
  executor copies from ``podAnnotations``);
* ``gated``: Approval node ``review`` then Task ``ship``, the reaction-latency workload
  (the operator admits the run and opens the gate in its first write, a decision sends it
  back to Running);
* the same two flows, with hand-written statuses, for the restart-recovery and at-rest
  workloads (contract: status written while the operator is down must be honoured).

The hand-written statuses are what an operator that died would have left: a Running run
without an execution claim (B1 fails it), a Pausing run (B2 settles it to Paused), and a
Paused or AwaitingApproval run, which B3 must leave alone without a write. Paused and
Pausing runs have ``spec.desiredState: Paused``: a user paused them, which is the only way
a run is Paused without a stopKind, and with ``Running`` B12 would rightly resume them.

``raw_templates`` asks the operator's own pure engine (``decide``) what it would write for
the gated flow, so the raw client's round trips carry the same bytes as the operator's.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from tandem_operator.api.models import AutomationRunSpec, AutomationRunStatus
from tandem_operator.api.settings import Settings
from tandem_operator.devcluster.nodes import POD_DELAY, POD_TERMINATION_MESSAGE
from tandem_operator.lifecycle.contract import Observation
from tandem_operator.lifecycle.engine import decide
from tandem_operator.runtime.mergepatch import merge_patch

API_VERSION = "automation.tandem.dev/v1alpha1"
GATE = "review"


def ts(epoch_s: float) -> str:
    """RFC 3339 UTC with milliseconds, the API's timestamp format."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _sim(node_id: str, *, after: float = 0, **extra: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": node_id,
        "agentId": "agent",
        "executor": {"simulate": {"outcome": "completed", "afterSeconds": after}},
    }
    node.update(extra)
    return node


def chain_flow() -> dict[str, Any]:
    return {
        "creatorId": "bench",
        "agents": [{"agentId": "agent"}],
        "nodes": [_sim("a"), _sim("b", dependsOn=["a"]), _sim("c", dependsOn=["b"])],
    }


CONTAINER_IMAGE = "registry.example.com/tandem-bench/agent:1"
"""Never pulled: kwok plays the kubelet and only reads the Pod's annotations."""
CONTAINER_RESULT = {"status": "completed", "output": {}}
"""The termination message of every container node's Pod: the result a simulated node with
``outcome: completed`` returns, so both flows record the same outputs."""


def _box(node_id: str, *, delay: str, **extra: Any) -> dict[str, Any]:
    annotations = {
        POD_DELAY: delay,
        POD_TERMINATION_MESSAGE: json.dumps(CONTAINER_RESULT, separators=(",", ":")),
    }
    node: dict[str, Any] = {
        "id": node_id,
        "agentId": "agent",
        "executor": {"container": {"image": CONTAINER_IMAGE, "podAnnotations": annotations}},
    }
    node.update(extra)
    return node


def container_chain_flow(*, delay: str = "0s") -> dict[str, Any]:
    """``chain_flow`` with container nodes whose Pods end ``delay`` after they start (a Go
    duration kwok reads)."""
    return {
        "creatorId": "bench",
        "agents": [{"agentId": "agent"}],
        "nodes": [
            _box("a", delay=delay),
            _box("b", delay=delay, dependsOn=["a"]),
            _box("c", delay=delay, dependsOn=["b"]),
        ],
    }


def gated_flow() -> dict[str, Any]:
    return {
        "creatorId": "bench",
        "agents": [{"agentId": "agent"}],
        "nodes": [
            {
                "id": GATE,
                "kind": "Approval",
                "approval": {"title": "Ship it?", "decisions": ["approve", "rework", "cancel"]},
            },
            _sim("ship", dependsOn=[GATE]),
        ],
    }


def run_manifest(
    name: str, flow: dict[str, Any], *, desired_state: str = "Running"
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AutomationRun",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tandem-bench"}},
        "spec": {"automation": copy.deepcopy(flow), "desiredState": desired_state},
    }


def approve_patch(request_id: str) -> dict[str, Any]:
    """The spec merge patch a user (or kubectl) sends to approve the gate."""
    return {
        "gateDecisions": [
            {"gate": GATE, "decision": "approve", "reason": "bench", "requestId": request_id}
        ]
    }


# --------------------------------------------------------------------------- orphans

ORPHAN_KINDS = ("Running", "Pausing", "Paused", "AwaitingApproval")
"""Hand-written phases of the restart-recovery workload, created in equal shares."""
SETTLED = {"Running": "Failed", "Pausing": "Paused", "Paused": "Paused"}
"""Phase each orphan kind must reach; AwaitingApproval stays as it is."""


def orphan(kind: str, name: str, *, now_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, status) of a run left behind in phase ``kind`` by a dead operator."""
    history = [
        {"event": "run_queued", "recordedAt": ts(now_s - 60), "reason": "created"},
        {"event": "run_started", "recordedAt": ts(now_s - 50), "reason": "admitted"},
    ]
    if kind == "AwaitingApproval":
        flow = gated_flow()
        manifest = run_manifest(name, flow)
        status: dict[str, Any] = {
            "phase": "AwaitingApproval",
            "detail": f"awaiting approval at gate `{GATE}`",
            "createdAt": ts(now_s - 60),
            "startedAt": ts(now_s - 50),
            "updatedAt": ts(now_s - 40),
            "checkpoint": {
                "pendingNodes": [GATE, "ship"],
                "blockedNodes": ["ship"],
                "awaitingGate": {
                    "nodeId": GATE,
                    "title": "Ship it?",
                    "decisions": ["approve", "rework", "cancel"],
                    "requestedAt": ts(now_s - 40),
                    "metadata": {},
                },
                "lifecycleHistory": [
                    *history,
                    {
                        "event": "run_awaiting_approval",
                        "recordedAt": ts(now_s - 40),
                        "reason": "Ship it?",
                    },
                ],
            },
            "automationSnapshot": flow,
        }
        return manifest, status
    flow = chain_flow()
    desired = "Running" if kind == "Running" else "Paused"
    manifest = run_manifest(name, flow, desired_state=desired)
    status = {
        "phase": kind,
        "createdAt": ts(now_s - 60),
        "startedAt": ts(now_s - 50),
        "updatedAt": ts(now_s - 40),
        "detail": "running node `b` attempt 1",
        "checkpoint": {
            "completedNodes": ["a"],
            "pendingNodes": ["b", "c"],
            "nodeAttempts": {"a": 1, "b": 1},
            "nodeOutputs": {"a": {"status": "completed"}},
            "lifecycleHistory": history,
        },
        "automationSnapshot": flow,
    }
    if kind == "Paused":
        status["pauseReason"] = "paused by user"
        status["detail"] = "paused by user"
        status["checkpoint"]["nodeAttempts"] = {"a": 1}
        status["checkpoint"]["lifecycleHistory"] = [
            *history,
            {"event": "run_paused", "recordedAt": ts(now_s - 40), "reason": "paused by user"},
        ]
    return manifest, status


def parked_statuses(*, now_s: float) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """kind → (flow manifest template, status) of a run the operator has parked.

    The status is what the operator's engine writes for a new run of that flow: waiting at
    its gate (AwaitingApproval), or created with ``desiredState: Paused`` (Paused). Writing
    it by hand gives the at-rest workload production-sized statuses (conditions, snapshot,
    history) without making the operator park thousands of runs first.
    """
    out: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for kind, manifest in (
        ("AwaitingApproval", run_manifest("template", gated_flow())),
        ("Paused", run_manifest("template", chain_flow(), desired_state="Paused")),
    ):
        status = decide(_observe(manifest, None, now_ms=int(now_s * 1000))).status.to_api()
        out[kind] = (manifest, status)
    return out


def parked(
    templates: dict[str, tuple[dict[str, Any], dict[str, Any]]], kind: str, name: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    manifest, status = templates[kind]
    named = copy.deepcopy(manifest)
    named["metadata"]["name"] = name
    return named, status


def orphan_kind(index: int) -> str:
    return ORPHAN_KINDS[index % len(ORPHAN_KINDS)]


# --------------------------------------------------------------------------- raw templates


def _observe(
    manifest: dict[str, Any], status: dict[str, Any] | None, *, now_ms: int
) -> Observation:
    spec = AutomationRunSpec.model_validate(manifest["spec"])
    parsed = AutomationRunStatus.model_validate(status) if status else None
    flow = spec.automation
    return Observation(
        now_ms=now_ms,
        settings=Settings(),
        instance="bench-raw-client",
        live_instances=frozenset({"bench-raw-client"}),
        generation=int(manifest.get("metadata", {}).get("generation", 1)),
        spec=spec,
        status=parsed,
        definition=flow,
        admission="admit",
    )


def raw_templates(*, now_s: float) -> dict[str, dict[str, Any]]:
    """Status patches the operator's engine produces for the gated flow.

    ``first``: a new run → admitted and waiting at the gate (the whole status); ``approve``:
    the merge patch from that status to Running after an approval, in one step (the best
    the operator could do). ``recover``: the B1 patch of a Running orphan, used as the body
    of the raw PATCH-throughput baseline.
    """
    now_ms = int(now_s * 1000)
    manifest = run_manifest("template", gated_flow())
    first = decide(_observe(manifest, None, now_ms=now_ms)).status.to_api()
    approved = copy.deepcopy(manifest)
    approved["spec"].update(approve_patch("template"))
    approved["metadata"]["generation"] = 2
    second = decide(_observe(approved, first, now_ms=now_ms + 1)).status.to_api()
    orphan_manifest, orphan_status = orphan("Running", "template", now_s=now_s)
    recovered = decide(_observe(orphan_manifest, orphan_status, now_ms=now_ms)).status.to_api()
    return {
        "first": first,
        "approve": merge_patch(first, second) or {},
        "recover": merge_patch(orphan_status, recovered) or {},
        "first_phase": {"phase": first.get("phase")},
        "approve_phase": {"phase": second.get("phase")},
    }
