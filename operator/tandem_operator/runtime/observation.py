"""Reading a run for a decision: its spec and status as models, its flow, its overrides.

Pure functions over what the store holds; the reconciler turns their answers into an
``Observation``. A run the operator cannot read is never guessed at: the problem is
returned in words, and the reconciler reports it (``InvalidStatus``) without writing
anything but a condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from tandem_operator.api.models import (
    AgentQuotaOverrideSpec,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
)
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.contract import Override
from tandem_operator.runtime.store import RunKey, Store


def parse_run(
    body: Mapping[str, Any],
) -> tuple[AutomationRunSpec | None, AutomationRunStatus | None, str | None]:
    """Spec and status of ``body`` as models, or the problem that stops the reconcile."""
    raw_status = body.get("status") or None
    try:
        spec = AutomationRunSpec.model_validate(body.get("spec") or {})
    except pydantic.ValidationError as exc:
        return None, None, first_error("spec", exc)
    has_phase = bool(raw_status and raw_status.get("phase"))
    if raw_status and not has_phase and set(raw_status) - {"conditions"}:
        # Starting the run from scratch would throw away (and redo) what status records.
        return spec, None, "status.phase: missing from a status that records a run"
    try:
        status = AutomationRunStatus.model_validate(raw_status) if has_phase else None
    except pydantic.ValidationError as exc:
        return spec, None, first_error("status", exc)
    return spec, status, None


def definition_of(
    store: Store, key: RunKey, spec: AutomationRunSpec, status: AutomationRunStatus | None
) -> tuple[AutomationSpec | None, str | None]:
    """The run's flow: the status snapshot once admitted, else inline, else referenced."""
    raw: Mapping[str, Any] | None = status.automation_snapshot if status else None
    source = "status.automationSnapshot"
    if raw is None and spec.automation is not None:
        return spec.automation, None
    if raw is None and spec.automation_ref is not None:
        found = store.automations.get((key[0], spec.automation_ref.name))
        if found is None:
            return None, (
                f"automation `{spec.automation_ref.name}` not found in namespace {key[0]}"
            )
        raw, source = found.get("spec") or {}, f"Automation {spec.automation_ref.name}"
    if raw is None:
        return None, "run has neither automation nor automationRef"
    try:
        return AutomationSpec.model_validate(raw), None
    except pydantic.ValidationError as exc:
        return None, f"{source} is invalid: {exc.errors()[0].get('msg')}"


def overrides_in(store: Store, namespace: str, now_ms: int) -> tuple[Override, ...]:
    """Approved, unexpired AgentQuotaOverrides of ``namespace`` (B7, B8).

    An override whose spec does not parse, or whose ``expiresAt`` is not a time, does not
    count: it is treated as expired rather than as one that never expires.
    """
    found = []
    for (ns, name), body in store.overrides.items():
        if ns != namespace:
            continue
        try:
            spec = AgentQuotaOverrideSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError:
            continue
        expires = parse_ms(spec.expires_at)
        if spec.expires_at is not None and expires is None:
            continue  # an expiry nobody can read has passed: governance fails closed
        if spec.approved and (expires is None or expires > now_ms):
            found.append(Override(name=name, agent_id=spec.agent_id, expires_ms=expires))
    return tuple(found)


def first_error(part: str, exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{part}.{where}: {first.get('msg')}" if where else f"{part}: {first.get('msg')}"
