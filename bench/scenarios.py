"""The measurements, each in its own namespace of one shared control plane.

1. ``raw_patch`` (and, inside ``latency``, ``_raw_reactor``): what the API server does for
   a minimal client (``bench.kube``), the denominators of every ratio;
2. ``recovery``: orphaned runs written by hand while no operator runs, then one operator
   started, timed until every run is settled;
3. ``latency``: a user's create and gate decision, timed until an independent watch sees
   the operator's answer, interleaved sample for sample with the raw controller's;
4. ``at_rest``: many runs parked at a gate or paused (statuses as the operator writes
   them, written by hand), then a fresh operator's CPU and memory;
5. ``throughput``: many three-node simulated runs end to end;
6. ``churn``: runs created, finished and deleted by their time to live
   (``ttlSecondsAfterFinished: 1``), in a warm-up batch and then a measured one: the
   operator's RSS after the measured batch against after the warm-up (memory must not grow
   with the runs that came and went);
7. ``container_throughput`` (``bench.containers``): the throughput flow with container
   nodes, one Pod per attempt on kwok's fake Nodes, against the same flow simulated.

Every scenario returns a JSON-ready dict. API writes are counted by the API server itself
(``apiserver_request_total`` deltas from ``/metrics``), CPU and memory from ``/proc``; the
scenario's own clock is ``time.monotonic()`` in this process, which also receives the
watch events, so a latency is "request sent" to "change seen", as a user would time it.
A scenario with ``profile`` set runs py-spy on the operator and returns its collapsed
stacks instead of being measured (sampling costs CPU on a 2-core machine).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import workload
from bench.kube import ApiError, Kube, RunWatcher, bounded
from bench.procs import CpuMeter, OperatorProcess, Profiler, proc_cpu_seconds, proc_rss_kib
from bench.stats import (
    counter_delta,
    counter_sum,
    cpu_share,
    percentile,
    rate,
    ratio,
    summarize,
)
from tandem_operator.devcluster.controlplane import ControlPlane

CONCURRENCY = 8
"""Requests in flight for the raw client: the operator's kubeapi thread pool has 8 workers."""


@dataclass(frozen=True, kw_only=True)
class Scale:
    name: str
    raw_patch_seconds: float
    raw_patch_objects: int
    recovery_runs: int
    latency_samples: int
    rest_runs: int
    rest_window_seconds: float
    throughput_runs: int
    throughput_max_concurrent: int = 50
    churn_warmup_runs: int = 300
    churn_runs: int = 2000
    container_runs: int = 50
    """Three-node runs in each batch (simulated, container) of ``bench.containers``."""


SCALES = {
    "smoke": Scale(
        name="smoke",
        raw_patch_seconds=3,
        raw_patch_objects=40,
        recovery_runs=40,
        latency_samples=10,
        rest_runs=100,
        rest_window_seconds=10,
        throughput_runs=20,
        churn_warmup_runs=50,
        churn_runs=100,
        container_runs=6,
    ),
    "quick": Scale(
        name="quick",
        raw_patch_seconds=10,
        raw_patch_objects=200,
        recovery_runs=500,
        latency_samples=100,
        rest_runs=1000,
        rest_window_seconds=60,
        throughput_runs=200,
        container_runs=50,
    ),
    "full": Scale(
        name="full",
        raw_patch_seconds=30,
        raw_patch_objects=400,
        recovery_runs=5000,
        latency_samples=300,
        rest_runs=10000,
        rest_window_seconds=120,
        throughput_runs=1000,
        container_runs=200,
    ),
}


@dataclass
class Bench:
    """What every scenario shares: the client, the control plane's pids, a work directory."""

    kube: Kube
    kubeconfig: Path
    workdir: Path
    control_plane_pids: Mapping[str, int]
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    @classmethod
    def on(cls, kube: Kube, plane: ControlPlane, workdir: Path, **extra: Any) -> Bench:
        """A Bench for ``plane``: its kubeconfig and the pids of its API server and etcd."""
        pids = {"kube-apiserver": plane.apiserver_pid or 0, "etcd": plane.etcd_pid or 0}
        return cls(
            kube=kube,
            kubeconfig=plane.kubeconfig,
            workdir=workdir,
            control_plane_pids=pids,
            **extra,
        )

    def say(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {message}"
        self.log.append(line)
        print(line, flush=True)

    async def namespace(self, hint: str) -> str:
        name = f"bench-{hint}-{secrets.token_hex(3)}"
        await self.kube.create_namespace(name)
        return name

    def operator(self, namespace: str, **env: str) -> OperatorProcess:
        return OperatorProcess(
            kubeconfig=self.kubeconfig,
            namespace=namespace,
            log_path=self.workdir / f"operator-{namespace}.log",
            env=env,
        )

    def meter(self, **extra: int) -> CpuMeter:
        return CpuMeter(pids={**self.control_plane_pids, **extra}).start()

    async def counters(self) -> dict[str, dict[str, float]]:
        """The API server's own request counters that the report uses."""
        text = await self.kube.metrics()
        metric = "apiserver_request_total"
        runs = {"resource": "automationruns", "group": "automation.tandem.dev"}
        pods = {"resource": "pods", "group": ""}
        return {
            "status_patch": counter_sum(
                text, metric, {**runs, "verb": "PATCH", "subresource": "status"}, group_by="code"
            ),
            "run_get": counter_sum(text, metric, {**runs, "verb": "GET"}),
            "event_post": counter_sum(text, metric, {"resource": "events", "verb": "POST"}),
            "event_patch": counter_sum(text, metric, {"resource": "events", "verb": "PATCH"}),
            "lease": counter_sum(text, metric, {"resource": "leases"}),
            # Pods (the container scenario): every verb on the resource itself; creates by
            # code; what the scheduler (binding) and kwok (status) write about them.
            "pod_request": counter_sum(text, metric, {**pods, "subresource": ""}, group_by="verb"),
            "pod_create": counter_sum(
                text, metric, {**pods, "subresource": "", "verb": "POST"}, group_by="code"
            ),
            "pod_delete": counter_sum(
                text, metric, {**pods, "subresource": "", "verb": "DELETE"}, group_by="code"
            ),
            "pod_binding": counter_sum(text, metric, {**pods, "subresource": "binding"}),
            "pod_status": counter_sum(text, metric, {**pods, "subresource": "status"}),
        }

    async def delta(self, before: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
        after = await self.counters()
        return {k: counter_delta(before[k], after[k]) for k in before}


def _series(points: list[tuple[float, float]], *, limit: int = 400) -> list[list[float]]:
    """At most ``limit`` evenly spaced points, rounded, for plots and the JSON file."""
    if len(points) > limit:
        step = len(points) / limit
        points = [points[int(i * step)] for i in range(limit)] + [points[-1]]
    return [[round(x, 3), round(y, 4)] for x, y in points]


async def _create_with_status(
    kube: Kube, namespace: str, manifest: dict[str, Any], status: dict[str, Any]
) -> str:
    """Create a run, then write its status by hand; returns the resulting resourceVersion."""
    created = await kube.create_run(namespace, manifest)
    _, obj = await kube.patch_run_status(
        namespace,
        manifest["metadata"]["name"],
        status,
        resource_version=created["metadata"]["resourceVersion"],
    )
    return str(obj["metadata"]["resourceVersion"])


# --------------------------------------------------------------------------- 1. raw baseline


async def raw_patch(bench: Bench, scale: Scale) -> dict[str, Any]:
    """Status merge PATCHes at the operator's concurrency, as fast as the server takes them."""
    ns = await bench.namespace("raw-patch")
    now = time.time()
    names = [f"raw-{i:05d}" for i in range(scale.raw_patch_objects)]
    bodies = [workload.orphan("Running", n, now_s=now) for n in names]
    rvs = await bounded(
        CONCURRENCY,
        [partial(_create_with_status, bench.kube, ns, m, s) for m, s in bodies],
    )
    versions = dict(zip(names, rvs, strict=True))
    patch = bench.templates["recover"]
    latencies: list[float] = []
    conflicts = 0
    deadline = time.monotonic() + scale.raw_patch_seconds

    async def worker(mine: list[str]) -> None:
        nonlocal conflicts
        index = 0
        while time.monotonic() < deadline:
            name = mine[index % len(mine)]
            index += 1
            body = {**patch, "updatedAt": workload.ts(time.time())}
            started = time.monotonic()
            code, obj = await bench.kube.patch_run_status(
                ns, name, body, resource_version=versions[name], ok=(200, 409)
            )
            if code == 409:
                conflicts += 1
                continue
            latencies.append(time.monotonic() - started)
            versions[name] = str(obj["metadata"]["resourceVersion"])

    before = await bench.counters()
    meter = bench.meter()
    started = time.monotonic()
    await asyncio.gather(*(worker(names[w::CONCURRENCY]) for w in range(CONCURRENCY)))
    seconds = time.monotonic() - started
    cpu = meter.read()
    delta = await bench.delta(before)
    await bench.kube.delete_runs(ns)
    writes = len(latencies)
    return {
        "namespace": ns,
        "concurrency": CONCURRENCY,
        "objects": len(names),
        "patch_bytes": len(str(patch)),
        "writes": writes,
        "conflicts": conflicts,
        "seconds": round(seconds, 3),
        "writes_per_s": round(writes / seconds, 1),
        "latency": summarize(latencies),
        "apiserver_counted_patches": delta["status_patch"],
        "cpu_seconds": cpu,
    }


async def _raw_reactor(kube: Kube, namespace: str, templates: dict[str, dict[str, Any]]) -> None:
    """A minimal controller: answer a new run and a spec change with one status patch each."""
    listing = await kube.list_runs(namespace)
    rv = str(listing["metadata"]["resourceVersion"])
    path = f"/apis/automation.tandem.dev/v1alpha1/namespaces/{namespace}/automationruns"
    async for kind, obj in kube.watch(path, rv):
        meta = obj.get("metadata", {})
        status = obj.get("status") or {}
        patch: dict[str, Any] | None = None
        if kind == "ADDED" and not status:
            patch = templates["first"]
        elif kind == "MODIFIED" and int(meta.get("generation", 1)) > int(
            status.get("observedGeneration", 0) or 0
        ):
            patch = {**templates["approve"], "observedGeneration": meta.get("generation")}
        if patch is not None:
            await kube.patch_run_status(
                namespace,
                meta["name"],
                patch,
                resource_version=meta["resourceVersion"],
                ok=(200, 409),
            )


# --------------------------------------------------------------------------- 2. recovery


async def recovery(
    bench: Bench, scale: Scale, *, raw_writes_per_s: float | None, profile: Path | None = None
) -> dict[str, Any]:
    ns = await bench.namespace("recovery")
    now = time.time()
    kinds = [workload.orphan_kind(i) for i in range(scale.recovery_runs)]
    names = [f"orphan-{i:05d}" for i in range(scale.recovery_runs)]
    bodies = [workload.orphan(k, n, now_s=now) for k, n in zip(kinds, names, strict=True)]
    bench.say(f"Recovery: writing {len(names)} orphaned runs ns={ns}")
    rvs = await bounded(
        CONCURRENCY,
        [partial(_create_with_status, bench.kube, ns, m, s) for m, s in bodies],
    )
    written = dict(zip(names, rvs, strict=True))
    watcher = RunWatcher(bench.kube, ns)
    await watcher.start()
    recovered = {
        n: workload.SETTLED[k]
        for n, k in zip(names, kinds, strict=True)
        if k in ("Running", "Pausing")
    }
    untouched = [
        n for n, k in zip(names, kinds, strict=True) if k in ("Paused", "AwaitingApproval")
    ]

    def settled() -> bool:
        return all(watcher.phases.get(n) == p for n, p in recovered.items())

    before = await bench.counters()
    op = bench.operator(ns)
    op.start()
    meter = bench.meter(operator=op.pid)
    profiler = Profiler(op.pid, profile).start() if profile else None
    try:
        leader_s = await asyncio.to_thread(op.wait_leader)
        await watcher.wait_counts(settled, within=max(180.0, len(names) / 5))
        done = time.monotonic()
        cpu = meter.read()
        await asyncio.sleep(3)  # late writes (to runs B3 must leave alone) would show now
        delta = await bench.delta(before)
    finally:
        stacks = profiler.stop() if profiler else ""
        op.stop()
        await watcher.stop()
    await bench.kube.delete_runs(ns)
    if profile:
        return {"stacks": stacks}
    times = sorted(
        t - op.started_at
        for n, p in recovered.items()
        if (t := watcher.seen_at(n, (p,), after=op.started_at)) is not None
    )
    total_s = times[-1]
    drain_s = times[-1] - times[0]
    per_s = rate(len(recovered), total_s)
    drain_per_s = rate(len(recovered), drain_s)
    rewritten = [
        n for n in untouched if watcher.objects[n]["metadata"]["resourceVersion"] != written[n]
    ]
    patches = delta["status_patch"].get("total", 0)
    return {
        "namespace": ns,
        "runs": len(names),
        "by_kind": {k: kinds.count(k) for k in workload.ORPHAN_KINDS},
        "recovered_runs": len(recovered),
        "leader_after_s": round(leader_s, 3),
        "first_settled_after_s": round(times[0], 3),
        "all_settled_after_s": round(total_s, 3),
        "drain_s": round(drain_s, 3),
        "recovered_per_s": None if per_s is None else round(per_s, 1),
        "recovered_per_s_drain": None if drain_per_s is None else round(drain_per_s, 1),
        "raw_patch_per_s": raw_writes_per_s,
        "ratio_to_raw_patch": ratio(per_s, raw_writes_per_s),
        "ratio_to_raw_patch_drain": ratio(drain_per_s, raw_writes_per_s),
        "status_patches": delta["status_patch"],
        "writes_per_recovered_run": ratio(patches, len(recovered)),
        "untouched_runs": len(untouched),
        "untouched_runs_rewritten": len(rewritten),
        "events_posted": delta["event_post"].get("total", 0),
        "run_gets": delta["run_get"].get("total", 0),
        "cpu_seconds": cpu,
        "operator_cpu_ms_per_recovered_run": round(1000 * cpu["operator"] / len(recovered), 2),
        "wall_to_settled_s": round(done - op.started_at, 3),
        "series": {"settled_over_time": _series([(t, i + 1) for i, t in enumerate(times)])},
    }


def rebase_recovery(result: dict[str, Any], raw_writes_per_s: float) -> None:
    """Recompute the recovery ratios against another raw PATCH rate (e.g. a mean)."""
    result["raw_patch_per_s"] = raw_writes_per_s
    result["ratio_to_raw_patch"] = ratio(result["recovered_per_s"], raw_writes_per_s)
    result["ratio_to_raw_patch_drain"] = ratio(result["recovered_per_s_drain"], raw_writes_per_s)


# --------------------------------------------------------------------------- 3. latency


async def _gate_sample(
    bench: Bench, namespace: str, watcher: RunWatcher, index: int, *, wait_done: bool
) -> tuple[float, float]:
    """One gated run: (create → first status seen, approve → Running seen) in seconds."""
    name = f"gate-{index:05d}"
    t0 = time.monotonic()
    await bench.kube.create_run(namespace, workload.run_manifest(name, workload.gated_flow()))
    await watcher.wait_run(name, lambda: name in watcher.status_seen, within=60)
    create = watcher.status_seen[name] - t0
    await watcher.wait_phase(name, "AwaitingApproval", within=60)
    t1 = time.monotonic()
    await bench.kube.patch_run_spec(namespace, name, workload.approve_patch(f"r{index}"))
    seen = await watcher.wait_phase(name, "Running", after=t1, within=60)
    if wait_done:
        await watcher.wait_phase(name, "Completed", "Failed", after=t1, within=60)
    return create, seen - t1


def _compare(mine: list[float], raw: list[float]) -> dict[str, Any]:
    out = summarize(mine)
    base = summarize(raw)
    return {
        **out,
        "raw": base,
        "ratio_p50_to_raw": ratio(out.get("p50_ms"), base.get("p50_ms")),
        "ratio_p95_to_raw": ratio(out.get("p95_ms"), base.get("p95_ms")),
        "ratio_p99_to_raw": ratio(out.get("p99_ms"), base.get("p99_ms")),
    }


async def latency(
    bench: Bench, scale: Scale, *, profile: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw round trips and the operator's reactions, sample for sample, interleaved.

    The minimal controller (``_raw_reactor``) serves one namespace and the operator
    another; samples alternate between them (in alternating order) so that both see the
    same machine: on a shared 2-core box, load from elsewhere moves both alike and the
    ratio stays meaningful. Returns (raw baseline, operator latency).
    """
    raw_ns = await bench.namespace("raw-rtt")
    ns = await bench.namespace("latency")
    raw_watcher = RunWatcher(bench.kube, raw_ns)
    watcher = RunWatcher(bench.kube, ns)
    await raw_watcher.start()
    await watcher.start()
    reactor = asyncio.create_task(_raw_reactor(bench.kube, raw_ns, bench.templates))
    op = bench.operator(ns)
    op.start()
    profiler = None
    raw_create: list[float] = []
    raw_approve: list[float] = []
    create: list[float] = []
    approve: list[float] = []
    try:
        await asyncio.to_thread(op.wait_leader)
        await asyncio.sleep(1)
        profiler = Profiler(op.pid, profile).start() if profile else None
        before = await bench.counters()
        meter = bench.meter(operator=op.pid)
        for i in range(scale.latency_samples):
            for which in ("raw", "op") if i % 2 == 0 else ("op", "raw"):
                if which == "raw":
                    c, a = await _gate_sample(bench, raw_ns, raw_watcher, i, wait_done=False)
                    raw_create.append(c)
                    raw_approve.append(a)
                else:
                    c, a = await _gate_sample(bench, ns, watcher, i, wait_done=True)
                    create.append(c)
                    approve.append(a)
                await asyncio.sleep(0.02)
        cpu = meter.read()
        delta = await bench.delta(before)
    finally:
        stacks = profiler.stop() if profiler else ""
        op.stop()
        reactor.cancel()
        await watcher.stop()
        await raw_watcher.stop()
    await bench.kube.delete_runs(ns)
    await bench.kube.delete_runs(raw_ns)
    if profile:
        return {}, {"stacks": stacks}
    raw = {
        "namespace": raw_ns,
        "create_to_status": summarize(raw_create),
        "spec_patch_to_status": summarize(raw_approve),
        "samples": {"create_s": raw_create, "spec_patch_s": raw_approve},
    }
    n = len(create)
    # The API server counts the raw client's patches too: two per raw sample.
    patches = delta["status_patch"].get("total", 0) - 2 * len(raw_create)
    return raw, {
        "namespace": ns,
        "create_to_status": _compare(create, raw_create),
        "gate_to_running": _compare(approve, raw_approve),
        "status_patches_per_run": ratio(patches, n),
        "events_posted_per_run": ratio(delta["event_post"].get("total", 0), n),
        "cpu_seconds": cpu,
        "samples": {"create_s": create, "gate_s": approve},
    }


# --------------------------------------------------------------------------- 4. at rest


async def _quiet(pid: int, *, below: float, span: float, give_up_s: float) -> float:
    """Wait until ``pid`` used less than ``below`` of a core over ``span`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < give_up_s:
        cpu0 = proc_cpu_seconds(pid)
        await asyncio.sleep(span)
        if (proc_cpu_seconds(pid) - cpu0) / span < below:
            break
    return time.monotonic() - started


async def _cpu_trace(pid: int, seconds: float) -> tuple[float, list[tuple[float, float]]]:
    """CPU seconds used by ``pid`` over ``seconds``, and its share per second."""
    trace: list[tuple[float, float]] = []
    start_cpu = proc_cpu_seconds(pid)
    started = time.monotonic()
    last_cpu, last_t = start_cpu, started
    while (now := time.monotonic()) - started < seconds:
        await asyncio.sleep(min(1.0, seconds - (now - started)))
        cpu, t = proc_cpu_seconds(pid), time.monotonic()
        trace.append((t - started, (cpu - last_cpu) / max(t - last_t, 1e-6)))
        last_cpu, last_t = cpu, t
    return proc_cpu_seconds(pid) - start_cpu, trace


async def at_rest(bench: Bench, scale: Scale, *, profile: Path | None = None) -> dict[str, Any]:
    ns = await bench.namespace("rest")
    window = scale.rest_window_seconds
    idle_rss = idle_cpu = 0.0
    if not profile:
        op = bench.operator(ns).start()
        try:
            await asyncio.to_thread(op.wait_leader)
            await _quiet(op.pid, below=0.05, span=2, give_up_s=30)
            idle_cpu, _ = await _cpu_trace(op.pid, window / 2)
            idle_rss = proc_rss_kib(op.pid)
        finally:
            op.stop()
    names = [f"rest-{i:05d}" for i in range(scale.rest_runs)]
    kinds = ["Paused" if i % 2 else "AwaitingApproval" for i in range(len(names))]
    bench.say(f"At rest: writing {len(names)} parked runs ns={ns}")
    # Statuses exactly as the operator writes them (see workload.parked_statuses), written
    # while no operator runs; then one starts on them, as after an upgrade, and is measured.
    templates = workload.parked_statuses(now_s=time.time())
    await bounded(
        CONCURRENCY,
        [
            partial(_create_with_status, bench.kube, ns, *workload.parked(templates, k, n))
            for n, k in zip(names, kinds, strict=True)
        ],
    )
    before = await bench.counters()
    op = bench.operator(ns).start()
    profiler = None
    try:
        await asyncio.to_thread(op.wait_leader)
        load_s = op_started = time.monotonic() - op.started_at
        load_s = op_started + await _quiet(op.pid, below=0.2, span=2, give_up_s=300)
        profiler = Profiler(op.pid, profile).start() if profile else None
        rss_start = proc_rss_kib(op.pid)
        meter = bench.meter(operator=op.pid)
        cpu, trace = await _cpu_trace(op.pid, window)
        machine = meter.read()
        rss_end = proc_rss_kib(op.pid)
        delta = await bench.delta(before)
    finally:
        stacks = profiler.stop() if profiler else ""
        op.stop()
    await bench.kube.delete_runs(ns)
    if profile:
        return {"stacks": stacks}
    shares = [s for _, s in trace]
    return {
        "namespace": ns,
        "runs": len(names),
        "by_kind": {k: kinds.count(k) for k in ("AwaitingApproval", "Paused")},
        "timer_interval_s": 30,
        "window_s": window,
        "loaded_after_s": round(load_s, 3),
        "idle": {
            "rss_kib": idle_rss,
            "cpu_share_of_core": round(cpu_share(idle_cpu, window / 2) or 0, 4),
        },
        "rss_kib_window_start": rss_start,
        "rss_kib_window_end": rss_end,
        "rss_bytes_per_run": round((max(rss_start, rss_end) - idle_rss) * 1024 / len(names), 1),
        "cpu_seconds": round(cpu, 3),
        "cpu_share_of_core": round(cpu_share(cpu, window) or 0, 4),
        "cpu_share_peak_1s": round(max(shares), 3) if shares else None,
        "cpu_share_p50_1s": round(percentile(shares, 50), 4) if shares else None,
        "status_patches": delta["status_patch"],
        "cpu_seconds_all": machine,
        "series": {"cpu_share_per_second": _series(trace)},
    }


# --------------------------------------------------------------------------- 5. throughput


async def throughput(bench: Bench, scale: Scale, *, profile: Path | None = None) -> dict[str, Any]:
    ns = await bench.namespace("throughput")
    watcher = RunWatcher(bench.kube, ns)
    await watcher.start()
    max_concurrent = scale.throughput_max_concurrent
    op = bench.operator(ns, TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS=str(max_concurrent))
    op.start()
    names = [f"flow-{i:05d}" for i in range(scale.throughput_runs)]
    created_at: dict[str, float] = {}
    profiler = None

    async def create(name: str) -> None:
        created_at[name] = time.monotonic()
        await bench.kube.create_run(ns, workload.run_manifest(name, workload.chain_flow()))

    def finished() -> bool:
        return watcher.counts["Completed"] + watcher.counts["Failed"] >= len(names)

    try:
        await asyncio.to_thread(op.wait_leader)
        await asyncio.sleep(1)
        profiler = Profiler(op.pid, profile).start() if profile else None
        bench.say(f"Throughput: {len(names)} runs ns={ns}")
        before = await bench.counters()
        meter = bench.meter(operator=op.pid)
        t0 = time.monotonic()
        await bounded(CONCURRENCY, [partial(create, n) for n in names])
        created_s = time.monotonic() - t0
        await watcher.wait_counts(finished, within=120 + 2.0 * len(names))
        cpu = meter.read()
        await asyncio.sleep(2)
        delta = await bench.delta(before)
    finally:
        stacks = profiler.stop() if profiler else ""
        op.stop()
        await watcher.stop()
    await bench.kube.delete_runs(ns)
    if profile:
        return {"stacks": stacks}
    ends = {
        n: t
        for n in names
        if (t := watcher.seen_at(n, ("Completed", "Failed"), after=t0)) is not None
    }
    elapsed = max(ends.values()) - t0
    records = [
        int(
            ((watcher.objects[n].get("status") or {}).get("counters") or {}).get(
                "lifecycleRecords", 0
            )
        )
        for n in names
    ]
    patches = delta["status_patch"].get("total", 0)
    per_run = [ends[n] - created_at[n] for n in names if n in ends]
    completions = sorted(t - t0 for t in ends.values())
    return {
        "namespace": ns,
        "runs": len(names),
        "nodes_per_run": 3,
        "max_concurrent_runs": max_concurrent,
        "completed": watcher.counts["Completed"],
        "failed": watcher.counts["Failed"],
        "create_seconds": round(created_s, 3),
        "elapsed_s": round(elapsed, 3),
        "runs_per_minute": round(len(names) / elapsed * 60, 1),
        "status_patches": delta["status_patch"],
        "writes_per_run": ratio(patches, len(names)),
        "transitions_per_run": round(sum(records) / len(records), 3),
        "events_posted_per_run": ratio(delta["event_post"].get("total", 0), len(names)),
        "run_gets_per_run": ratio(delta["run_get"].get("total", 0), len(names)),
        "create_to_done": summarize(per_run),
        "cpu_seconds": cpu,
        "operator_cpu_ms_per_run": round(1000 * cpu["operator"] / len(names), 2),
        "series": {"completed_over_time": _series([(t, i + 1) for i, t in enumerate(completions)])},
    }


CHURN_WAVE = 100
"""Runs created at once in the churn scenario."""


def churn_manifest(name: str) -> dict[str, Any]:
    """A one-node simulated run that is deleted one second after it finishes."""
    flow = {
        "creatorId": "bench",
        "agents": [{"agentId": "agent"}],
        "nodes": [
            {"id": "a", "agentId": "agent", "executor": {"simulate": {"outcome": "completed"}}}
        ],
    }
    manifest = workload.run_manifest(name, flow)
    manifest["spec"]["ttlSecondsAfterFinished"] = 1
    return manifest


async def churn(bench: Bench, scale: Scale) -> dict[str, Any]:
    """RSS of one operator before and after ``churn_runs`` runs came and went (B20b)."""
    ns = await bench.namespace("churn")
    watcher = RunWatcher(bench.kube, ns)
    watcher.keep_objects = False
    for _ in range(60):
        try:
            await watcher.start()
            break
        except ApiError as exc:  # 429 while a new CRD's storage initialises
            if exc.status != 429:
                raise
            await asyncio.sleep(1)
    op = bench.operator(ns, TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS="50")
    op.start()
    seen: set[str] = set()

    async def batch(prefix: str, count: int) -> float:
        # In waves, each deleted before the next is created: the number of runs alive at
        # once is the same in the warm-up and the measured batch (the allocator keeps the
        # arenas of its peak, which would read as growth without being a leak).
        t0 = time.monotonic()
        for start in range(0, count, CHURN_WAVE):
            names = [f"{prefix}-{i:05d}" for i in range(start, min(count, start + CHURN_WAVE))]
            await bounded(
                CONCURRENCY,
                [partial(bench.kube.create_run, ns, churn_manifest(n)) for n in names],
            )
            seen.update(names)

            def all_gone(names: list[str] = names) -> bool:
                return not any(watcher.phases.get(n) is not None for n in names)

            await watcher.wait_counts(all_gone, within=120 + 1.5 * len(names))
        return time.monotonic() - t0

    async def settled_rss() -> int:
        await asyncio.sleep(5)  # the last deletions' watch events and Event posts
        return proc_rss_kib(op.pid)

    try:
        await asyncio.to_thread(op.wait_leader)
        idle = proc_rss_kib(op.pid)
        bench.say(f"Churn: warm-up {scale.churn_warmup_runs} runs ns={ns}")
        warmup_s = await batch("warm", scale.churn_warmup_runs)
        before = await settled_rss()
        bench.say(f"Churn: {scale.churn_runs} runs, RSS before {before} KiB")
        measured_s = await batch("churn", scale.churn_runs)
        after = await settled_rss()
        bench.say(f"Churn: RSS after {after} KiB")
    finally:
        op.stop()
        await watcher.stop()
    return {
        "namespace": ns,
        "warmup_runs": scale.churn_warmup_runs,
        "runs": scale.churn_runs,
        "warmup_seconds": round(warmup_s, 1),
        "seconds": round(measured_s, 1),
        "runs_per_minute": round(scale.churn_runs / measured_s * 60, 1),
        "rss_kib_idle": idle,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_growth": round(after / before - 1, 4),
        "left_behind": sum(1 for n in seen if watcher.phases.get(n) is not None),
    }
