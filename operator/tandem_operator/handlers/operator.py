"""kopf wiring: thin handlers that feed the controller, and nothing else.

Every handler is one call into ``runtime.controller.Controller``: watch events of
Automations, AgentEndpoints and AgentQuotaOverrides update its store and ask for
reconciles; startup and cleanup start and stop it. The runtime (store, work queue,
reconciler, leader election, the lifecycle tick, Events, and the list and watch of
AutomationRuns, the one kind with thousands of objects and an event per write) lives in
``tandem_operator.runtime``; kopf's role is to list and watch the three small kinds, log
in and run the operator's lifecycle. The admission webhook
(``handlers.webhook``) has a server of its own (``handlers.webhook_server``) on the same
loop, started before kopf like the metrics endpoint.

kopf's own bookkeeping is kept under the project's annotation prefix, never in ``status``
(which the structural schema would prune), and the handlers here are event handlers,
which keep no per-object progress at all: the run's status is the only state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from tandem_operator.api.models import GROUP
from tandem_operator.api.settings import Settings
from tandem_operator.handlers.webhook_server import serve_webhook
from tandem_operator.runtime.controller import Controller
from tandem_operator.runtime.kubeapi import LIST_PAGE_SIZE
from tandem_operator.runtime.metrics import OperatorMetrics, serve_metrics

log = logging.getLogger(__name__)


class _NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, for an operator with event handlers only: nothing to keep.

    kopf computes every object's "essence" (a deep copy of the whole body, status
    included, then trimmed) on every watch event, to diff it for change handlers. This
    operator registers none (its handlers see every event and the run's status is its only
    state), so the essence is never read: building an empty one saves a deep copy of each
    run per event, and nothing is stored on the objects.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@dataclass(frozen=True, kw_only=True)
class WebhookOptions:
    """Where the admission webhook listens and which host the API server calls."""

    addr: str
    port: int
    host: str
    cert_dir: Path


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    """A registry whose handlers all feed ``controller``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.posting.enabled = False  # Events are the controller's, from its own client
        settings.watching.server_timeout = 300
        # Listed in pages, like the leader's own listing: a whole namespace of runs parsed
        # at once would stay in the allocator's arenas long after it is freed.
        settings.watching.chunk_size = LIST_PAGE_SIZE
        settings.batching.worker_limit = 64
        # A per-object worker lingers this long after its last event, holding one of the
        # 64 slots: with kopf's default of 5 s, a fresh operator (or a burst of new runs)
        # gets through at most 64 objects per 5 s, ~13 runs/s, whatever the API server
        # could take. The handlers only update the store and kick, so a worker is done at
        # once; a new one is cheap when the object's next event comes.
        settings.batching.idle_timeout = 0.1
        controller.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.stop()

    @kopf.on.event(GROUP, "automations", registry=registry)
    async def automation_event(event: Mapping[str, Any], **_: Any) -> None:
        controller.automation_event(
            event.get("object") or {}, deleted=event.get("type") == "DELETED"
        )

    @kopf.on.event(GROUP, "agentendpoints", registry=registry)
    async def endpoint_event(event: Mapping[str, Any], **_: Any) -> None:
        controller.endpoint_event(event.get("object") or {}, deleted=event.get("type") == "DELETED")

    @kopf.on.event(GROUP, "agentquotaoverrides", registry=registry)
    async def override_event(event: Mapping[str, Any], **_: Any) -> None:
        controller.override_event(event.get("object") or {}, deleted=event.get("type") == "DELETED")

    return registry


async def run_operator(
    *,
    settings: Settings,
    namespaces: list[str] | None,
    lease_namespace: str,
    lease: str | None = None,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | None = None,
    webhook_options: WebhookOptions | None = None,
    metrics_port: int = 0,
) -> None:
    metrics = OperatorMetrics(process_collectors=True)
    controller = Controller(
        settings=settings,
        lease_namespace=lease_namespace,
        lease=lease,
        metrics=metrics,
        namespaces=namespaces or None,
    )
    registry = build_registry(controller)
    # /metrics on the operator's own loop (see runtime.metrics); port 0 turns it off.
    server = await serve_metrics(metrics, port=metrics_port) if metrics_port else None
    admission = None
    try:
        if webhook_options is not None:
            admission = await serve_webhook(
                addr=webhook_options.addr,
                port=webhook_options.port,
                host=webhook_options.host,
                cert_dir=webhook_options.cert_dir,
            )
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
        )
    finally:
        if admission is not None:
            await admission.stop()
        if server is not None:
            await server.cleanup()
