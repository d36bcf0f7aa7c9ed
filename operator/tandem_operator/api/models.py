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

Every field has a description: the docstring line under it (``use_attribute_docstrings``)
or ``Field(description=...)``. It is what ``kubectl explain`` shows and what the field
tables in ``docs/api.md`` say, so it gives the meaning and units; the generator adds the
default, range, length, pattern and allowed values from the schema itself.
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
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DECIMAL = r"^[0-9]+(\.[0-9]+)?$"
RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
"""The shape of an RFC 3339 date-time; whether the date exists is checked where it is read."""
Timestamp = str
"""RFC 3339 time in UTC with milliseconds (``2026-11-24T01:02:03.456Z``); each field says what
it is the time of."""

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
MAX_TOKEN_COUNT = 10**12
"""The most tokens one usage report may count, and one attempt in all. An executor that
reports more is broken (no model call spends a trillion tokens), and sums past the API
server's 64-bit integers would make every status write fail."""
MAX_TTL_SECONDS = 31_536_000
"""One year: the longest time to live a run or the history settings can ask for."""
MAX_APPROVERS = 64
MAX_REQUIRED_APPROVALS = 5


class ApiModel(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_attribute_docstrings=True,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optionals omitted."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- spec


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the object, in the same namespace."""


class SecretKeyReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret, in the same namespace."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret's data whose value is used."""


ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
MAX_CONTAINER_ARGS = 64
MAX_CONTAINER_ENV = 64
MAX_POD_METADATA = 32

Quantity = Annotated[str, Field(max_length=64, pattern=QUANTITY)]


class SecretKeySelector(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret, in the run's namespace."""
    key: str = Field(min_length=1, max_length=253)
    """Key in the Secret's data whose value becomes the variable."""


class EnvVarSource(ApiModel):
    secret_key_ref: SecretKeySelector
    """A key of a Secret in the run's namespace; the kubelet reads it, the operator never does."""


class EnvVar(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.value) && has(self.valueFrom))",
                    "message": "env sets value or valueFrom, not both",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME)
    """Name of the environment variable; TANDEM_ATTEMPT is set by the operator."""
    value: str | None = Field(default=None, max_length=4096)
    """The variable's value."""
    value_from: EnvVarSource | None = None
    """Where the value comes from instead: a Secret key (secretKeyRef)."""


class ContainerResources(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """Resources the scheduler reserves, e.g. {cpu: 100m, memory: 128Mi}; quote whole numbers
    ("1")."""
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    """Resources the container may not exceed, e.g. {memory: 512Mi}; quote whole numbers ("2")."""


class Container(ApiModel):
    image: str = Field(min_length=1, max_length=512)
    """Container image that runs one attempt; it reads the attempt from TANDEM_ATTEMPT and writes
    one JSON result to its termination message (/dev/termination-log)."""
    command: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=MAX_CONTAINER_ARGS
    )
    """Entrypoint; the image's ENTRYPOINT when unset."""
    args: list[Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, max_length=MAX_CONTAINER_ARGS
    )
    """Arguments to the entrypoint; the image's CMD when unset."""
    env: list[EnvVar] = Field(default_factory=list, max_length=MAX_CONTAINER_ENV)
    """Environment variables of the container, with value or valueFrom.secretKeyRef."""
    resources: ContainerResources | None = None
    """Compute resources of the container (requests and limits)."""
    service_account_name: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN
    )
    """ServiceAccount the Pod runs as; without it no API token is mounted in the Pod."""
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Hard limit of one attempt in seconds; the Pod is then stopped and the attempt fails."""
    pod_labels: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY}') && "
                    "!k.startsWith('automation.tandem.dev/'))",
                    "message": "podLabels keys must be label keys outside automation.tandem.dev/",
                }
            ]
        },
    )
    """Extra labels of the attempt's Pod; the automation.tandem.dev/ labels are the operator's."""
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=MAX_POD_METADATA,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, size(k) <= 317 && k.matches('{LABEL_KEY}'))",
                    "message": "podAnnotations keys must be valid annotation keys",
                }
            ]
        },
    )
    """Annotations of the attempt's Pod, e.g. for a service mesh or a test's fake Node."""


class Agent(ApiModel):
    agent_id: str = Field(min_length=1, max_length=128)
    """Id that nodes name in nodes[].agentId; an AgentQuotaOverride for this id covers the run (B7,
    B8)."""
    display_name: str | None = Field(default=None, max_length=256)
    """Human-readable name of the agent; shown, not acted on."""
    endpoint_ref: LocalObjectReference | None = None
    """The AgentEndpoint (same namespace) that runs this agent's nodes unless a node sets its own
    executor."""
    container: Container | None = None
    """The container that runs this agent's nodes unless a node sets its own executor; used when
    endpointRef is not set."""


class Workspace(ApiModel):
    root: str = Field(min_length=1, max_length=1024)
    """Workspace-lock key: runs with the same root never run at the same time (B9)."""


class Execution(ApiModel):
    profile: Profile = "Strict"
    """Execution profile, recorded in the run; not acted on in this version."""
    max_parallel_nodes: int = Field(default=1, ge=1, le=16)
    """Node attempts of one run in flight at once."""
    max_total_runtime_seconds: int | None = Field(default=None, ge=1)
    """Runtime budget in seconds, counted from status.startedAt; exceeding it pauses the run
    GuardrailStopped (B8)."""
    max_total_tokens: int | None = Field(default=None, ge=1)
    """Token budget (prompt plus completion tokens); exceeding it pauses the run GuardrailStopped
    (B8)."""
    max_total_cost_usd: str | None = Field(default=None, pattern=DECIMAL, max_length=32)
    """Cost budget in US dollars as a decimal string such as 12.50, compared with
    status.usage.estimatedCostUsd (B8)."""


class Usage(ApiModel):
    prompt_tokens: int = Field(default=0, ge=0, le=MAX_TOKEN_COUNT)
    """Prompt tokens the simulated attempt reports."""
    completion_tokens: int = Field(default=0, ge=0, le=MAX_TOKEN_COUNT)
    """Completion tokens the simulated attempt reports."""


class Simulate(ApiModel):
    outcome: SimulateOutcome = "completed"
    """Result of every simulated attempt; stall never reports and is reaped as stale (B5)."""
    after_seconds: float = Field(default=0, ge=0, le=86400)
    """Seconds the simulated attempt takes before it reports."""
    output: FreeForm | None = None
    """The node output the simulated attempt reports (free-form object)."""
    usage: Usage | None = None
    """Token usage the simulated attempt reports."""


class Executor(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.endpointRef) ? 1 : 0) + (has(self.simulate) ? 1 : 0)"
                    " + (has(self.container) ? 1 : 0) == 1",
                    "message": "executor must set exactly one of endpointRef, simulate or "
                    "container",
                }
            ]
        }
    )

    endpoint_ref: LocalObjectReference | None = None
    """An AgentEndpoint in the same namespace that runs the node's attempts."""
    simulate: Simulate | None = None
    """A deterministic stand-in for an agent, for tests, demos and dry runs."""
    container: Container | None = None
    """A container image that runs each attempt in its own Pod in the run's namespace."""


class ApprovalExpiry(ApiModel):
    after_seconds: int = Field(ge=1)
    """Seconds after the gate was requested at which the action applies."""
    action: ExpiryAction
    """What happens when nobody decided in time: cancel cancels the run, resume approves the gate,
    remind records approval_gate_reminder_due."""


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
    """Title shown in status.checkpoint.awaitingGate."""
    instructions: str | None = Field(default=None, max_length=4096)
    """Instructions for the approver, shown in status.checkpoint.awaitingGate."""
    decisions: list[GateDecisionValue] = Field(
        default_factory=lambda: list(ALL_DECISIONS), max_length=3
    )
    """The decisions this gate accepts; others are rejected with a Warning Event."""
    rework_targets: list[str] = Field(default_factory=list, max_length=MAX_DEPENDS_ON)
    """Node ids that a rework decision sends back; empty means the gate's dependsOn. Each must be
    upstream of the gate."""
    expiry: ApprovalExpiry | None = None
    """What happens when nobody decides in time; without it the gate waits and is only marked stale
    (B4)."""
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
    """Node id: a DNS-1123 label, unique in the flow."""
    agent_id: str | None = Field(default=None, max_length=128)
    """The agent that runs this node; must name an agent in agents[]."""
    objective: str | None = Field(
        default=None,
        max_length=4096,
        description="What the agent is asked to do; the whole flow is copied into the run's "
        "status when it is admitted, so 100 nodes of this length still fit etcd's limit",
    )
    depends_on: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list, max_length=MAX_DEPENDS_ON
    )
    """Ids of nodes in the same flow that must complete before this node runs. A cycle is refused
    by the admission webhook where it runs, and otherwise fails the run when it is admitted."""
    max_attempts: int = Field(default=3, ge=1, le=10)
    """Attempts before a needs_repair outcome fails the node (B10)."""
    timeout_seconds: int | None = Field(default=None, ge=1)
    """Node idle timeout in seconds: raises the stale threshold (B5) for this node to timeoutSeconds
    + 60 s when that is higher."""
    kind: NodeKind = "Task"
    """Task runs an agent; Approval waits for a decision in spec.gateDecisions (B11)."""
    approval: Approval | None = None
    """The approval gate's settings; only on nodes of kind Approval."""
    executor: Executor | None = None
    """Who runs the node's attempts; set exactly one field. Without it, the agent's endpointRef."""


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
    """What the flow does, for people."""
    creator_id: str | None = Field(default=None, max_length=256)
    """Who owns the flow; an AgentQuotaOverride for this id covers the run (B7, B8)."""
    agents: list[Agent] = Field(default_factory=list, max_length=MAX_AGENTS)
    """The agents the nodes may name."""
    workspace: Workspace | None = None
    """The workspace the flow works in; its root is the workspace-lock key (B9)."""
    execution: Execution = Field(default_factory=Execution)
    """Execution profile, parallelism and budgets of a run of this flow."""
    requires_runtime_context: bool = False
    """When true, a run without spec.runtimeContext fails at admission (B9)."""
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)
    """The nodes of the flow, a directed acyclic graph through dependsOn."""


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


# --------------------------------------------------------------------------- status


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


class Condition(ApiModel):
    type: str
    """Condition type: Succeeded, Ready, Reconciling, Stalled or AwaitingApproval for runs; Ready or
    Stalled for Automations."""
    status: ConditionStatus
    """Whether the condition holds."""
    reason: str
    """A CamelCase code for the condition's last transition."""
    message: str = ""
    """The reason in words."""
    last_transition_time: Timestamp
    """When status last changed."""
    observed_generation: int | None = None
    """The metadata.generation the condition was set from."""


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


# --------------------------------------------------------------------------- other kinds


class AgentQuotaOverrideSpec(ApiModel):
    """Approval for an agent or a flow's creator to exceed the budgets of their runs."""

    agent_id: str = Field(min_length=1, max_length=128)
    """An agent id, or a flow's creatorId, that the override covers."""
    approved: bool = False
    """Only approved overrides count (B7, B8)."""
    approved_by: str | None = Field(default=None, max_length=256)
    """Who approved, for the audit trail."""
    reason: str | None = Field(default=None, max_length=4096)
    """Why, for the audit trail."""
    expires_at: Timestamp | None = Field(default=None, max_length=64, pattern=RFC3339)
    """The override stops counting after this time, an RFC 3339 date-time such as
    2026-12-01T00:00:00Z; a value the operator cannot read counts as expired."""


class AgentEndpointSpec(ApiModel):
    """An HTTP agent engine that executes nodes (see the agent endpoint protocol)."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    """Where attempts are POSTed."""
    auth_secret_ref: SecretKeyReference | None = None
    """A Secret key in the same namespace whose value is sent as Authorization: Bearer <value>."""
    timeout_seconds: int = Field(default=300, ge=1, le=86400)
    """Longest silence in seconds allowed while connecting and between two lines of the stream;
    total duration is not limited."""


class ObservedStatus(ApiModel):
    """Status of the kinds the operator only reads."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Conditions of the object."""


# --------------------------------------------------------------------------- schedules (§9)

CRON = (
    r"^(@(hourly|daily|weekly|monthly)|@every [1-9][0-9]{0,5}[smh]"
    r"|[0-9A-Za-z*,/?#-]+( +[0-9A-Za-z*,/?#-]+){4})$"
)
"""Five cron fields, a shorthand, or ``@every <n>s|m|h``; field ranges are checked in Python."""
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"
"""The shape of an IANA zone name; whether the zone exists is checked in Python."""
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
MAX_HISTORY_LIMIT = 100
LabelMap = Annotated[dict[str, str], Field(max_length=64)]


class RunTemplate(ApiModel):
    """What every run the schedule creates carries, besides what the operator sets."""

    labels: LabelMap | None = None
    """Labels for each run; automation.tandem.dev/automation is always set by the operator."""
    annotations: LabelMap | None = None
    """Annotations for each run; automation.tandem.dev/scheduled-at is always set by the
    operator."""
    runtime_context: FreeForm | None = None
    """spec.runtimeContext of each run: free-form data passed to every node attempt."""


class Schedule(ApiModel):
    """When an Automation runs by itself: one AutomationRun per due time (B19a)."""

    cron: str = Field(min_length=1, max_length=128, pattern=CRON)
    """When runs are due: five cron fields (minute hour day-of-month month day-of-week) read
    in timeZone, one of @hourly @daily @weekly @monthly, or @every <n>s|m|h for a fixed
    interval counted from the Unix epoch. Field ranges are checked by the operator, which
    reports a schedule it cannot use as Stalled."""
    time_zone: str = Field(default="UTC", min_length=1, max_length=64, pattern=TIME_ZONE)
    """IANA time zone name (such as Europe/Berlin) the cron fields are read in. A local time
    that does not exist (clocks go forward) is skipped; a local time that occurs twice
    (clocks go back) runs once, at its first occurrence."""
    concurrency_policy: ConcurrencyPolicy = "Forbid"
    """What a due time does while a run of the schedule is not terminal: Allow starts another
    run, Forbid skips the due time (Event ScheduleSkipped), Replace cancels the running ones
    (desiredState Cancelled) and starts the new one (B19c)."""
    starting_deadline_seconds: int | None = Field(default=None, ge=1, le=MAX_TTL_SECONDS)
    """A due time missed by more than this many seconds (the operator was down) is skipped;
    without it, the latest missed time starts however late (B19d)."""
    suspend: bool = False
    """When true the schedule starts nothing, and the times it misses are not caught up later;
    runs already started go on."""
    successful_runs_history_limit: int = Field(default=3, ge=0, le=MAX_HISTORY_LIMIT)
    """Completed runs of the schedule to keep; older ones are deleted (B20a)."""
    failed_runs_history_limit: int = Field(default=1, ge=0, le=MAX_HISTORY_LIMIT)
    """Failed, Blocked and Cancelled runs of the schedule to keep; older ones are deleted
    (B20a)."""
    run_template: RunTemplate | None = None
    """Labels, annotations and runtime context for the runs the schedule creates."""


class AutomationResourceSpec(AutomationSpec):
    """A reusable flow of agent nodes; runs reference it by name, and a schedule starts runs of
    it by itself."""

    schedule: Schedule | None = None
    """Starts runs of this Automation on a cron schedule; without it, runs are started by
    creating AutomationRuns that reference it."""


class AutomationStatus(ApiModel):
    """What the operator knows of an Automation's schedule (B19b)."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    last_schedule_time: Timestamp | None = None
    """The due time of the latest run the schedule created."""
    next_schedule_time: Timestamp | None = None
    """The next due time; unset while suspended or when the schedule cannot be used."""
    active_runs: list[str] = Field(default_factory=list)
    """Names of the schedule's runs that are not terminal, oldest first."""
    active_run_count: int = 0
    """How many runs of the schedule are not terminal (the length of activeRuns)."""
    last_run_name: str | None = None
    """Name of the latest run the schedule created."""
    last_considered_time: Timestamp | None = None
    """The time up to which due times have been dealt with: a run was started for them or they
    were skipped (Forbid, suspend, a missed deadline). Due times up to it are never started
    again. Set to the time the schedule was first seen, then moved to each due time."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready (the schedule is in use; False with reason Suspended while suspended) and Stalled
    (True when the schedule cannot be used, such as an invalid cron field or time zone)."""
