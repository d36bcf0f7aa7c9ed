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

The models live in one module per part of the API; this module gathers them, so that their
users import every name from here:

- ``api.base``: the group and version, ``ApiModel``, value shapes (``FreeForm``,
  ``Timestamp``, patterns), the literal types and limits, ``Condition``, ``ObservedStatus``;
- ``api.flow``: the flow of agent nodes (``AutomationSpec``, ``Node``, ``Approval``, agents,
  execution budgets);
- ``api.executors``: who runs a node's attempts (``Executor``, ``Container``, ``Simulate``)
  and the AgentEndpoint kind (``AgentEndpointSpec``);
- ``api.runs`` and ``api.run_status``: an AutomationRun's spec, and its status with the
  checkpoint;
- ``api.schedules``: the Automation kind with its schedule, and its status;
- ``api.quotas``: the AgentQuotaOverride kind.

The lifecycle's words (phases, stop kinds, node statuses) live in ``api.vocabulary`` and are
re-exported here too.
"""

from __future__ import annotations

from tandem_operator.api.base import (
    ALL_DECISIONS,
    API_VERSION,
    DECIMAL,
    DNS1123_LABEL,
    DNS1123_SUBDOMAIN,
    GROUP,
    MAX_AGENTS,
    MAX_APPROVERS,
    MAX_DEPENDS_ON,
    MAX_GATE_DECISIONS,
    MAX_NODES,
    MAX_REQUIRED_APPROVALS,
    MAX_TOKEN_COUNT,
    MAX_TTL_SECONDS,
    RFC3339,
    VERSION,
    ApiModel,
    Condition,
    ConditionStatus,
    DesiredState,
    ExpiryAction,
    FreeForm,
    GateDecisionValue,
    LocalObjectReference,
    NodeKind,
    ObservedStatus,
    Profile,
    SimulateOutcome,
    Timestamp,
    TriggerType,
)
from tandem_operator.api.executors import (
    ENV_NAME,
    LABEL_KEY,
    MAX_CONTAINER_ARGS,
    MAX_CONTAINER_ENV,
    MAX_POD_METADATA,
    QUANTITY,
    AgentEndpointSpec,
    Container,
    ContainerResources,
    EnvVar,
    EnvVarSource,
    Executor,
    Quantity,
    SecretKeyReference,
    SecretKeySelector,
    Simulate,
    Usage,
)
from tandem_operator.api.flow import (
    Agent,
    Approval,
    ApprovalExpiry,
    Approvers,
    AutomationSpec,
    Execution,
    Node,
    Workspace,
)
from tandem_operator.api.quotas import (
    AgentQuotaOverrideSpec,
)
from tandem_operator.api.run_status import (
    AutomationRunStatus,
    AwaitingGate,
    Checkpoint,
    Counters,
    ExecutionClaim,
    GateApproval,
    GateHistoryEntry,
    LastFailure,
    LifecycleRecord,
    RunUsage,
    Scheduler,
)
from tandem_operator.api.runs import (
    AutomationRunSpec,
    GateDecision,
    Recover,
)
from tandem_operator.api.schedules import (
    CRON,
    MAX_HISTORY_LIMIT,
    TIME_ZONE,
    AutomationResourceSpec,
    AutomationStatus,
    ConcurrencyPolicy,
    LabelMap,
    RunTemplate,
    Schedule,
)
from tandem_operator.api.vocabulary import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    NodeStatus,
    Phase,
    QueueReason,
    StopKind,
)

__all__ = [
    "ACTIVE_PHASES",
    "ALL_DECISIONS",
    "API_VERSION",
    "CRON",
    "DECIMAL",
    "DNS1123_LABEL",
    "DNS1123_SUBDOMAIN",
    "ENV_NAME",
    "GROUP",
    "LABEL_KEY",
    "MAX_AGENTS",
    "MAX_APPROVERS",
    "MAX_CONTAINER_ARGS",
    "MAX_CONTAINER_ENV",
    "MAX_DEPENDS_ON",
    "MAX_GATE_DECISIONS",
    "MAX_HISTORY_LIMIT",
    "MAX_NODES",
    "MAX_POD_METADATA",
    "MAX_REQUIRED_APPROVALS",
    "MAX_TOKEN_COUNT",
    "MAX_TTL_SECONDS",
    "QUANTITY",
    "RFC3339",
    "TERMINAL_PHASES",
    "TIME_ZONE",
    "VERSION",
    "Agent",
    "AgentEndpointSpec",
    "AgentQuotaOverrideSpec",
    "ApiModel",
    "Approval",
    "ApprovalExpiry",
    "Approvers",
    "AutomationResourceSpec",
    "AutomationRunSpec",
    "AutomationRunStatus",
    "AutomationSpec",
    "AutomationStatus",
    "AwaitingGate",
    "Checkpoint",
    "ConcurrencyPolicy",
    "Condition",
    "ConditionStatus",
    "Container",
    "ContainerResources",
    "Counters",
    "DesiredState",
    "EnvVar",
    "EnvVarSource",
    "Execution",
    "ExecutionClaim",
    "Executor",
    "ExpiryAction",
    "FreeForm",
    "GateApproval",
    "GateDecision",
    "GateDecisionValue",
    "GateHistoryEntry",
    "LabelMap",
    "LastFailure",
    "LifecycleRecord",
    "LocalObjectReference",
    "Node",
    "NodeKind",
    "NodeStatus",
    "ObservedStatus",
    "Phase",
    "Profile",
    "Quantity",
    "QueueReason",
    "Recover",
    "RunTemplate",
    "RunUsage",
    "Schedule",
    "Scheduler",
    "SecretKeyReference",
    "SecretKeySelector",
    "Simulate",
    "SimulateOutcome",
    "StopKind",
    "Timestamp",
    "TriggerType",
    "Usage",
    "Workspace",
]
