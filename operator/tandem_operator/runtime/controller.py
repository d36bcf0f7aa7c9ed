"""The controller: store, work queue, reconciler, leader election and timers, wired once.

Watch events arrive here: those of runs from the operator's own list and watch
(``runtime.runwatch``), those of the three other kinds from kopf through thin handlers
(``handlers.operator``). Everything else the operator does starts here:

- **store** (``runtime.store``): the newest version of every watched object, and B9's
  admission index;
- **work queue** (``runtime.workqueue``): kicks, per-run serialisation, each run's next
  deadline as a wake-up;
- **reconciler** (``runtime.reconciler``): observation, ``decide``, one patch, effects;
- **leader election** (``runtime.leader``): only the leader acts; a new leader lists the
  other kinds and waits until the run watch has listed every run before it admits (so a
  workspace lock holds across failover), then reconciles every run;
- **schedules and retention** (``runtime.schedules``): plans of each Automation's schedule
  (B19, B20a) and the time to live of finished runs (B20b), fed by the same watch events;
- **lifecycle tick**: every ``TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS``, the runs whose
  deadline (from their last decision) has come, the runs never decided by this process,
  and, as a resync, the runs that wait or run (Queued, Running, Pausing). Parked and
  finished runs with no deadline cost nothing at rest. It is not a ``kopf.timer``: kopf
  guards timers with a finalizer on each object, which would need write access to the
  runs' spec and would block deleting runs while the operator is not installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from tandem_operator.api.settings import Settings
from tandem_operator.api.vocabulary import holds_workspace, waits_for_admission
from tandem_operator.execution.registry import ContainerKind, ExecutorRegistry, default_registry
from tandem_operator.runtime.events import EventRecorder
from tandem_operator.runtime.kubeapi import KubeApi
from tandem_operator.runtime.leader import Leadership, lease_name, new_identity
from tandem_operator.runtime.metrics import OperatorMetrics
from tandem_operator.runtime.ports import Clock, WallClock
from tandem_operator.runtime.reconciler import Reconciler
from tandem_operator.runtime.runwatch import RunWatch
from tandem_operator.runtime.schedules import Schedules
from tandem_operator.runtime.store import KINDS, RunKey, Store, object_key

log = logging.getLogger(__name__)

_PLURALS = {
    "automations": "automations",
    "endpoints": "agentendpoints",
    "overrides": "agentquotaoverrides",
    "runs": "automationruns",
}
PRIME_RETRY_SECONDS = 2.0


class Controller:
    def __init__(
        self,
        *,
        settings: Settings,
        lease_namespace: str,
        lease: str | None = None,
        namespaces: list[str] | None = None,
        identity: str | None = None,
        metrics: OperatorMetrics | None = None,
        api: KubeApi | None = None,
        executors: ExecutorRegistry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.namespaces = namespaces
        """Watched namespaces; ``None`` for all."""
        self.api = api if api is not None else KubeApi()
        self.identity = identity or new_identity()
        self.store = Store(capacity=settings.scheduler_max_concurrent_runs)
        self.events = EventRecorder(self.api, instance=self.identity)
        self.leadership = Leadership(
            self.api,
            identity=self.identity,
            namespace=lease_namespace,
            name=lease or lease_name(namespaces, lease_namespace=lease_namespace),
            lease_seconds=settings.claim_lease_seconds,
            on_change=self._leadership_changed,
        )
        metrics = metrics if metrics is not None else OperatorMetrics()
        if executors is None:
            container = (
                None
                if settings.container_executor_disabled
                else ContainerKind(
                    self.api, keep_seconds=settings.pod_keep_seconds, on_pod=metrics.pod_event
                )
            )
            executors = default_registry(container)
        self.reconciler = Reconciler(
            api=self.api,
            store=self.store,
            settings=settings,
            identity=self.identity,
            events=self.events,
            membership=self.leadership,
            executors=executors,
            clock=clock if clock is not None else WallClock(),
            metrics=metrics,
            pods=self.api,
        )
        self.reconciler.metrics.watch_runs(lambda: list(self.store.runs.values()))
        self.schedules = Schedules(
            api=self.api,
            store=self.store,
            settings=settings,
            events=self.events,
            clock=self.reconciler.clock,
            metrics=self.reconciler.metrics,
            active=lambda: self.leadership.is_leader and self.reconciler.primed,
        )
        # Every change of a run reaches the schedules, also the ones the reconciler's own
        # writes bring (their watch events are echoes the store drops).
        self.store.on_run_change = self.schedules.run_changed
        self.runs = RunWatch(
            self.api,
            namespaces=namespaces,
            on_event=lambda body, deleted: self.run_event(body, deleted=deleted),
            on_page=self._runs_listed,
            known=lambda ns: self.store.runs_in(ns) if ns else list(self.store.runs),
        )
        self._kicked: set[RunKey] = set()
        """Runs a new leader kicked because they hold a workspace, before it was primed."""
        self._background: set[asyncio.Task[None]] = set()

    # -- watch events --------------------------------------------------------------------

    def run_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        if not self.store.observe("runs", body, deleted=deleted):
            return
        if deleted:
            self.reconciler.forget(object_key(body))
        else:
            self.reconciler.kick(object_key(body))

    def automation_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        if self.store.observe("automations", body, deleted=deleted):
            self.schedules.automation_changed(object_key(body), deleted=deleted)
        namespace = object_key(body)[0]
        for key in self.store.runs_in(namespace):
            if waits_for_admission(self.store.runs[key].phase):
                self.reconciler.kick(key)

    def endpoint_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        self.store.observe("endpoints", body, deleted=deleted)

    def override_event(self, body: Mapping[str, Any], *, deleted: bool) -> None:
        """B7 reacts to an approved override at once; B8 to one that went away."""
        self.store.observe("overrides", body, deleted=deleted)
        namespace = object_key(body)[0]
        for key in self.store.runs_in(namespace):
            if self.store.runs[key].phase in ("Paused", "Running"):
                self.reconciler.kick(key)

    # -- start and stop ----------------------------------------------------------------

    def start(self) -> None:
        self._spawn(self.runs.run(), "run-watch")
        self._spawn(self.leadership.run(), "leadership")
        self._spawn(self._ticks(), "lifecycle-ticks")
        log.info(
            "Operator started identity=%s lease_namespace=%s",
            self.identity,
            self.leadership.namespace,
        )

    async def stop(self) -> None:
        await self.reconciler.shutdown()
        await self.schedules.close()
        for task in self._background:
            task.cancel()
        await self.leadership.release()
        await self.events.flush()
        await self.api.aclose()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- leadership ----------------------------------------------------------------------

    async def _leadership_changed(self, leader: bool) -> None:
        if leader:
            self._spawn(self._prime_then_reconcile(), "prime-caches")
        else:
            self.reconciler.lost_leadership()

    async def _prime_then_reconcile(self) -> None:
        """List the other kinds, wait until every run is listed, then reconcile all runs.

        The watches fill the store one event at a time; a new leader that admitted a
        Queued run before it had seen the Running run holding the same workspace would
        break the lock. So a leader lists the other kinds first and waits for the run
        watch's listing before it admits. A run that holds a workspace is reconciled as
        soon as it is listed (its recovery reads no other run), every other run once all
        are listed.
        """
        self._kicked = set()
        while self.leadership.is_leader and not self.reconciler.primed:
            try:
                for kind in KINDS:
                    if kind == "runs":
                        continue
                    scopes: list[str | None] = [*self.namespaces] if self.namespaces else [None]
                    for namespace in scopes:
                        async for page in self.api.list_pages(
                            plural=_PLURALS[kind], namespace=namespace
                        ):
                            for item in page:
                                self.store.observe(kind, item)
            except Exception as exc:
                log.warning("Listing before acting failed, retrying error=%s", exc)
                await asyncio.sleep(PRIME_RETRY_SECONDS)
                continue
            if not self.leadership.is_leader:
                return
            self.reconciler.workspaces_first = True
            self._kick_workspace_holders(list(self.store.runs))
            await self.runs.listed.wait()
            leads = self.leadership.is_leader and self.reconciler.workspaces_first
            if leads and not self.reconciler.primed:
                self.reconciler.primed_now(self._kicked)
                self.schedules.resync()

    def _runs_listed(self, page: list[dict[str, Any]]) -> None:
        if self.leadership.is_leader and self.reconciler.workspaces_first:
            self._kick_workspace_holders([object_key(item) for item in page])

    def _kick_workspace_holders(self, keys: list[RunKey]) -> None:
        for key in keys:
            run = self.store.runs.get(key)
            if run is not None and holds_workspace(run.phase) and key not in self._kicked:
                self._kicked.add(key)
                self.reconciler.kick(key)

    # -- the lifecycle tick --------------------------------------------------------------

    async def _ticks(self) -> None:
        interval = float(self.settings.lifecycle_timer_interval_seconds)
        while True:
            await asyncio.sleep(interval)
            self.tick()

    def tick(self) -> None:
        """Kick the runs a time-based rule may act on now (see the module docstring)."""
        now = self.reconciler.clock.now_ms()
        due = self.reconciler.due
        for key, run in list(self.store.runs.items()):
            if waits_for_admission(run.phase) or holds_workspace(run.phase):
                self.reconciler.kick(key)
                continue
            deadline = due.get(key, 0)
            if deadline is not None and deadline <= now:
                self.reconciler.kick(key)
