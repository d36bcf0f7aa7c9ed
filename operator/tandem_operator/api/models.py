"""The API of group ``automation.tandem.dev/v1alpha1`` as pydantic v2 models.

These models are the single source of truth for the four custom resources: the CRDs in
``crds/`` are generated from them (``tandem_operator.api.crdgen``), and the operator parses
what it reads from the API server with them. Field names are the API's camelCase names
(``alias_generator=to_camel``); Python code uses snake_case.

Parsing is tolerant where the operator reads and strict where users write: unknown fields
are ignored (the API server prunes them anyway) so that a newer status never crashes an
older operator, while value constraints (ranges, patterns, enums) are mirrored into the
CRD schema so that ``kubectl apply`` rejects bad input before the operator sees it.

Free-form objects (node outputs, runtime context, metadata) are typed ``FreeForm``; the
generator marks them, and only them, with ``x-kubernetes-preserve-unknown-fields``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# The lifecycle's words live in ``api.vocabulary``; re-exported for the models' users.
from tandem_operator.api.vocabulary import ACTIVE_PHASES as ACTIVE_PHASES
from tandem_operator.api.vocabulary import TERMINAL_PHASES as TERMINAL_PHASES
from tandem_operator.api.vocabulary import NodeStatus as NodeStatus
from tandem_operator.api.vocabulary import Phase as Phase
from tandem_operator.api.vocabulary import QueueReason as QueueReason
from tandem_operator.api.vocabulary import StopKind as StopKind

GROUP = "automation.tandem.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FreeForm = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]
"""An object whose keys the API does not constrain."""

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
Timestamp = Annotated[str, Field(description="RFC 3339 time in UTC with milliseconds")]

Profile = Literal["Strict", "Guided", "Yolo"]
DesiredState = Literal["Running", "Paused", "Cancelled"]
TriggerType = Literal["manual", "scheduled", "watch_condition", "dry_run"]
NodeKind = Literal["Task", "Approval"]
GateDecisionValue = Literal["approve", "rework", "cancel"]
ALL_DECISIONS: tuple[GateDecisionValue, ...] = ("approve", "rework", "cancel")
SimulateOutcome = Literal["completed", "needs_repair", "failed", "stall"]
ExpiryAction = Literal["cancel", "resume", "remind"]
ConditionStatus = Literal["True", "False", "Unknown"]

MAX_NODES = 100
MAX_DEPENDS_ON = 16
MAX_AGENTS = 32
MAX_GATE_DECISIONS = 256
MAX_APPROVERS = 64
MAX_REQUIRED_APPROVALS = 5


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optionals omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- spec


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)


class SecretKeyReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class Agent(ApiModel):
    agent_id: str = Field(min_length=1, max_length=128)
    display_name: str | None = Field(default=None, max_length=256)
    endpoint_ref: LocalObjectReference | None = None


class Workspace(ApiModel):
    root: str = Field(min_length=1, max_length=1024)


class Execution(ApiModel):
    profile: Profile = "Strict"
    max_parallel_nodes: int = Field(default=1, ge=1, le=16)
    max_total_runtime_seconds: int | None = Field(default=None, ge=1)
    max_total_tokens: int | None = Field(default=None, ge=1)
    max_total_cost_usd: str | None = Field(default=None, pattern=DECIMAL, max_length=32)


class Usage(ApiModel):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class Simulate(ApiModel):
    outcome: SimulateOutcome = "completed"
    after_seconds: float = Field(default=0, ge=0, le=86400)
    output: FreeForm | None = None
    usage: Usage | None = None


class Executor(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.endpointRef) != has(self.simulate)",
                    "message": "executor must set exactly one of endpointRef or simulate",
                }
            ]
        }
    )

    endpoint_ref: LocalObjectReference | None = None
    simulate: Simulate | None = None


class ApprovalExpiry(ApiModel):
    after_seconds: int = Field(ge=1)
    action: ExpiryAction


class Approvers(ApiModel):
    users: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=MAX_APPROVERS,
        description="Kubernetes usernames that may decide this gate, as the API server "
        "authenticates them (e.g. alice, system:serviceaccount:team-a:release-bot)",
    )
    groups: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        max_length=MAX_APPROVERS,
        description="Kubernetes groups whose members may decide this gate, as the API server "
        "authenticates them (e.g. release-managers, system:serviceaccounts:team-a)",
    )


class Approval(ApiModel):
    title: str | None = Field(default=None, max_length=256)
    instructions: str | None = Field(default=None, max_length=4096)
    decisions: list[GateDecisionValue] = Field(
        default_factory=lambda: list(ALL_DECISIONS), max_length=3
    )
    rework_targets: list[str] = Field(default_factory=list, max_length=MAX_DEPENDS_ON)
    expiry: ApprovalExpiry | None = None
    approvers: Approvers | None = Field(
        default=None,
        description="Who may decide this gate (B18b); unset: anyone allowed to patch the run. "
        "Enforced at admission: a decision by anyone else is refused",
    )
    required_approvals: int = Field(
        default=1,
        ge=1,
        le=MAX_REQUIRED_APPROVALS,
        description="Distinct users who must approve the gate's current request before it "
        "passes (B18c); one rework or cancel acts at once",
    )


class Node(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind == 'Approval' || !has(self.approval)",
                    "message": "approval is only allowed on nodes of kind Approval",
                    "fieldPath": ".approval",
                }
            ]
        }
    )

    id: str = Field(min_length=1, max_length=63, pattern=DNS1123_LABEL)
    agent_id: str | None = Field(default=None, max_length=128)
    objective: str | None = Field(
        default=None,
        max_length=4096,
        description="What the agent is asked to do; the whole flow is copied into the run's "
        "status when it is admitted, so 100 nodes of this length still fit etcd's limit",
    )
    depends_on: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=MAX_DEPENDS_ON
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    timeout_seconds: int | None = Field(default=None, ge=1)
    kind: NodeKind = "Task"
    approval: Approval | None = None
    executor: Executor | None = None


class AutomationSpec(ApiModel):
    """A flow of agent nodes: the spec of an Automation, or inlined in an AutomationRun."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.nodes.all(n, self.nodes.exists_one(m, m.id == n.id))",
                    "message": "nodes[].id must be unique within the flow",
                    "fieldPath": ".nodes",
                },
                {
                    "rule": "self.nodes.all(n, !has(n.dependsOn) || "
                    "n.dependsOn.all(d, self.nodes.exists(m, m.id == d)))",
                    "message": "nodes[].dependsOn must name nodes of the same flow",
                    "fieldPath": ".nodes",
                },
                {
                    "rule": "self.nodes.all(n, !has(n.approval) || "
                    "!has(n.approval.reworkTargets) || "
                    "n.approval.reworkTargets.all(t, self.nodes.exists(m, m.id == t)))",
                    "message": "nodes[].approval.reworkTargets must name nodes of the same flow",
                    "fieldPath": ".nodes",
                },
                {
                    "rule": "self.nodes.all(n, !has(n.agentId) || "
                    "(has(self.agents) && self.agents.exists(a, a.agentId == n.agentId)))",
                    "message": "nodes[].agentId must name an agent in agents[]",
                    "fieldPath": ".nodes",
                },
            ]
        }
    )

    description: str | None = Field(default=None, max_length=4096)
    creator_id: str | None = Field(default=None, max_length=256)
    agents: list[Agent] = Field(default_factory=list, max_length=MAX_AGENTS)
    workspace: Workspace | None = None
    execution: Execution = Field(default_factory=Execution)
    requires_runtime_context: bool = False
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)


class Recover(ApiModel):
    request_id: str = Field(min_length=1, max_length=253)


class GateDecision(ApiModel):
    gate: str = Field(min_length=1, max_length=63)
    decision: GateDecisionValue
    reason: str | None = Field(default=None, max_length=4096)
    request_id: str | None = Field(default=None, max_length=253)
    decided_by: str | None = Field(
        default=None,
        max_length=253,
        description="The authenticated user who added this entry; set by the operator's "
        "admission webhook, never trusted from the request",
    )


class AutomationRunSpec(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.automationRef) != has(self.automation)",
                    "message": "exactly one of automationRef or automation must be set",
                }
            ]
        }
    )

    automation_ref: LocalObjectReference | None = None
    automation: AutomationSpec | None = None
    trigger_type: TriggerType = "manual"
    runtime_context: FreeForm | None = None
    execution_profile: Profile | None = None
    desired_state: DesiredState = "Running"
    pause_reason: str | None = Field(default=None, max_length=1024)
    recover: Recover | None = None
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


# --------------------------------------------------------------------------- status


class GateApproval(ApiModel):
    user: str = Field(description="The authenticated user who approved")
    decided_at: Timestamp | None = Field(default=None, description="When the approval was applied")


class AwaitingGate(ApiModel):
    node_id: str
    title: str | None = None
    instructions: str | None = None
    decisions: list[str] = Field(default_factory=list)
    rework_targets: list[str] = Field(default_factory=list)
    requested_at: Timestamp | None = None
    metadata: FreeForm | None = None
    approvals: list[GateApproval] = Field(
        default_factory=list,
        description="Distinct users who approved this request of the gate so far (B18c)",
    )


class GateHistoryEntry(ApiModel):
    node_id: str
    decision: str
    reason: str | None = None
    decided_at: Timestamp | None = None
    decided_by: str | None = None
    request_id: str | None = None
    metadata: FreeForm | None = None


class LifecycleRecord(ApiModel):
    event: str
    """A ``LifecycleEvent``; any string is read (an older or newer operator's history)."""
    recorded_at: Timestamp
    reason: str | None = None
    stop_kind: StopKind | None = None
    metadata: FreeForm | None = None


class LastFailure(ApiModel):
    node_id: str | None = None
    reason: str | None = None
    failed_at: Timestamp | None = None
    failure_kind: str | None = None


class Checkpoint(ApiModel):
    completed_nodes: list[str] = Field(default_factory=list)
    pending_nodes: list[str] = Field(default_factory=list)
    blocked_nodes: list[str] = Field(default_factory=list)
    node_outputs: dict[str, FreeForm] = Field(default_factory=dict)
    node_attempts: dict[str, int] = Field(default_factory=dict)
    node_attempt_verdicts: dict[str, list[FreeForm]] = Field(default_factory=dict)
    awaiting_gate: AwaitingGate | None = None
    gate_history: list[GateHistoryEntry] = Field(default_factory=list)
    lifecycle_history: list[LifecycleRecord] = Field(default_factory=list)
    last_failure: LastFailure | None = None
    last_activity_at: Timestamp | None = None
    last_stale_reap_at: Timestamp | None = Field(
        default=None, description="When the run was last stale-reaped (B5), kept past trimming"
    )
    node_retry_after: dict[str, Timestamp] = Field(
        default_factory=dict, description="Node id → when a transient failure may be retried"
    )
    recover_request_id: str | None = Field(
        default=None, description="The spec.recover.requestId last acted on (B14)"
    )


class Counters(ApiModel):
    auto_resumes: int = 0
    lifecycle_records: int = Field(
        default=0, description="Lifecycle records ever written, including trimmed ones"
    )
    gate_decisions_seen: int = Field(
        default=0, description="Entries of spec.gateDecisions already applied or rejected"
    )


class RunUsage(ApiModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    estimated_cost_usd: str = "0"


class Scheduler(ApiModel):
    queue_reason: QueueReason | None = None
    queued_at: Timestamp | None = None
    retry_after: Timestamp | None = None


class ExecutionClaim(ApiModel):
    claimant: str
    claimed_at: Timestamp | None = None
    lease_expires_at: Timestamp | None = None
    epoch: int = 0


class Condition(ApiModel):
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""
    last_transition_time: Timestamp
    observed_generation: int | None = None


class AutomationRunStatus(ApiModel):
    phase: Phase | None = None
    observed_generation: int | None = None
    detail: str | None = None
    progress: str | None = Field(default=None, description="Completed nodes / all nodes")
    pause_reason: str | None = None
    resume_reason: str | None = None
    stop_kind: StopKind | None = None
    stop_reason: str | None = None
    created_at: Timestamp | None = None
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)
    counters: Counters = Field(default_factory=Counters)
    usage: RunUsage = Field(default_factory=RunUsage)
    scheduler: Scheduler | None = None
    execution_claim: ExecutionClaim | None = None
    automation_snapshot: FreeForm | None = None
    conditions: list[Condition] = Field(default_factory=list)


# --------------------------------------------------------------------------- other kinds


class AgentQuotaOverrideSpec(ApiModel):
    agent_id: str = Field(min_length=1, max_length=128)
    approved: bool = False
    approved_by: str | None = Field(default=None, max_length=256)
    reason: str | None = Field(default=None, max_length=4096)
    expires_at: Timestamp | None = None


class AgentEndpointSpec(ApiModel):
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    auth_secret_ref: SecretKeyReference | None = None
    timeout_seconds: int = Field(default=300, ge=1, le=86400)


class ObservedStatus(ApiModel):
    """Status of the kinds the operator only reads."""

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
