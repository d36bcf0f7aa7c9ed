"""The status of an AutomationRun: its checkpoint, which the operator resumes from."""

from __future__ import annotations

from pydantic import Field

from tandem_operator.api.base import ApiModel, Condition, FreeForm, Timestamp
from tandem_operator.api.vocabulary import Phase, QueueReason, StopKind


class GateApproval(ApiModel):
    user: str = Field(description="The authenticated user who approved")
    decided_at: Timestamp | None = Field(default=None, description="When the approval was applied")


class AwaitingGate(ApiModel):
    node_id: str
    """The Approval node that waits."""
    title: str | None = None
    """The gate's title, from the flow."""
    instructions: str | None = None
    """The gate's instructions, from the flow."""
    decisions: list[str] = Field(default_factory=list)
    """The decisions the gate accepts."""
    rework_targets: list[str] = Field(default_factory=list)
    """The nodes a rework decision sends back."""
    requested_at: Timestamp | None = None
    """When the gate started waiting."""
    metadata: FreeForm | None = None
    """Operator notes on the gate, such as stale: true and when it was marked (B4)."""
    approvals: list[GateApproval] = Field(
        default_factory=list,
        description="Distinct users who approved this request of the gate so far (B18c)",
    )


class GateHistoryEntry(ApiModel):
    node_id: str
    """The Approval node decided."""
    decision: str
    """approve, rework or cancel."""
    reason: str | None = None
    """The reason given with the decision, cut to 1,024 characters (ending in ... when
    cut)."""
    decided_at: Timestamp | None = None
    """When the operator applied the decision."""
    decided_by: str | None = None
    """Who decided: the authenticated user, or system:expiry for an expiry action."""
    request_id: str | None = None
    """The decision's requestId, if it had one."""
    metadata: FreeForm | None = None
    """Operator notes on the decision."""


class LifecycleRecord(ApiModel):
    event: str
    """Lifecycle event name, such as run_paused (any string is read: an older or newer operator's
    history)."""
    recorded_at: Timestamp
    """When the transition happened."""
    reason: str | None = None
    """Why, in words or as a reason code."""
    stop_kind: StopKind | None = None
    """The run's stop kind after the transition, if it stopped."""
    metadata: FreeForm | None = None
    """Details of the transition, such as the budget or window involved."""


class LastFailure(ApiModel):
    node_id: str | None = None
    """The node that failed, or runtime_context for a missing runtime context."""
    reason: str | None = None
    """What went wrong, in words."""
    failed_at: Timestamp | None = None
    """When the failure was recorded."""
    failure_kind: str | None = None
    """A short code for the kind of failure."""


class Checkpoint(ApiModel):
    completed_nodes: list[str] = Field(default_factory=list)
    """Ids of the nodes that completed."""
    pending_nodes: list[str] = Field(default_factory=list)
    """Ids of the nodes not yet completed."""
    blocked_nodes: list[str] = Field(default_factory=list)
    """Ids of the nodes that cannot run: behind a waiting gate or a blocked node."""
    node_outputs: dict[str, FreeForm] = Field(default_factory=dict)
    """Node id to its latest output; each has status completed, needs_repair, failed or blocked, and
    is capped in size (truncated: true when cut)."""
    node_attempts: dict[str, int] = Field(default_factory=dict)
    """Node id to the number of attempts started."""
    node_attempt_verdicts: dict[str, list[FreeForm]] = Field(default_factory=dict)
    """Node id to the outcome of each attempt, newest last (bounded)."""
    awaiting_gate: AwaitingGate | None = None
    """The gate that waits for a decision, while the run is AwaitingApproval."""
    gate_history: list[GateHistoryEntry] = Field(default_factory=list)
    """Every gate decision applied, including those made by expiry."""
    lifecycle_history: list[LifecycleRecord] = Field(default_factory=list)
    """Lifecycle records, newest last, bounded by TANDEM_LIFECYCLE_HISTORY_LIMIT and 48 KiB."""
    last_failure: LastFailure | None = None
    """The failure that ended the run."""
    last_activity_at: Timestamp | None = None
    """When B5 starts counting silence: the last dispatch of an attempt, outcome of one, or
    admission of the run to Running (time spent Queued or Paused is not silence)."""
    last_stale_reap_at: Timestamp | None = Field(
        default=None, description="When the run was last stale-reaped (B5), kept past trimming"
    )
    node_retry_after: dict[str, Timestamp] = Field(
        default_factory=dict, description="Node id → when a transient failure may be retried"
    )
    recover_request_id: str | None = Field(
        default=None, description="The spec.recover.requestId last acted on (B14)"
    )
    gate_decision_keys: list[str] | None = Field(
        default=None,
        max_length=512,
        description="Keys of the spec.gateDecisions entries already applied or rejected, "
        "newest last: a digest of the entry's requestId, or of its content and how many "
        "identical entries precede it, so an entry is decided once wherever it sits in the "
        "list",
    )


class Counters(ApiModel):
    auto_resumes: int = 0
    """Automatic resumes after stale reaps (B6); kept when history is trimmed."""
    lifecycle_records: int = Field(
        default=0, description="Lifecycle records ever written, including trimmed ones"
    )
    gate_decisions_seen: int = Field(
        default=0,
        description="The length of spec.gateDecisions when the operator last acted on it; "
        "never lowered (checkpoint.gateDecisionKeys says which entries were decided)",
    )


class RunUsage(ApiModel):
    prompt_tokens: int = 0
    """Prompt tokens summed over all attempts (B17)."""
    completion_tokens: int = 0
    """Completion tokens summed over all attempts (B17)."""
    total_tokens: int = 0
    """Prompt plus completion tokens (B17)."""
    estimated_cost_usd: str = "0"
    """Estimated cost in US dollars as a decimal string: total tokens / 1000 x
    TANDEM_TOKEN_COST_PER_1K_USD (B17)."""


class Scheduler(ApiModel):
    queue_reason: QueueReason | None = None
    """Why the run waits: capacity, workspace_lock, retry_backoff (rate_limit is reserved)."""
    queued_at: Timestamp | None = None
    """When the run was queued."""
    retry_after: Timestamp | None = None
    """When a run in retry back-off may try again."""


class ExecutionClaim(ApiModel):
    claimant: str
    """The operator instance that executes the run."""
    claimed_at: Timestamp | None = None
    """When the claim was taken."""
    lease_expires_at: Timestamp | None = None
    """When the claim lapses unless renewed; a run whose claim lapsed is orphaned (B1)."""
    epoch: int = 0
    """Increases with each new claim on the run."""


class AutomationRunStatus(ApiModel):
    """The run's checkpoint, written by the operator; honoured after a restart."""

    phase: Phase | None = None
    """Where the run is in its life; Completed, Blocked, Failed and Cancelled are terminal."""
    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    detail: str | None = None
    """What is happening now, in words."""
    progress: str | None = Field(default=None, description="Completed nodes / all nodes")
    pause_reason: str | None = None
    """Why the run paused last."""
    resume_reason: str | None = None
    """Why the run resumed last."""
    stop_kind: StopKind | None = None
    """Why the run stopped, if it did."""
    stop_reason: str | None = None
    """Why the run stopped, in words."""
    created_at: Timestamp | None = None
    """When the operator first saw the run."""
    started_at: Timestamp | None = None
    """When the run was first admitted to Running."""
    finished_at: Timestamp | None = None
    """When the run became Completed, Blocked, Failed or Cancelled; ttlSecondsAfterFinished counts
    from here (B20b)."""
    updated_at: Timestamp | None = None
    """When the operator last wrote status."""
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    """The run's progress through its flow: what the operator resumes from after a restart."""
    counters: Counters = Field(default_factory=Counters)
    """Counts kept when lifecycleHistory is trimmed."""
    usage: RunUsage = Field(default_factory=RunUsage)
    """Token usage and estimated cost, summed over all attempts (B17)."""
    scheduler: Scheduler | None = None
    """Why the run waits; only while Queued."""
    execution_claim: ExecutionClaim | None = None
    """Which operator instance executes the run; only while Running or Pausing."""
    automation_snapshot: FreeForm | None = None
    """The flow as admitted; the run executes this copy, unaffected by later edits."""
    conditions: list[Condition] = Field(default_factory=list)
    """Succeeded, Ready, Reconciling, Stalled and AwaitingApproval."""
