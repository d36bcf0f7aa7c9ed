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

from bench import workload
from bench.kube import bounded
from bench.scenarios import _series, rebase_recovery

from tandem_operator.api.models import AutomationRunSpec, AutomationRunStatus

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
