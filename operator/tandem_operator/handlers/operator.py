"""kopf wiring: thin handlers that feed the reconciler.

Every handler is a guard and one call. Watch events of the four kinds update the
reconciler's caches; AutomationRun events ask for a reconcile of that run; Automation and
AgentQuotaOverride events ask for a reconcile of the runs they may unblock (B7 reacts to
an approved override at once). A lifecycle tick, one loop over the cached runs, re-checks
time-based rules (B4 stale gates, B5 stale reaping, B6 auto-resume, gate expiry) every
``TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS`` for the runs one of them may act on by then
(``lifecycle.timers``; terminal runs, runs a user paused and gates far from their
deadlines are skipped); the deadlines themselves come from timestamps in status, so a restart neither
resets nor repeats them. A watch event that brings nothing newer than the cache (the echo
of the operator's own write, kopf's listing after the leader's) asks for no reconcile.
It is not a ``kopf.timer``: kopf guards timers with a finalizer on each object, which would
need write access to the runs' spec and would block deleting runs while the operator is
not installed. The operator never writes anything but ``status``.

kopf's own bookkeeping is kept under the project's annotation prefix, never in ``status``
(which the structural schema would prune), and the handlers here are event handlers,
which keep no per-object progress at all: the run's status is the only state.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import kopf

from tandem_operator.api.models import GROUP
from tandem_operator.api.settings import Settings
from tandem_operator.handlers import webhook
from tandem_operator.handlers.cache import object_key
from tandem_operator.handlers.kubeapi import LIST_PAGE_SIZE, KubeApi
from tandem_operator.handlers.leader import Leadership, new_identity
from tandem_operator.handlers.metrics import OperatorMetrics, serve_metrics
from tandem_operator.handlers.reconciler import Reconciler
from tandem_operator.lifecycle.clock import wall_ms
from tandem_operator.lifecycle.contract import Event

log = logging.getLogger(__name__)


def _emit(body: Mapping[str, Any], event: Event) -> None:
    raw = cast(kopf.RawBody, dict(body))
    kopf.event(
        kopf.Body(raw),
        type=event.type,
        reason=event.reason,
        message=event.message[:1024],
    )


class _EventPoster:
    """Posts Kubernetes Events through kopf from any task of the operator.

    ``kopf.event`` finds kopf's poster queue through context variables that kopf sets only
    in the tasks that run handlers. Reconciles also run in tasks that never passed through
    a handler (the lifecycle tick, leadership changes, wake-ups and attempt outcomes that
    descend from them), where ``kopf.event`` raises ``LookupError``. The poster remembers
    the context of a handler and posts from it there. A new leader reconciles the runs it
    listed before kopf has called any handler (restart recovery does exactly that), so
    Events emitted before a context exists wait, up to ``EARLY_EVENTS_LIMIT``, and are
    posted from the first handler. Posting is best effort: an Event that cannot be queued
    is logged and never stops the reconcile that emits it, which still has attempts to
    start.
    """

    EARLY_EVENTS_LIMIT = 10_000

    def __init__(self) -> None:
        self._context: contextvars.Context | None = None
        self._early: list[tuple[Mapping[str, Any], Event]] = []

    def remember(self) -> None:
        """Called from handlers: keep a context in which kopf can post; post what waited."""
        if self._context is None:
            self._context = contextvars.copy_context()
            early, self._early = self._early, []
            for body, event in early:
                self(body, event)

    def __call__(self, body: Mapping[str, Any], event: Event) -> None:
        try:
            try:
                _emit(body, event)
            except LookupError:
                if self._context is None:
                    if len(self._early) < self.EARLY_EVENTS_LIMIT:
                        self._early.append((body, event))
                        return
                    raise
                self._context.run(_emit, body, event)
        except Exception:
            meta = body.get("metadata", {})
            log.exception(
                "Event not posted reason=%s run=%s/%s",
                event.reason,
                meta.get("namespace"),
                meta.get("name"),
            )


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


def build_registry(
    *,
    settings: Settings,
    lease_namespace: str,
    identity: str | None = None,
    webhook_options: WebhookOptions | None = None,
    metrics: OperatorMetrics | None = None,
    namespaces: list[str] | None = None,
) -> tuple[kopf.OperatorRegistry, Reconciler, Leadership]:
    """A registry with every handler bound to one reconciler and one leadership."""
    registry = kopf.OperatorRegistry()
    if webhook_options is not None:
        webhook.register(registry)
    api = KubeApi()
    me = identity or new_identity()
    holder: dict[str, Leadership] = {}
    poster = _EventPoster()
    reconciler = Reconciler(
        api=api,
        settings=settings,
        identity=me,
        emit=poster,
        live_instances=lambda: holder["leader"].live_instances(),
        is_leader=lambda: holder["leader"].is_leader,
        metrics=metrics,
        namespaces=namespaces,
    )
    reconciler.metrics.watch_runs(lambda: list(reconciler.caches.runs.values()))

    async def leadership_changed(leader: bool) -> None:
        reconciler.on_leadership(leader)

    leadership = Leadership(
        api,
        identity=me,
        namespace=lease_namespace,
        lease_seconds=settings.claim_lease_seconds,
        on_change=leadership_changed,
    )
    holder["leader"] = leadership
    background: set[asyncio.Task[None]] = set()

    async def lifecycle_ticks() -> None:
        # One loop over the watch cache instead of a kopf timer per run: kopf timers put a
        # finalizer on every matching object, which needs write access to the whole run
        # (spec included) and leaves runs undeletable while no operator is installed.
        interval = float(settings.lifecycle_timer_interval_seconds)
        while True:
            await asyncio.sleep(interval)
            now = wall_ms()
            for key, run in list(reconciler.caches.runs.items()):
                # Only runs a time-based rule may act on now (lifecycle.timers): the others
                # (terminal, paused by a user, gates far from their deadlines) cost nothing.
                if run.timer_due_ms is not None and run.timer_due_ms <= now:
                    reconciler.kick(key)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = _NoDiffBase()
        settings.persistence.finalizer = f"{GROUP}/finalizer"
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        # Listed in pages, like the leader's own listing: a whole namespace of runs parsed
        # at once would stay in the allocator's arenas long after it is freed.
        settings.watching.chunk_size = LIST_PAGE_SIZE
        settings.batching.worker_limit = 64
        # A per-object worker lingers this long after its last event, holding one of the
        # 64 slots: with kopf's default of 5 s, a fresh operator (or a burst of new runs)
        # gets through at most 64 objects per 5 s, ~13 runs/s, whatever the API server
        # could take. The handlers only update a cache and kick, so a worker is done at
        # once; a new one is cheap when the object's next event comes.
        settings.batching.idle_timeout = 0.1
        if webhook_options is not None:
            settings.admission.server = webhook.server(
                addr=webhook_options.addr,
                port=webhook_options.port,
                host=webhook_options.host,
                cert_dir=webhook_options.cert_dir,
            )
            settings.admission.managed = webhook.MANAGED_NAME
        task = asyncio.create_task(leadership.run(), name="leadership")
        background.add(task)
        ticks = asyncio.create_task(lifecycle_ticks(), name="lifecycle-ticks")
        background.add(ticks)
        log.info("Operator started identity=%s lease_namespace=%s", me, lease_namespace)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.shutdown()
        for task in background:
            task.cancel()
        await leadership.release()
        await api.aclose()

    @kopf.on.event(GROUP, "automationruns", registry=registry)
    async def run_event(event: Mapping[str, Any], **_: Any) -> None:
        # A run is reconciled only once it is in the cache, which only this handler fills,
        # so the poster has a context before the first Event of any run.
        poster.remember()
        body = event.get("object") or {}
        deleted = event.get("type") == "DELETED"
        changed = reconciler.observe("runs", body, deleted=deleted)
        if changed and not deleted:
            reconciler.kick(object_key(body))

    @kopf.on.event(GROUP, "automations", registry=registry)
    async def automation_event(event: Mapping[str, Any], namespace: str | None, **_: Any) -> None:
        reconciler.observe(
            "automations", event.get("object") or {}, deleted=event.get("type") == "DELETED"
        )
        for key in reconciler.runs_in(namespace or ""):
            if reconciler.caches.runs[key].phase in (None, "Queued"):
                reconciler.kick(key)

    @kopf.on.event(GROUP, "agentendpoints", registry=registry)
    async def endpoint_event(event: Mapping[str, Any], **_: Any) -> None:
        reconciler.observe(
            "endpoints", event.get("object") or {}, deleted=event.get("type") == "DELETED"
        )

    @kopf.on.event(GROUP, "agentquotaoverrides", registry=registry)
    async def override_event(event: Mapping[str, Any], namespace: str | None, **_: Any) -> None:
        reconciler.observe(
            "overrides", event.get("object") or {}, deleted=event.get("type") == "DELETED"
        )
        for key in reconciler.runs_in(namespace or ""):
            if reconciler.caches.runs[key].phase in ("Paused", "Running"):
                reconciler.kick(key)

    return registry, reconciler, leadership


async def run_operator(
    *,
    settings: Settings,
    namespaces: list[str] | None,
    lease_namespace: str,
    liveness_endpoint: str | None = None,
    stop_flag: asyncio.Event | None = None,
    webhook_options: WebhookOptions | None = None,
    metrics_port: int = 0,
) -> None:
    metrics = OperatorMetrics(process_collectors=True)
    registry, _, _ = build_registry(
        settings=settings,
        lease_namespace=lease_namespace,
        webhook_options=webhook_options,
        metrics=metrics,
        namespaces=namespaces or None,
    )
    # /metrics on the operator's own loop (see handlers.metrics); port 0 turns it off.
    server = await serve_metrics(metrics, port=metrics_port) if metrics_port else None
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            liveness_endpoint=liveness_endpoint,
            stop_flag=stop_flag,
        )
    finally:
        if server is not None:
            await server.cleanup()
