"""``kubectl automationrun``: read and steer AutomationRuns from the command line.

Installed as the console script ``kubectl-automationrun``; kubectl finds any executable
named ``kubectl-<name>`` on ``PATH`` and runs it for ``kubectl <name>``. Commands:

- ``list [-A] [-o json]``: name, phase, nodes done, detail, age.
- ``describe NAME``: phase and detail, stop kind and reason, the node tree (following
  ``dependsOn``) with each node's state and attempts, the gate that waits with its title,
  instructions and decisions, who may decide it (``approvers``), how many approvals it
  needs and who approved so far (B18), who decided earlier gates, usage and the latest
  lifecycle records.
- ``approve|rework|cancel-gate NAME [--gate G] [--reason R]``: append a decision to
  ``spec.gateDecisions`` (B11) with a fresh ``requestId``. The admission webhook records
  who wrote it (``decidedBy``) and refuses users the gate's ``approvers`` do not list; the
  plugin prints the name recorded, or the webhook's refusal.
- ``pause NAME [--reason R]``, ``resume NAME``, ``cancel NAME``: ``spec.desiredState``
  (B12, B13).
- ``recover NAME``: a new ``spec.recover.requestId`` (B14).
- ``history NAME [-o json]``: the lifecycle records of the run.
- ``start AUTOMATION [--name N]``: a run of the Automation now, as ``kubectl create job
  --from=cronjob/...`` does for a CronJob: ``automationRef``, ``triggerType: manual``, the
  schedule's runTemplate labels, annotations and runtimeContext, the label
  ``automation.tandem.dev/automation`` and an ownerReference to the Automation (so it counts
  for the schedule's concurrency policy and history limits like the runs it starts).
- ``logs NAME NODE [--attempt N] [-f]``: the log of a container attempt's Pod
  (``cli.logs``, which also adds the Pods section of ``describe``).

Everything the plugin writes is user intent in ``spec``; the operator turns it into
status. Each write is checked against what the user saw: gate decisions go as a JSON patch
whose ``test`` op pins ``metadata.resourceVersion`` and whose ``add`` op appends to the
list, spec changes as a merge patch carrying ``metadata.resourceVersion``. When the run
changed in between, the plugin reads it again, checks again (is the gate still awaiting?)
and retries a few times, so a decision is never recorded for a gate that has moved on.

Rendering is pure: functions from raw run objects (and the time) to text, unit-tested
with hand-built objects; only :class:`RunClient` and :func:`main` do I/O. Errors are
:class:`PluginError`: message on stderr, exit code 1. The client is pykube-ng, like the
rest of the command line; the kubeconfig is ``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config`` (or the pod's service account), and the namespace is ``-n``, else the
current context's.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pydantic
import pykube
import requests

from tandem_operator.api.models import ALL_DECISIONS, API_VERSION, Checkpoint, GateDecision
from tandem_operator.api.vocabulary import OPERATOR_PAUSES, RECOVERABLE_PHASES, TERMINAL_PHASES
from tandem_operator.cli import logs
from tandem_operator.lifecycle.approvals import approvals_so_far
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.gates import undecided
from tandem_operator.runtime.ports import wall_ms
from tandem_operator.scheduling.runs import AUTOMATION_LABEL, automation_label_value

KIND = "automationrun"
PLURAL = "automationruns"
DEFAULT_MAX_ATTEMPTS = 3
DESCRIBE_RECORDS = 10
DETAIL_WIDTH = 60
WRITE_RETRIES = 3
GATE_COMMANDS = {"approve": "approve", "rework": "rework", "cancel-gate": "cancel"}

Run = Mapping[str, Any]


class PluginError(Exception):
    """A problem the user can act on; printed as ``error: <message>``, exit code 1."""


class Conflict(Exception):
    """The run changed between read and write: read again and retry."""


class ApiError(PluginError):
    """The API server refused a request; ``code`` is its HTTP status."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(f"{message} (HTTP {code})")
        self.code = code


# --------------------------------------------------------------------------- pure helpers


def human_duration(ms: int) -> str:
    """A duration the way kubectl prints ages: ``45s``, ``3m20s``, ``5h``, ``2d4h``."""
    seconds = ms // 1000
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest = days % 365
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{years}y"


def age(timestamp: str | None, *, now_ms: int) -> str:
    """``now - timestamp`` as :func:`human_duration`; ``<unknown>`` without a timestamp."""
    at = parse_ms(timestamp)
    return "<unknown>" if at is None else human_duration(now_ms - at)


def _name(run: Run) -> str:
    return str((run.get("metadata") or {}).get("name", ""))


def _status(run: Run) -> Mapping[str, Any]:
    return run.get("status") or {}


def _checkpoint(run: Run) -> Mapping[str, Any]:
    return _status(run).get("checkpoint") or {}


def flow_nodes(run: Run, automation: Mapping[str, Any] | None = None) -> list[Mapping[str, Any]]:
    """The run's nodes: its snapshot once admitted, else the inline or referenced flow."""
    flow = (
        _status(run).get("automationSnapshot")
        or (run.get("spec") or {}).get("automation")
        or automation
        or {}
    )
    return [n for n in flow.get("nodes") or [] if isinstance(n, Mapping) and n.get("id")]


def progress(run: Run) -> str:
    """``completed/total`` nodes; ``-`` before the operator has written a checkpoint."""
    status = _status(run)
    if status.get("progress"):
        return str(status["progress"])
    cp = _checkpoint(run)
    if not cp:
        return "-"
    done = len(cp.get("completedNodes") or [])
    total = len(flow_nodes(run)) or (
        done + len(cp.get("pendingNodes") or []) + len(cp.get("blockedNodes") or [])
    )
    return f"{done}/{total}"


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, as ``kubectl get`` prints them."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    )


def render_list(runs: Iterable[Run], *, now_ms: int, with_namespace: bool = False) -> str:
    header = ["NAME", "PHASE", "NODES", "DETAIL", "AGE"]
    rows = [["NAMESPACE", *header] if with_namespace else header]
    ordered = sorted(runs, key=lambda r: ((r.get("metadata") or {}).get("namespace", ""), _name(r)))
    for run in ordered:
        status = _status(run)
        row = [
            _name(run),
            str(status.get("phase") or "-"),
            progress(run),
            _truncate(str(status.get("detail") or ""), DETAIL_WIDTH),
            age((run.get("metadata") or {}).get("creationTimestamp"), now_ms=now_ms),
        ]
        if with_namespace:
            row.insert(0, str((run.get("metadata") or {}).get("namespace", "")))
        rows.append(row)
    return table(rows)


@dataclass(frozen=True, kw_only=True)
class NodeLine:
    """One line of the node tree."""

    prefix: str
    """Tree drawing before the id (``"└─ "``, ``"│  ├─ "``, ...)."""
    node_id: str
    state: str
    attempts: str
    note: str = ""


def node_state(node_id: str, checkpoint: Mapping[str, Any]) -> str:
    """completed, awaiting-approval, blocked, failed, in-progress, needs-repair or pending."""
    if node_id in (checkpoint.get("completedNodes") or []):
        return "completed"
    gate = checkpoint.get("awaitingGate") or {}
    if gate.get("nodeId") == node_id:
        return "awaiting-approval"
    if node_id in (checkpoint.get("blockedNodes") or []):
        return "blocked"
    output = (checkpoint.get("nodeOutputs") or {}).get(node_id)
    status = str((output or {}).get("status", "")).lower()
    if status == "failed":
        return "failed"
    if output is None and (checkpoint.get("nodeAttempts") or {}).get(node_id, 0) > 0:
        return "in-progress"
    if status == "needs_repair":
        return "needs-repair"
    return "pending"


def node_tree(nodes: Sequence[Mapping[str, Any]], checkpoint: Mapping[str, Any]) -> list[NodeLine]:
    """The flow as a tree: each node under its first dependency, in flow order.

    A node with more dependencies names the others in its note (``after: b, c``), so the
    tree shows every edge once without repeating subtrees. Nodes that cannot be reached
    from a root (a cycle, which the admission webhook refuses) are listed at the top level.
    """
    ids = [str(n["id"]) for n in nodes]
    known = set(ids)
    by_id = {str(n["id"]): n for n in nodes}
    children: dict[str, list[str]] = {i: [] for i in ids}
    roots: list[str] = []
    for node_id in ids:
        deps = [d for d in by_id[node_id].get("dependsOn") or [] if d in known]
        if deps:
            children[deps[0]].append(node_id)
        else:
            roots.append(node_id)
    attempts = checkpoint.get("nodeAttempts") or {}
    lines: list[NodeLine] = []
    seen: set[str] = set()

    def visit(node_id: str, lead: str, branch: str) -> None:
        seen.add(node_id)
        node = by_id[node_id]
        deps = [d for d in node.get("dependsOn") or [] if d in known]
        gate = node.get("kind") == "Approval"
        notes = ["gate"] if gate else []
        if len(deps) > 1:
            notes.append("after: " + ", ".join(deps[1:]))
        limit = node.get("maxAttempts", DEFAULT_MAX_ATTEMPTS)
        lines.append(
            NodeLine(
                prefix=lead + branch,
                node_id=node_id,
                state=node_state(node_id, checkpoint),
                attempts="-" if gate else f"{attempts.get(node_id, 0)}/{limit}",
                note="; ".join(notes),
            )
        )
        kids = [c for c in children[node_id] if c not in seen]
        below = lead + {"": "", "└─ ": "   "}.get(branch, "│  ")
        for index, child in enumerate(kids):
            visit(child, below, "└─ " if index == len(kids) - 1 else "├─ ")

    for root in roots:
        visit(root, "", "")
    for node_id in ids:
        if node_id not in seen:
            visit(node_id, "", "")
    return lines


def render_node_tree(lines: Sequence[NodeLine]) -> list[str]:
    rows = [
        [f"{line.prefix}{line.node_id}", line.state, line.attempts, line.note] for line in lines
    ]
    return table(rows).splitlines() if rows else []


def _field(label: str, value: Any) -> str:
    return f"{label + ':':<16}{value}"


def pending_gate_decisions(run: Run) -> list[Mapping[str, Any]]:
    """Entries of spec.gateDecisions the operator has not applied or rejected yet."""
    decisions = [d for d in (run.get("spec") or {}).get("gateDecisions") or [] if d]
    seen = int((_status(run).get("counters") or {}).get("gateDecisionsSeen") or 0)
    keys = _checkpoint(run).get("gateDecisionKeys")
    try:
        parsed = [GateDecision.model_validate(d) for d in decisions]
    except pydantic.ValidationError:
        return []
    applied = {h.get("requestId") for h in _checkpoint(run).get("gateHistory") or []}
    return [
        decisions[i]
        for i in undecided(parsed, keys, seen=seen)
        if not (parsed[i].request_id and parsed[i].request_id in applied)
    ]


def render_records(records: Sequence[Mapping[str, Any]], *, now_ms: int) -> list[str]:
    rows = [["AGE", "EVENT", "STOP KIND", "REASON"]]
    for record in records:
        rows.append(
            [
                age(record.get("recordedAt"), now_ms=now_ms),
                str(record.get("event", "")),
                str(record.get("stopKind") or "-"),
                _truncate(str(record.get("reason") or ""), 80),
            ]
        )
    return table(rows).splitlines()


def render_describe(run: Run, *, now_ms: int, automation: Mapping[str, Any] | None = None) -> str:
    """``kubectl automationrun describe``: everything a person needs to act on a run."""
    meta = run.get("metadata") or {}
    spec = run.get("spec") or {}
    status = _status(run)
    cp = _checkpoint(run)
    out = [
        _field("Name", meta.get("name", "")),
        _field("Namespace", meta.get("namespace", "")),
        _field("Phase", status.get("phase") or "- (not yet seen by the operator)"),
        _field("Detail", status.get("detail") or "-"),
        _field("Desired state", spec.get("desiredState", "Running")),
    ]
    if status.get("stopKind") or status.get("stopReason"):
        out.append(
            _field("Stop", f"{status.get('stopKind') or '-'}: {status.get('stopReason') or '-'}")
        )
    if status.get("pauseReason"):
        out.append(_field("Pause reason", status["pauseReason"]))
    if status.get("resumeReason"):
        out.append(_field("Resume reason", status["resumeReason"]))
    for label, key in (
        ("Created", "createdAt"),
        ("Started", "startedAt"),
        ("Finished", "finishedAt"),
    ):
        if status.get(key):
            out.append(_field(label, f"{status[key]} ({age(status[key], now_ms=now_ms)} ago)"))
    scheduler = status.get("scheduler") or {}
    if status.get("phase") == "Queued" and scheduler:
        queue = str(scheduler.get("queueReason") or "awaiting admission")
        if scheduler.get("retryAfter"):
            queue += f", retry after {scheduler['retryAfter']}"
        out.append(_field("Queue", queue))
    usage = status.get("usage") or {}
    if usage:
        out.append(
            _field(
                "Usage",
                f"{usage.get('totalTokens', 0)} tokens (prompt {usage.get('promptTokens', 0)}, "
                f"completion {usage.get('completionTokens', 0)}), "
                f"estimated cost ${usage.get('estimatedCostUsd', '0')}",
            )
        )
    failure = cp.get("lastFailure") or {}
    if failure:
        out.append(
            _field(
                "Last failure",
                f"node {failure.get('nodeId', '-')}: {failure.get('reason', '-')} "
                f"({failure.get('failureKind', '-')})",
            )
        )
    out.append("Nodes:")
    lines = node_tree(flow_nodes(run, automation), cp)
    if lines:
        out.extend(f"  {line}" for line in render_node_tree(lines))
    else:
        out.append("  (flow not available)")
    out.extend(logs.render_pods(run, automation))
    out.extend(_render_gate(run, now_ms=now_ms, automation=automation))
    history = cp.get("gateHistory") or []
    if history:
        out.append("Gate decisions:")
        for entry in history[-5:]:
            who = f" by {entry['decidedBy']}" if entry.get("decidedBy") else ""
            when = f" at {entry['decidedAt']}" if entry.get("decidedAt") else ""
            why = f": {entry['reason']}" if entry.get("reason") else ""
            out.append(f"  {entry.get('nodeId')} {entry.get('decision')}{who}{when}{why}")
    records = cp.get("lifecycleHistory") or []
    total = int((status.get("counters") or {}).get("lifecycleRecords") or len(records))
    shown = records[-DESCRIBE_RECORDS:]
    out.append(f"Lifecycle (last {len(shown)} of {max(total, len(records))}):")
    if shown:
        out.extend(f"  {line}" for line in render_records(shown, now_ms=now_ms))
    else:
        out.append("  (none)")
    return "\n".join(out)


def gate_approvers(
    run: Run, gate_id: str, automation: Mapping[str, Any] | None = None
) -> tuple[str, int]:
    """Who may decide ``gate_id`` (text) and how many approvals it needs, from the flow."""
    node = next((n for n in flow_nodes(run, automation) if n.get("id") == gate_id), {})
    approval = node.get("approval") or {}
    required = int(approval.get("requiredApprovals") or 1)
    approvers = approval.get("approvers")
    if approvers is None:
        return "anyone who may patch the run", required
    users = ", ".join(approvers.get("users") or []) or "none"
    groups = ", ".join(approvers.get("groups") or []) or "none"
    return f"users {users}; groups {groups}", required


def approved_so_far(run: Run) -> list[str]:
    """Users who approved the awaiting gate's current request (``awaitingGate.approvals``)."""
    gate = _checkpoint(run).get("awaitingGate") or {}
    listed = [str(a.get("user")) for a in gate.get("approvals") or [] if a.get("user")]
    if listed:
        return listed
    try:
        checkpoint = Checkpoint.model_validate(_checkpoint(run))
    except pydantic.ValidationError:
        return []
    if checkpoint.awaiting_gate is None:
        return []
    return [a.user for a in approvals_so_far(checkpoint.gate_history, checkpoint.awaiting_gate)]


def _render_gate(
    run: Run, *, now_ms: int, automation: Mapping[str, Any] | None = None
) -> list[str]:
    gate = _checkpoint(run).get("awaitingGate")
    if not gate or _status(run).get("phase") != "AwaitingApproval":
        return [_field("Gate", "none awaiting")]
    out = ["Gate:"]
    out.append(_field("  Node", gate.get("nodeId", "")))
    if gate.get("title"):
        out.append(_field("  Title", gate["title"]))
    if gate.get("instructions"):
        text = str(gate["instructions"]).splitlines() or [""]
        out.append(_field("  Instructions", text[0]))
        out.extend(" " * 16 + line for line in text[1:])
    out.append(_field("  Decisions", ", ".join(gate.get("decisions") or ALL_DECISIONS)))
    if gate.get("reworkTargets"):
        out.append(_field("  Rework to", ", ".join(gate["reworkTargets"])))
    if gate.get("requestedAt"):
        requested = gate["requestedAt"]
        out.append(_field("  Requested", f"{requested} ({age(requested, now_ms=now_ms)} ago)"))
    who, required = gate_approvers(run, str(gate.get("nodeId", "")), automation)
    out.append(_field("  Approvers", who))
    approved = approved_so_far(run)
    out.append(
        _field(
            "  Approvals",
            f"{len(approved)}/{required}" + (f" ({', '.join(approved)})" if approved else ""),
        )
    )
    metadata = gate.get("metadata") or {}
    if metadata.get("stale"):
        out.append(
            _field("  Stale", f"yes (after {int(metadata.get('stale_after_ms', 0)) // 1000}s)")
        )
    for pending in pending_gate_decisions(run):
        out.append(
            _field(
                "  Pending",
                f"{pending.get('decision')} for gate {pending.get('gate')} "
                f"(requestId {pending.get('requestId') or '-'})",
            )
        )
    return out


def render_history(run: Run, *, now_ms: int) -> str:
    records = _checkpoint(run).get("lifecycleHistory") or []
    if not records:
        return "No lifecycle records."
    lines = render_records(records, now_ms=now_ms)
    total = int((_status(run).get("counters") or {}).get("lifecycleRecords") or 0)
    if total > len(records):
        lines.append(f"({total - len(records)} older records were trimmed from status)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pure intent


def gate_decision_patch(
    run: Run, *, decision: str, gate: str | None, reason: str | None, request_id: str
) -> list[dict[str, Any]]:
    """The JSON patch that appends ``decision`` for the awaiting gate, or a PluginError.

    The ``test`` op pins the resourceVersion read, so the append is refused (and the caller
    re-checks) when the run changed since: the gate may no longer be awaiting.
    """
    name = _name(run)
    status = _status(run)
    awaiting = _checkpoint(run).get("awaitingGate") or {}
    waiting_at = awaiting.get("nodeId")
    if status.get("phase") != "AwaitingApproval" or not waiting_at:
        raise PluginError(
            f'{KIND} "{name}" has no gate awaiting a decision '
            f"(phase {status.get('phase') or 'not set yet'})"
        )
    if gate is not None and gate != waiting_at:
        raise PluginError(
            f'gate "{gate}" is not awaiting a decision: {KIND} "{name}" waits at gate '
            f'"{waiting_at}"'
        )
    allowed = list(awaiting.get("decisions") or ALL_DECISIONS)
    if decision not in allowed:
        raise PluginError(
            f'gate "{waiting_at}" does not allow "{decision}" (allowed: {", ".join(allowed)})'
        )
    for pending in pending_gate_decisions(run):
        if pending.get("gate") == waiting_at:
            raise PluginError(
                f'gate "{waiting_at}" already has a decision waiting for the operator: '
                f"{pending.get('decision')} (requestId {pending.get('requestId') or '-'})"
            )
    entry: dict[str, Any] = {"gate": waiting_at, "decision": decision, "requestId": request_id}
    if reason:
        entry["reason"] = reason
    version = str((run.get("metadata") or {}).get("resourceVersion", ""))
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": version}
    ]
    if "gateDecisions" in (run.get("spec") or {}):
        ops.append({"op": "add", "path": "/spec/gateDecisions/-", "value": entry})
    else:
        ops.append({"op": "add", "path": "/spec/gateDecisions", "value": [entry]})
    return ops


def control_patch(run: Run, *, action: str, reason: str | None = None) -> dict[str, Any]:
    """The merge patch for pause, resume, cancel or recover, or a PluginError.

    It carries the resourceVersion read, so the API server refuses it (409) if the run
    changed since the checks here were made.
    """
    name = _name(run)
    phase = _status(run).get("phase")
    version = (run.get("metadata") or {}).get("resourceVersion")
    spec: dict[str, Any]
    if action == "recover":
        if phase not in RECOVERABLE_PHASES:
            raise PluginError(
                f'{KIND} "{name}" is {phase or "not started"}; only Failed, Paused or Blocked '
                "runs can be recovered"
            )
        spec = {"recover": {"requestId": new_request_id()}}
    elif phase in TERMINAL_PHASES:
        hint = ""
        if action == "resume" and phase in RECOVERABLE_PHASES:
            hint = " (use `recover` to run its failed nodes again)"
        raise PluginError(f'{KIND} "{name}" is {phase}; nothing to {action}{hint}')
    elif action == "pause":
        spec = {"desiredState": "Paused", "pauseReason": reason or None}
    elif action == "resume":
        spec = {"desiredState": "Running", "pauseReason": None}
    elif action == "cancel":
        spec = {"desiredState": "Cancelled"}
    else:
        raise ValueError(f"unknown action {action!r}")
    return {"metadata": {"resourceVersion": version}, "spec": spec}


def resume_note(run: Run) -> str | None:
    """Why ``resume`` may not move a run the operator paused (B12: it waits for B6/B7/B14)."""
    status = _status(run)
    if status.get("phase") == "Paused" and status.get("stopKind") in OPERATOR_PAUSES:
        return (
            f"note: the operator paused this run ({status['stopKind']}); it resumes on its own "
            "when allowed (auto-resume, an approved quota override) or with `recover`"
        )
    return None


MANUAL_SUFFIX = "-manual-"
MAX_GENERATE_PREFIX = 248
"""generateName prefix at most this long: the API server adds five characters (253)."""


def start_manifest(automation: Mapping[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """The AutomationRun ``start`` creates: a manual run of ``automation`` (a whole object).

    Without ``name`` the API server names it ``<automation>-manual-<random>``.
    """
    meta = automation.get("metadata") or {}
    spec = automation.get("spec") or {}
    auto_name = str(meta.get("name", ""))
    template = (spec.get("schedule") or {}).get("runTemplate") or {}
    labels = dict(template.get("labels") or {})
    labels[AUTOMATION_LABEL] = automation_label_value(auto_name)
    metadata: dict[str, Any] = {
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": str(automation.get("apiVersion") or API_VERSION),
                "kind": "Automation",
                "name": auto_name,
                "uid": str(meta.get("uid", "")),
                "controller": True,
            }
        ],
    }
    if template.get("annotations"):
        metadata["annotations"] = dict(template["annotations"])
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = (auto_name + MANUAL_SUFFIX)[-MAX_GENERATE_PREFIX:]
    if meta.get("namespace"):
        metadata["namespace"] = meta["namespace"]
    run_spec: dict[str, Any] = {"automationRef": {"name": auto_name}, "triggerType": "manual"}
    if template.get("runtimeContext") is not None:
        run_spec["runtimeContext"] = template["runtimeContext"]
    return {
        "apiVersion": API_VERSION,
        "kind": "AutomationRun",
        "metadata": metadata,
        "spec": run_spec,
    }


def new_request_id() -> str:
    return f"kubectl-{uuid.uuid4().hex[:16]}"


# --------------------------------------------------------------------------- I/O


class RunClient:
    """The few API calls the plugin makes, through pykube-ng."""

    def __init__(self, api: pykube.HTTPClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    @classmethod
    def connect(cls, *, kubeconfig: Path | None, namespace: str | None) -> RunClient:
        try:
            config = (
                pykube.KubeConfig.from_file(str(kubeconfig))
                if kubeconfig is not None
                else pykube.KubeConfig.from_env()
            )
        except (pykube.exceptions.PyKubeError, OSError) as exc:
            raise PluginError(f"cannot load kubeconfig: {exc}") from exc
        return cls(pykube.HTTPClient(config), namespace or config.namespace or "default")

    def _request(
        self,
        method: Callable[..., requests.Response],
        *,
        all_namespaces: bool = False,
        **kwargs: Any,
    ) -> Any:
        namespace = None if all_namespaces else self.namespace
        try:
            response = method(version=API_VERSION, namespace=namespace, **kwargs)
        except requests.RequestException as exc:
            raise PluginError(f"cannot reach the API server: {exc}") from exc
        if response.status_code == 409:
            raise Conflict()
        if not response.ok:
            try:
                message = response.json().get("message") or response.text
            except ValueError:
                message = response.text
            raise ApiError(str(message), code=response.status_code)
        return response.json()

    def get(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"{PLURAL}/{name}")
        except ApiError as exc:
            if exc.code == 404:
                raise PluginError(
                    f'{KIND} "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def list_runs(self, *, all_namespaces: bool) -> list[dict[str, Any]]:
        found = self._request(self.api.get, all_namespaces=all_namespaces, url=PLURAL)
        return list(found.get("items") or [])

    def automation(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"automations/{name}")
        except PluginError:
            return None
        return found.get("spec") or None

    def json_patch(self, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply ``ops``; a failed ``test`` of the resourceVersion raises :class:`Conflict`.

        The API server answers a failed ``test`` op with a bare 422 ("the server rejected
        our request"), the same as other invalid patches, so a 422 is a conflict exactly
        when the resourceVersion the patch tested is no longer the run's.
        """
        try:
            patched: dict[str, Any] = self._request(
                self.api.patch,
                url=f"{PLURAL}/{name}",
                headers={"Content-Type": "application/json-patch+json"},
                data=json.dumps(ops),
            )
        except ApiError as exc:
            tested = [
                op.get("value")
                for op in ops
                if op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
            ]
            if exc.code == 422 and tested:
                current = (self.get(name).get("metadata") or {}).get("resourceVersion")
                if current != tested[0]:
                    raise Conflict() from exc
            raise
        return patched

    def get_automation(self, name: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._request(self.api.get, url=f"automations/{name}")
        except ApiError as exc:
            if exc.code == 404:
                raise PluginError(
                    f'automation "{name}" not found in namespace "{self.namespace}"'
                ) from None
            raise
        return found

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            created: dict[str, Any] = self._request(
                self.api.post,
                url=PLURAL,
                headers={"Content-Type": "application/json"},
                data=json.dumps(body),
            )
        except Conflict:
            name = (body.get("metadata") or {}).get("name")
            raise PluginError(f'{KIND} "{name}" already exists') from None
        return created

    def merge_patch(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self._request(
            self.api.patch,
            url=f"{PLURAL}/{name}",
            headers={"Content-Type": "application/merge-patch+json"},
            data=json.dumps(patch),
        )
        return patched


def _write(
    client: RunClient, name: str, attempt: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """Read, check and write; on a conflict read again (the checks run again too)."""
    for _ in range(WRITE_RETRIES):
        run = client.get(name)
        try:
            return attempt(run)
        except Conflict:
            continue
    raise PluginError(f'{KIND} "{name}" kept changing while it was being updated; try again')


# --------------------------------------------------------------------------- commands


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _cmd_list(client: RunClient, args: argparse.Namespace) -> int:
    runs = client.list_runs(all_namespaces=args.all_namespaces)
    if args.output == "json":
        _print_json({"apiVersion": "v1", "kind": "List", "items": runs})
        return 0
    if not runs:
        where = "" if args.all_namespaces else f' in namespace "{client.namespace}"'
        print(f"No AutomationRuns found{where}.", file=sys.stderr)
        return 0
    print(render_list(runs, now_ms=wall_ms(), with_namespace=args.all_namespaces))
    return 0


def _cmd_describe(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    automation = None
    ref = (run.get("spec") or {}).get("automationRef") or {}
    if not flow_nodes(run) and ref.get("name"):
        automation = client.automation(ref["name"])
    print(render_describe(run, now_ms=wall_ms(), automation=automation))
    return 0


def _cmd_logs(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    try:
        pod, _ = logs.logs_target(run, args.node, args.attempt)
        logs.stream_logs(client.api, namespace=client.namespace, pod=pod, follow=args.follow)
    except logs.LogsError as exc:
        raise PluginError(str(exc)) from None
    return 0


def _cmd_history(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    if args.output == "json":
        _print_json(_checkpoint(run).get("lifecycleHistory") or [])
        return 0
    print(render_history(run, now_ms=wall_ms()))
    return 0


def _cmd_gate(client: RunClient, args: argparse.Namespace) -> int:
    decision = GATE_COMMANDS[args.command]
    request_id = new_request_id()
    gates: list[str] = []

    def attempt(run: dict[str, Any]) -> dict[str, Any]:
        ops = gate_decision_patch(
            run, decision=decision, gate=args.gate, reason=args.reason, request_id=request_id
        )
        gates[:] = [(_checkpoint(run).get("awaitingGate") or {}).get("nodeId", "")]
        return client.json_patch(args.name, ops)

    patched = _write(client, args.name, attempt)
    stored = [
        d
        for d in (patched.get("spec") or {}).get("gateDecisions") or []
        if d.get("requestId") == request_id
    ]
    by = f" by {stored[0]['decidedBy']}" if stored and stored[0].get("decidedBy") else ""
    print(
        f"{KIND}/{args.name}: {decision} recorded for gate {gates[0]}{by} (requestId {request_id})"
    )
    return 0


def _cmd_control(client: RunClient, args: argparse.Namespace) -> int:
    reason = getattr(args, "reason", None)
    notes: list[str] = []

    def attempt(run: dict[str, Any]) -> dict[str, Any]:
        patch = control_patch(run, action=args.command, reason=reason)
        note = resume_note(run) if args.command == "resume" else None
        notes[:] = [note] if note else []
        return client.merge_patch(args.name, patch)

    patched = _write(client, args.name, attempt)
    for note in notes:
        print(note, file=sys.stderr)
    spec = patched.get("spec") or {}
    if args.command == "recover":
        done = f"recover requested (requestId {spec['recover']['requestId']})"
    else:
        done = f"desiredState set to {spec.get('desiredState')}"
    print(f"{KIND}/{args.name}: {done}")
    return 0


def _cmd_start(client: RunClient, args: argparse.Namespace) -> int:
    automation = client.get_automation(args.automation)
    created = client.create(start_manifest(automation, name=args.name))
    print(f"{KIND}/{created['metadata']['name']} created from automation/{args.automation}")
    return 0


def _connection_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--kubeconfig", type=Path, default=default, help="kubeconfig file (default: $KUBECONFIG)"
    )
    parser.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the context's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl automationrun", description="List, inspect and steer AutomationRuns."
    )
    _connection_options(parser, default=None)
    # The options are accepted after the command too (kubectl style); SUPPRESS keeps the
    # subcommand's defaults from overwriting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[RunClient, argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    listing = command("list", _cmd_list, "list runs: name, phase, nodes, detail, age")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    command(
        "describe", _cmd_describe, "show a run: nodes, the awaiting gate, history"
    ).add_argument("name")
    hist = command("history", _cmd_history, "show a run's lifecycle records")
    hist.add_argument("name")
    hist.add_argument("-o", "--output", choices=["table", "json"], default="table")
    for name, decision in GATE_COMMANDS.items():
        gate = command(name, _cmd_gate, f"decide {decision} for the gate the run awaits")
        gate.add_argument("name")
        gate.add_argument(
            "--gate", default=None, help="the gate's node id (default: the awaiting one)"
        )
        gate.add_argument("--reason", default=None, help="recorded in the gate history")
    pause = command("pause", _cmd_control, "pause a run (spec.desiredState: Paused)")
    pause.add_argument("name")
    pause.add_argument("--reason", default=None, help="spec.pauseReason")
    command(
        "resume", _cmd_control, "resume a paused run (spec.desiredState: Running)"
    ).add_argument("name")
    command("cancel", _cmd_control, "cancel a run (spec.desiredState: Cancelled)").add_argument(
        "name"
    )
    command("recover", _cmd_control, "recover a Failed, Paused or Blocked run").add_argument("name")
    start = command("start", _cmd_start, "start a run of an Automation now (triggerType manual)")
    start.add_argument("automation")
    start.add_argument(
        "--name", default=None, help="the run's name (default: <automation>-manual-<random>)"
    )
    logs.add_logs_command(command, _cmd_logs)
    return parser


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = RunClient.connect(kubeconfig=args.kubeconfig, namespace=args.namespace)
        result: int = args.func(client, args)
    except PluginError as exc:
        _fail(str(exc))
    return result


if __name__ == "__main__":
    sys.exit(main())
