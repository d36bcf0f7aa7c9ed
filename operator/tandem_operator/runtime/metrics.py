"""Prometheus metrics of the operator, served at ``/metrics`` on the metrics port.

Two kinds of numbers, two sources:

* **Gauges are read from the reconciler's run cache at scrape time** by a custom collector
  (runs by phase, queue depth by queue reason, workspace locks held). Nothing has to keep
  them in step with transitions, they cannot drift, and a standby (whose cache is as warm
  as the leader's) reports the same values. A scrape walks the cache once: O(runs), no
  per-run series.
* **Counters and the histogram count what this process did**, and only the leader does
  anything: they move when a reconcile has *stored* a status (transitions, auto-resumes,
  stale gates, reaps, transition latency), when executor outcomes were applied, and when a
  status write lost a race (409). A decision that failed to be written counts nothing; the
  retry that stores it counts once.

The metrics (prefix ``tandem_automation_``):

- ``runs{phase}`` (gauge): runs in the cache by ``status.phase``; runs without a phase yet
  are in none.
- ``queue_depth{queue_reason}`` (gauge): Queued runs by ``status.scheduler.queueReason``
  (``none`` while admission has not given a reason yet).
- ``workspace_locks_held`` (gauge): distinct ``workspace.root`` values of Running or
  Pausing runs (B9: those phases hold the lock).
- ``transitions_total{event}``: lifecycle records stored, by event name (``run_started``...).
- ``auto_resumes_total{reason}``: ``run_auto_resumed`` records by reason (B6, B7).
- ``stale_gates_marked_total``: ``approval_gate_marked_stale`` records (B4).
- ``reaps_total{outcome}``: stale reaps (B5), ``paused`` or ``failed``.
- ``executor_attempts_total{executor, status}``: attempt outcomes applied to a run, by
  executor kind (``simulate``, ``agent_endpoint``, ``none`` when no executor could be
  built) and status (``completed``, ``needs_repair``, ``failed``, ``blocked``,
  ``transient``, ``cancelled``, ``executor_error``).
- ``status_write_conflicts_total``: status writes refused with 409 and decided again.
- ``scheduled_runs_total``: AutomationRuns a schedule created (B19a); a create answered
  409 (the run of that due time exists) counts nothing.
- ``schedule_skipped_total{reason}``: due times a schedule did not start a run for:
  ``forbid`` (B19c, a run of the schedule was not finished), ``missed`` (B19d, one per
  ``ScheduleMissed`` Event, which counts the times it covers).
- ``runs_deleted_total{reason}``: finished runs the operator deleted: ``history`` (B20a,
  beyond a schedule's history limits), ``ttl`` (B20b, ``ttlSecondsAfterFinished`` or
  ``TANDEM_FINISHED_RUN_TTL_SECONDS`` after ``finishedAt``). A delete answered 404 counts
  nothing.
- ``pods_total{event}``: Pods of container attempts (``execution.container``) this process
  ``created``, ``adopted`` (an in-progress attempt's Pod found after a restart or a
  failover, C5) and ``deleted`` (an attempt cancelled or reaped, or an ended attempt's Pod
  cleaned up).
- ``transition_latency_seconds`` (histogram): for each stored status write whose decision
  carries at least one lifecycle record, the seconds from the *first trigger* of that
  reconcile to the end of the write. A trigger is anything that asks for a reconcile of
  the run: a watch event, an executor outcome, a lifecycle tick, a scheduled wake-up, a
  freed slot; triggers that arrive while one is pending are folded into it. The time thus
  includes waiting for the run's lock and the admission lock, 409 retries and the write
  itself, but not the time before the trigger (e.g. until a tick notices a deadline).

Labels are bounded enumerations (lifecycle event names, phases, queue reasons, executor
kinds, attempt statuses); no label carries a run, node or namespace name, so the number of
series does not grow with the number of runs. The process collectors (``process_*``,
``python_*``) are included as usual.

The endpoint is an aiohttp handler on the operator's own event loop rather than
``prometheus_client.start_http_server``: the collector reads the run cache, which only
the event loop mutates, so scraping on the loop sees a consistent cache without locks
(a server thread could iterate the cache while the loop resizes it). aiohttp is already
a dependency, and the scrape is cheap enough not to hold up reconciles. The registry is
private to the operator (not the process-wide default), so several operators in one test
process never collide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, get_args

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tandem_operator.api.vocabulary import (
    ALL_PHASES,
    AUTO_RESUME_REASONS,
    LifecycleEvent,
    QueueReason,
    holds_workspace,
)
from tandem_operator.lifecycle.contract import AttemptOutcome, Decision

log = logging.getLogger(__name__)

POD_EVENTS = ("created", "adopted", "deleted")
"""``execution.container.PodEvent`` values: the ``event`` label of ``pods_total``."""

PREFIX = "tandem_automation_"
PHASES: tuple[str, ...] = ALL_PHASES
QUEUE_REASONS: tuple[str, ...] = (*get_args(QueueReason), "none")
"""``none``: a Queued run whose admission has not been decided yet (no queueReason)."""
ATTEMPT_STATUSES = frozenset(
    {"completed", "needs_repair", "failed", "blocked", "transient", "cancelled", "executor_error"}
)
REAP_EVENTS: dict[LifecycleEvent | str, str] = {
    "run_paused_stale_no_provider_activity": "paused",
    "run_failed_stale_no_provider_activity": "failed",
}
SKIP_REASONS = ("forbid", "missed")
DELETE_REASONS = ("history", "ttl")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RunFacts(Protocol):
    """What the gauges read of a run (``runtime.store.CachedRun`` has it)."""

    @property
    def phase(self) -> str | None: ...
    @property
    def queue_reason(self) -> str | None: ...
    @property
    def own_workspace(self) -> str | None: ...


RunsSource = Callable[[], Iterable[RunFacts]]


def attempt_status(outcome: AttemptOutcome) -> str:
    """The status label of an attempt outcome.

    ``cancelled`` (pause, budget, shutdown), ``transient`` (dropped stream, 5xx: retried
    with back-off), ``executor_error`` (the attempt could not run: missing endpoint, 4xx,
    protocol error), else the status the agent reported.
    """
    if outcome.cancelled:
        return "cancelled"
    if outcome.transient:
        return "transient"
    if outcome.error is not None:
        return "executor_error"
    return outcome.status if outcome.status in ATTEMPT_STATUSES else "failed"


def run_gauges(runs: Iterable[RunFacts]) -> list[GaugeMetricFamily]:
    """The cache-derived gauges for ``runs`` (what the cache knows of each): pure, one pass.

    Runs the operator has not written yet (no ``status.phase``) are in no phase. Every
    phase and queue reason is reported, zero included, so dashboards see stable series.
    """
    phases = dict.fromkeys(PHASES, 0)
    queued = dict.fromkeys(QUEUE_REASONS, 0)
    locks: set[str] = set()
    for run in runs:
        phase = run.phase
        if phase in phases:
            phases[phase] += 1
        if phase == "Queued":
            reason = run.queue_reason or "none"
            queued[reason if reason in queued else "none"] += 1
        if holds_workspace(phase) and (root := run.own_workspace):
            locks.add(root)
    by_phase = GaugeMetricFamily(
        f"{PREFIX}runs", "AutomationRuns known to the operator, by phase", labels=["phase"]
    )
    for phase, count in phases.items():
        by_phase.add_metric([phase], count)
    depth = GaugeMetricFamily(
        f"{PREFIX}queue_depth",
        "Queued AutomationRuns, by status.scheduler.queueReason",
        labels=["queue_reason"],
    )
    for reason, count in queued.items():
        depth.add_metric([reason], count)
    held = GaugeMetricFamily(
        f"{PREFIX}workspace_locks_held",
        "Distinct workspace.root values held by Running or Pausing runs",
        value=len(locks),
    )
    return [by_phase, depth, held]


class _RunsCollector(Collector):
    def __init__(self, source: RunsSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return run_gauges(())

    def collect(self) -> Iterator[Metric]:
        try:
            yield from run_gauges(self._source())
        except Exception:
            # A scrape must never take the operator down; the gauges are simply absent.
            log.exception("Run gauges not collected")


class OperatorMetrics:
    """Every metric of one operator process, in a registry of its own."""

    def __init__(self, *, process_collectors: bool = False) -> None:
        self.registry = CollectorRegistry()
        if process_collectors:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.transitions = Counter(
            f"{PREFIX}transitions",
            "Lifecycle records stored by the leader, by event name",
            ["event"],
            registry=self.registry,
        )
        self.auto_resumes = Counter(
            f"{PREFIX}auto_resumes",
            "Runs re-queued automatically (B6 stale reap, B7 guardrail override), by reason",
            ["reason"],
            registry=self.registry,
        )
        self.stale_gates = Counter(
            f"{PREFIX}stale_gates_marked",
            "Approval gates marked stale (B4)",
            registry=self.registry,
        )
        self.reaps = Counter(
            f"{PREFIX}reaps",
            "Running runs reaped for lack of executor activity (B5), by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.transition_latency = Histogram(
            f"{PREFIX}transition_latency_seconds",
            "Seconds from the first trigger of a reconcile to the stored status write that "
            "applied a transition",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.attempts = Counter(
            f"{PREFIX}executor_attempts",
            "Attempt outcomes applied to runs, by executor kind and status",
            ["executor", "status"],
            registry=self.registry,
        )
        self.write_conflicts = Counter(
            f"{PREFIX}status_write_conflicts",
            "Status writes refused with 409 (the run changed since it was read)",
            registry=self.registry,
        )
        self.scheduled_runs = Counter(
            f"{PREFIX}scheduled_runs",
            "AutomationRuns created by schedules (B19a)",
            registry=self.registry,
        )
        self.schedule_skipped = Counter(
            f"{PREFIX}schedule_skipped",
            "Due times a schedule started no run for, by reason (forbid: B19c, missed: B19d)",
            ["reason"],
            registry=self.registry,
        )
        self.runs_deleted = Counter(
            f"{PREFIX}runs_deleted",
            "Finished runs deleted by the operator, by reason (history: B20a, ttl: B20b)",
            ["reason"],
            registry=self.registry,
        )
        self.pods = Counter(
            f"{PREFIX}pods",
            "Pods of container attempts created, adopted and deleted by this process",
            ["event"],
            registry=self.registry,
        )
        for event in POD_EVENTS:
            self.pods.labels(event=event)
        for reason in AUTO_RESUME_REASONS:
            self.auto_resumes.labels(reason=reason)
        for skip in SKIP_REASONS:
            self.schedule_skipped.labels(reason=skip)
        for deletion in DELETE_REASONS:
            self.runs_deleted.labels(reason=deletion)
        for outcome in REAP_EVENTS.values():
            self.reaps.labels(outcome=outcome)

    def watch_runs(self, source: RunsSource) -> None:
        """Report the run gauges from ``source`` (called at every scrape, on the loop)."""
        self.registry.register(_RunsCollector(source))

    def decision_stored(self, decision: Decision, *, latency_seconds: float | None) -> None:
        """A decision's status was written: count its lifecycle records.

        ``latency_seconds`` is observed only for decisions that carry records (transitions);
        a status write that only refreshes a heartbeat or usage is not a transition.
        """
        if not decision.records:
            return
        for record in decision.records:
            self.transitions.labels(event=record.event).inc()
            if record.event == "run_auto_resumed" and record.reason in AUTO_RESUME_REASONS:
                self.auto_resumes.labels(reason=record.reason).inc()
            elif record.event == "approval_gate_marked_stale":
                self.stale_gates.inc()
            elif record.event in REAP_EVENTS:
                self.reaps.labels(outcome=REAP_EVENTS[record.event]).inc()
        if latency_seconds is not None:
            self.transition_latency.observe(max(0.0, latency_seconds))

    def outcomes_applied(self, outcomes: Iterable[tuple[str, AttemptOutcome]]) -> None:
        """Attempt outcomes a stored (or unchanged) decision took into account.

        Each item is ``(executor kind, outcome)``: the kind's name in the executor registry
        (``execution.registry``), ``none`` when no kind claimed the node.
        """
        for kind, outcome in outcomes:
            self.attempts.labels(executor=kind, status=attempt_status(outcome)).inc()

    def pod_event(self, event: str) -> None:
        """A container attempt's Pod was created, adopted or deleted."""
        if event in POD_EVENTS:
            self.pods.labels(event=event).inc()

    def status_write_conflict(self) -> None:
        self.write_conflicts.inc()

    def scheduled_run_created(self) -> None:
        self.scheduled_runs.inc()

    def schedule_skipped_due(self, reason: str) -> None:
        """``reason`` is one of :data:`SKIP_REASONS`."""
        self.schedule_skipped.labels(reason=reason).inc()

    def run_deleted(self, reason: str) -> None:
        """``reason`` is one of :data:`DELETE_REASONS`."""
        self.runs_deleted.labels(reason=reason).inc()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The current metrics in the format ``accept`` asks for (Prometheus text by default)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


async def serve_metrics(
    metrics: OperatorMetrics, *, port: int, host: str = "0.0.0.0"
) -> web.AppRunner | None:
    """Serve ``/metrics`` on ``host:port`` from the running loop; ``None`` if it cannot bind.

    A port that is taken does not stop the operator: reconciling matters more than being
    scraped, and the error is logged with the port so the clash is easy to find.
    """

    async def handle(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("Metrics endpoint not started host=%s port=%d error=%s", host, port, exc)
        await runner.cleanup()
        return None
    log.info("Metrics endpoint started host=%s port=%d path=/metrics", host, port)
    return runner
