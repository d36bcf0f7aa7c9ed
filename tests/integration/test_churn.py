"""Memory follows the runs that exist, not the runs that ever existed (B20b under churn).

Runs are created, finish at once (a simulated node) and are deleted by the operator one
second later (``ttlSecondsAfterFinished: 1``), in waves of the same size. The operator's RSS is read from
``/proc/<pid>/status`` after a warm-up batch (so that the allocator's arenas and the
interpreter's caches have grown already) and again after a measured batch; whatever the
operator kept per run would show as growth. The benchmark ``python -m bench.churn`` does the
same with 2,000 runs; this test keeps to a size the test suite can afford.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, OperatorProcess, wait_for

WARMUP_RUNS = 150
MEASURED_RUNS = 450
WAVE = 50
RSS_GROWTH_LIMIT = 0.10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {"name": name, "labels": {"churn": "yes"}},
        "spec": {
            "ttlSecondsAfterFinished": 1,
            "automation": {
                "agents": [{"agentId": "agent"}],
                "nodes": [{"id": "work", "agentId": "agent", "executor": {"simulate": {}}}],
            },
        },
    }


def remaining(cluster: Cluster) -> int:
    out = cluster.kubectl("get", "automationruns", "-l", "churn=yes", "-o", "name")
    return len(out.split())


def batch(cluster: Cluster, prefix: str, count: int) -> None:
    """``count`` runs in waves of ``WAVE``, each wave deleted before the next is created.

    Waves keep the number of runs alive at once the same in the warm-up and the measured
    batch: Python's allocator keeps the arenas of its peak, so a measured batch with a
    higher peak than the warm-up would show growth that is no leak.
    """
    for start in range(0, count, WAVE):
        wave = [run(f"{prefix}-{i:04d}") for i in range(start, min(count, start + WAVE))]
        cluster.kubectl(
            "create",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": wave}),
        )
        wait_for(
            lambda: remaining(cluster) == 0,
            timeout=120 + WAVE * 1.5,
            interval=1,
            what=f"the {prefix} runs to be deleted by their TTL",
            describe=lambda: f"{remaining(cluster)} left",
        )


@pytest.mark.slow
def test_memory_does_not_grow_with_runs_deleted_by_ttl(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operator = operators(TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS="50")
    wait_for(lambda: "leader=True" in operator.log(), timeout=30, what="the operator to lead")
    assert operator.proc is not None
    pid = operator.proc.pid
    batch(cluster, "warm", WARMUP_RUNS)
    time.sleep(5)
    before = rss_kib(pid)
    batch(cluster, "churn", MEASURED_RUNS)
    time.sleep(5)
    after = rss_kib(pid)
    print(f"RSS before={before} KiB after={after} KiB growth={after / before - 1:.3%}")
    assert after <= before * (1 + RSS_GROWTH_LIMIT), (before, after)
    assert operator.alive
