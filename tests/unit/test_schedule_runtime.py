"""Schedules and retention at run time against a fake API and a fake clock.

The plans themselves are tested in test_schedule_plan.py; these tests prove how the runtime
applies them: the order of writes, 409 and 404 as success, the Events posted only after the
status is stored, the time to live computed from finishedAt, and a store and work queues
that forget deleted objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fakes import FakeClock, apply_merge_patch, run_async

from tandem_operator.api.settings import Settings
from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import Event
from tandem_operator.runtime.kubeapi import Conflict, Gone
from tandem_operator.runtime.mergepatch import merge_patch
from tandem_operator.runtime.metrics import OperatorMetrics
from tandem_operator.runtime.schedules import Schedules
from tandem_operator.runtime.store import Store
from tandem_operator.runtime.workqueue import WorkQueue

T0 = 1_800_000_000_000  # a multiple of 10 s
NS = "team-a"
GROUP_VERSION = "automation.tandem.dev/v1alpha1"


@dataclass
class FakeApi:
    log: list[tuple[str, str]] = field(default_factory=list)
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 10
    lose_next_status_write: bool = False

    def put(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        meta = body["metadata"]
        meta["resourceVersion"] = str(self.version)
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta.setdefault("creationTimestamp", format_ms(T0)[:19] + "Z")
        self.objects[(plural, meta["name"])] = body
        return copy.deepcopy(body)

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]:
        found = self.objects.get((plural, name))
        if found is None:
            raise Gone(404, "not found")
        return copy.deepcopy(found)

    async def create(
        self, *, plural: str, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.log.append(("create", name))
        if (plural, name) in self.objects:
            raise Conflict(409, "already exists")
        return self.put(plural, dict(body))

    async def patch(
        self, *, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        self.log.append(("patch", name))
        current = self.objects.get((plural, name))
        if current is None:
            raise Gone(404, "not found")
        current["spec"].update(patch["spec"])
        return self.put(plural, current)

    async def delete(
        self, *, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> dict[str, Any]:
        self.log.append(("delete", name))
        current = self.objects.get((plural, name))
        if current is None:
            raise Gone(404, "not found")
        if uid is not None and current["metadata"]["uid"] != uid:
            raise Conflict(409, "uid precondition")
        del self.objects[(plural, name)]
        return {}

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        self.log.append(("status", name))
        current = self.objects[(plural, name)]
        if current["metadata"]["resourceVersion"] != resource_version:
            raise Conflict(409, "changed")
        if self.lose_next_status_write:
            self.lose_next_status_write = False
            raise TimeoutError("the write was lost")
        status = current.get("status") or {}
        current["status"] = apply_merge_patch(status, dict(status_patch))
        return self.put(plural, current)


@dataclass
class World:
    api: FakeApi
    store: Store
    clock: FakeClock
    events: list[tuple[str, Event]]
    schedules: Schedules
    metrics: OperatorMetrics

    def sync(self) -> None:
        """What the watch would deliver: every object of the fake API, deletions too."""
        for (plural, _name), body in list(self.api.objects.items()):
            self.store.observe("runs" if plural == "automationruns" else "automations", body)
        for key, run in list(self.store.runs.items()):
            if ("automationruns", key[1]) not in self.api.objects:
                self.store.observe("runs", run.reference(), deleted=True)

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(f"tandem_automation_{name}", labels)
        return value or 0.0


def world(*, ttl: int | None = None) -> World:
    api = FakeApi()
    store = Store(capacity=8)
    clock = FakeClock(T0 + 3_000)
    events: list[tuple[str, Event]] = []
    metrics = OperatorMetrics()
    schedules = Schedules(
        api=api,
        store=store,
        settings=Settings(finished_run_ttl_seconds=ttl),
        events=lambda regarding, event: events.append((regarding["metadata"]["name"], event)),
        clock=clock,
        metrics=metrics,
        active=lambda: True,
    )
    store.on_run_change = schedules.run_changed
    return World(api, store, clock, events, schedules, metrics)


def automation(**schedule: Any) -> dict[str, Any]:
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "Automation",
        "metadata": {"name": "nightly", "namespace": NS, "uid": "auto-uid", "generation": 1},
        "spec": {
            "agents": [{"agentId": "a"}],
            "nodes": [{"id": "n", "agentId": "a"}],
            "schedule": {"cron": "@every 10s", **schedule},
        },
    }


async def plan(w: World) -> None:
    await w.schedules._plan((NS, "nightly"))
    w.sync()


# ------------------------------------------------------------------------------ schedules


@run_async
async def test_a_due_time_creates_one_run_then_writes_status_then_posts_events() -> None:
    w = world()
    body = w.api.put("automations", automation())
    w.store.observe("automations", body)
    await plan(w)  # first plan: the watermark starts now, nothing is due yet
    assert w.api.log == [("status", "nightly")]
    w.clock.ms = T0 + 10_000 + 200
    await plan(w)
    assert w.api.log[1:] == [("create", "nightly-20270115080010"), ("status", "nightly")]
    run = w.api.objects[("automationruns", "nightly-20270115080010")]
    assert run["spec"]["triggerType"] == "scheduled"
    assert run["metadata"]["labels"]["automation.tandem.dev/automation"] == "nightly"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "auto-uid"
    status = w.api.objects[("automations", "nightly")]["status"]
    assert status["lastRunName"] == "nightly-20270115080010"
    assert status["activeRuns"] == ["nightly-20270115080010"]
    assert w.counter("scheduled_runs_total") == 1
    # Planning again changes nothing.
    await plan(w)
    assert len(w.api.log) == 3


@run_async
async def test_a_lost_status_write_never_gives_a_second_run() -> None:
    w = world()
    w.store.observe("automations", w.api.put("automations", automation()))
    await plan(w)
    w.clock.ms = T0 + 10_000
    w.api.lose_next_status_write = True
    with contextlib.suppress(TimeoutError):
        await w.schedules._plan((NS, "nightly"))
    # A new leader: a store listed from scratch, the same API.
    w2 = world()
    w2.api = w.api
    w2.schedules.api = w.api
    w2.clock.ms = T0 + 12_000
    for (plural, _), obj in w.api.objects.items():
        w2.store.observe("runs" if plural == "automationruns" else "automations", obj)
    await plan(w2)
    creates = [name for verb, name in w.api.log if verb == "create"]
    assert creates == ["nightly-20270115080010"]
    status = w.api.objects[("automations", "nightly")]["status"]
    assert status["lastRunName"] == "nightly-20270115080010"
    assert w2.counter("scheduled_runs_total") == 0


@run_async
async def test_a_create_refused_with_409_is_success() -> None:
    w = world()
    w.store.observe("automations", w.api.put("automations", automation()))
    await plan(w)
    w.clock.ms = T0 + 10_000
    # The run exists in the API but the store has not seen it (another instance made it).
    w.api.put(
        "automationruns",
        {
            "apiVersion": GROUP_VERSION,
            "kind": "AutomationRun",
            "metadata": {"name": "nightly-20270115080010", "namespace": NS},
            "spec": {"automationRef": {"name": "nightly"}},
        },
    )
    await w.schedules._plan((NS, "nightly"))
    assert [e for e in w.api.log if e[0] == "create"] == [("create", "nightly-20270115080010")]
    assert w.counter("scheduled_runs_total") == 0


@run_async
async def test_an_invalid_schedule_stalls_with_one_warning() -> None:
    w = world()
    w.store.observe("automations", w.api.put("automations", automation(cron="61 * * * *")))
    await plan(w)
    await plan(w)
    status = w.api.objects[("automations", "nightly")]["status"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    assert stalled["reason"] == "InvalidSchedule"
    warnings = [e for _, e in w.events if e.reason == "InvalidSchedule"]
    assert len(warnings) == 1
    assert warnings[0].type == "Warning"


@run_async
async def test_forbid_skips_and_counts() -> None:
    w = world()
    w.store.observe("automations", w.api.put("automations", automation()))
    await plan(w)
    w.clock.ms = T0 + 10_000
    await plan(w)
    w.clock.ms = T0 + 20_000
    await plan(w)
    assert [e.reason for _, e in w.events] == ["ScheduleSkipped"]
    assert w.counter("schedule_skipped_total", reason="forbid") == 1


# ------------------------------------------------------------------------------ retention


def finished_run(name: str, *, finished_ms: int, ttl: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"automationRef": {"name": "other"}}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "AutomationRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
        "status": {"phase": "Completed", "finishedAt": format_ms(finished_ms)},
    }


@run_async
async def test_ttl_deletes_at_finished_at_plus_ttl_and_everything_is_forgotten() -> None:
    w = world(ttl=3600)
    w.api.put("automationruns", finished_run("short", finished_ms=T0, ttl=5))
    w.api.put("automationruns", finished_run("default", finished_ms=T0))
    w.sync()
    w.clock.ms = T0 + 4_999
    for name in ("short", "default"):
        await w.schedules._expire((NS, name))
    assert ("delete", "short") not in w.api.log
    w.clock.ms = T0 + 5_000
    await w.schedules._expire((NS, "short"))
    assert w.api.log == [("delete", "short")]
    assert w.counter("runs_deleted_total", reason="ttl") == 1
    w.sync()
    assert (NS, "short") not in w.store.runs
    w.clock.ms = T0 + 3_600_000
    await w.schedules._expire((NS, "default"))
    w.sync()
    assert not w.store.runs
    assert not w.store.owned
    assert len(w.schedules.ttl) == 0


@run_async
async def test_history_limits_delete_the_oldest_finished_runs() -> None:
    w = world()
    w.store.observe(
        "automations", w.api.put("automations", automation(successfulRunsHistoryLimit=1))
    )
    owner = {
        "apiVersion": GROUP_VERSION,
        "kind": "Automation",
        "name": "nightly",
        "uid": "auto-uid",
        "controller": True,
    }
    for index in range(3):
        body = finished_run(f"old-{index}", finished_ms=T0 - 10_000 + index)
        body["metadata"]["ownerReferences"] = [owner]
        w.api.put("automationruns", body)
    w.sync()
    assert len(w.store.owned["auto-uid"]) == 3
    await plan(w)
    assert [n for verb, n in w.api.log if verb == "delete"] == ["old-0", "old-1"]
    assert w.counter("runs_deleted_total", reason="history") == 2
    assert [r.key[1] for r in w.store.owned_by("auto-uid")] == ["old-2"]


def test_a_late_answer_does_not_bring_a_deleted_run_back() -> None:
    store = Store(capacity=8)
    body = finished_run("r", finished_ms=T0)
    body["metadata"]["resourceVersion"] = "5"
    store.observe("runs", body)
    store.observe(
        "runs", {**body, "metadata": {**body["metadata"], "resourceVersion": "6"}}, deleted=True
    )
    assert not store.observe("runs", body)
    assert (NS, "r") not in store.runs
    again = {**body, "metadata": {**body["metadata"], "resourceVersion": "9"}}
    assert store.observe("runs", again)


def test_merge_patch_of_an_unchanged_status_is_empty() -> None:
    assert not merge_patch({"a": 1}, {"a": 1})


@run_async
async def test_the_work_queue_keeps_nothing_for_keys_that_are_gone() -> None:
    alive = {(NS, "kept")}
    seen: list[tuple[str, str]] = []

    async def handler(key: tuple[str, str], kicked_at: float) -> None:
        async with queue.lock(key):
            seen.append(key)

    queue = WorkQueue(handler, clock=FakeClock(T0 + 3_000))
    queue.alive = lambda key: key in alive
    gone: list[tuple[str, str]] = []
    queue.gone = gone.append
    queue.wake_at((NS, "kept"), T0)  # in the past: fires at once
    queue.kick((NS, "deleted"))  # e.g. an attempt of a deleted run reporting late
    await asyncio.sleep(0.2)
    assert sorted(seen) == [(NS, "deleted"), (NS, "kept")]
    assert gone == [(NS, "deleted")]
    # The fired wake-up left the queue; only the live key's lock remains.
    assert len(queue) == 1
    alive.clear()
    queue.forget((NS, "kept"))
    assert len(queue) == 0
