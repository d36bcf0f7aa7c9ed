"""The reconciler: gather an Observation, call ``decide``, write one patch, then act.

Handlers (``handlers.operator``) only feed this object: watch events update its caches and
ask for a reconcile; timers ask for a reconcile; executor outcomes ask for a reconcile.
One reconcile of one run at a time (a lock per run); a global admission lock around runs
that may be admitted, so two runs never take the last slot or the same workspace.

Order of effects, always: decide → patch status with the resourceVersion read (409: read
again and decide again) → emit Events → start or cancel attempts → forget consumed
outcomes. An attempt therefore never starts without its attempt count recorded, and an
outcome is never dropped before a status that accounts for it is stored.

Only the leader acts. A standby keeps its caches and does nothing else; when it becomes
leader it reconciles every run it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pydantic

from tandem_operator.api.models import (
    ACTIVE_PHASES,
    TERMINAL_PHASES,
    AgentEndpointSpec,
    AgentQuotaOverrideSpec,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    Node,
)
from tandem_operator.api.settings import Settings
from tandem_operator.execution.http import AgentEndpointExecutor
from tandem_operator.execution.runner import AttemptRunner, RunKey
from tandem_operator.execution.simulate import SimulateExecutor
from tandem_operator.execution.types import AttemptRequest, Executor
from tandem_operator.handlers.cache import CachedRun, object_key, resource_version, trimmed
from tandem_operator.handlers.kubeapi import Conflict, Gone, KubeApi, merge_patch
from tandem_operator.handlers.metrics import OperatorMetrics, executor_kind
from tandem_operator.lifecycle.clock import format_ms, parse_ms, wall_ms
from tandem_operator.lifecycle.contract import Decision, Event, Observation, Override
from tandem_operator.lifecycle.engine import decide
from tandem_operator.lifecycle.invariants import apply_conditions
from tandem_operator.lifecycle.validation import flow_error, status_problems
from tandem_operator.scheduling.admission import RunSlot, admission_pass, workspace_root

log = logging.getLogger(__name__)

PLURAL = "automationruns"
_CACHED_KINDS = (
    ("automations", "automations"),
    ("endpoints", "agentendpoints"),
    ("overrides", "agentquotaoverrides"),
    ("runs", "automationruns"),
)
_ADMISSION_PHASES = frozenset({None, "Queued", *ACTIVE_PHASES})
_PARSED_PHASES = frozenset({"Queued", *ACTIVE_PHASES})
MAX_PARSED = 512
"""At most this many runs keep the models of the version this operator last wrote."""
MAX_CONFLICT_RETRIES = 5
RETRY_AFTER_FAILURE_MS = 2000
"""A reconcile that failed (not a 409: an API error, the API server down) is retried after this."""

EmitEvent = Callable[[Mapping[str, Any], Event], None]


@dataclass
class _Caches:
    runs: dict[RunKey, CachedRun] = field(default_factory=dict)
    automations: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[RunKey, dict[str, Any]] = field(default_factory=dict)
    overrides: dict[RunKey, dict[str, Any]] = field(default_factory=dict)


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
        api: KubeApi,
        settings: Settings,
        identity: str,
        emit: EmitEvent,
        live_instances: Callable[[], frozenset[str]],
        is_leader: Callable[[], bool],
        metrics: OperatorMetrics | None = None,
        namespaces: list[str] | None = None,
    ) -> None:
        self.api = api
        self.namespaces = namespaces
        """Watched namespaces; ``None`` for all."""
        self.primed = False
        """True once this leader has listed every watched object (see on_leadership)."""
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self.settings = settings
        self.identity = identity
        self.emit = emit
        self.live_instances = live_instances
        self.is_leader = is_leader
        self.caches = _Caches()
        self.runner = AttemptRunner(self._on_outcome)
        self.shutting_down = False
        self._locks: dict[RunKey, asyncio.Lock] = {}
        self._admission = asyncio.Lock()
        self._pending: set[RunKey] = set()
        self._parsed: dict[RunKey, _Parsed] = {}
        self._wakeups: dict[RunKey, asyncio.TimerHandle] = {}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- caches fed by watch events -------------------------------------------------

    def observe(self, kind: str, body: Mapping[str, Any], deleted: bool = False) -> bool:
        """Keep ``body`` if it is newer than what is cached; True when the cache moved on."""
        key = object_key(body)
        if kind == "runs":
            return self._observe_run(key, body, deleted=deleted)
        store: dict[RunKey, dict[str, Any]] = getattr(self.caches, kind)
        if deleted:
            return store.pop(key, None) is not None
        current = store.get(key)
        if current is None or resource_version(body) > resource_version(current):
            store[key] = trimmed(body)
            return True
        return False

    def _observe_run(self, key: RunKey, body: Mapping[str, Any], *, deleted: bool) -> bool:
        if deleted:
            self.caches.runs.pop(key, None)
            self.runner.forget(key)
            self._locks.pop(key, None)
            self._parsed.pop(key, None)
            self.kick_admission()
            return True
        current = self.caches.runs.get(key)
        if current is not None and resource_version(body) <= current.resource_version:
            # The same version again (the watch echoing this operator's own write, kopf's
            # initial listing after the leader's own) or an older one: nothing new to see.
            return False
        self.caches.runs[key] = CachedRun.of(
            body, stale_after_ms=self.settings.approval_gate_stale_after_ms
        )
        return True

    def runs_in(self, namespace: str) -> list[RunKey]:
        return [k for k in self.caches.runs if k[0] == namespace]

    # -- scheduling of reconciles ---------------------------------------------------

    def kick(self, key: RunKey) -> None:
        """Reconcile ``key`` soon, once, however many times it is kicked meanwhile."""
        if key in self._pending:
            return
        self._pending.add(key)
        task = asyncio.create_task(self._kicked(key, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kicked(self, key: RunKey, kicked_at: float) -> None:
        self._pending.discard(key)
        try:
            await self.reconcile(key, kicked_at=kicked_at)
        except Exception:
            # Typically the API server is unreachable (restarting, etcd down). The run's
            # undelivered outcomes are still queued: try again soon rather than waiting for
            # the next lifecycle tick or watch event.
            log.exception("Reconcile failed run=%s/%s", *key)
            if key in self.caches.runs:
                self._wake_at(key, wall_ms() + RETRY_AFTER_FAILURE_MS)

    def kick_all(self) -> None:
        for key in list(self.caches.runs):
            self.kick(key)

    def kick_admission(self) -> None:
        """Capacity or a workspace was freed: reconcile the runs admission now lets in."""
        if not any(run.phase in (None, "Queued") for run in self.caches.runs.values()):
            # Nothing waits: skip building a slot per run (restart recovery settles
            # thousands of runs, each of which lands here).
            return
        verdicts = admission_pass(
            self._slots(), capacity=self.settings.scheduler_max_concurrent_runs
        )
        for key, verdict in verdicts.items():
            if verdict == "admit":
                self.kick(key)

    def _wake_at(self, key: RunKey, at_ms: int) -> None:
        old = self._wakeups.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, (at_ms - wall_ms()) / 1000) + 0.05
        loop = asyncio.get_running_loop()
        self._wakeups[key] = loop.call_later(delay, self.kick, key)

    async def _on_outcome(self, key: RunKey) -> None:
        self.kick(key)

    # -- the reconcile ----------------------------------------------------------------

    async def reconcile(self, key: RunKey, *, kicked_at: float | None = None) -> None:
        """Decide and apply for one run; ``kicked_at`` (monotonic) is its first trigger."""
        if not self.is_leader() or not self.primed:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                run = self.caches.runs.get(key)
                if run is None:
                    return
                try:
                    if self._may_admit(run):
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
                        self.observe("runs", run.reference(), deleted=True)
                        return
                    self.observe("runs", fresh)
                except Gone:
                    self.observe("runs", run.reference(), deleted=True)
                    return
            log.warning("Gave up after repeated conflicts run=%s/%s", *key)
            self.kick(key)

    @staticmethod
    def _may_admit(run: CachedRun) -> bool:
        return run.phase in (None, "Queued", "Paused", "AwaitingApproval")

    @staticmethod
    def _parse(
        body: Mapping[str, Any],
    ) -> tuple[AutomationRunSpec | None, AutomationRunStatus | None, str | None]:
        """Spec and status of ``body`` as models, or the problem that stops the reconcile."""
        raw_status = body.get("status") or None
        try:
            spec = AutomationRunSpec.model_validate(body.get("spec") or {})
        except pydantic.ValidationError as exc:
            return None, None, _first_error("spec", exc)
        has_phase = bool(raw_status and raw_status.get("phase"))
        if raw_status and not has_phase and set(raw_status) - {"conditions"}:
            # Starting the run from scratch would throw away (and redo) what status records.
            return spec, None, "status.phase: missing from a status that records a run"
        try:
            status = AutomationRunStatus.model_validate(raw_status) if has_phase else None
        except pydantic.ValidationError as exc:
            return spec, None, _first_error("status", exc)
        return spec, status, None

    async def _reconcile_once(
        self, key: RunKey, run: CachedRun, *, kicked_at: float | None = None
    ) -> None:
        spec: AutomationRunSpec
        status: AutomationRunStatus | None
        definition: AutomationSpec | None
        parsed = self._parsed.get(key)
        if parsed is not None and parsed.resource_version != run.resource_version:
            parsed = None
            del self._parsed[key]
        body = parsed.body if parsed is not None else run.body()
        meta = body.get("metadata", {})
        raw_status = body.get("status") or None
        if parsed is not None:
            # This operator wrote this very version, from a decision (so it is valid):
            # decide again on those models instead of parsing and checking anew.
            spec, status = parsed.spec, parsed.status
            if parsed.definition is not None:
                definition, definition_error = parsed.definition, None
            else:
                definition, definition_error = self._definition(key, spec, status)
        else:
            parsed_spec, status, problem = self._parse(body)
            if parsed_spec is None or problem is not None:
                await self._report_invalid(key, body, [problem or "spec: invalid"])
                return
            spec = parsed_spec
            definition, definition_error = self._definition(key, spec, status)
            if (
                definition is None
                and spec.automation_ref is not None
                and (status is None or status.phase == "Queued")
            ):
                await self._refresh_automation(key[0], spec.automation_ref.name)
                definition, definition_error = self._definition(key, spec, status)
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
                    return
        # The admission pass walks every cached run: pay for it only when the verdict can
        # matter. A Queued run that is to run needs it now; any other run only if this
        # decision re-queues it (then decide again with the verdict, which ``decide``,
        # being pure, turns into the same decision as if the verdict had been there from
        # the start). A lifecycle tick over thousands of parked runs stays O(runs).
        wants_verdict = (status is None or status.phase == "Queued") and (
            spec.desired_state == "Running"
        )
        now = wall_ms()
        obs = Observation(
            now_ms=now,
            settings=self.settings,
            instance=self.identity,
            live_instances=self.live_instances() | {self.identity},
            generation=int(meta.get("generation") or 0),
            spec=spec,
            status=status,
            definition=definition,
            definition_error=definition_error,
            admission=self._verdict(key) if wants_verdict else "capacity",
            overrides=self._overrides(key[0], now),
            outcomes=self.runner.outcomes(key),
            in_flight=self.runner.in_flight(key),
            last_activity_ms=self.runner.last_activity_ms(key),
            shutting_down=self.shutting_down,
        )
        decision = decide(obs)
        if decision.status.phase == "Queued" and not wants_verdict:
            verdict = self._verdict(key)
            if verdict != obs.admission:
                obs = replace(obs, admission=verdict)
                decision = decide(obs)
        wrote = False
        if decision.changed:
            new_status = decision.status.to_api()
            patch = merge_patch(raw_status or {}, new_status)
            if patch:
                stored = await self.api.patch_status(
                    plural=PLURAL,
                    namespace=key[0],
                    name=key[1],
                    resource_version=str(meta.get("resourceVersion", "")),
                    status_patch=patch,
                )
                self.observe("runs", stored)
                body = stored
                wrote = True
                # The definition is reusable unless it came from the Automation cache.
                own_flow = decision.status.automation_snapshot is not None or (
                    spec.automation is not None
                )
                if key in self._parsed or len(self._parsed) < MAX_PARSED:
                    self._parsed[key] = _Parsed(
                        resource_version=resource_version(stored),
                        body=stored,
                        spec=spec,
                        status=decision.status,
                        definition=definition if own_flow else None,
                    )
                self.metrics.decision_stored(
                    decision,
                    latency_seconds=None if kicked_at is None else time.monotonic() - kicked_at,
                )
        if not wrote and parsed is not None and decision.status.phase not in _PARSED_PHASES:
            # Kept while the run waits for admission or runs (admission and outcomes will
            # reconcile it again at this version); a parked or finished run keeps none:
            # only a new version (a spec change) moves it.
            self._parsed.pop(key, None)
        await self._act(key, body, decision, definition, spec)
        if wrote:
            # Decide once more on what was stored, as the watch event of this write would
            # ask for: some rules act on the result of others (a stale reap, then B6). The
            # event itself is then recognised as nothing new (``observe``).
            self.kick(key)

    async def _act(
        self,
        key: RunKey,
        body: Mapping[str, Any],
        decision: Decision,
        definition: AutomationSpec | None,
        spec: AutomationRunSpec,
    ) -> None:
        for event in decision.events:
            self.emit(body, event)
        self._count_outcomes(key, decision.consumed, definition)
        self.runner.consume(key, decision.consumed)
        if decision.cancel:
            self.runner.cancel(key, decision.cancel)
        if decision.start and definition is not None:
            nodes = {n.id: n for n in definition.nodes}
            for start in decision.start:
                node = nodes.get(start.node_id)
                if node is not None:
                    await self._start_attempt(
                        key, body, decision, spec, definition, node, start.attempt
                    )
        if decision.records and decision.status.phase not in ACTIVE_PHASES:
            # A transition out of Running/Pausing frees a slot and maybe a workspace.
            self.kick_admission()
        wake = self._next_deadline(decision.status, definition)
        if wake is not None:
            self._wake_at(key, wake)

    def _count_outcomes(
        self, key: RunKey, consumed: int, definition: AutomationSpec | None
    ) -> None:
        outcomes = self.runner.outcomes(key)[:consumed]
        if not outcomes:
            return
        nodes = {n.id: n for n in definition.nodes} if definition is not None else {}
        endpoints = {
            a.agent_id: a.endpoint_ref.name
            for a in (definition.agents if definition is not None else [])
            if a.endpoint_ref is not None
        }

        def kind(node_id: str) -> str:
            node = nodes.get(node_id)
            agent = node.agent_id if node is not None else None
            return executor_kind(node, agent_endpoint=endpoints.get(agent or ""))

        self.metrics.outcomes_applied((kind(o.node_id), o) for o in outcomes)

    def _next_deadline(
        self, status: AutomationRunStatus, definition: AutomationSpec | None
    ) -> int | None:
        """The earliest moment a time-based rule may fire for this run."""
        times: list[int] = []
        if status.phase == "Queued" and status.scheduler and status.scheduler.retry_after:
            at = parse_ms(status.scheduler.retry_after)
            if at is not None:
                times.append(at)
        gate = status.checkpoint.awaiting_gate
        if status.phase == "AwaitingApproval" and gate is not None and definition is not None:
            requested = parse_ms(gate.requested_at)
            node = next((n for n in definition.nodes if n.id == gate.node_id), None)
            if requested is not None and node and node.approval and node.approval.expiry:
                times.append(requested + node.approval.expiry.after_seconds * 1000)
        if status.phase == "Running":
            for retry in status.checkpoint.node_retry_after.values():
                parsed = parse_ms(retry)
                if parsed is not None:
                    times.append(parsed)
        return min(times) if times else None

    # -- inputs -----------------------------------------------------------------------

    def _definition(
        self,
        key: RunKey,
        spec: AutomationRunSpec,
        status: AutomationRunStatus | None,
    ) -> tuple[AutomationSpec | None, str | None]:
        raw: Mapping[str, Any] | None = status.automation_snapshot if status else None
        source = "status.automationSnapshot"
        if raw is None and spec.automation is not None:
            return spec.automation, None
        if raw is None and spec.automation_ref is not None:
            found = self.caches.automations.get((key[0], spec.automation_ref.name))
            if found is None:
                return None, (
                    f"automation `{spec.automation_ref.name}` not found in namespace {key[0]}"
                )
            raw, source = found.get("spec") or {}, f"Automation {spec.automation_ref.name}"
        if raw is None:
            return None, "run has neither automation nor automationRef"
        try:
            return AutomationSpec.model_validate(raw), None
        except pydantic.ValidationError as exc:
            return None, f"{source} is invalid: {exc.errors()[0].get('msg')}"

    async def _refresh_automation(self, namespace: str, name: str) -> None:
        """A cache miss is confirmed with the API server before a run is told it is missing."""
        try:
            found = await self.api.get(plural="automations", namespace=namespace, name=name)
        except Gone:
            return
        self.observe("automations", found)

    def _slots(self, *, also: RunKey | None = None) -> list[RunSlot]:
        """What admission needs of the runs that take part in it (and of ``also``).

        Only Running and Pausing runs hold capacity and workspaces, and only new and
        Queued runs wait: parked and finished runs cannot change a verdict.
        """
        slots = []
        now = wall_ms()
        automations = self.caches.automations
        for key, run in self.caches.runs.items():
            if run.phase not in _ADMISSION_PHASES and key != also:
                continue
            workspace, has_flow = run.own_workspace, run.has_flow
            if not has_flow and run.automation_ref is not None:
                referenced = (automations.get((key[0], run.automation_ref)) or {}).get("spec")
                has_flow = referenced is not None
                workspace = workspace_root({}, referenced)
            retry = run.retry_after_ms
            slots.append(
                RunSlot(
                    key=key,
                    created=run.created,
                    phase=run.phase,
                    workspace=workspace,
                    eligible=run.desired_state == "Running"
                    and has_flow
                    and (retry is None or retry <= now),
                )
            )
        return slots

    def _verdict(self, key: RunKey) -> Any:
        """B9 for ``key`` as if it were Queued.

        A Paused or AwaitingApproval run may be re-queued by this very decision (resume,
        auto-resume, recover, a gate decision); with the verdict at hand it is admitted in
        the same write instead of first showing a ``queueReason`` it does not have. These
        phases reconcile under the admission lock (``_may_admit``), so the verdict holds.
        """
        run = self.caches.runs.get(key)
        if run is None or not self._may_admit(run):
            return "capacity"
        slots = [
            replace(slot, phase="Queued") if slot.key == key else slot
            for slot in self._slots(also=key)
        ]
        verdicts = admission_pass(slots, capacity=self.settings.scheduler_max_concurrent_runs)
        return verdicts.get(key, "capacity")

    def _overrides(self, namespace: str, now_ms: int) -> tuple[Override, ...]:
        found = []
        for (ns, name), body in self.caches.overrides.items():
            if ns != namespace:
                continue
            try:
                spec = AgentQuotaOverrideSpec.model_validate(body.get("spec") or {})
            except pydantic.ValidationError:
                continue
            expires = parse_ms(spec.expires_at)
            if spec.approved and (expires is None or expires > now_ms):
                found.append(Override(name=name, agent_id=spec.agent_id))
        return tuple(found)

    # -- attempts -----------------------------------------------------------------------

    async def _start_attempt(
        self,
        key: RunKey,
        body: Mapping[str, Any],
        decision: Decision,
        spec: AutomationRunSpec,
        definition: AutomationSpec,
        node: Node,
        attempt: int,
    ) -> None:
        cp = decision.status.checkpoint
        agent = next((a for a in definition.agents if a.agent_id == node.agent_id), None)
        request = AttemptRequest(
            run_namespace=key[0],
            run_name=key[1],
            run_uid=str(body.get("metadata", {}).get("uid", "")),
            node_id=node.id,
            attempt=attempt,
            objective=node.objective or "",
            inputs={dep: cp.node_outputs.get(dep, {}) for dep in node.depends_on},
            runtime_context=spec.runtime_context or {},
            agent=agent.to_api() if agent else {},
        )
        try:
            executor = await self._executor(
                key[0], node, agent.endpoint_ref.name if agent and agent.endpoint_ref else None
            )
        except Exception as exc:
            self.runner.fail_to_start(key, request, str(exc))
            self.kick(key)
            return
        self.runner.start(key, request, executor)

    async def _executor(self, namespace: str, node: Node, agent_endpoint: str | None) -> Executor:
        ex = node.executor
        if ex is not None and ex.simulate is not None:
            sim = ex.simulate
            return SimulateExecutor(
                outcome=sim.outcome,
                after_seconds=sim.after_seconds,
                output=sim.output or {},
                prompt_tokens=sim.usage.prompt_tokens if sim.usage else 0,
                completion_tokens=sim.usage.completion_tokens if sim.usage else 0,
            )
        name = ex.endpoint_ref.name if ex is not None and ex.endpoint_ref else agent_endpoint
        if name is None:
            raise ValueError(
                f"node `{node.id}` has no executor: set executor.simulate or executor.endpointRef, "
                "or an endpointRef on its agent"
            )
        body = self.caches.endpoints.get((namespace, name))
        if body is None:
            # The watch cache may not hold it yet (a fresh operator lists the four kinds
            # concurrently): confirm with the API server before failing the attempt.
            try:
                body = await self.api.get(plural="agentendpoints", namespace=namespace, name=name)
            except Gone:
                raise ValueError(
                    f"AgentEndpoint {name} not found in namespace {namespace}"
                ) from None
            self.observe("endpoints", body)
        endpoint = AgentEndpointSpec.model_validate(body.get("spec") or {})
        token = None
        if endpoint.auth_secret_ref is not None:
            ref = endpoint.auth_secret_ref
            try:
                token = await self.api.read_secret_key(
                    namespace=namespace, name=ref.name, key=ref.key
                )
            except Gone:
                raise ValueError(
                    f"Secret {ref.name} of AgentEndpoint {name} not found in namespace {namespace}"
                ) from None
            if token is None:
                raise ValueError(f"Secret {ref.name} has no key {ref.key}")
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return AgentEndpointExecutor(
            url=endpoint.url,
            token=token,
            timeout_seconds=float(endpoint.timeout_seconds),
            session=self._http,
        )

    # -- malformed status -------------------------------------------------------------

    async def _report_invalid(
        self, key: RunKey, body: Mapping[str, Any], problems: list[str]
    ) -> None:
        """A status the operator cannot act on: say so, stall, and keep every field as is.

        One Warning Event ``InvalidStatus`` and ``Stalled=True`` naming the problems; only
        ``conditions`` is written, and only when the problems change. Once someone fixes
        the status, the next decision clears ``Stalled`` (see ``lifecycle.engine``).
        """
        message = "; ".join(problems[:3])
        if len(problems) > 3:
            message += f" (and {len(problems) - 3} more)"
        raw = body.get("status") or {}
        current = [c for c in raw.get("conditions") or [] if isinstance(c, dict)]
        stalled = next((c for c in current if c.get("type") == "Stalled"), None)
        if stalled and stalled.get("status") == "True" and stalled.get("message") == message:
            return
        log.warning("Invalid status run=%s/%s problems=%s", key[0], key[1], message)
        self.emit(body, Event(type="Warning", reason="InvalidStatus", message=message))
        probe = AutomationRunStatus(phase=None)
        apply_conditions(
            probe,
            now=format_ms(wall_ms()),
            generation=int(body.get("metadata", {}).get("generation") or 0),
            stalled_reason=message,
        )
        conditions = [c.to_api() for c in probe.conditions if c.type == "Stalled"]
        others = [c for c in current if c.get("type") != "Stalled"]
        stored = await self.api.patch_status(
            plural=PLURAL,
            namespace=key[0],
            name=key[1],
            resource_version=str(body.get("metadata", {}).get("resourceVersion", "")),
            status_patch={"conditions": [*others, *conditions]},
        )
        self.observe("runs", stored)

    # -- lifecycle of the reconciler itself ---------------------------------------------

    async def shutdown(self) -> None:
        """B15: stop admitting, let in-flight attempts finish within the grace period."""
        self.shutting_down = True
        await self.runner.drain(self.settings.shutdown_grace_seconds)
        for _ in range(50):
            if not self._tasks:
                break
            await asyncio.sleep(0.1)
        for handle in self._wakeups.values():
            handle.cancel()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()

    def on_leadership(self, leader: bool) -> None:
        if leader:
            task = asyncio.create_task(self._prime_then_reconcile(), name="prime-caches")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.primed = False
            self._parsed.clear()
            for key in list(self.caches.runs):
                self.runner.cancel(key)

    async def _prime_then_reconcile(self) -> None:
        """List every watched object before acting, then reconcile all runs.

        The watch streams fill the caches one event at a time; a new leader that admitted
        a Queued run before it had seen the Running run holding the same workspace would
        break the lock. So a leader lists the four kinds first and only then acts.
        """
        while self.is_leader() and not self.primed:
            try:
                for kind, plural in _CACHED_KINDS:
                    scopes: list[str | None] = [*self.namespaces] if self.namespaces else [None]
                    for namespace in scopes:
                        async for page in self.api.list_pages(plural=plural, namespace=namespace):
                            for item in page:
                                self.observe(kind, item)
            except Exception as exc:
                log.warning("Listing before acting failed, retrying error=%s", exc)
                await asyncio.sleep(2)
                continue
            self.primed = True
        if self.primed:
            self.kick_all()


def _first_error(part: str, exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{part}.{where}: {first.get('msg')}" if where else f"{part}: {first.get('msg')}"


def terminal(body: Mapping[str, Any]) -> bool:
    return (body.get("status") or {}).get("phase") in TERMINAL_PHASES
