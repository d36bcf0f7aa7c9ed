"""The contract between the reconciler and the things that run one attempt of one node.

An *executor* takes an :class:`AttemptRequest` (which run, which node, which attempt, the
objective, the outputs of the upstream nodes) and produces an :class:`AttemptResult`.  It
knows nothing about Kubernetes: the reconciler builds the request from the run's status,
awaits :meth:`Executor.run` inside a task it owns, and writes the result back.

Design points:

* **Liveness is reported, not inferred.**  While an attempt runs the executor calls
  :meth:`ExecutorActivity.activity` on every sign of life and :meth:`ExecutorActivity.usage`
  whenever token usage is reported, so the reconciler can persist heartbeats and running
  token totals and reap attempts that stopped talking.  The returned result also carries the
  summed usage so a caller that ignores the callbacks still gets the totals.
* **Two kinds of failure, two exception types.**  :class:`TransientExecutorError` means "the
  attempt did not get an answer, try again later" (network trouble, 5xx/429, a stream cut
  short, a garbled line); the caller retries with :func:`backoff_seconds`.
  :class:`ExecutorConfigError` means "trying again will not help" (4xx, a protocol violation
  by the agent, an impossible configuration); the caller fails the attempt with the message.
  An *agent-reported* failure is neither: it is a normal :class:`AttemptResult` whose status
  is ``failed`` (or ``blocked`` / ``needs_repair``).
* **Cancellation is the stop signal.**  Executors must let :class:`asyncio.CancelledError`
  propagate and release what they hold (sockets, timers) promptly; there is no separate
  ``stop()`` method.

This module is pure: dataclasses, protocols, exceptions and one arithmetic helper.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from tandem_operator.api.models import MAX_TOKEN_COUNT
from tandem_operator.lifecycle.retry import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    BACKOFF_FACTOR,
    backoff_seconds,
)

__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "BACKOFF_FACTOR",
    "MAX_TOKEN_COUNT",
    "RESULT_STATUSES",
    "AttemptRequest",
    "AttemptResult",
    "Executor",
    "ExecutorActivity",
    "ExecutorConfigError",
    "TransientExecutorError",
    "backoff_seconds",
]

RESULT_STATUSES: Final[frozenset[str]] = frozenset(
    {"completed", "needs_repair", "failed", "blocked"}
)
"""The statuses an attempt can end with; anything else from an agent is a protocol error."""


@dataclass(frozen=True, kw_only=True)
class AttemptRequest:
    """Everything an executor needs to run one attempt of one node."""

    run_namespace: str
    run_name: str
    run_uid: str
    node_id: str
    attempt: int
    objective: str
    inputs: Mapping[str, Any]
    """Upstream node id -> that node's output object."""
    runtime_context: Mapping[str, Any]
    agent: Mapping[str, Any]
    """The agent entry of the flow (``{agentId, displayName, ...}``)."""


@dataclass(frozen=True, kw_only=True)
class AttemptResult:
    """How an attempt ended, as reported by the agent (or the simulation)."""

    status: str
    """One of :data:`RESULT_STATUSES`."""
    output: dict[str, Any]
    """The node's output object; always contains ``"status" == status``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ExecutorActivity(Protocol):
    """Callbacks an executor invokes while an attempt runs (synchronously, on its loop)."""

    def activity(self) -> None:
        """Any sign of life from the agent (for HTTP: every NDJSON line)."""
        ...

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Token usage reported by the agent; increments, not running totals."""
        ...


class TransientExecutorError(Exception):
    """The attempt got no answer but might on a later try: the caller retries with backoff.

    Dropped stream, connection refused/reset, idle timeout, HTTP 5xx or 429, a malformed line.
    """


class ExecutorConfigError(Exception):
    """A permanent problem: retrying cannot help, so the caller fails the attempt.

    HTTP 4xx other than 429, an unknown result status, an oversized line or output, an
    invalid executor configuration.
    """


class Executor(Protocol):
    """Runs one attempt; raises the two error types above, propagates cancellation."""

    async def run(self, request: AttemptRequest, activity: ExecutorActivity) -> AttemptResult:
        """Run the attempt described by ``request`` to its end."""
        ...
