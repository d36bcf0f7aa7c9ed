"""Runs the operator cannot act on: a Warning Event and ``Stalled=True``, nothing else.

The reconciler reports a status it cannot use (``InvalidStatus``) and a status write the
API server refused (``StatusRejected``) here; only ``conditions`` is written, and only
when the message changes. Once the status is fixed (or a write succeeds), the next
decision clears ``Stalled`` (see ``lifecycle.engine``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tandem_operator.api.models import AutomationRunStatus
from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import Event
from tandem_operator.lifecycle.invariants import apply_conditions
from tandem_operator.runtime.events import cut_to_bytes
from tandem_operator.runtime.ports import Clock, EventSink, KubeClient
from tandem_operator.runtime.store import RunKey, Store

# Reported during a reconcile: these lines keep the reconciler's logger name.
log = logging.getLogger("tandem_operator.runtime.reconciler")

PLURAL = "automationruns"
MAX_CONDITION_MESSAGE_BYTES = 32 * 1024
"""metav1.Condition's limit on ``message``; the API server's own message may be longer."""


async def report_stalled(
    key: RunKey,
    body: Mapping[str, Any],
    problems: list[str],
    reason: str,
    *,
    api: KubeClient,
    store: Store,
    events: EventSink,
    clock: Clock,
) -> None:
    """A Warning Event ``reason`` and ``Stalled=True`` (reason ``reason``) naming the
    problems; only ``conditions`` is written, and only when the message changes.

    ``InvalidStatus``: the status as stored cannot be used. ``StatusRejected``: the API
    server refused (422) the status a decision wrote; the run is decided again on its
    next change, and the first write that succeeds clears ``Stalled``.
    """
    message = "; ".join(problems[:3])
    if len(problems) > 3:
        message += f" (and {len(problems) - 3} more)"
    message = cut_to_bytes(message, MAX_CONDITION_MESSAGE_BYTES)
    raw = body.get("status") or {}
    current = [c for c in raw.get("conditions") or [] if isinstance(c, dict)]
    stalled = next((c for c in current if c.get("type") == "Stalled"), None)
    if (
        stalled
        and stalled.get("status") == "True"
        and stalled.get("reason") == reason
        and stalled.get("message") == message
    ):
        return
    log.warning("Stalled run=%s/%s reason=%s problems=%s", key[0], key[1], reason, message)
    events(body, Event(type="Warning", reason=reason, message=message))
    probe = AutomationRunStatus(phase=None)
    apply_conditions(
        probe,
        now=format_ms(clock.now_ms()),
        generation=int(body.get("metadata", {}).get("generation") or 0),
        stalled_reason=message,
        stalled_kind=reason,
    )
    conditions = [c.to_api() for c in probe.conditions if c.type == "Stalled"]
    others = [c for c in current if c.get("type") != "Stalled"]
    stored = await api.patch_status(
        plural=PLURAL,
        namespace=key[0],
        name=key[1],
        resource_version=str(body.get("metadata", {}).get("resourceVersion", "")),
        status_patch={"conditions": [*others, *conditions]},
    )
    store.observe("runs", stored)
