"""Operator settings, read once from the environment at start-up (contract §4).

A numeric value that is missing, unparsable, zero or negative means the default, as in
the Tandem engine this lifecycle comes from. An enumerated value that is not one of its
choices is a configuration error: the operator refuses to start and names the variable,
because guessing a restart-recovery policy could fail or re-run live work.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

RestartRecovery = Literal["fail", "requeue"]


class SettingsError(ValueError):
    """A setting has a value the operator cannot run with."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    approval_gate_stale_after_ms: int = 86_400_000
    stale_auto_resume_window_ms: int = 1_200_000
    stale_auto_resume_max_attempts: int = 2
    stale_auto_resume_disabled: bool = False
    stale_running_ms: int = 600_000
    scheduler_max_concurrent_runs: int = 8
    restart_recovery: RestartRecovery = "fail"
    token_cost_per_1k_usd: Decimal = Decimal(0)
    lifecycle_timer_interval_seconds: int = 30
    lifecycle_history_limit: int = 200
    claim_lease_seconds: int = 15
    """How long an operator's Lease (and so its execution claims) lives without renewal."""
    shutdown_grace_seconds: int = 20
    """B15: how long in-flight attempts may run on after a graceful shutdown begins."""
    finished_run_ttl_seconds: int | None = None
    """B20b: seconds a finished run is kept when its spec sets no ttlSecondsAfterFinished;
    ``None`` (unset) keeps finished runs."""
    container_executor_disabled: bool = False
    """``TANDEM_DISABLE_CONTAINER_EXECUTOR`` (any value): no Pods; container nodes fail to
    start, saying the executor is off."""
    pod_keep_seconds: int = 0
    """``TANDEM_POD_KEEP_SECONDS``: how long an ended container attempt's Pod is kept (for
    ``kubectl logs``) before the operator deletes it; 0 deletes it at once."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def positive(name: str, default: int) -> int:
            value = optional_positive(name)
            return default if value is None else value

        def optional_positive(name: str) -> int | None:
            raw = env.get(name, "").strip()
            try:
                value = int(raw)
            except ValueError:
                return None
            return value if value > 0 else None

        recovery = env.get("TANDEM_RESTART_RECOVERY", "").strip() or defaults.restart_recovery
        if recovery not in ("fail", "requeue"):
            raise SettingsError(
                f"TANDEM_RESTART_RECOVERY={recovery!r} is not one of 'fail', 'requeue'"
            )
        raw_cost = env.get("TANDEM_TOKEN_COST_PER_1K_USD", "").strip()
        try:
            cost = Decimal(raw_cost) if raw_cost else defaults.token_cost_per_1k_usd
        except InvalidOperation:
            cost = defaults.token_cost_per_1k_usd
        if not cost.is_finite() or cost <= 0:
            cost = defaults.token_cost_per_1k_usd
        return cls(
            approval_gate_stale_after_ms=positive(
                "TANDEM_APPROVAL_GATE_STALE_AFTER_MS", defaults.approval_gate_stale_after_ms
            ),
            stale_auto_resume_window_ms=positive(
                "TANDEM_STALE_AUTO_RESUME_WINDOW_MS", defaults.stale_auto_resume_window_ms
            ),
            stale_auto_resume_max_attempts=positive(
                "TANDEM_STALE_AUTO_RESUME_MAX_ATTEMPTS", defaults.stale_auto_resume_max_attempts
            ),
            stale_auto_resume_disabled="TANDEM_DISABLE_STALE_AUTO_RESUME" in env,
            stale_running_ms=positive("TANDEM_STALE_RUNNING_MS", defaults.stale_running_ms),
            scheduler_max_concurrent_runs=positive(
                "TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS", defaults.scheduler_max_concurrent_runs
            ),
            restart_recovery="requeue" if recovery == "requeue" else "fail",
            token_cost_per_1k_usd=cost,
            lifecycle_timer_interval_seconds=positive(
                "TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS",
                defaults.lifecycle_timer_interval_seconds,
            ),
            lifecycle_history_limit=positive(
                "TANDEM_LIFECYCLE_HISTORY_LIMIT", defaults.lifecycle_history_limit
            ),
            claim_lease_seconds=positive(
                "TANDEM_CLAIM_LEASE_SECONDS", defaults.claim_lease_seconds
            ),
            shutdown_grace_seconds=positive(
                "TANDEM_SHUTDOWN_GRACE_SECONDS", defaults.shutdown_grace_seconds
            ),
            finished_run_ttl_seconds=optional_positive("TANDEM_FINISHED_RUN_TTL_SECONDS"),
            container_executor_disabled="TANDEM_DISABLE_CONTAINER_EXECUTOR" in env,
            pod_keep_seconds=positive("TANDEM_POD_KEEP_SECONDS", defaults.pod_keep_seconds),
        )
