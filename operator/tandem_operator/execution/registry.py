"""Executor kinds: which executor runs a node, and how it is built for one attempt.

An executor kind is one module (``simulate``, ``http`` …) plus one :class:`ExecutorKind`
entry in :func:`default_registry`. The runtime receives a registry and asks it for each
attempt; it never names a kind itself, and the metrics read the kind's name from here.

A node's executor is chosen in order: the node's own ``executor`` block (whichever of its
fields is set), then its agent's default (the agent's ``endpointRef``, else its
``container``). A kind builds its
executor from the node, the agent and an :class:`ExecutorContext` (reads from the API
server, a shared HTTP session), so a test can hand the runtime fake kinds, or real kinds
over a fake context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from tandem_operator.api.models import Agent, AgentEndpointSpec, Container, Node
from tandem_operator.execution.container import ContainerExecutor, PodClient, PodEvent
from tandem_operator.execution.http import AgentEndpointExecutor
from tandem_operator.execution.simulate import SimulateExecutor
from tandem_operator.execution.types import Executor, ExecutorConfigError

NONE_KIND = "none"
"""The metrics' label for a node no kind claims (its attempt fails to start)."""


class ExecutorContext(Protocol):
    """What building an executor may read or share; the runtime implements it."""

    async def get_endpoint(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The AgentEndpoint object, or ``None`` when it does not exist."""
        ...

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret; ``None`` when the key is missing; ``LookupError`` when the
        Secret is."""
        ...

    def http_session(self) -> aiohttp.ClientSession:
        """The session shared by executors that speak HTTP."""
        ...


@dataclass(frozen=True, kw_only=True)
class Target:
    """One attempt's node, its agent and where the run lives."""

    namespace: str
    node: Node
    agent: Agent | None


class ExecutorKind(Protocol):
    """One way to run a node's attempts."""

    name: str
    """The ``executor`` label in metrics, e.g. ``simulate``."""

    def claims(self, target: Target) -> bool:
        """This kind runs ``target``'s node (decided from the node and its agent alone)."""
        ...

    async def build(self, target: Target, context: ExecutorContext) -> Executor:
        """An executor for one attempt; raises ``ExecutorConfigError`` when it cannot."""
        ...


class SimulateKind:
    """``executor.simulate``: a deterministic outcome after a delay (tests, demos)."""

    name = "simulate"

    def claims(self, target: Target) -> bool:
        ex = target.node.executor
        return ex is not None and ex.simulate is not None

    async def build(self, target: Target, context: ExecutorContext) -> Executor:
        ex = target.node.executor
        sim = ex.simulate if ex is not None else None
        if sim is None:
            raise ExecutorConfigError(f"node `{target.node.id}` has no executor.simulate")
        return SimulateExecutor(
            outcome=sim.outcome,
            after_seconds=sim.after_seconds,
            output=sim.output or {},
            prompt_tokens=sim.usage.prompt_tokens if sim.usage else 0,
            completion_tokens=sim.usage.completion_tokens if sim.usage else 0,
        )


class AgentEndpointKind:
    """``executor.endpointRef`` or the agent's ``endpointRef``: the NDJSON protocol (§6)."""

    name = "agent_endpoint"

    @staticmethod
    def endpoint_name(target: Target) -> str | None:
        ex = target.node.executor
        if ex is not None and ex.endpoint_ref is not None:
            return ex.endpoint_ref.name
        if ex is not None and (ex.simulate is not None or ex.container is not None):
            return None
        agent = target.agent
        return agent.endpoint_ref.name if agent is not None and agent.endpoint_ref else None

    def claims(self, target: Target) -> bool:
        return self.endpoint_name(target) is not None

    async def build(self, target: Target, context: ExecutorContext) -> Executor:
        name = self.endpoint_name(target)
        assert name is not None
        namespace = target.namespace
        body = await context.get_endpoint(namespace, name)
        if body is None:
            raise ExecutorConfigError(f"AgentEndpoint {name} not found in namespace {namespace}")
        endpoint = AgentEndpointSpec.model_validate(body.get("spec") or {})
        token = None
        if endpoint.auth_secret_ref is not None:
            ref = endpoint.auth_secret_ref
            try:
                token = await context.read_secret_key(
                    namespace=namespace, name=ref.name, key=ref.key
                )
            except LookupError:
                raise ExecutorConfigError(
                    f"Secret {ref.name} of AgentEndpoint {name} not found in namespace {namespace}"
                ) from None
            if token is None:
                raise ExecutorConfigError(f"Secret {ref.name} has no key {ref.key}")
        return AgentEndpointExecutor(
            url=endpoint.url,
            token=token,
            timeout_seconds=float(endpoint.timeout_seconds),
            session=context.http_session(),
        )


class ContainerKind:
    """``executor.container`` or the agent's ``container``: one Pod per attempt (§7)."""

    name = "container"

    def __init__(
        self,
        pods: PodClient,
        *,
        keep_seconds: float = 0,
        on_pod: Callable[[PodEvent], None] | None = None,
    ) -> None:
        self.pods = pods
        self.keep_seconds = keep_seconds
        self.on_pod = on_pod
        self.janitor: set[asyncio.Task[None]] = set()
        """Pending deletions of ended attempts' Pods."""

    @staticmethod
    def container_of(target: Target) -> Container | None:
        ex = target.node.executor
        if ex is not None and (ex.endpoint_ref is not None or ex.simulate is not None):
            return None
        if ex is not None and ex.container is not None:
            return ex.container
        agent = target.agent
        if agent is None or agent.endpoint_ref is not None:
            return None
        return agent.container

    def claims(self, target: Target) -> bool:
        return self.container_of(target) is not None

    async def build(self, target: Target, context: ExecutorContext) -> Executor:
        container = self.container_of(target)
        if container is None:
            raise ExecutorConfigError(f"node `{target.node.id}` has no container")
        return ContainerExecutor(
            container=container,
            pods=self.pods,
            keep_seconds=self.keep_seconds,
            on_pod=self.on_pod,
            janitor=self.janitor,
        )


class ExecutorRegistry:
    """The executor kinds an operator runs, asked in order."""

    def __init__(self, kinds: Sequence[ExecutorKind]) -> None:
        names = [k.name for k in kinds]
        if len(set(names)) != len(names) or NONE_KIND in names:
            raise ValueError(f"executor kind names must be unique and not {NONE_KIND!r}")
        self.kinds = tuple(kinds)

    def kind_of(self, target: Target) -> ExecutorKind | None:
        return next((k for k in self.kinds if k.claims(target)), None)

    def kind_name(self, target: Target) -> str:
        kind = self.kind_of(target)
        return kind.name if kind is not None else NONE_KIND

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    async def build(self, target: Target, context: ExecutorContext) -> Executor:
        kind = self.kind_of(target)
        if kind is None:
            raise ExecutorConfigError(
                f"node `{target.node.id}` has no executor: set executor.simulate, "
                "executor.endpointRef or executor.container, or an endpointRef or container "
                "on its agent (a container needs the container executor, which may be off)"
            )
        return await kind.build(target, context)


def default_registry(container: ContainerKind | None = None) -> ExecutorRegistry:
    """Every executor kind this operator ships; ``container`` when Pods may be run."""
    kinds: list[ExecutorKind] = [SimulateKind(), AgentEndpointKind()]
    if container is not None:
        kinds.append(container)
    return ExecutorRegistry(kinds)
