"""Automations that run themselves (contract §9) against the real control plane.

Every expectation is predicted from due times, which ``@every <n>s`` puts at whole
multiples of n seconds since the Unix epoch, and from the runs' own history (creation,
finishedAt), never from how long something happened to take. The operator, the test and
the API server share one clock (one machine).

The control plane has no kube-controller-manager: ownerReference garbage collection never
runs, so everything deleted here was deleted by the operator.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from support import REPO, Cluster, OperatorProcess, wait_for

LABEL = "automation.tandem.dev/automation"
REPEAT = int(os.environ.get("TANDEM_TEST_REPEAT", "1"))
repeated = pytest.mark.parametrize("attempt", range(REPEAT))
"""Tests that kill or restart the operator; ``TANDEM_TEST_REPEAT=10`` runs each ten times."""
SCHEDULED_AT = "automation.tandem.dev/scheduled-at"
TERMINAL = {"Completed", "Failed", "Blocked", "Cancelled"}


# ------------------------------------------------------------------------------ helpers


def automation(
    name: str, *, after: float = 0, outcome: str = "completed", **schedule: Any
) -> dict[str, Any]:
    """An Automation with one simulated node and ``schedule``."""
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "Automation",
        "metadata": {"name": name},
        "spec": {
            "creatorId": "tester",
            "agents": [{"agentId": "agent"}],
            "nodes": [
                {
                    "id": "work",
                    "agentId": "agent",
                    "executor": {"simulate": {"outcome": outcome, "afterSeconds": after}},
                }
            ],
            "schedule": schedule,
        },
    }


def lead(operator: OperatorProcess) -> OperatorProcess:
    """Wait until ``operator`` leads (on a busy shared machine a start can take long)."""
    wait_for(
        lambda: "leader=True" in operator.log(),
        timeout=180,
        interval=0.1,
        what="the operator to lead",
        describe=lambda: operator.log()[-500:],
    )
    return operator


def ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp() * 1000)


def stamp(due_ms: int) -> str:
    return datetime.fromtimestamp(due_ms // 1000, tz=UTC).strftime("%Y%m%d%H%M%S")


def now_ms() -> int:
    return int(time.time() * 1000)


def runs_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "automationruns", "-l", f"{LABEL}={name}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return sorted(items, key=lambda r: due(r))


def due(run: dict[str, Any]) -> int:
    return ms(run["metadata"]["annotations"][SCHEDULED_AT])


def phase(run: dict[str, Any]) -> str | None:
    value = (run.get("status") or {}).get("phase")
    return str(value) if value else None


def wait_runs(cluster: Cluster, name: str, count: int, *, timeout: float = 60) -> list[Any]:
    found: list[Any] = wait_for(
        lambda: len(r := runs_of(cluster, name)) >= count and r,
        timeout=timeout,
        what=f"{count} runs of {name}",
        describe=lambda: str([r["metadata"]["name"] for r in runs_of(cluster, name)]),
    )
    return found


def sleep_until(at_ms: int) -> None:
    delay = (at_ms - now_ms()) / 1000
    if delay > 0:
        time.sleep(delay)


def next_multiple(period_s: int, *, after_ms: int) -> int:
    step = period_s * 1000
    return (after_ms // step + 1) * step


def schedule_events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in cluster.events(name) if e.get("reason") == reason]


def missed_count(cluster: Cluster, name: str) -> int:
    """Due times counted by the ScheduleMissed Events of ``name``."""
    total = 0
    for event in schedule_events(cluster, name, "ScheduleMissed"):
        found = re.search(r"skipped (\d+) missed schedule", event["message"])
        assert found, event["message"]
        total += int(found.group(1))
    return total


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.get("automation", name).get("status") or {}
    return status


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status.get("conditions") or [] if c["type"] == kind)
    return found


def assert_one_run_per_due_time(runs: list[dict[str, Any]], *, period_s: int) -> None:
    """Runs named from their due times, one per due time, and no due time left out."""
    dues = [due(r) for r in runs]
    assert len(set(dues)) == len(dues), dues
    for run in runs:
        assert run["metadata"]["name"].endswith("-" + stamp(due(run)))
        assert due(run) % (period_s * 1000) == 0
    assert dues == list(range(dues[0], dues[-1] + 1, period_s * 1000)), dues


# ------------------------------------------------------------------------------ B19a, B19b


def test_every_10s_creates_runs_with_the_contracts_labels_owner_and_names(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    cluster.apply(
        automation(
            "tick",
            cron="@every 10s",
            concurrencyPolicy="Allow",
            runTemplate={
                "labels": {"team": "reports"},
                "annotations": {"note": "nightly numbers"},
                "runtimeContext": {"region": "eu"},
            },
        )
    )
    uid = cluster.get("automation", "tick")["metadata"]["uid"]
    runs = wait_runs(cluster, "tick", 2, timeout=45)
    assert_one_run_per_due_time(runs, period_s=10)
    for run in runs:
        meta, spec = run["metadata"], run["spec"]
        assert meta["name"] == f"tick-{stamp(due(run))}"
        assert meta["labels"] == {LABEL: "tick", "team": "reports"}
        assert meta["annotations"]["note"] == "nightly numbers"
        (owner,) = meta["ownerReferences"]
        assert owner["kind"] == "Automation"
        assert owner["name"] == "tick"
        assert owner["uid"] == uid
        assert owner["controller"] is True
        assert spec["automationRef"] == {"name": "tick"}
        assert spec["triggerType"] == "scheduled"
        assert spec["runtimeContext"] == {"region": "eu"}
        # Created at (not before) its due time.
        assert ms(meta["creationTimestamp"]) // 1000 >= due(run) // 1000
    first = runs[0]["metadata"]["name"]
    cluster.wait_phase(first, "Completed", timeout=30)

    def settled() -> dict[str, Any] | None:
        status = status_of(cluster, "tick")
        latest = runs_of(cluster, "tick")[-1]
        if status.get("lastRunName") != latest["metadata"]["name"]:
            return None
        return status

    status = wait_for(settled, timeout=20, what="the Automation's status")
    latest = runs_of(cluster, "tick")[-1]
    assert ms(status["lastScheduleTime"]) == due(latest)
    assert ms(status["nextScheduleTime"]) == due(latest) + 10_000
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Stalled")["status"] == "False"


def test_an_invalid_schedule_is_stalled_with_a_warning_and_the_operator_keeps_going(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    # The admission webhook refuses this schedule at apply (test_admission_webhook.py); it is
    # stored here before this namespace has an operator, as when the webhook was down.
    cluster.apply(automation("broken", cron="61 * * * *"), automation("fine", cron="@every 2s"))
    operator = lead(operators())
    status = wait_for(
        lambda: (s := status_of(cluster, "broken")).get("conditions") and s,
        timeout=30,
        what="a status on the broken Automation",
    )
    stalled = condition(status, "Stalled")
    assert stalled["status"] == "True"
    assert stalled["reason"] == "InvalidSchedule"
    assert "spec.schedule.cron" in stalled["message"]
    assert condition(status, "Ready")["status"] == "False"
    assert "nextScheduleTime" not in status
    warnings = wait_for(
        lambda: schedule_events(cluster, "broken", "InvalidSchedule"),
        timeout=20,
        what="the InvalidSchedule Event",
    )
    assert warnings[0]["type"] == "Warning"
    wait_runs(cluster, "fine", 1, timeout=20)
    assert operator.alive
    assert runs_of(cluster, "broken") == []
    assert len(schedule_events(cluster, "broken", "InvalidSchedule")) == 1


# ------------------------------------------------------------------------------ failover


@repeated
def test_leader_killed_mid_cycle_never_gives_two_runs_for_one_due_time(
    cluster: Cluster, operators: Callable[..., OperatorProcess], attempt: int
) -> None:
    first = lead(operators())
    standby = operators()
    wait_for(
        lambda: "Operator started" in standby.log(),
        timeout=180,
        what="the standby to start",
    )
    cluster.apply(automation("ha", cron="@every 10s", concurrencyPolicy="Allow"))
    runs = wait_runs(cluster, "ha", 1, timeout=30)
    # Kill the leader right after the next due time fired: its create and status write
    # are under way (the wake-up fires 50 ms after the due time).
    kill_at = next_multiple(10, after_ms=max(now_ms(), due(runs[-1])) + 1000) + 60
    sleep_until(kill_at)
    os.kill(first.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
    first.proc.wait()  # type: ignore[union-attr]
    # The standby takes over once the Lease runs out (4 s), before the next due time.
    wait_for(lambda: "leader=True" in standby.log(), timeout=30, what="the standby to take over")
    killed_due = kill_at - 60
    wait_for(
        lambda: runs_of(cluster, "ha") and due(runs_of(cluster, "ha")[-1]) >= killed_due + 20_000,
        timeout=45,
        what="two due times after the kill",
    )
    runs = runs_of(cluster, "ha")
    dues = [due(r) for r in runs]
    # One run per due time (the names say so, and so does the annotation) ...
    assert len(set(dues)) == len(dues), dues
    for run in runs:
        assert run["metadata"]["name"] == f"ha-{stamp(due(run))}"
    # ... and every due time from the first to the last has its run, or was counted
    # missed (only if the takeover took longer than a period on a loaded machine).
    expected = (dues[-1] - dues[0]) // 10_000 + 1
    assert len(dues) + missed_count(cluster, "ha") == expected, (dues, expected)
    assert len([d for d in dues if d == killed_due]) <= 1


# ------------------------------------------------------------------------------ B19c


def test_forbid_never_has_two_unfinished_runs(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    # Each run takes 12 s; due every 5 s: the two due times during a run are skipped.
    cluster.apply(automation("serial", after=12, cron="@every 5s", concurrencyPolicy="Forbid"))
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        active = [r for r in runs_of(cluster, "serial") if phase(r) not in TERMINAL]
        assert len(active) <= 1, [r["metadata"]["name"] for r in active]
        time.sleep(0.5)
    runs = wait_for(
        lambda: len(r := runs_of(cluster, "serial")) >= 2 and phase(r[0]) in TERMINAL and r,
        timeout=30,
        what="two runs, the first finished",
    )
    # From the runs' own history: no run was created before the one before it finished,
    # and every due time in between was skipped (one ScheduleSkipped Event each) or, on a
    # machine too busy to plan on time, counted missed.
    between = 0
    for before, after in itertools.pairwise(runs):
        finished = ms(before["status"]["finishedAt"])
        assert ms(after["metadata"]["creationTimestamp"]) // 1000 >= finished // 1000
        assert due(after) >= finished - 1000, (before, after)
        between += (due(after) - due(before)) // 5000 - 1
    assert between >= 2 * (len(runs) - 1)  # a run takes 12 s, two or more periods
    last = due(runs[-1])

    def accounted() -> bool:
        skipped = [
            e
            for e in schedule_events(cluster, "serial", "ScheduleSkipped")
            if due(runs[0]) < ms(re.search(r"due at (\S+):", e["message"]).group(1)) < last  # type: ignore[union-attr]
        ]
        return len(skipped) + missed_count(cluster, "serial") >= between

    wait_for(accounted, timeout=20, what=f"{between} skipped due times accounted for")
    events = schedule_events(cluster, "serial", "ScheduleSkipped")
    assert all("concurrencyPolicy Forbid" in e["message"] for e in events)


def test_replace_cancels_the_older_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    cluster.apply(automation("fresh", after=60, cron="@every 5s", concurrencyPolicy="Replace"))
    runs = wait_runs(cluster, "fresh", 2, timeout=30)
    older, newer = runs[0]["metadata"]["name"], runs[1]["metadata"]["name"]
    status = cluster.wait_phase(older, "Cancelled", timeout=20)
    assert status["stopKind"] == "OperatorStopped"
    assert cluster.run(older)["spec"]["desiredState"] == "Cancelled"
    assert cluster.run(newer)["spec"].get("desiredState", "Running") == "Running"
    assert phase(cluster.run(newer)) not in TERMINAL
    replaced = wait_for(
        lambda: schedule_events(cluster, "fresh", "ScheduleReplaced"),
        timeout=20,
        what="the ScheduleReplaced Event",
    )
    assert older in replaced[0]["message"]


# ------------------------------------------------------------------------------ suspend, B19d


def test_suspend_creates_nothing_and_does_not_catch_up(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    cluster.apply(automation("paused", cron="@every 2s", suspend=True))
    status = wait_for(
        lambda: (s := status_of(cluster, "paused")).get("conditions") and s,
        timeout=30,
        what="the suspended Automation's status",
    )
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Suspended")
    time.sleep(7)  # three due times or more pass while suspended
    assert runs_of(cluster, "paused") == []
    resumed_at = now_ms()
    cluster.kubectl(
        "patch",
        "automation",
        "paused",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"schedule": {"suspend": False}}}),
    )
    runs = wait_runs(cluster, "paused", 1, timeout=20)
    # The first run is for a due time after the unsuspend: nothing missed was caught up.
    # (The operator moves the watermark at each due time while suspended; allow it a few
    # seconds to do so on a busy machine.)
    assert due(runs[0]) > resumed_at - 4000
    assert schedule_events(cluster, "paused", "ScheduleMissed") == []


@repeated
def test_downtime_catches_up_at_most_one_run_and_none_past_the_deadline(
    cluster: Cluster, operators: Callable[..., OperatorProcess], attempt: int
) -> None:
    operator = lead(operators())
    cluster.apply(
        automation("catchup", cron="@every 10s", concurrencyPolicy="Allow"),
        automation(
            "strict", cron="@every 10s", concurrencyPolicy="Allow", startingDeadlineSeconds=3
        ),
    )
    for name in ("catchup", "strict"):
        wait_runs(cluster, name, 1, timeout=30)
    # Stop 3 s after a due time, so that the runs of that due time exist.
    stop_at = next_multiple(10, after_ms=now_ms()) + 3000
    sleep_until(stop_at)
    assert operator.stop() == 0
    stopped = now_ms()
    last_before = {n: max(due(r) for r in runs_of(cluster, n)) for n in ("catchup", "strict")}
    # Down for 35 s or more, and started 6 s after a due time: when the operator plans
    # again, every due time of the downtime is at least 6 s old, past strict's deadline.
    restart_at = next_multiple(10, after_ms=stopped + 35_000 - 6000) + 6000
    sleep_until(restart_at)
    down = list(range(next_multiple(10, after_ms=stopped), restart_at, 10_000))
    assert len(down) >= 3
    lead(operators())
    wait_for(
        lambda: (
            schedule_events(cluster, "strict", "ScheduleMissed")
            and schedule_events(cluster, "catchup", "ScheduleMissed")
            and [r for r in runs_of(cluster, "catchup") if due(r) > last_before["catchup"]]
        ),
        timeout=120,
        what="ScheduleMissed Events of both Automations and catchup's run",
    )
    # catchup: one run, for the latest due time when the operator planned again (the last
    # of the downtime, or a later one if the operator took more than 4 s to start); the
    # due times before it are counted in one Event.
    new = [due(r) for r in runs_of(cluster, "catchup") if due(r) > last_before["catchup"]]
    first = new[0]
    assert first >= down[-1]
    assert len([d for d in new if d <= restart_at]) <= 1
    (event,) = schedule_events(cluster, "catchup", "ScheduleMissed")
    expected = (first - last_before["catchup"]) // 10_000 - 1
    assert expected >= len(down) - 1
    assert f"skipped {expected} missed schedule" in event["message"], event["message"]
    # strict: nothing for the downtime: every one of its due times was past the deadline.
    assert not [d for d in (due(r) for r in runs_of(cluster, "strict")) if d in down]
    (event,) = schedule_events(cluster, "strict", "ScheduleMissed")
    assert "startingDeadlineSeconds is 3" in event["message"]
    assert missed_count(cluster, "strict") >= len(down)


# ------------------------------------------------------------------------------ B20a, B20b


def test_history_limits_keep_the_newest_finished_runs(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    cluster.apply(
        automation("good", cron="@every 2s", successfulRunsHistoryLimit=2),
        automation("bad", outcome="failed", cron="@every 2s", failedRunsHistoryLimit=1),
    )
    limits = {"good": (2, "Completed"), "bad": (1, "Failed")}
    seen: dict[str, set[str]] = {name: set() for name in limits}

    def enough() -> bool:
        for name in seen:
            runs = runs_of(cluster, name)
            seen[name].update(r["metadata"]["name"] for r in runs)
            finished = [r for r in runs if phase(r) in TERMINAL]
            # Never more than the limit, but for the moment between a run's end and the
            # plan that it triggers.
            assert len(finished) <= limits[name][0] + 1, [r["metadata"]["name"] for r in runs]
        return all(len(v) >= 5 for v in seen.values())

    wait_for(enough, timeout=60, interval=0.5, what="five runs of each Automation")
    for name in limits:
        cluster.kubectl(
            "patch",
            "automation",
            name,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"schedule": {"suspend": True}}}),
        )

    def settled(name: str) -> list[dict[str, Any]] | None:
        runs = runs_of(cluster, name)
        limit, kept_phase = limits[name]
        if len(runs) != limit or any(phase(r) != kept_phase for r in runs):
            return None
        return runs

    for name, (limit, _) in limits.items():
        kept = wait_for(lambda name=name: settled(name), timeout=30, what=f"{name}'s history")
        # The kept runs are the newest of all the runs the schedule created.
        newest = sorted(seen[name] | {r["metadata"]["name"] for r in kept})[-limit:]
        assert sorted(r["metadata"]["name"] for r in kept) == newest
    assert len(seen["good"]) >= 5


@repeated
def test_ttl_deletes_five_seconds_after_finishing_across_a_restart(
    cluster: Cluster, operators: Callable[..., OperatorProcess], attempt: int
) -> None:
    operator = lead(operators())

    def run(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "AutomationRun",
            "metadata": {"name": name},
            "spec": {
                "ttlSecondsAfterFinished": 5,
                "automation": {
                    "agents": [{"agentId": "agent"}],
                    "nodes": [
                        {"id": "work", "agentId": "agent", "executor": {"simulate": {}}},
                    ],
                },
            },
        }

    def deleted_at(name: str, *, timeout: float) -> int:
        wait_for(
            lambda: not cluster.kubectl("get", "automationrun", name, "--ignore-not-found"),
            timeout=timeout,
            interval=0.1,
            what=f"{name} to be deleted",
        )
        return now_ms()

    # With the operator running: deleted 5 s after finishedAt, never before.
    cluster.apply(run("steady"))
    finished = ms(cluster.wait_phase("steady", "Completed", timeout=30)["finishedAt"])
    gone = deleted_at("steady", timeout=30)
    # Never early; late only by how busy the machine is.
    assert 5000 <= gone - finished < 12_000, gone - finished

    # Across a restart: the countdown is neither reset nor forgotten.
    cluster.apply(run("restarted"))
    finished = ms(cluster.wait_phase("restarted", "Completed", timeout=30)["finishedAt"])
    assert operator.stop() == 0
    sleep_until(finished + 7000)  # the time to live runs out while the operator is down
    assert cluster.kubectl("get", "automationrun", "restarted", "--ignore-not-found")
    lead(operators())
    leads = now_ms()
    gone = deleted_at("restarted", timeout=20)
    # Deleted as soon as the new leader has listed the runs; a countdown started again by
    # the restart would have waited 5 s more.
    assert gone - leads < 4500, gone - leads


# ------------------------------------------------------------------------------ surface


def test_kubectl_explain_describes_every_schedule_field(cluster: Cluster) -> None:
    text = cluster.kube.kubectl("explain", "automation.spec.schedule").stdout
    fields = [
        "cron",
        "timeZone",
        "concurrencyPolicy",
        "startingDeadlineSeconds",
        "suspend",
        "successfulRunsHistoryLimit",
        "failedRunsHistoryLimit",
        "runTemplate",
    ]
    for field in fields:
        assert f"\n  {field}\t" in text, field
        detail = cluster.kube.kubectl("explain", f"automation.spec.schedule.{field}").stdout
        description = detail.split("DESCRIPTION:", 1)[1].strip()
        assert len(description) > 20, (field, description)
    explained = cluster.kube.kubectl("explain", "automationrun.spec.ttlSecondsAfterFinished")
    assert "finishedAt" in explained.stdout


def test_kubectl_automationrun_start_runs_an_automation_now(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    lead(operators())
    cluster.apply(
        automation(
            "ondemand",
            cron="0 0 1 1 *",
            runTemplate={"labels": {"team": "reports"}, "runtimeContext": {"k": "v"}},
        )
    )
    uid = cluster.get("automation", "ondemand")["metadata"]["uid"]
    env = {**os.environ, "KUBECONFIG": str(cluster.kube.kubeconfig)}
    env["PYTHONPATH"] = str(REPO / "operator")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tandem_operator.cli.plugin",
            "start",
            "ondemand",
            "--name",
            "ondemand-now",
            "-n",
            cluster.namespace,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "automationrun/ondemand-now created from automation/ondemand" in proc.stdout
    run = cluster.run("ondemand-now")
    assert run["spec"]["triggerType"] == "manual"
    assert run["spec"]["automationRef"] == {"name": "ondemand"}
    assert run["spec"]["runtimeContext"] == {"k": "v"}
    assert run["metadata"]["labels"] == {LABEL: "ondemand", "team": "reports"}
    assert run["metadata"]["ownerReferences"][0]["uid"] == uid
    cluster.wait_phase("ondemand-now", "Completed", timeout=30)
    # It is one of the Automation's runs now, in its status until it finished.
    assert SCHEDULED_AT not in (run["metadata"].get("annotations") or {})
