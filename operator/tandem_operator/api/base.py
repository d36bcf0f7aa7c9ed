"""What every kind of the API shares: the group, the base model, value shapes and limits.

See ``tandem_operator.api.models`` for how the models map to the CRDs and the API docs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

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


class LocalObjectReference(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    """Name of the object, in the same namespace."""


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


class ObservedStatus(ApiModel):
    """Status of the kinds the operator only reads."""

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Conditions of the object."""
