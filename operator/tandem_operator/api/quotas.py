"""The AgentQuotaOverride kind: approval to exceed the budgets of a flow's ``execution``."""

from __future__ import annotations

from pydantic import Field

from tandem_operator.api.base import RFC3339, ApiModel, Timestamp


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
