"""Schedules and retention at run time: apply the plans of ``scheduling.schedules`` (B19, B20).

The decisions are pure and live in ``scheduling.schedules``; this module feeds them from the
store and applies them once, through the API client. Two work queues, each serialising its
own keys (``runtime.workqueue``):

- **plans**, one key per Automation. A plan (``plan_schedule``) reads the Automation and the
  runs it controls from the store (``Store.owned_by``: ownerReference with ``controller:
  true``), and the clock. Applying it: create each run (409 AlreadyExists is success: the
  run's name is its due time), patch ``spec.desiredState: Cancelled`` on the runs Replace
  cancels, delete the runs beyond the history limits (404 is success), write the
  Automation's status if it changed (with its resourceVersion; a 409 reads the Automation
  again and plans again), and only then post the plan's Events. The Automation wakes again
  at the plan's ``requeue_at_ms`` (its next due time), and whenever it or one of its runs
  changes (a run appears, goes away, changes phase or desiredState).
- **time to live**, one key per run. A finished run whose ``ttl_due`` (``finishedAt`` plus
  ``ttlSecondsAfterFinished`` or ``TANDEM_FINISHED_RUN_TTL_SECONDS``) has a deadline wakes at
  it and is deleted, with its uid as a precondition so that a new run that took the name is
  never deleted by mistake. The deadline is computed from ``finishedAt`` every time, so a
  restart or a failover neither resets nor forgets it.

Only the leader acts, and only once it has listed every watched object (``active``); a
standby keeps its wake-ups, which do nothing when they fire. A new leader plans every
Automation and checks every run's time to live (``resync``).

Why this is safe across restarts, retries and failover: every step is idempotent (names
from due times, 409 and 404 as success, uid preconditions), a plan that finds the run of a
due time counts it as created even if the status write after it was lost, and the Events of
a plan are posted only after its status is stored, so a plan made again after a lost write
posts them once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError

from tandem_operator.api.settings import Settings
from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.lifecycle.contract import Event
from tandem_operator.runtime.kubeapi import Conflict, Gone
from tandem_operator.runtime.mergepatch import merge_patch
from tandem_operator.runtime.metrics import OperatorMetrics
from tandem_operator.runtime.ports import Clock, EventSink
from tandem_operator.runtime.store import CachedRun, RunKey, Store
from tandem_operator.runtime.workqueue import WorkQueue
from tandem_operator.scheduling.retention import expiry_ms
from tandem_operator.scheduling.runs import ScheduledAutomation, ScheduledRun
from tandem_operator.scheduling.schedules import (
    EVENT_MISSED,
    EVENT_SKIPPED,
    SchedulePlan,
    plan_schedule,
)

log = logging.getLogger(__name__)

RUNS = "automationruns"
AUTOMATIONS = "automations"
MAX_CONFLICT_RETRIES = 5
CONFLICT_RETRY_MS = 1000


class ScheduleClient(Protocol):
    """The calls schedules and retention make (``runtime.kubeapi.KubeApi`` implements them)."""

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]: ...

    async def create(
        self, *, plural: str, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def patch(
        self, *, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def delete(
        self, *, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> dict[str, Any]: ...

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]: ...


def scheduled_run(run: CachedRun) -> ScheduledRun:
    """What a plan needs of a cached run."""
    return ScheduledRun(
        name=run.key[1],
        owner_uid=run.owner[1] if run.owner is not None else None,
        phase=run.phase,
        desired_state=run.desired_state,
        created_at_ms=parse_ms(run.created) if run.created else None,
        finished_at_ms=run.finished_at_ms,
        scheduled_at_ms=run.scheduled_at_ms,
    )


def run_ttl_due(run: CachedRun, default_ttl_seconds: int | None) -> int | None:
    """B20b for a cached run: when it is to be deleted, or ``None`` to keep it."""
    return expiry_ms(
        ttl_seconds=run.ttl_seconds,
        phase=run.phase,
        finished_at_ms=run.finished_at_ms,
        default_ttl_seconds=default_ttl_seconds,
    )


def _schedule_related(body: Mapping[str, Any]) -> bool:
    """An Automation with a schedule, or with a status a schedule once wrote."""
    spec = body.get("spec")
    return bool((isinstance(spec, Mapping) and spec.get("schedule")) or body.get("status"))


class Schedules:
    """Plans and applies every Automation's schedule; deletes finished runs past their TTL."""

    def __init__(
        self,
        *,
        api: ScheduleClient,
        store: Store,
        settings: Settings,
        events: EventSink,
        clock: Clock,
        metrics: OperatorMetrics,
        active: Callable[[], bool],
    ) -> None:
        self.api = api
        self.store = store
        self.settings = settings
        self.events = events
        self.clock = clock
        self.metrics = metrics
        self.active = active
        """Whether this process may act (it leads and has listed every watched object)."""
        self.plans = WorkQueue(self._plan, clock=clock)
        self.plans.alive = lambda key: key in self.store.automations
        self.ttl = WorkQueue(self._expire, clock=clock)
        self.ttl.alive = lambda key: key in self.store.runs
        self._unusable: dict[RunKey, int] = {}
        """Automations whose spec does not parse, by the resourceVersion reported."""

    # -- what starts a plan or a deletion ------------------------------------------------

    def automation_changed(self, key: RunKey, *, deleted: bool) -> None:
        if deleted:
            self.plans.forget(key)
            self._unusable.pop(key, None)
        else:
            self.plans.kick(key)

    def run_changed(self, before: CachedRun | None, after: CachedRun | None) -> None:
        """A run was added, changed or deleted (``after`` is ``None``)."""
        run = after if after is not None else before
        if run is None:
            return
        if run.owner is not None and (
            before is None
            or after is None
            or before.phase != after.phase
            or before.desired_state != after.desired_state
        ):
            self.plans.kick((run.key[0], run.owner[0]))
        if after is None:
            self.ttl.forget(run.key)
            return
        due = run_ttl_due(after, self.settings.finished_run_ttl_seconds)
        self.ttl.wake_at(after.key, due)

    def resync(self) -> None:
        """Plan every Automation and check every run's time to live (a new leader)."""
        for key in list(self.store.automations):
            self.plans.kick(key)
        for run in list(self.store.runs.values()):
            self.run_changed(run, run)

    async def close(self) -> None:
        await self.plans.close()
        await self.ttl.close()

    # -- plans ----------------------------------------------------------------------

    async def _plan(self, key: RunKey, kicked_at: float | None = None) -> None:
        if not self.active():
            return
        async with self.plans.lock(key):
            for _ in range(MAX_CONFLICT_RETRIES):
                body = self.store.automations.get(key)
                if body is None:
                    return
                try:
                    await self._plan_once(key, body)
                    return
                except Conflict:
                    try:
                        fresh = await self.api.get(
                            plural=AUTOMATIONS, namespace=key[0], name=key[1]
                        )
                    except Gone:
                        self._automation_gone(key, body)
                        return
                    self.store.observe(AUTOMATIONS, fresh)
                except Gone:
                    self._automation_gone(key, body)
                    return
            log.warning("Gave up planning after repeated conflicts automation=%s/%s", *key)
            self.plans.wake_at(key, self.clock.now_ms() + CONFLICT_RETRY_MS)

    def _automation_gone(self, key: RunKey, body: Mapping[str, Any]) -> None:
        self.store.observe(AUTOMATIONS, body, deleted=True)
        self.automation_changed(key, deleted=True)

    async def _plan_once(self, key: RunKey, body: Mapping[str, Any]) -> None:
        if not _schedule_related(body):
            self.plans.wake_at(key, None)
            return
        try:
            automation = ScheduledAutomation.from_object(body)
        except ValidationError as exc:
            self._report_unusable(key, body, exc)
            return
        self._unusable.pop(key, None)
        runs = [scheduled_run(r) for r in self.store.owned_by(automation.uid)]
        plan = plan_schedule(automation=automation, runs=runs, now_ms=self.clock.now_ms())
        await self._apply(key, body, plan)

    async def _apply(self, key: RunKey, body: Mapping[str, Any], plan: SchedulePlan) -> None:
        namespace = key[0]
        for manifest in plan.create:
            name = manifest["metadata"]["name"]
            try:
                # Not put in the store here: its watch event does that, and kicks the
                # reconciler and the plan again (the store drops an event it has seen).
                await self.api.create(plural=RUNS, namespace=namespace, body=manifest)
            except Conflict:
                continue  # the run of this due time exists: created before a lost write
            self.metrics.scheduled_run_created()
            log.info("Created scheduled run run=%s/%s automation=%s", namespace, name, key[1])
        for name in plan.cancel:
            try:
                await self.api.patch(
                    plural=RUNS,
                    namespace=namespace,
                    name=name,
                    patch={"spec": {"desiredState": "Cancelled"}},
                )
            except Gone:
                continue
            log.info("Cancelled replaced run run=%s/%s automation=%s", namespace, name, key[1])
        for name in plan.delete:
            await self._delete(namespace, name, reason="history")
        old_status = body.get("status") or {}
        patch = merge_patch(old_status, plan.status.to_api())
        if patch:
            meta = body.get("metadata") or {}
            stored = await self.api.patch_status(
                plural=AUTOMATIONS,
                namespace=namespace,
                name=key[1],
                resource_version=str(meta.get("resourceVersion", "")),
                status_patch=patch,
            )
            self.store.observe(AUTOMATIONS, stored)
            body = stored
        for event in plan.events:
            self.events(body, Event(type=event.type, reason=event.reason, message=event.message))
            if event.reason == EVENT_SKIPPED:
                self.metrics.schedule_skipped_due("forbid")
            elif event.reason == EVENT_MISSED:
                self.metrics.schedule_skipped_due("missed")
        self.plans.wake_at(key, plan.requeue_at_ms)

    def _report_unusable(self, key: RunKey, body: Mapping[str, Any], exc: ValidationError) -> None:
        """A spec the schema let through but the models refuse: say so once per version."""
        version = int((body.get("metadata") or {}).get("resourceVersion") or 0)
        if self._unusable.get(key) == version:
            return
        self._unusable[key] = version
        message = f"spec cannot be used: {exc.errors()[0].get('msg', exc)}"
        log.warning("Automation spec unusable automation=%s/%s error=%s", *key, message)
        self.events(body, Event(type="Warning", reason="InvalidSchedule", message=message))

    # -- time to live (B20b) and deletions ----------------------------------------------

    async def _expire(self, key: RunKey, kicked_at: float | None = None) -> None:
        if not self.active():
            return
        async with self.ttl.lock(key):
            run = self.store.runs.get(key)
            if run is None:
                return
            due = run_ttl_due(run, self.settings.finished_run_ttl_seconds)
            if due is None:
                return
            if due > self.clock.now_ms():
                self.ttl.wake_at(key, due)
                return
            await self._delete(key[0], key[1], reason="ttl")

    async def _delete(self, namespace: str, name: str, *, reason: str) -> None:
        run = self.store.runs.get((namespace, name))
        try:
            await self.api.delete(
                plural=RUNS,
                namespace=namespace,
                name=name,
                uid=run.uid if run is not None and run.uid else None,
            )
        except (Gone, Conflict):
            return  # gone already, or the name now belongs to a new run
        self.metrics.run_deleted(reason)
        log.info("Deleted finished run run=%s/%s reason=%s", namespace, name, reason)
