"""The reconciler: build an Observation, call ``decide``, write one patch, then act.

It is handed everything it talks to (``runtime.ports``): the API client, the clock, the
event sink, the membership (leadership), the executor registry, the attempt runner and
the store; ``runtime.controller`` wires the real ones, tests/unit/test_reconciler.py fakes.

Order of effects, always: decide (settled, ``lifecycle.engine``) → patch status with the
resourceVersion read (409: read again and decide again) → emit Events → cancel and start
attempts → forget consumed outcomes → schedule the decision's next deadline. An attempt
therefore never starts without its attempt count recorded, and an outcome is never dropped
before a status that accounts for it is stored. Starting, adopting (C5) and counting
attempts is ``runtime.attempts``; reporting a status it cannot use is ``runtime.stalled``.

One reconcile of one run at a time (the work queue's lock per run); runs that a decision
may admit reconcile under one admission lock, so two runs never take the last slot or the
same workspace. Only the leader acts, and only once it has listed every watched object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp

from tandem_operator.api.models import AutomationRunSpec, AutomationRunStatus, AutomationSpec
from tandem_operator.api.settings import Settings
from tandem_operator.api.vocabulary import (
    QueueVerdict,
    holds_workspace,
    may_be_requeued,
    waits_for_admission,
)
from tandem_operator.execution.registry import ExecutorRegistry
from tandem_operator.execution.runner import AttemptRunner
from tandem_operator.lifecycle.contract import Decision, Observation
from tandem_operator.lifecycle.engine import decide
from tandem_operator.lifecycle.validation import flow_error, status_problems
from tandem_operator.runtime.attempts import (
    adoptable,
    count_outcomes,
    follow_adopted,
    start_attempt,
)
from tandem_operator.runtime.kubeapi import Conflict, Gone, Invalid
from tandem_operator.runtime.mergepatch import merge_patch
from tandem_operator.runtime.metrics import OperatorMetrics
from tandem_operator.runtime.observation import definition_of, overrides_in, parse_run
from tandem_operator.runtime.ports import Clock, EventSink, KubeClient, Membership, PodReader
from tandem_operator.runtime.stalled import report_stalled
from tandem_operator.runtime.store import CachedRun, RunKey, Store, resource_version
from tandem_operator.runtime.workqueue import WorkQueue

log = logging.getLogger(__name__)

PLURAL = "automationruns"
MAX_PARSED = 512
"""At most this many runs keep the models of the version this operator last wrote."""
MAX_CONFLICT_RETRIES = 5


@dataclass(frozen=True)
class _Parsed:
    """The models behind a status this operator has just written (see ``_reconcile_once``)."""

    resource_version: int
    body: dict[str, Any]
    """The object as the API server answered the write."""
    spec: AutomationRunSpec
    status: AutomationRunStatus
    definition: AutomationSpec | None


class Reconciler:
    def __init__(
        self,
        *,
        api: KubeClient,
        store: Store,
        settings: Settings,
        identity: str,
        events: EventSink,
        membership: Membership,
        executors: ExecutorRegistry,
        clock: Clock,
        metrics: OperatorMetrics | None = None,
        pods: PodReader | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.settings = settings
        self.identity = identity
        self.events = events
        self.membership = membership
        self.executors = executors
        self.clock = clock
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self.queue = WorkQueue(self.reconcile, clock=clock)
        self.queue.alive = lambda key: key in self.store.runs
        self.queue.gone = self.forget
        self.pods = pods
        """Where C5 looks for Pods of in-progress attempts; ``None``: attempts never outlive
        this process."""
        self.runner = AttemptRunner(self._on_outcome, clock=clock.now_ms, on_usage=self._on_usage)
        self.primed = False
        """True once this leader has listed every watched object."""
        self.workspaces_first = False
        """True once this leader has listed every kind but runs: a run that holds a
        workspace (Running, Pausing) may be reconciled as soon as it is listed. Its decision
        (B1, B2, outcomes, pause) reads no other run; only admission (B9) needs them all."""
        self.shutting_down = False
        self.due: dict[RunKey, int | None] = {}
        """Each run's next deadline from its last decision (absent: never decided here)."""
        self._admission = asyncio.Lock()
        self._parsed: dict[RunKey, _Parsed] = {}
        self._deferred: set[RunKey] = set()
        """Runs kicked while the runs were being listed, reconciled once all are."""
        self._http: aiohttp.ClientSession | None = None

    # -- what starts a reconcile ---------------------------------------------------------

    def kick(self, key: RunKey) -> None:
        # Until this leader has listed every watched object only runs that hold a
        # workspace are reconciled, and once it has, it kicks every run itself: a kick
        # taken before that would only hold the run's place in the queue, out of order.
        if self.primed or (self.workspaces_first and self._holds_workspace(key)):
            self.queue.kick(key)
        elif self.workspaces_first:
            self._deferred.add(key)

    def primed_now(self, kicked: set[RunKey]) -> None:
        """Every watched object is listed: reconcile every run not ``kicked`` while the
        runs were listed, and those kicked since whose kicks had to wait."""
        self.primed = True
        self.workspaces_first = False
        again = self._deferred
        self._deferred = set()
        for key in list(self.store.runs):
            if key not in kicked or key in again:
                self.kick(key)

    def _holds_workspace(self, key: RunKey) -> bool:
        run = self.store.runs.get(key)
        return run is not None and holds_workspace(run.phase)

    def kick_admission(self) -> None:
        """Capacity or a workspace was freed: reconcile the runs admission now lets in."""
        for key in self.store.admission.admissible(self.clock.now_ms()):
            self.kick(key)

    def forget(self, key: RunKey) -> None:
        """The run was deleted: its attempts, wake-up and models go with it."""
        self.runner.forget(key)
        self.queue.forget(key)
        self._parsed.pop(key, None)
        self.due.pop(key, None)
        self.kick_admission()

    async def _on_outcome(self, key: RunKey) -> None:
        self.kick(key)

    def _on_usage(self, key: RunKey) -> None:
        """B21: an in-flight attempt reported usage; reconcile at once if it crosses a budget."""
        parsed = self._parsed.get(key)
        if parsed is None or parsed.definition is None:
            self.kick(key)
            return
        ex = parsed.definition.execution
        if ex.max_total_tokens is None and ex.max_total_cost_usd is None:
            return
        prompt, completion = self.runner.in_flight_usage(key)
        tokens = parsed.status.usage.total_tokens + prompt + completion
        cost = (
            Decimal(parsed.status.usage.estimated_cost_usd or "0")
            + Decimal(prompt + completion) / 1000 * self.settings.token_cost_per_1k_usd
        )
        if (ex.max_total_tokens is not None and tokens > ex.max_total_tokens) or (
            ex.max_total_cost_usd is not None and cost > Decimal(ex.max_total_cost_usd)
        ):
            self.kick(key)

    # -- the reconcile ----------------------------------------------------------------

    async def reconcile(self, key: RunKey, kicked_at: float | None = None) -> None:
        """Decide and apply for one run; ``kicked_at`` (monotonic) is its first trigger."""
        if not self.membership.is_leader:
            return
        if not (self.primed or (self.workspaces_first and self._holds_workspace(key))):
            return
        async with self.queue.lock(key):
            for _ in range(MAX_CONFLICT_RETRIES):
                run = self.store.runs.get(key)
                if run is None:
                    return
                try:
                    if may_be_requeued(run.phase):
                        async with self._admission:
                            await self._reconcile_once(key, run, kicked_at=kicked_at)
                    else:
                        await self._reconcile_once(key, run, kicked_at=kicked_at)
                    return
                except Conflict:
                    self.metrics.status_write_conflict()
                    try:
                        fresh = await self.api.get(plural=PLURAL, namespace=key[0], name=key[1])
                    except Gone:
                        self._deleted(run)
                        return
                    self.store.observe("runs", fresh)
                except Gone:
                    self._deleted(run)
                    return
            log.warning("Gave up after repeated conflicts run=%s/%s", *key)
            self.kick(key)

    def _deleted(self, run: CachedRun) -> None:
        self.store.observe("runs", run.reference(), deleted=True)
        self.forget(run.key)

    async def _reconcile_once(
        self, key: RunKey, run: CachedRun, *, kicked_at: float | None = None
    ) -> None:
        inputs = await self._inputs(key, run)
        if inputs is None:
            return
        body, spec, status, definition, definition_error = inputs
        meta = body.get("metadata", {})
        adopted = await adoptable(self, key, meta, status, definition)
        in_flight = self.runner.in_flight(key)
        prompt, completion = self.runner.in_flight_usage(key)
        now = self.clock.now_ms()
        obs = Observation(
            now_ms=now,
            settings=self.settings,
            instance=self.identity,
            live_instances=self.membership.live_instances() | {self.identity},
            generation=int(meta.get("generation") or 0),
            spec=spec,
            status=status,
            definition=definition,
            definition_error=definition_error,
            admission=self._verdict(run, now),
            overrides=overrides_in(self.store, key[0], now),
            outcomes=self.runner.outcomes(key),
            in_flight=in_flight | adopted,
            adopted=adopted,
            in_flight_tokens=prompt + completion,
            waiting=self.runner.waiting(key),
            last_activity_ms=self.runner.last_activity_ms(key),
            shutting_down=self.shutting_down,
        )
        decision = decide(obs)
        wrote = False
        if decision.changed:
            patch = merge_patch(body.get("status") or {}, decision.status.to_api())
            if patch:
                try:
                    stored = await self.api.patch_status(
                        plural=PLURAL,
                        namespace=key[0],
                        name=key[1],
                        resource_version=str(meta.get("resourceVersion", "")),
                        status_patch=patch,
                    )
                except Invalid as exc:
                    # Writing the same content again would be refused again: no retry
                    # loop. Say so and wait for a change (spec, outcome, tick) to decide
                    # again; nothing is acted on, as nothing was recorded.
                    await self._report_stalled(
                        key, body, [f"status write refused: {exc.message}"], "StatusRejected"
                    )
                    self._parsed.pop(key, None)
                    return
                self.store.observe("runs", stored)
                body, wrote = stored, True
                self._remember(key, stored, spec, decision.status, definition)
                self.metrics.decision_stored(
                    decision,
                    latency_seconds=None
                    if kicked_at is None
                    else self.clock.monotonic() - kicked_at,
                )
        if not wrote and key in self._parsed and not _keeps_models(decision.status):
            # Kept while the run waits for admission or runs (admission and outcomes will
            # reconcile it again at this version); a parked or finished run keeps none:
            # only a new version (a spec change) moves it.
            self._parsed.pop(key, None)
        await self._act(key, body, decision, definition, spec, adopted=adopted, observed=status)

    async def _inputs(
        self, key: RunKey, run: CachedRun
    ) -> (
        tuple[
            dict[str, Any],
            AutomationRunSpec,
            AutomationRunStatus | None,
            AutomationSpec | None,
            str | None,
        ]
        | None
    ):
        """The run's object and models, or ``None`` when its status cannot be used."""
        parsed = self._parsed.get(key)
        if parsed is not None and parsed.resource_version != run.resource_version:
            parsed = None
            del self._parsed[key]
        if parsed is not None:
            # This operator wrote this very version, from a decision (so it is valid):
            # decide again on those models instead of parsing and checking anew.
            if parsed.definition is not None:
                return parsed.body, parsed.spec, parsed.status, parsed.definition, None
            definition, error = definition_of(self.store, key, parsed.spec, parsed.status)
            return parsed.body, parsed.spec, parsed.status, definition, error
        body = run.body()
        spec, status, problem = parse_run(body)
        if spec is None or problem is not None:
            await self._report_invalid(key, body, [problem or "spec: invalid"])
            return None
        if status is not None and status.observed_generation is None:
            # A status written by hand says nothing of the spec it has seen: take it to
            # have seen the spec as this process first found it. No write follows from
            # that alone (B3); a later spec change, such as desiredState Running on a
            # Paused run, is acted on (B12) and recorded.
            status.observed_generation = self.store.first_generations.get(key, run.generation)
        definition, error = definition_of(self.store, key, spec, status)
        if (
            definition is None
            and spec.automation_ref is not None
            and waits_for_admission(status.phase if status else None)
        ):
            await self._refresh_automation(key[0], spec.automation_ref.name)
            definition, error = definition_of(self.store, key, spec, status)
        if status is not None:
            snapshot = status.automation_snapshot
            problems = status_problems(
                status,
                flow=definition,
                snapshot_error=flow_error(snapshot)
                if snapshot is not None and definition is None
                else None,
            )
            if problems:
                await self._report_invalid(key, body, problems)
                return None
        return body, spec, status, definition, error

    def _remember(
        self,
        key: RunKey,
        stored: dict[str, Any],
        spec: AutomationRunSpec,
        status: AutomationRunStatus,
        definition: AutomationSpec | None,
    ) -> None:
        # Only runs that will be decided again at this very version keep their models:
        # a run that runs (its outcomes come back; at most the capacity of them) always,
        # a waiting one while there is room. A parked or finished run keeps none, so the
        # room is not taken by runs that are done with.
        if not _keeps_models(status):
            self._parsed.pop(key, None)
            return
        if not (
            key in self._parsed or holds_workspace(status.phase) or len(self._parsed) < MAX_PARSED
        ):
            return
        # The definition is reusable unless it came from the Automation cache.
        own_flow = status.automation_snapshot is not None or spec.automation is not None
        self._parsed[key] = _Parsed(
            resource_version=resource_version(stored),
            body=stored,
            spec=spec,
            status=status,
            definition=definition if own_flow else None,
        )

    def _verdict(self, run: CachedRun, now_ms: int) -> QueueVerdict:
        """B9 for ``run`` as if it were Queued (it may be re-queued by this decision).

        A Paused or AwaitingApproval run may be re-queued by this very decision (resume,
        auto-resume, recover, a gate decision); with the verdict at hand it is admitted in
        the same write. Those phases reconcile under the admission lock, so it holds.
        """
        if not may_be_requeued(run.phase) or self.shutting_down:
            return "capacity"
        return self.store.admission.verdict(run.waiting(), now_ms)

    async def _act(
        self,
        key: RunKey,
        body: Mapping[str, Any],
        decision: Decision,
        definition: AutomationSpec | None,
        spec: AutomationRunSpec,
        *,
        adopted: frozenset[str] = frozenset(),
        observed: AutomationRunStatus | None = None,
    ) -> None:
        for event in decision.events:
            self.events(body, event)
        count_outcomes(self, key, decision.consumed, definition)
        self.runner.consume(key, decision.consumed)
        if adopted and definition is not None and observed is not None:
            await follow_adopted(self, key, body, decision, spec, definition, adopted, observed)
        if decision.cancel:
            self.runner.cancel(key, decision.cancel)
        if decision.start and definition is not None:
            for start in decision.start:
                await start_attempt(self, key, body, decision, spec, definition, start)
        if decision.records and not holds_workspace(decision.status.phase):
            # A transition out of Running/Pausing frees a slot and maybe a workspace.
            self.kick_admission()
        self.due[key] = decision.requeue_at_ms
        self.queue.wake_at(key, decision.requeue_at_ms)

    # -- inputs -----------------------------------------------------------------------

    async def _refresh_automation(self, namespace: str, name: str) -> None:
        """A cache miss is confirmed with the API server before a run is told it is missing."""
        try:
            found = await self.api.get(plural="automations", namespace=namespace, name=name)
        except Gone:
            return
        self.store.observe("automations", found)

    # -- ExecutorContext: what executor kinds may read ------------------------------------

    async def get_endpoint(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        body = self.store.endpoints.get((namespace, name))
        if body is None:
            # The watch cache may not hold it yet (a fresh operator lists the kinds
            # concurrently): confirm with the API server before failing the attempt.
            try:
                body = await self.api.get(plural="agentendpoints", namespace=namespace, name=name)
            except Gone:
                return None
            self.store.observe("endpoints", body)
        return body

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None:
        try:
            return await self.api.read_secret_key(namespace=namespace, name=name, key=key)
        except Gone:
            raise LookupError(name) from None

    def http_session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- malformed status -------------------------------------------------------------

    async def _report_invalid(
        self, key: RunKey, body: Mapping[str, Any], problems: list[str]
    ) -> None:
        """A status the operator cannot act on: say so, stall, and keep every field as is.

        One Warning Event ``InvalidStatus`` and ``Stalled=True`` naming the problems; only
        ``conditions`` is written, and only when the problems change. Once someone fixes
        the status, the next decision clears ``Stalled`` (see ``lifecycle.engine``).
        """
        await self._report_stalled(key, body, problems, "InvalidStatus")

    async def _report_stalled(
        self, key: RunKey, body: Mapping[str, Any], problems: list[str], reason: str
    ) -> None:
        """A Warning Event ``reason`` and ``Stalled=True`` (``runtime.stalled``)."""
        await report_stalled(
            key,
            body,
            problems,
            reason,
            api=self.api,
            store=self.store,
            events=self.events,
            clock=self.clock,
        )

    # -- lifecycle of the reconciler itself ---------------------------------------------

    async def shutdown(self) -> None:
        """B15: stop admitting, let in-flight attempts finish within the grace period."""
        self.shutting_down = True
        await self.runner.drain(self.settings.shutdown_grace_seconds)
        await self.queue.close()
        if self._http is not None:
            await self._http.close()

    def lost_leadership(self) -> None:
        self.primed = False
        self.workspaces_first = False
        self._deferred.clear()
        self._parsed.clear()
        for key in list(self.store.runs):
            # Attempts that outlive this process (Pods) run on for the next leader (C5).
            self.runner.cancel(key, detach=True)


def _keeps_models(status: AutomationRunStatus) -> bool:
    return waits_for_admission(status.phase) or holds_workspace(status.phase)
