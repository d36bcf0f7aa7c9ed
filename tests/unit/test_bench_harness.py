"""The benchmark's pure builders and helpers, outside ``bench.stats``.

The hand-written statuses must be ones the operator's API accepts, and the raw client's
templates must carry the transitions the operator itself would write; otherwise the
recovery, at-rest and latency numbers would measure something else. The small helpers
(series thinning, rebasing ratios, bounded concurrency) shape what ends up in the reports.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

# ``bench`` is a top-level package of the repository, not part of the installed operator.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import containers, workload
from bench.kube import bounded
from bench.scenarios import _series, rebase_recovery

from tandem_operator.api.models import AutomationRunSpec, AutomationRunStatus
from tandem_operator.devcluster.nodes import POD_DELAY, POD_TERMINATION_MESSAGE
from tandem_operator.execution.container import parse_termination_message
from tandem_operator.execution.types import AttemptResult

NOW_S = 1_800_000_000.0

# --------------------------------------------------------------------------- workload


def test_ts_is_utc_with_milliseconds() -> None:
    assert workload.ts(0) == "1970-01-01T00:00:00.000Z"
    assert workload.ts(1.2345) == "1970-01-01T00:00:01.234Z"


def test_orphan_kinds_cycle_in_equal_shares() -> None:
    kinds = [workload.orphan_kind(i) for i in range(8)]
    assert kinds == [*workload.ORPHAN_KINDS, *workload.ORPHAN_KINDS]


@pytest.mark.parametrize("kind", workload.ORPHAN_KINDS)
def test_orphans_are_valid_runs_in_their_phase(kind: str) -> None:
    manifest, status = workload.orphan(kind, "orphan-1", now_s=NOW_S)
    assert manifest["metadata"]["name"] == "orphan-1"
    spec = AutomationRunSpec.model_validate(manifest["spec"])
    parsed = AutomationRunStatus.model_validate(status)
    assert parsed.phase == kind
    # A user paused Paused and Pausing runs; with Running the operator would resume them.
    expected = "Running" if kind in ("Running", "AwaitingApproval") else "Paused"
    assert spec.desired_state == expected


def test_parked_runs_carry_the_engines_own_status() -> None:
    templates = workload.parked_statuses(now_s=NOW_S)
    assert set(templates) == {"AwaitingApproval", "Paused"}
    for kind in templates:
        manifest, status = workload.parked(templates, kind, f"parked-{kind.lower()}")
        assert manifest["metadata"]["name"] == f"parked-{kind.lower()}"
        assert AutomationRunStatus.model_validate(status).phase == kind
    # Naming a copy leaves the shared template alone.
    assert templates["Paused"][0]["metadata"]["name"] == "template"


def test_raw_templates_follow_the_gated_flow() -> None:
    templates = workload.raw_templates(now_s=NOW_S)
    assert templates["first_phase"] == {"phase": "AwaitingApproval"}
    assert templates["approve_phase"] == {"phase": "Running"}
    assert templates["first"]["phase"] == "AwaitingApproval"
    approve = templates["approve"]
    assert approve["phase"] == "Running"
    assert [d["decision"] for d in approve["checkpoint"]["gateHistory"]] == ["approve"]
    recover = templates["recover"]
    assert (recover["phase"], recover["stopKind"]) == ("Failed", "ServerRestart")


def test_the_container_chain_is_the_chain_with_pods_that_succeed() -> None:
    flow = workload.container_chain_flow(delay="250ms")
    spec = AutomationRunSpec.model_validate(workload.run_manifest("c", flow)["spec"])
    simulated = workload.chain_flow()
    assert [(n["id"], n.get("dependsOn")) for n in flow["nodes"]] == [
        (n["id"], n.get("dependsOn")) for n in simulated["nodes"]
    ]
    for node in spec.automation.nodes:
        container = node.executor.container if node.executor else None
        assert container is not None
        assert container.image == workload.CONTAINER_IMAGE
        assert container.pod_annotations[POD_DELAY] == "250ms"
        result = parse_termination_message(container.pod_annotations[POD_TERMINATION_MESSAGE])
        # The same result a simulated node with outcome "completed" returns.
        assert result == AttemptResult(status="completed", output={"status": "completed"})


# --------------------------------------------------------------------------- scenarios


def test_series_rounds_and_keeps_short_series_whole() -> None:
    assert _series([(1 / 7, 1 / 3), (2.0, 5.0)]) == [[0.143, 0.3333], [2.0, 5.0]]


def test_series_thins_long_series_evenly_and_keeps_the_last_point() -> None:
    points = [(float(i), float(i)) for i in range(1000)]
    thinned = _series(points, limit=10)
    assert [x for x, _ in thinned] == [*range(0, 1000, 100), 999]


def test_rebase_recovery_recomputes_both_ratios() -> None:
    result: dict[str, object] = {"recovered_per_s": 300.0, "recovered_per_s_drain": 450.0}
    rebase_recovery(result, 600.0)
    assert result == {
        "recovered_per_s": 300.0,
        "recovered_per_s_drain": 450.0,
        "raw_patch_per_s": 600.0,
        "ratio_to_raw_patch": 0.5,
        "ratio_to_raw_patch_drain": 0.75,
    }


# --------------------------------------------------------------------------- containers

CONTAINER_DELTA = {
    "status_patch": {"200": 23, "409": 1, "total": 24},
    "pod_request": {"POST": 18, "DELETE": 36, "WATCH": 18, "total": 72},
    "pod_create": {"201": 18, "total": 18},
    "pod_delete": {"200": 18, "404": 18, "total": 36},
    "pod_binding": {"total": 18},
    "pod_status": {"total": 36},
    "event_post": {"total": 36},
}


def test_attempts_are_summed_over_the_runs_records() -> None:
    runs = [
        {"status": {"checkpoint": {"nodeAttempts": {"a": 1, "b": 2}}}},
        {"status": {"checkpoint": {}}},
        {"metadata": {"name": "no-status"}},
    ]
    assert containers.attempts_recorded(runs) == 3


def test_kwoks_deletes_count_as_the_clusters_writes_whoever_won_the_race() -> None:
    # Usually kwok's DELETE finds the Pod gone; sometimes it lands first and both answer 200.
    raced = {**CONTAINER_DELTA, "pod_delete": {"200": 19, "404": 17, "total": 36}}
    for delta in (CONTAINER_DELTA, raced):
        assert containers.kwok_deletes(delta, pods_left=0) == 18
        assert containers.operator_writes(delta) == {
            "status_patch": 24,
            "pod_post": 18,
            "pod_delete": 18,
            "pod": 36,
            "total": 60,
        }
        assert containers.cluster_writes(delta) == {
            "binding": 18,
            "pod_status": 36,
            "pod_delete": 18,
            "total": 72,
        }
    # Pods still there were not deleted, so kwok sent no DELETE for them.
    assert containers.kwok_deletes(CONTAINER_DELTA, pods_left=3) == 15
    assert containers.operator_writes(CONTAINER_DELTA, pods_left=3)["pod_delete"] == 21
    # An operator that deleted a Pod twice would show: kwok deletes once per Pod.
    twice = {**CONTAINER_DELTA, "pod_request": {**CONTAINER_DELTA["pod_request"], "DELETE": 37}}
    assert containers.operator_writes(twice)["pod_delete"] == 19
    # A write verb the operator should not use on Pods shows up rather than vanishing.
    patched = {**CONTAINER_DELTA, "pod_request": {**CONTAINER_DELTA["pod_request"], "PATCH": 2}}
    assert containers.operator_writes(patched)["pod_patch"] == 2
    assert containers.operator_writes(patched)["total"] == 62


def test_batch_figures_per_run_and_per_attempt() -> None:
    figures = containers.batch_figures(CONTAINER_DELTA, runs=6, attempts=18)
    assert figures["attempts_per_run"] == 3.0
    assert figures["status_writes_per_run"] == 4.0
    assert figures["api_writes_per_attempt"] == 3.333
    assert figures["pod_writes_per_attempt"] == 2.0
    assert figures["pods_created_per_attempt"] == 1.0
    assert figures["cluster_writes_per_attempt"] == 4.0
    assert figures["pod_reads_per_attempt"] == {"get": 0.0, "list": 0.0, "watch": 1.0}
    assert figures["events_posted_per_run"] == 6.0
    # A simulated batch touches no Pods: zero per attempt, not "n/a".
    simulated = containers.batch_figures(
        {"status_patch": {"total": 24}, "event_post": {"total": 18}}, runs=6, attempts=18
    )
    assert simulated["api_writes_per_attempt"] == 1.333
    assert simulated["pods_created_per_attempt"] == 0.0
    assert containers.batch_figures({}, runs=0, attempts=0)["api_writes_per_attempt"] is None


def test_container_batch_is_compared_with_the_simulated_one() -> None:
    container = {
        "runs_per_minute": 300.0,
        "operator_cpu_ms_per_run": 90.0,
        "create_to_done": {"p50_ms": 2000.0},
        "api_writes_per_attempt": 3.333,
        "status_writes_per_attempt": 1.333,
    }
    simulated = {
        "runs_per_minute": 900.0,
        "operator_cpu_ms_per_run": 30.0,
        "create_to_done": {"p50_ms": 400.0},
        "api_writes_per_attempt": 1.333,
        "status_writes_per_attempt": 1.333,
    }
    assert containers.compare(container, simulated) == {
        "runs_per_minute": 0.333,
        "operator_cpu_per_run": 3.0,
        "create_to_done_p50": 5.0,
        "extra_api_writes_per_attempt": 2.0,
        "extra_status_writes_per_attempt": 0.0,
    }
    assert containers.compare(container, {})["runs_per_minute"] is None


# --------------------------------------------------------------------------- kube


def test_bounded_keeps_order_and_caps_concurrency() -> None:
    in_flight = 0
    peak = 0

    def job(value: int) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            # Later jobs finish first, so order comes from the indices, not completion.
            await asyncio.sleep(0.001 * (10 - value))
            in_flight -= 1
            return value * value

        return run

    results = asyncio.run(bounded(3, [job(i) for i in range(10)]))
    assert results == [i * i for i in range(10)]
    assert peak == 3
