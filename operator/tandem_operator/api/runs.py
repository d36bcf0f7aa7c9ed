"""The spec of an AutomationRun: which flow it runs and what the user wants of it."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from tandem_operator.api.base import (
    MAX_GATE_DECISIONS,
    MAX_TTL_SECONDS,
    ApiModel,
    DesiredState,
    FreeForm,
    GateDecisionValue,
    LocalObjectReference,
    Profile,
    TriggerType,
)
from tandem_operator.api.flow import AutomationSpec


class Recover(ApiModel):
    request_id: str = Field(min_length=1, max_length=253)
    """Each new value asks for one recover of a Failed, Paused or Blocked run (B14)."""


class GateDecision(ApiModel):
    gate: str = Field(min_length=1, max_length=63)
    """The id of the Approval node this decision is for."""
    decision: GateDecisionValue
    """approve completes the gate, rework sends its rework targets back, cancel cancels the run
    (B11)."""
    reason: str | None = Field(default=None, max_length=4096)
    """Why; copied to the gate history, cut to its first 1,024 characters there (the last
    three replaced by ...), and in full to stopReason when it cancels the run."""
    request_id: str | None = Field(default=None, max_length=253)
    """Makes the decision idempotent: an id is applied once."""
    decided_by: str | None = Field(
        default=None,
        max_length=253,
        description="The authenticated user who added this entry; set by the operator's "
        "admission webhook, never trusted from the request",
    )


class AutomationRunSpec(ApiModel):
    """One run of a flow: what the user wants of it (the operator writes status, never spec)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.automationRef) != has(self.automation)",
                    "message": "exactly one of automationRef or automation must be set",
                },
                {
                    # The list's own rule does not run when the list is gone altogether
                    # (a client-side apply of a manifest without it).
                    "rule": "!has(oldSelf.gateDecisions) || size(oldSelf.gateDecisions) == 0 "
                    "|| has(self.gateDecisions)",
                    "message": "gateDecisions is append-only: recorded decisions cannot be removed",
                    "fieldPath": ".gateDecisions",
                },
            ]
        }
    )

    automation_ref: LocalObjectReference | None = None
    """An Automation in the run's namespace whose spec is the flow; exactly one of automationRef and
    automation."""
    automation: AutomationSpec | None = None
    """The flow, inline; exactly one of automationRef and automation."""
    trigger_type: TriggerType = "manual"
    """What started the run; recorded, not acted on. Runs a schedule creates say scheduled."""
    runtime_context: FreeForm | None = None
    """Free-form data passed to every node attempt; required when the flow sets
    requiresRuntimeContext."""
    execution_profile: Profile | None = None
    """Overrides the flow's execution.profile; recorded, not acted on in this version."""
    desired_state: DesiredState = "Running"
    """What the run should do; the operator acts on the current value (B12, B13), not on changes."""
    pause_reason: str | None = Field(default=None, max_length=1024)
    """Copied to status.pauseReason when the run pauses at the user's request."""
    recover: Recover | None = None
    """Asks for one recover (B14) with each new requestId."""
    gate_decisions: list[GateDecision] = Field(
        default_factory=list,
        max_length=MAX_GATE_DECISIONS,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "size(self) >= size(oldSelf) && oldSelf.all(i, self.exists(j, j == i))",
                    "message": "gateDecisions is append-only: recorded decisions cannot be "
                    "changed or removed",
                }
            ]
        },
    )
    """Decisions at approval gates, append-only: recorded entries cannot be changed or removed."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=MAX_TTL_SECONDS)
    """Seconds after status.finishedAt at which the operator deletes the finished run (B20b);
    0 deletes it at once. Without it, TANDEM_FINISHED_RUN_TTL_SECONDS applies, and when that
    is unset too the run is kept."""
