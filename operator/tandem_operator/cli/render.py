"""What ``kubectl automationrun`` prints: ``list``, ``describe`` and ``history``.

Pure functions from raw run objects (and the time) to text, unit-tested with hand-built
objects, as the API server returns them; no I/O. ``cli.writes`` reads runs through the
same accessors (:func:`name_of`, :func:`status_of`, :func:`checkpoint_of`) and
:func:`pending_gate_decisions` before it writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic

from tandem_operator.api.models import ALL_DECISIONS, Checkpoint, GateDecision
from tandem_operator.cli import logs
from tandem_operator.lifecycle.approvals import approvals_so_far
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.gates import undecided

DEFAULT_MAX_ATTEMPTS = 3
DESCRIBE_RECORDS = 10
DETAIL_WIDTH = 60

Run = Mapping[str, Any]


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


def name_of(run: Run) -> str:
    return str((run.get("metadata") or {}).get("name", ""))


def status_of(run: Run) -> Mapping[str, Any]:
    return run.get("status") or {}


def checkpoint_of(run: Run) -> Mapping[str, Any]:
    return status_of(run).get("checkpoint") or {}


def flow_nodes(run: Run, automation: Mapping[str, Any] | None = None) -> list[Mapping[str, Any]]:
    """The run's nodes: its snapshot once admitted, else the inline or referenced flow."""
    flow = (
        status_of(run).get("automationSnapshot")
        or (run.get("spec") or {}).get("automation")
        or automation
        or {}
    )
    return [n for n in flow.get("nodes") or [] if isinstance(n, Mapping) and n.get("id")]


def progress(run: Run) -> str:
    """``completed/total`` nodes; ``-`` before the operator has written a checkpoint."""
    status = status_of(run)
    if status.get("progress"):
        return str(status["progress"])
    cp = checkpoint_of(run)
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
    ordered = sorted(
        runs, key=lambda r: ((r.get("metadata") or {}).get("namespace", ""), name_of(r))
    )
    for run in ordered:
        status = status_of(run)
        row = [
            name_of(run),
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
    seen = int((status_of(run).get("counters") or {}).get("gateDecisionsSeen") or 0)
    keys = checkpoint_of(run).get("gateDecisionKeys")
    try:
        parsed = [GateDecision.model_validate(d) for d in decisions]
    except pydantic.ValidationError:
        return []
    applied = {h.get("requestId") for h in checkpoint_of(run).get("gateHistory") or []}
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
    status = status_of(run)
    cp = checkpoint_of(run)
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
    gate = checkpoint_of(run).get("awaitingGate") or {}
    listed = [str(a.get("user")) for a in gate.get("approvals") or [] if a.get("user")]
    if listed:
        return listed
    try:
        checkpoint = Checkpoint.model_validate(checkpoint_of(run))
    except pydantic.ValidationError:
        return []
    if checkpoint.awaiting_gate is None:
        return []
    return [a.user for a in approvals_so_far(checkpoint.gate_history, checkpoint.awaiting_gate)]


def _render_gate(
    run: Run, *, now_ms: int, automation: Mapping[str, Any] | None = None
) -> list[str]:
    gate = checkpoint_of(run).get("awaitingGate")
    if not gate or status_of(run).get("phase") != "AwaitingApproval":
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
    records = checkpoint_of(run).get("lifecycleHistory") or []
    if not records:
        return "No lifecycle records."
    lines = render_records(records, now_ms=now_ms)
    total = int((status_of(run).get("counters") or {}).get("lifecycleRecords") or 0)
    if total > len(records):
        lines.append(f"({total - len(records)} older records were trimmed from status)")
    return "\n".join(lines)
