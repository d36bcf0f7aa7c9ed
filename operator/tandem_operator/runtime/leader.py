"""Leader election and the operator instance's heartbeat: one coordination.k8s.io Lease.

Every operator process has an identity (``<host>-<random>``) and competes for its install's
Lease (:func:`lease_name`): ``tandem-operator`` for an operator that watches every namespace
or only its Lease's, ``tandem-operator-<digest of the watched namespaces>`` otherwise, or the
name given with ``--lease-name`` (the chart passes its release's full name). Operators that
watch different namespaces therefore never wait for each other's Lease, wherever it lives.
The holder is the only instance that admits, executes, recovers and settles runs; the
others keep their caches warm and take over when the Lease expires. The same Lease is the heartbeat behind ``status.executionClaim``: a claim
is live only while its claimant holds an unexpired Lease, so after a crash the next leader
sees the dead instance's runs as orphaned and applies restart recovery (B1, B1r, B2).

Why a Lease and not kopf peering: peering pauses every peer but the highest-priority one,
but it has no notion of an expiring heartbeat that other status can point at, needs two
extra cluster-scoped CRDs, and freezes by priority rather than by who is alive. A Lease is
the Kubernetes-native primitive for exactly "one holder at a time, with expiry".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

from tandem_operator.runtime.kubeapi import Conflict, KubeApi

log = logging.getLogger(__name__)

LEASE_NAME = "tandem-operator"
"""The Lease of an operator that watches every namespace."""


def lease_name(namespaces: Sequence[str] | None, *, lease_namespace: str) -> str:
    """The default Lease name for an operator watching ``namespaces`` (``None``: all).

    ``tandem-operator`` when it watches every namespace, or only the one its Lease lives
    in; else ``tandem-operator-<digest of the namespaces>``. Operators with the same set
    contend for one Lease (one acts, the others stand by); operators with different sets
    get different Leases and all act, even when their Leases share a namespace.
    """
    if not namespaces or set(namespaces) == {lease_namespace}:
        return LEASE_NAME
    digest = hashlib.sha256(",".join(sorted(set(namespaces))).encode()).hexdigest()[:10]
    return f"{LEASE_NAME}-{digest}"


def new_identity() -> str:
    host = socket.gethostname().split(".")[0][:40] or "operator"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def lease_expired(*, renew: datetime | None, duration_s: int | None, now: datetime) -> bool:
    if renew is None or duration_s is None:
        return True
    if renew.tzinfo is None:
        renew = renew.replace(tzinfo=UTC)
    return (now - renew).total_seconds() > duration_s


class Leadership:
    def __init__(
        self,
        api: KubeApi,
        *,
        identity: str,
        namespace: str,
        name: str = LEASE_NAME,
        lease_seconds: int,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.api = api
        self.identity = identity
        self.namespace = namespace
        self.name = name
        self.lease_seconds = lease_seconds
        # A renewal (a read and a replace, each bounded) that hangs must fail before the Lease
        # runs out: renewals start every third of it, so the last good one plus a failing
        # one take at most 1/3 + 2 * (1/6 + 1 s) of a Lease, and this leader stands down
        # before a standby may take over.
        self._call_timeout_s = max(1.0, lease_seconds / 6)
        self.on_change = on_change
        self.is_leader = False
        self._stopping = False

    def live_instances(self) -> frozenset[str]:
        return frozenset({self.identity}) if self.is_leader else frozenset()

    async def run(self) -> None:
        """Acquire and renew until cancelled; never raises on API trouble."""
        period = max(1.0, self.lease_seconds / 3)
        while not self._stopping:
            try:
                leader = await self._try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("Lease renewal failed lease=%s error=%s", self.name, exc)
                leader = False
            await self._set(leader)
            await asyncio.sleep(period if leader else max(1.0, period / 2))

    async def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.info("Leadership changed identity=%s leader=%s", self.identity, leader)
            await self.on_change(leader)

    async def _try_acquire(self) -> bool:
        now = datetime.now(UTC)
        lease: Any = await self.api.read_lease(
            namespace=self.namespace, name=self.name, timeout_s=self._call_timeout_s
        )
        if lease is None:
            body = V1Lease(
                metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.lease_seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                await self.api.create_lease(
                    namespace=self.namespace, body=body, timeout_s=self._call_timeout_s
                )
            except Conflict:
                return False
            return True
        spec = lease.spec
        holder = spec.holder_identity
        if holder != self.identity and not lease_expired(
            renew=spec.renew_time, duration_s=spec.lease_duration_seconds, now=now
        ):
            return False
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            log.info("Taking over lease=%s from=%s", self.name, holder)
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = self.lease_seconds
        try:
            await self.api.replace_lease(
                namespace=self.namespace,
                name=self.name,
                body=lease,
                timeout_s=self._call_timeout_s,
            )
        except Conflict:
            return False
        return True

    async def release(self) -> None:
        """Give the Lease up on a graceful shutdown so a standby takes over at once."""
        self._stopping = True
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease: Any = await self.api.read_lease(
                namespace=self.namespace, name=self.name, timeout_s=self._call_timeout_s
            )
            if lease is not None and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                await self.api.replace_lease(
                    namespace=self.namespace,
                    name=self.name,
                    body=lease,
                    timeout_s=self._call_timeout_s,
                )
        except Exception as exc:
            log.warning("Lease release failed lease=%s error=%s", self.name, exc)
