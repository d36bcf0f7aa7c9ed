"""A flow of agent nodes: the spec of an Automation, or inlined in an AutomationRun."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from tandem_operator.api.base import (
    ALL_DECISIONS,
    DECIMAL,
    DNS1123_LABEL,
    MAX_AGENTS,
    MAX_APPROVERS,
    MAX_DEPENDS_ON,
    MAX_NODES,
    MAX_REQUIRED_APPROVALS,
    ApiModel,
    ExpiryAction,
    GateDecisionValue,
    LocalObjectReference,
    NodeKind,
    Profile,
)
from tandem_operator.api.executors import Container, Executor


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
