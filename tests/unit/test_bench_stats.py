"""The benchmark's arithmetic: percentiles, ratios, /proc and /metrics parsing, goals, report.

Every number in ``bench/results/*.md`` comes out of these functions, so they are checked
here against inputs whose answers are known by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

# ``bench`` is a top-level package of the repository, not part of the installed operator.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.report import render_markdown
from bench.stats import (
    at_least,
    at_most,
    bytes_per_item,
    container_extra_writes,
    counter_delta,
    counter_sum,
    cpu_seconds,
    cpu_share,
    evaluate_goals,
    exactly,
    hotspots,
    inclusive_share,
    machine_busy_seconds,
    metric_samples,
    parse_labels,
    percentile,
    rate,
    ratio,
    rss_kib,
    summarize,
)

# --------------------------------------------------------------------------- samples


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([4, 1, 3, 2], 0) == 1
    assert percentile([4, 1, 3, 2], 100) == 4
    assert percentile(list(range(101)), 99) == 99
    assert percentile([10.0], 99) == 10.0
    assert percentile([0, 10], 95) == pytest.approx(9.5)


def test_percentile_rejects_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"within 0\.\.100"):
        percentile([1], 101)


def test_summarize_reports_milliseconds() -> None:
    summary = summarize([0.010, 0.020, 0.030, 0.040])
    assert summary["n"] == 4
    assert summary["p50_ms"] == 25.0
    assert summary["mean_ms"] == 25.0
    assert summary["min_ms"] == 10.0
    assert summary["max_ms"] == 40.0
    assert summary["p99_ms"] == pytest.approx(39.7)
    assert summarize([]) == {"n": 0}


def test_ratio_and_rate_are_none_without_a_base() -> None:
    assert ratio(3, 4) == 0.75
    assert ratio(1, 3, digits=2) == 0.33
    assert ratio(None, 4) is None
    assert ratio(3, None) is None
    assert ratio(3, 0) is None
    assert rate(10, 4) == 2.5
    assert rate(10, 0) is None


# --------------------------------------------------------------------------- /proc

# A real /proc/<pid>/stat line shape; the command name holds a space and a parenthesis.
STAT = (
    "4242 (python3 (x)) S 1 4242 4242 0 -1 4194560 5000 0 0 0 "
    "250 150 0 0 20 0 9 0 123456 500000000 20000 18446744073709551615"
)


def test_cpu_seconds_adds_user_and_system_time() -> None:
    assert cpu_seconds(STAT, clock_ticks=100) == 4.0


def test_cpu_seconds_rejects_other_text() -> None:
    with pytest.raises(ValueError, match="stat"):
        cpu_seconds("nonsense", clock_ticks=100)


def test_machine_busy_leaves_out_idle_iowait_and_guest() -> None:
    text = "cpu  100 5 50 1000 30 1 2 3 40 0\ncpu0 50 2 25 500 15 0 1 1 20 0\n"
    assert machine_busy_seconds(text, clock_ticks=100) == pytest.approx(1.61)


def test_rss_kib_reads_vmrss() -> None:
    status = "Name:\tpython3\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nThreads:\t9\n"
    assert rss_kib(status) == 123456
    with pytest.raises(ValueError, match="VmRSS"):
        rss_kib("Name:\tzombie\n")


def test_cpu_share_and_bytes_per_item() -> None:
    assert cpu_share(3.0, 60.0) == 0.05
    assert cpu_share(1.0, 0) is None
    assert bytes_per_item(rss_kib_loaded=2000, rss_kib_idle=1000, items=1024) == 1000.0
    assert bytes_per_item(rss_kib_loaded=2000, rss_kib_idle=1000, items=0) is None


# --------------------------------------------------------------------------- /metrics

METRICS = """\
# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="automation.tandem.dev",resource="automationruns",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 40
apiserver_request_total{code="409",component="apiserver",dry_run="",group="automation.tandem.dev",resource="automationruns",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="automation.tandem.dev",resource="automationruns",scope="resource",subresource="",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 5
apiserver_request_total_extra{code="200"} 99
apiserver_request_duration_seconds_bucket{verb="PATCH",le="0.1"} 12
"""


def test_parse_labels_unescapes_values() -> None:
    assert parse_labels('a="x",b="say \\"hi\\"",c="back\\\\slash"') == {
        "a": "x",
        "b": 'say "hi"',
        "c": "back\\slash",
    }
    assert parse_labels("") == {}
    with pytest.raises(ValueError, match="bad label"):
        parse_labels("a=unquoted")


def test_metric_samples_match_the_exact_name() -> None:
    samples = metric_samples(METRICS, "apiserver_request_total")
    assert len(samples) == 4
    assert samples[3] == (
        {
            "code": "201",
            "component": "apiserver",
            "dry_run": "",
            "group": "",
            "resource": "events",
            "scope": "resource",
            "subresource": "",
            "verb": "POST",
            "version": "v1",
        },
        5.0,
    )


def test_counter_sum_filters_by_labels_and_groups_by_code() -> None:
    status_patches = counter_sum(
        METRICS,
        "apiserver_request_total",
        {"resource": "automationruns", "verb": "PATCH", "subresource": "status"},
        group_by="code",
    )
    assert status_patches == {"total": 42.0, "200": 40.0, "409": 2.0}
    spec_patches = counter_sum(
        METRICS,
        "apiserver_request_total",
        {"resource": "automationruns", "verb": "PATCH", "subresource": ""},
    )
    assert spec_patches == {"total": 7.0}
    assert counter_sum(METRICS, "apiserver_request_total", {"resource": "pods"}) == {"total": 0.0}


def test_an_empty_wanted_label_also_matches_a_sample_without_it() -> None:
    text = (
        'apiserver_request_total{code="201",resource="pods",verb="POST"} 3\n'
        'apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 2\n'
        'apiserver_request_total{code="201",resource="pods",subresource="binding",verb="POST"} 4\n'
    )
    wanted = {"resource": "pods", "subresource": ""}
    assert counter_sum(text, "apiserver_request_total", wanted) == {"total": 5.0}


def test_counter_delta_covers_keys_of_either_scrape() -> None:
    before = {"total": 40.0, "200": 40.0}
    after = {"total": 45.0, "200": 44.0, "409": 1.0}
    assert counter_delta(before, after) == {"200": 4, "409": 1, "total": 5}


# --------------------------------------------------------------------------- profiles

PROFILE = """\
<module> (/x/bench.py:1);reconcile (/x/tandem_operator/handlers/reconciler.py:172);decide (/x/tandem_operator/lifecycle/engine.py:1100);model_dump (/v/site-packages/pydantic/main.py:400) 30
<module> (/x/bench.py:1);reconcile (/x/tandem_operator/handlers/reconciler.py:180);decide (/x/tandem_operator/lifecycle/engine.py:1101) 10
<module> (/x/bench.py:1);select (/usr/lib/python3.11/selectors.py:468) 60
garbage line
"""


def test_hotspots_rank_self_time_and_merge_lines_of_a_function() -> None:
    samples, top = hotspots(PROFILE, top=3)
    assert samples == 100
    assert [h.function for h in top] == [
        "select (stdlib/selectors.py)",
        "model_dump (pydantic/main.py)",
        "decide (lifecycle/engine.py)",
    ]
    decide = top[2]
    assert decide.self_pct == 10.0
    assert decide.total_pct == 40.0
    assert top[0].to_json() == {
        "function": "select (stdlib/selectors.py)",
        "self_pct": 60.0,
        "total_pct": 60.0,
    }
    assert hotspots("") == (0, [])


def test_inclusive_share_counts_each_stack_once() -> None:
    shares = inclusive_share(PROFILE, ["reconcile (", "pydantic", "nowhere"])
    assert shares == {"reconcile (": 40.0, "pydantic": 30.0, "nowhere": 0.0}


# --------------------------------------------------------------------------- goals


def results(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "date": "2026-01-01",
        "scale": "quick",
        "recovery": {"ratio_to_raw_patch": 0.8, "writes_per_recovered_run": 1.0},
        "latency": {
            "create_to_status": {"ratio_p99_to_raw": 1.2},
            "gate_to_running": {"ratio_p99_to_raw": 2.5},
        },
        "at_rest": {"rss_bytes_per_run": 30000.0, "cpu_share_of_core": 0.01},
        "throughput": {
            "writes_per_run": 4.0,
            "transitions_per_run": 3.0,
            "runs_per_minute": 1200.0,
            "cpu_seconds": {"operator": 30.0, "kube-apiserver": 100.0},
        },
        "baseline": {"patch": {"writes_per_s": 100.0}},
        "containers": {
            "runs": 50,
            "nodes_per_run": 3,
            "simulated": {"runs_per_minute": 900.0, "api_writes_per_attempt": 1.333},
            "container": {
                "runs_per_minute": 300.0,
                "api_writes_per_attempt": 3.333,
                "pods_created_per_attempt": 1.0,
            },
            "ratio": {"runs_per_minute": 0.333, "extra_api_writes_per_attempt": 2.0},
        },
    }
    doc.update(overrides)
    return doc


def test_goal_bounds_are_inclusive() -> None:
    assert at_least("x", 0.7, 0.7, unit="x").met is True
    assert at_least("x", 0.69, 0.7, unit="x").met is False
    assert at_most("x", 1.5, 1.5, unit="x").met is True
    assert at_most("x", 1.51, 1.5, unit="x").met is False
    assert at_most("x", None, 1.5, unit="x").met is None
    assert exactly("x", 1.0, 1.0, unit="pods").met is True
    assert exactly("x", 1.02, 1.0, unit="pods").met is False
    assert exactly("x", None, 1.0, unit="pods").met is None
    assert exactly("x", 1.0, 1.0, unit="pods").target == "= 1 pods"


def test_evaluate_goals_reads_every_measurement() -> None:
    goals = {g.name: g for g in evaluate_goals(results())}
    assert len(goals) == 12
    cpu = goals["operator CPU per run / kube-apiserver CPU per run (throughput)"]
    assert (cpu.measured, cpu.met) == (0.3, True)
    share = goals["throughput in status writes / raw PATCH writes"]
    assert (share.measured, share.met) == (0.8, True)  # 20 runs/s × 4 writes ÷ 100 writes/s
    assert goals["restart recovery throughput / raw PATCH throughput"].met is True
    assert goals["status writes per recovered run"].met is True
    assert goals["create → first status p99 / raw round trip p99"].met is True
    assert goals["gate decision → Running p99 / raw round trip p99"].met is False
    writes = goals["status writes per run - lifecycle transitions per run"]
    assert (writes.measured, writes.met) == (1.0, True)
    assert goals["RSS per tracked run at rest"].met is False
    assert goals["operator CPU at rest"].met is True
    assert goals["end-to-end throughput"].met is True
    pods = goals["Pods created per container attempt"]
    assert (pods.measured, pods.met) == (1.0, True)
    extra = goals["API writes per container attempt - per simulated attempt"]
    assert (extra.measured, extra.met) == (2.0, True)


def test_container_writes_are_compared_with_the_simulated_flow() -> None:
    doc = results()
    doc["containers"]["container"]["api_writes_per_attempt"] = 4.5
    assert container_extra_writes(doc) == 3.167
    goal = next(g for g in evaluate_goals(doc) if g.name.startswith("API writes per container"))
    assert goal.met is False
    del doc["containers"]["simulated"]
    assert container_extra_writes(doc) is None


def test_missing_measurements_are_not_judged() -> None:
    goals = evaluate_goals({"date": "2026-01-01"})
    assert all(g.measured is None and g.met is None for g in goals)


def test_markdown_report_shows_goals_and_verdicts() -> None:
    doc = results(
        profiles={
            "throughput": {
                "samples": 100,
                "top": [
                    {
                        "function": "decide (lifecycle/engine.py)",
                        "self_pct": 10.0,
                        "total_pct": 40.0,
                    }
                ],
                "inclusive": {"decide (": 40.0},
            }
        }
    )
    text = render_markdown(doc, evaluate_goals(doc), plots=["x-latency.png"])
    assert text.startswith("# Benchmark results 2026-01-01 (scale `quick`)")
    assert (
        "| gate decision → Running p99 / raw round trip p99 | <= 1.5 x | 2.500 | **not met** |"
        in text
    )
    assert "| end-to-end throughput | >= 1000 runs/min | 1,200.000 | met |" in text
    assert "`decide (lifecycle/engine.py)` | 10.0 | 40.0" in text
    assert "![x-latency.png](x-latency.png)" in text
    # Sections without data still render, with n/a instead of numbers.
    assert "n/a" in text
    assert "## 6. Container nodes on kwok" in text
    assert "| runs/min | 900.0 | 300.0 | 0.333× |" in text
    assert "| Pods created per container attempt | = 1 pods | 1.000 | met |" in text


def test_markdown_report_says_when_the_container_scenario_failed() -> None:
    doc = results(containers={"error": "ToolsError('no kwok')"})
    text = render_markdown(doc, evaluate_goals(doc))
    assert "Not measured: the scenario failed (ToolsError('no kwok'))." in text
    assert "| Pods created per container attempt | = 1 pods | n/a | not measured |" in text
