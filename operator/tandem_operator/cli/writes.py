"""The plugin's commands that write: ``approve``, ``rework``, ``cancel-gate``, ``pause``,
``resume``, ``cancel``, ``recover`` and ``start``.

Everything they write is user intent in ``spec``; the operator turns it into status. The
patches are built by pure functions (unit-tested with hand-built runs), each checked
against what the user saw: gate decisions go as a JSON patch whose ``test`` op pins
``metadata.resourceVersion`` and whose ``add`` op appends to the list, spec changes as a
merge patch carrying ``metadata.resourceVersion``. When the run changed in between,
:func:`_write` reads it again, checks again (is the gate still awaiting?) and retries a
few times, so a decision is never recorded for a gate that has moved on.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tandem_operator.api.models import ALL_DECISIONS, API_VERSION
from tandem_operator.api.vocabulary import OPERATOR_PAUSES, RECOVERABLE_PHASES, TERMINAL_PHASES
from tandem_operator.cli.client import KIND, Conflict, PluginError, RunClient
from tandem_operator.cli.render import (
    Run,
    checkpoint_of,
    name_of,
    pending_gate_decisions,
    status_of,
)
from tandem_operator.scheduling.runs import AUTOMATION_LABEL, automation_label_value

WRITE_RETRIES = 3
GATE_COMMANDS = {"approve": "approve", "rework": "rework", "cancel-gate": "cancel"}


def gate_decision_patch(
    run: Run, *, decision: str, gate: str | None, reason: str | None, request_id: str
) -> list[dict[str, Any]]:
    """The JSON patch that appends ``decision`` for the awaiting gate, or a PluginError.

    The ``test`` op pins the resourceVersion read, so the append is refused (and the caller
    re-checks) when the run changed since: the gate may no longer be awaiting.
    """
    name = name_of(run)
    status = status_of(run)
    awaiting = checkpoint_of(run).get("awaitingGate") or {}
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
    name = name_of(run)
    phase = status_of(run).get("phase")
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
    status = status_of(run)
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


def cmd_gate(client: RunClient, args: argparse.Namespace) -> int:
    decision = GATE_COMMANDS[args.command]
    request_id = new_request_id()
    gates: list[str] = []

    def attempt(run: dict[str, Any]) -> dict[str, Any]:
        ops = gate_decision_patch(
            run, decision=decision, gate=args.gate, reason=args.reason, request_id=request_id
        )
        gates[:] = [(checkpoint_of(run).get("awaitingGate") or {}).get("nodeId", "")]
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


def cmd_control(client: RunClient, args: argparse.Namespace) -> int:
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


def cmd_start(client: RunClient, args: argparse.Namespace) -> int:
    automation = client.get_automation(args.automation)
    created = client.create(start_manifest(automation, name=args.name))
    print(f"{KIND}/{created['metadata']['name']} created from automation/{args.automation}")
    return 0
