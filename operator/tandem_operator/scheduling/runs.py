"""The runs of a schedule (B19a): their names and labels, the manifest of a new one, and
what a plan reads of the Automation and of the runs it owns.

A run's name is derived from its due time (:func:`run_name`), and runs carry the due time in
an annotation, so that one due time never gets two runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tandem_operator.api.models import (
    API_VERSION,
    TERMINAL_PHASES,
    AutomationResourceSpec,
    AutomationRunSpec,
    AutomationStatus,
)
from tandem_operator.lifecycle.clock import format_ms, parse_ms

AUTOMATION_LABEL: Final = "automation.tandem.dev/automation"
"""Label on every run a schedule creates: the Automation's name (shortened past 63)."""
SCHEDULED_AT_ANNOTATION: Final = "automation.tandem.dev/scheduled-at"
"""Annotation on every run a schedule creates: its due time, RFC 3339 in UTC."""

MAX_NAME: Final = 63


# ------------------------------------------------------------------------ names


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_name(automation: str, due_ms: int) -> str:
    """``<automation>-<yyyymmddhhmmss>`` of the due time in UTC, at most 63 characters.

    Past 63 characters the Automation's name is cut and a hash of the whole name added
    (``<cut>-<hash8>-<stamp>``), so two Automations never share a run name for one due time.
    """
    stamp = datetime.fromtimestamp(due_ms // 1000, tz=UTC).strftime("%Y%m%d%H%M%S")
    name = f"{automation}-{stamp}"
    if len(name) <= MAX_NAME:
        return name
    digest = _digest(automation)
    keep = MAX_NAME - len(stamp) - len(digest) - 2
    return f"{automation[:keep].rstrip('-.')}-{digest}-{stamp}"


def automation_label_value(automation: str) -> str:
    """The Automation's name as a label value: itself, or cut with a hash past 63 characters."""
    if len(automation) <= MAX_NAME:
        return automation
    digest = _digest(automation)
    return f"{automation[: MAX_NAME - len(digest) - 1].rstrip('-.')}-{digest}"


# ------------------------------------------------------------------------ inputs


@dataclass(frozen=True, kw_only=True)
class ScheduledAutomation:
    """What a plan needs of the Automation."""

    name: str
    namespace: str
    uid: str
    generation: int | None
    spec: AutomationResourceSpec
    status: AutomationStatus

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ScheduledAutomation:
        meta = obj.get("metadata") or {}
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            spec=AutomationResourceSpec.model_validate(obj.get("spec") or {}),
            status=AutomationStatus.model_validate(obj.get("status") or {}),
        )


@dataclass(frozen=True, kw_only=True)
class ScheduledRun:
    """What a plan needs of one AutomationRun."""

    name: str
    owner_uid: str | None = None
    """uid of the controller ownerReference of kind Automation, if any."""
    phase: str | None = None
    desired_state: str = "Running"
    created_at_ms: int | None = None
    finished_at_ms: int | None = None
    scheduled_at_ms: int | None = None
    """The due time this run was created for (annotation), if a schedule created it."""

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ScheduledRun:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        owner = next(
            (
                ref.get("uid")
                for ref in meta.get("ownerReferences") or ()
                if ref.get("controller") and ref.get("kind") == "Automation"
            ),
            None,
        )
        annotations = meta.get("annotations") or {}
        return cls(
            name=meta.get("name", ""),
            owner_uid=owner,
            phase=status.get("phase"),
            desired_state=spec.get("desiredState") or "Running",
            created_at_ms=parse_ms(meta.get("creationTimestamp")),
            finished_at_ms=parse_ms(status.get("finishedAt")),
            scheduled_at_ms=parse_ms(annotations.get(SCHEDULED_AT_ANNOTATION)),
        )


# ------------------------------------------------------------------------ a new run


def run_manifest(automation: ScheduledAutomation, due_ms: int) -> dict[str, Any]:
    """The AutomationRun a schedule creates for one due time (B19a)."""
    schedule = automation.spec.schedule
    template = schedule.run_template if schedule is not None else None
    labels = dict(template.labels or {}) if template else {}
    labels[AUTOMATION_LABEL] = automation_label_value(automation.name)
    annotations = dict(template.annotations or {}) if template else {}
    annotations[SCHEDULED_AT_ANNOTATION] = format_ms(due_ms)
    spec = AutomationRunSpec.model_validate(
        {
            "automationRef": {"name": automation.name},
            "triggerType": "scheduled",
            "runtimeContext": template.runtime_context if template else None,
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "AutomationRun",
        "metadata": {
            "name": run_name(automation.name, due_ms),
            "namespace": automation.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Automation",
                    "name": automation.name,
                    "uid": automation.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True),
    }


def run_order(run: ScheduledRun) -> tuple[int, int, str]:
    """Oldest first: by due time (creation time without one), then creation time, then name."""
    due = run.scheduled_at_ms if run.scheduled_at_ms is not None else run.created_at_ms
    return (due if due is not None else 0, run.created_at_ms or 0, run.name)
