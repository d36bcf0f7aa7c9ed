"""The reconciler against a fake API, a fake clock and fake executors: the order of effects.

The reconciler is handed everything it talks to (``runtime.ports``), so these tests run a
whole reconcile in milliseconds and watch what happens in which order: every call to the
API, every attempt started, every Event. What they prove is what the real control plane
cannot show deterministically: no attempt starts before its attempt count is stored, no
outcome is dropped before a stored status accounts for it, and a 409 re-reads and decides
again on the newer object.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fakes import FakeClock, apply_merge_patch, run_async

from tandem_operator.api.settings import Settings
from tandem_operator.execution.registry import ExecutorContext, ExecutorRegistry, Target
from tandem_operator.execution.types import AttemptRequest, AttemptResult, ExecutorActivity
from tandem_operator.lifecycle.contract import Event
from tandem_operator.runtime.kubeapi import ApiError, Conflict, Gone, Invalid
from tandem_operator.runtime.mergepatch import merge_patch
from tandem_operator.runtime.reconciler import Reconciler
from tandem_operator.runtime.store import Store

T0 = 1_800_000_000_000
NS, NAME = "team-a", "r1"
KEY = (NS, NAME)


# ------------------------------------------------------------------------------ the fakes


@dataclass
class FakeApi:
    """One AutomationRun in memory, with resourceVersion preconditions and a call log."""

    log: list[tuple[str, Any]]
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    version: int = 1
    fail_next_patch: ApiError | None = None

    def put(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        meta = body["metadata"]
        self.objects[(meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]:
        self.log.append(("get", name))
        found = self.objects.get((namespace, name))
        if found is None:
            raise Gone(404, f"{name} not found")
        return copy.deepcopy(found)

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        current = self.objects[(namespace, name)]
        if self.fail_next_patch is not None:
            error, self.fail_next_patch = self.fail_next_patch, None
            self.log.append(("patch-failed", error.status))
            raise error
        if current["metadata"]["resourceVersion"] != resource_version:
            self.log.append(("patch-conflict", resource_version))
            raise Conflict(409, "the object has been modified")
        body = copy.deepcopy(current)
        body["status"] = apply_merge_patch(body.get("status") or {}, dict(status_patch))
        stored = self.put(body)
        self.log.append(("patch", copy.deepcopy(stored["status"])))
        return stored

    async def list_pages(
        self, *, plural: str, namespace: str | None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        yield [copy.deepcopy(o) for o in self.objects.values()]

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None:
        raise Gone(404, name)

    def status(self) -> dict[str, Any]:
        return dict(self.objects[KEY].get("status") or {})


class FakeMembership:
    is_leader = True

    def live_instances(self) -> frozenset[str]:
        return frozenset({"me"})


class ControlledExecutor:
    """An attempt that ends when the test says so, logging when it started."""

    def __init__(self, kind: FakeKind, request_log: list[tuple[str, Any]]) -> None:
        self.kind = kind
        self.log = request_log

    async def run(self, request: AttemptRequest, activity: ExecutorActivity) -> AttemptResult:
        self.log.append(("start", (request.node_id, request.attempt)))
        done = asyncio.Event()
        self.kind.pending[request.node_id] = done
        await done.wait()
        return AttemptResult(
            status="completed", output={"status": "completed", "by": request.node_id}
        )


class FakeKind:
    name = "fake"

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.pending: dict[str, asyncio.Event] = {}

    def claims(self, target: Target) -> bool:
        return True

    async def build(self, target: Target, context: ExecutorContext) -> ControlledExecutor:
        return ControlledExecutor(self, self.log)

    def finish(self, node_id: str) -> None:
        self.pending.pop(node_id).set()


@dataclass
class World:
    api: FakeApi
    clock: FakeClock
    kind: FakeKind
    events: list[Event]
    reconciler: Reconciler
    log: list[tuple[str, Any]]

    async def reconcile(self) -> None:
        await self.reconciler.reconcile(KEY)

    async def settle(self) -> None:
        """Let started attempts and the kicks they cause run (no real time passes)."""
        for _ in range(1000):
            await asyncio.sleep(0)
            if not self.reconciler.queue.busy:
                return
        raise AssertionError("the reconciler did not come to rest")

    def phase(self) -> str | None:
        return self.api.status().get("phase")


def run_body(nodes: int = 1) -> dict[str, Any]:
    flow_nodes = [
        {"id": f"n{i}", **({"dependsOn": [f"n{i - 1}"]} if i else {})} for i in range(nodes)
    ]
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {
            "namespace": NS,
            "name": NAME,
            "uid": "u-1",
            "generation": 1,
            "creationTimestamp": "2027-01-15T08:00:00Z",
        },
        "spec": {"automation": {"nodes": flow_nodes}},
    }


def world(nodes: int = 1) -> World:
    log: list[tuple[str, Any]] = []
    api = FakeApi(log=log)
    clock = FakeClock(T0)
    kind = FakeKind(log)
    events: list[Event] = []
    store = Store(capacity=4)
    reconciler = Reconciler(
        api=api,
        store=store,
        settings=Settings(),
        identity="me",
        events=lambda regarding, event: events.append(event),
        membership=FakeMembership(),
        executors=ExecutorRegistry([kind]),
        clock=clock,
    )
    reconciler.primed = True
    store.observe("runs", api.put(run_body(nodes)))
    return World(api=api, clock=clock, kind=kind, events=events, reconciler=reconciler, log=log)


def effects(log: list[tuple[str, Any]]) -> list[str]:
    return [what for what, _ in log]


# ------------------------------------------------------------------------------ the tests


def test_the_reconciler_is_built_from_its_parts() -> None:
    w = world()
    assert w.reconciler.store.runs[KEY].phase is None
    assert w.reconciler.executors.names == ("fake",)


@run_async
async def test_a_new_run_is_admitted_and_started_in_one_write_before_its_attempt() -> None:
    w = world()
    await w.reconcile()
    await w.settle()
    assert effects(w.log) == ["patch", "start"]
    stored = w.log[0][1]
    assert stored["phase"] == "Running"
    assert stored["checkpoint"]["nodeAttempts"] == {"n0": 1}
    assert [r["event"] for r in stored["checkpoint"]["lifecycleHistory"]] == [
        "run_queued",
        "run_started",
    ]
    assert w.log[1][1] == ("n0", 1)
    assert [e.reason for e in w.events] == ["RunQueued", "RunStarted"]


@run_async
async def test_no_attempt_starts_before_its_count_is_stored() -> None:
    w = world(nodes=3)
    await w.reconcile()
    await w.settle()
    for node in ("n0", "n1", "n2"):
        w.kind.finish(node)
        await w.settle()
    assert w.phase() == "Completed"
    # Every start follows a stored status that already counts that attempt.
    stored_attempts: dict[str, int] = {}
    for what, detail in w.log:
        if what == "patch":
            stored_attempts = detail.get("checkpoint", {}).get("nodeAttempts", {})
        elif what == "start":
            node, attempt = detail
            assert stored_attempts.get(node) == attempt, (node, attempt, stored_attempts)
    assert effects(w.log).count("start") == 3


@run_async
async def test_an_outcome_is_kept_until_a_stored_status_accounts_for_it() -> None:
    w = world()
    await w.reconcile()
    await w.settle()
    w.api.fail_next_patch = ApiError(500, "etcd is down")
    w.kind.finish("n0")
    await w.settle()  # the outcome's kick: the write fails
    assert effects(w.log)[-1] == "patch-failed"
    assert len(w.reconciler.runner.outcomes(KEY)) == 1  # not dropped
    assert w.api.status()["phase"] == "Running"
    await w.reconcile()  # the retry
    assert w.phase() == "Completed"
    assert w.api.status()["checkpoint"]["nodeOutputs"]["n0"]["by"] == "n0"
    assert w.reconciler.runner.outcomes(KEY) == ()


@run_async
async def test_a_conflict_reads_again_and_decides_on_the_newer_object() -> None:
    w = world()
    await w.reconcile()
    await w.settle()
    # Someone pauses the run; the store has not seen it yet when the outcome arrives.
    changed = copy.deepcopy(w.api.objects[KEY])
    changed["spec"]["desiredState"] = "Paused"
    changed["metadata"]["generation"] = 2
    w.api.put(changed)
    w.kind.finish("n0")
    await w.settle()
    assert effects(w.log)[-3:] == ["patch-conflict", "get", "patch"]
    status = w.api.status()
    # Decided on the newer spec (B12: Running → Pausing → Paused, no attempt in flight)
    # with the outcome that arrived meanwhile counted (B10).
    assert status["observedGeneration"] == 2
    assert status["phase"] == "Paused"
    assert status["checkpoint"]["nodeOutputs"]["n0"]["status"] == "completed"
    assert status["checkpoint"]["completedNodes"] == ["n0"]


@run_async
async def test_a_settled_decision_is_written_once() -> None:
    """Rules that act on each other's results (approve → admit → dispatch) settle in one
    decision: one write, never a second write to finish the first."""
    w = world(nodes=2)
    await w.reconcile()
    await w.settle()
    w.kind.finish("n0")
    await w.settle()
    patches = [d for what, d in w.log if what == "patch"]
    assert len(patches) == 2
    # The second write both completes n0 and starts n1's first attempt.
    assert patches[1]["checkpoint"]["completedNodes"] == ["n0"]
    assert patches[1]["checkpoint"]["nodeAttempts"] == {"n0": 1, "n1": 1}
    assert effects(w.log)[-1] == "start"


@run_async
async def test_a_write_the_api_server_refuses_stalls_the_run_visibly_without_a_loop() -> None:
    w = world()
    await w.reconcile()
    await w.settle()
    w.api.fail_next_patch = Invalid(422, "status.usage.totalTokens: Invalid value")
    w.kind.finish("n0")
    await w.settle()  # the outcome's kick: the write is refused, then reported
    assert effects(w.log)[-2:] == ["patch-failed", "patch"]
    stalled = {c["type"]: c for c in w.api.status()["conditions"]}["Stalled"]
    assert (stalled["status"], stalled["reason"]) == ("True", "StatusRejected")
    assert "status.usage.totalTokens: Invalid value" in stalled["message"]
    assert [(e.type, e.reason) for e in w.events][-1] == ("Warning", "StatusRejected")
    assert w.phase() == "Running"  # nothing else written, nothing acted on
    assert len(w.reconciler.runner.outcomes(KEY)) == 1
    await w.reconcile()  # the next change: this time the write is accepted
    assert w.phase() == "Completed"
    stalled = {c["type"]: c for c in w.api.status()["conditions"]}["Stalled"]
    assert stalled["status"] == "False"


@run_async
async def test_a_hand_written_paused_run_is_left_alone_then_resumed_by_a_spec_change() -> None:
    w = world()
    body = copy.deepcopy(w.api.objects[KEY])
    body["status"] = {"phase": "Paused", "pauseReason": "by hand"}  # no observedGeneration
    w.reconciler.store.observe("runs", w.api.put(body))
    await w.reconcile()
    assert "patch" not in effects(w.log)  # B3: no write at start
    for generation, desired in ((2, "Paused"), (3, "Running")):
        changed = copy.deepcopy(w.api.objects[KEY])
        changed["spec"]["desiredState"] = desired
        changed["metadata"]["generation"] = generation
        w.reconciler.store.observe("runs", w.api.put(changed))
        await w.reconcile()
        assert w.api.status()["observedGeneration"] == generation
    await w.settle()
    assert w.phase() == "Running"
    events = [r["event"] for r in w.api.status()["checkpoint"]["lifecycleHistory"]]
    assert events[:2] == ["run_resumed", "run_started"]


def test_merge_patch_carries_only_what_changed() -> None:
    old = {"phase": "Running", "detail": "x", "checkpoint": {"a": 1, "b": 2}}
    new = {"phase": "Running", "checkpoint": {"a": 1, "b": 3}}
    assert merge_patch(old, new) == {"detail": None, "checkpoint": {"b": 3}}


@run_async
async def test_while_the_runs_are_listed_only_runs_holding_a_workspace_are_reconciled() -> None:
    """A new leader recovers Running runs page by page; admission waits for every run."""
    w = world(nodes=2)
    await w.reconcile()
    await w.settle()
    assert w.phase() == "Running"
    other = (NS, "r2")
    second = run_body()
    second["metadata"] = {**second["metadata"], "name": other[1], "uid": "u-2"}
    w.reconciler.store.observe("runs", w.api.put(second))
    # A new leader's state while it lists the runs: nothing admitted, holders reconciled.
    w.reconciler.primed = False
    w.reconciler.workspaces_first = True
    w.reconciler.kick(other)
    await w.settle()
    assert "status" not in w.api.objects[other]
    w.kind.finish("n0")  # the Running run's outcome is recorded at once
    await w.settle()
    assert w.api.status()["checkpoint"]["nodeAttempts"] == {"n0": 1, "n1": 1}
    writes = len([what for what in effects(w.log) if what == "patch"])
    # Listed: the waiting run is reconciled (admitted), the one already reconciled is not.
    w.reconciler.primed_now({KEY})
    await w.settle()
    assert w.api.objects[other]["status"]["phase"] == "Running"
    assert len([what for what in effects(w.log) if what == "patch"]) == writes + 1
