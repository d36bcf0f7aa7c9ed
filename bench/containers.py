"""Container nodes on kwok: ``container_throughput``, and ``python -m bench.containers``.

The throughput flow (three Task nodes ``a → b → c``) twice, at the same size and
concurrency, in the same benchmark run: once with simulated nodes (the baseline), once with
every node run by the container executor, one Pod per attempt. The Pods run on the control
plane's fake Nodes: ``ControlPlane.start_nodes`` starts kwok (which plays the kubelet with
the Stages of ``devcluster/kwok-stages.yaml``), kube-scheduler and kube-controller-manager
for this scenario only, and stops them afterwards, so the other scenarios keep the bare API
server they were written for. Each Pod's ``tandem.test/*`` annotations, which the executor
copies from ``podAnnotations``, make kwok end it ``POD_DELAY`` after it starts with exit
code 0 and a valid result as its termination message (``workload.container_chain_flow``).

Both batches run while the node components are up, so their background work (node leases,
watches) weighs on both. Each batch has an operator of its own in a namespace of its own,
started as in the throughput scenario (``TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS`` = the
scale's ``throughput_max_concurrent``, runs created with 8 requests in flight) and
``TANDEM_POD_KEEP_SECONDS=0``: an attempt's Pod is deleted as soon as its result is read.

Writes are the API server's own counts (``apiserver_request_total``), split by who makes
them: the operator's (status PATCHes of the runs, creates and deletes of Pods) against the
attempts the finished runs recorded (``status.checkpoint.nodeAttempts``), and the cluster's
(the scheduler's bindings, kwok's Pod status updates and deletes), which a real
scheduler and kubelet make too. Rates and costs are compared as container ÷ simulated,
writes per attempt as container − simulated, both batches from this run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from bench import scenarios, workload
from bench.alone import run_alone
from bench.kube import RunWatcher, bounded
from bench.stats import ratio, summarize
from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.tools import ensure_node_binaries

NODES_PER_RUN = 3
POD_DELAY = "0s"
"""How long each Pod's container runs (kwok's end Stage waits this long after the start)."""
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
READ_VERBS = ("GET", "LIST", "WATCH")

Delta = Mapping[str, Mapping[str, int]]

# --------------------------------------------------------------------------- pure figures


def attempts_recorded(objects: Iterable[Mapping[str, Any]]) -> int:
    """Node attempts the runs recorded (``status.checkpoint.nodeAttempts``), summed."""
    total = 0
    for obj in objects:
        checkpoint = (obj.get("status") or {}).get("checkpoint") or {}
        total += sum(int(n) for n in (checkpoint.get("nodeAttempts") or {}).values())
    return total


def kwok_deletes(delta: Delta, *, pods_left: int) -> int:
    """The DELETEs of Pods that kwok sent: one per Pod deleted in the window.

    kwok's delete Stage (``tandem-pod-delete``) sends a DELETE of its own for every Pod that
    gets a deletionTimestamp. A Pod that Succeeded gets a grace period of 0: the operator's
    DELETE sets the deletionTimestamp, which kwok sees, and removes the Pod in the same
    request. Which of the two requests finds the Pod gone (404) or wins (both may answer 200
    when kwok's lands in between) is a race, so response codes cannot tell them apart; the
    number of Pods deleted can. Every Pod of the batch is created in the window, so those
    deleted are the ones created less the ones left.
    """
    created = int((delta.get("pod_create") or {}).get("201", 0))
    deletes = int((delta.get("pod_request") or {}).get("DELETE", 0))
    return min(deletes, max(0, created - pods_left))


def operator_writes(delta: Delta, *, pods_left: int = 0) -> dict[str, int]:
    """The operator's API writes in a scrape delta: run status PATCHes and Pod writes.

    Pod writes are the write verbs on the Pod resource itself (creates, deletes and anything
    unexpected, by name), less kwok's DELETEs (``kwok_deletes``), which are the fake
    kubelet's, as are Pod bindings and status updates (``cluster_writes``).
    """
    pods = delta.get("pod_request") or {}
    status = int((delta.get("status_patch") or {}).get("total", 0))
    by_verb = {f"pod_{verb.lower()}": int(pods.get(verb, 0)) for verb in WRITE_VERBS}
    by_verb["pod_delete"] -= kwok_deletes(delta, pods_left=pods_left)
    by_verb = {k: v for k, v in by_verb.items() if v or k in ("pod_post", "pod_delete")}
    pod_total = sum(by_verb.values())
    return {"status_patch": status, **by_verb, "pod": pod_total, "total": status + pod_total}


def cluster_writes(delta: Delta, *, pods_left: int = 0) -> dict[str, int]:
    """Writes about Pods by the scheduler (bindings) and kwok (status updates, deletes):
    what a scheduler and a kubelet do in a real cluster too."""
    binding = int((delta.get("pod_binding") or {}).get("total", 0))
    status = int((delta.get("pod_status") or {}).get("total", 0))
    deletes = kwok_deletes(delta, pods_left=pods_left)
    return {
        "binding": binding,
        "pod_status": status,
        "pod_delete": deletes,
        "total": binding + status + deletes,
    }


def batch_figures(delta: Delta, *, runs: int, attempts: int, pods_left: int = 0) -> dict[str, Any]:
    """Per-run and per-attempt counts of one batch from its scrape delta and the number of
    its Pods still there at the end."""
    writes = operator_writes(delta, pods_left=pods_left)
    cluster = cluster_writes(delta, pods_left=pods_left)
    pods = delta.get("pod_request") or {}
    created = int((delta.get("pod_create") or {}).get("201", 0))
    events = int((delta.get("event_post") or {}).get("total", 0))
    return {
        "attempts": attempts,
        "attempts_per_run": ratio(attempts, runs),
        "status_patches": dict(delta.get("status_patch") or {}),
        "status_writes_per_run": ratio(writes["status_patch"], runs),
        "status_writes_per_attempt": ratio(writes["status_patch"], attempts),
        "api_writes": writes,
        "api_writes_per_attempt": ratio(writes["total"], attempts),
        "pod_writes_per_attempt": ratio(writes["pod"], attempts),
        "pod_deletes_by_code": dict(delta.get("pod_delete") or {}),
        "pods_created": created,
        "pods_created_per_attempt": ratio(created, attempts),
        "pod_reads_per_attempt": {v.lower(): ratio(pods.get(v, 0), attempts) for v in READ_VERBS},
        "cluster_writes": cluster,
        "cluster_writes_per_attempt": ratio(cluster["total"], attempts),
        "events_posted_per_run": ratio(events, runs),
        "events_posted_per_attempt": ratio(events, attempts),
    }


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def compare(container: Mapping[str, Any], simulated: Mapping[str, Any]) -> dict[str, Any]:
    """Container ÷ simulated for the rates and costs, container − simulated for the writes."""

    def p50(batch: Mapping[str, Any]) -> Any:
        return (batch.get("create_to_done") or {}).get("p50_ms")

    return {
        "runs_per_minute": ratio(
            container.get("runs_per_minute"), simulated.get("runs_per_minute")
        ),
        "operator_cpu_per_run": ratio(
            container.get("operator_cpu_ms_per_run"), simulated.get("operator_cpu_ms_per_run")
        ),
        "create_to_done_p50": ratio(p50(container), p50(simulated)),
        "extra_api_writes_per_attempt": _diff(
            container.get("api_writes_per_attempt"), simulated.get("api_writes_per_attempt")
        ),
        "extra_status_writes_per_attempt": _diff(
            container.get("status_writes_per_attempt"), simulated.get("status_writes_per_attempt")
        ),
    }


# --------------------------------------------------------------------------- the scenario


async def _pods_left(bench: scenarios.Bench, namespace: str) -> int:
    _, listing = await bench.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")
    return len(listing.get("items") or [])


async def _event_reasons(bench: scenarios.Bench, namespace: str) -> dict[str, int]:
    """Events in the namespace by reason (an aggregated Event counts ``count`` times)."""
    _, listing = await bench.kube.request("GET", f"/api/v1/namespaces/{namespace}/events")
    reasons: dict[str, int] = {}
    for event in listing.get("items") or []:
        reason = str(event.get("reason") or "")
        reasons[reason] = reasons.get(reason, 0) + int(event.get("count") or 1)
    return dict(sorted(reasons.items()))


async def _batch(
    bench: scenarios.Bench,
    *,
    hint: str,
    flow: Callable[[], dict[str, Any]],
    runs: int,
    max_concurrent: int,
    pids: Mapping[str, int],
) -> dict[str, Any]:
    """``runs`` runs of ``flow`` through one fresh operator, as in ``scenarios.throughput``."""
    ns = await bench.namespace(hint)
    watcher = RunWatcher(bench.kube, ns)
    await watcher.start()
    op = bench.operator(
        ns,
        TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS=str(max_concurrent),
        TANDEM_POD_KEEP_SECONDS="0",
    )
    op.start()
    names = [f"{hint}-{i:05d}" for i in range(runs)]
    created_at: dict[str, float] = {}

    async def create(name: str) -> None:
        created_at[name] = time.monotonic()
        await bench.kube.create_run(ns, workload.run_manifest(name, flow()))

    def finished() -> bool:
        return watcher.counts["Completed"] + watcher.counts["Failed"] >= len(names)

    try:
        await asyncio.to_thread(op.wait_leader)
        await asyncio.sleep(1)
        bench.say(f"Containers: {len(names)} runs, {hint} nodes, ns={ns}")
        before = await bench.counters()
        meter = bench.meter(operator=op.pid, **pids)
        t0 = time.monotonic()
        await bounded(scenarios.CONCURRENCY, [partial(create, n) for n in names])
        created_s = time.monotonic() - t0
        await watcher.wait_counts(finished, within=180 + 3.0 * len(names))
        cpu = meter.read()
        await asyncio.sleep(2)  # the last Pods' deletions and Events
        delta = await bench.delta(before)
        # After the scrape, so that these reads are not counted as the batch's.
        left = await _pods_left(bench, ns)
        reasons = await _event_reasons(bench, ns)
    finally:
        op.stop()
        await watcher.stop()
    await bench.kube.delete_runs(ns)
    ends = {
        n: t
        for n in names
        if (t := watcher.seen_at(n, ("Completed", "Failed"), after=t0)) is not None
    }
    elapsed = max(ends.values()) - t0
    completions = sorted(t - t0 for t in ends.values())
    attempts = attempts_recorded(watcher.objects[n] for n in names if n in watcher.objects)
    node_cpu = sum(cpu.get(name, 0.0) for name in pids)
    return {
        "namespace": ns,
        "runs": len(names),
        "completed": watcher.counts["Completed"],
        "failed": watcher.counts["Failed"],
        "create_seconds": round(created_s, 3),
        "elapsed_s": round(elapsed, 3),
        "runs_per_minute": round(len(names) / elapsed * 60, 1),
        **batch_figures(delta, runs=len(names), attempts=attempts, pods_left=left),
        "pods_left": left,
        "events_by_reason": reasons,
        "create_to_done": summarize([ends[n] - created_at[n] for n in names if n in ends]),
        "cpu_seconds": cpu,
        "operator_cpu_ms_per_run": round(1000 * cpu["operator"] / len(names), 2),
        "node_components_cpu_ms_per_run": round(1000 * node_cpu / len(names), 2),
        "series": {
            "completed_over_time": scenarios._series(
                [(t, i + 1) for i, t in enumerate(completions)]
            )
        },
    }


async def container_throughput(
    bench: scenarios.Bench, scale: scenarios.Scale, *, plane: ControlPlane
) -> dict[str, Any]:
    """The simulated and the container batch of ``scale.container_runs`` runs each."""
    tools = ensure_node_binaries()
    started = time.monotonic()
    # On this (the main) thread: the components then die with the benchmark (see
    # ControlPlane on death signals). Nothing is measured while the loop waits here.
    plane.start_nodes(tools)
    nodes_ready_s = time.monotonic() - started
    try:
        pids = {name: pid for name, pid in plane.node_pids.items() if pid}
        batch = partial(
            _batch,
            bench,
            runs=scale.container_runs,
            max_concurrent=scale.throughput_max_concurrent,
            pids=pids,
        )
        simulated = await batch(hint="simulated", flow=workload.chain_flow)
        container = await batch(
            hint="container", flow=partial(workload.container_chain_flow, delay=POD_DELAY)
        )
    finally:
        plane.stop_nodes()
    return {
        "runs": scale.container_runs,
        "nodes_per_run": NODES_PER_RUN,
        "max_concurrent_runs": scale.throughput_max_concurrent,
        "pod_delay": POD_DELAY,
        "fake_nodes": plane.node_pool.count,
        "nodes_ready_s": round(nodes_ready_s, 1),
        "simulated": simulated,
        "container": container,
        "ratio": compare(container, simulated),
    }


def main() -> int:
    """Only this scenario, on a control plane of its own; prints the result as JSON."""
    result, workdir = run_alone(
        "tandem-containers-",
        lambda bench, scale, plane: container_throughput(bench, scale, plane=plane),
    )
    for batch in ("simulated", "container"):
        result[batch].pop("series", None)
    print(json.dumps(result, indent=1))
    print(f"Operator logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
