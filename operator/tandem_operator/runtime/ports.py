"""What the runtime needs from the outside world, as protocols it is handed.

The reconciler is constructed with an API client, a clock, an event sink, a membership
(leadership and live instances) and an executor registry; the operator passes the real
ones (``KubeApi``, ``WallClock``, ``EventRecorder``, ``Leadership``), a unit test passes
fakes and runs a reconcile in milliseconds (tests/unit/test_reconciler.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from tandem_operator.lifecycle.contract import Event


class KubeClient(Protocol):
    """The calls the reconciler makes (``runtime.kubeapi.KubeApi`` implements them)."""

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]: ...

    def list_pages(
        self, *, plural: str, namespace: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None: ...


class RunSource(Protocol):
    """The listing and watch of runs (``runtime.runwatch``; ``KubeApi`` implements them)."""

    def list_versioned(
        self, *, plural: str, namespace: str | None
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]: ...

    def watch(
        self, path: str, query: Mapping[str, str], resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...


class PodReader(Protocol):
    """The Pod calls of C5 adoption (``runtime.kubeapi.KubeApi`` implements them)."""

    async def list_pods(self, *, namespace: str, label_selector: str) -> list[dict[str, Any]]: ...

    async def delete_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None: ...


class Clock(Protocol):
    """Wall-clock milliseconds (rules) and monotonic seconds (latency metrics)."""

    def now_ms(self) -> int: ...

    def monotonic(self) -> float: ...


def wall_ms() -> int:
    """The current time in milliseconds since the epoch: the one place it is read."""
    return int(time.time() * 1000)


class WallClock:
    def now_ms(self) -> int:
        return wall_ms()

    def monotonic(self) -> float:
        return time.monotonic()


class EventSink(Protocol):
    """Posts a Kubernetes Event about an object (best effort, never blocks a reconcile)."""

    def __call__(self, regarding: Mapping[str, Any], event: Event) -> None: ...


class Membership(Protocol):
    """Whether this instance leads, and which instances are alive (B1's orphan test)."""

    @property
    def is_leader(self) -> bool: ...

    def live_instances(self) -> frozenset[str]: ...
