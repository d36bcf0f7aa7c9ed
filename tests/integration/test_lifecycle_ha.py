"""Operator crashes, standbys and graceful shutdown (B1, B1r, B15) with real processes.

The operator runs as its own process; these tests SIGKILL it mid-run (no cleanup, no
Lease release, like a node crash), run two at once, and stop one with SIGTERM (as a
Deployment rollout does). What they check is what the contract promises a user:

* only the holder of the ``tandem-operator`` Lease acts, so a run is claimed, started and
  settled by exactly one instance, and each settle is recorded once however often the
  operator dies;
* a new instance does not touch a dead instance's runs before that instance's Lease has
  run out (``TANDEM_CLAIM_LEASE_SECONDS``, 4 s in the fast settings);
* a graceful shutdown lets in-flight attempts finish within the grace period, records them,
  starts nothing new, and leaves the rest to the next operator's restart recovery.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from support import FAST_SETTINGS, Cluster, OperatorProcess, sim, simulated_run, wait_for

from tandem_operator.devcluster.session import unique_namespace_name

RESTART_DETAIL = "automation run interrupted by server restart"
LEASE_SECONDS = int(FAST_SETTINGS["TANDEM_CLAIM_LEASE_SECONDS"])


def lifecycle(status: dict[str, Any]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = (status.get("checkpoint") or {}).get("lifecycleHistory") or []
    return records


def count(status: dict[str, Any], event: str) -> int:
    return sum(1 for r in lifecycle(status) if r["event"] == event)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def lease(cluster: Cluster) -> dict[str, Any]:
    out = cluster.kubectl("get", "lease", "tandem-operator", "-o", "json", check=False)
    spec: dict[str, Any] = json.loads(out).get("spec", {}) if out.strip() else {}
    return spec


def holder(cluster: Cluster) -> str | None:
    value = lease(cluster).get("holderIdentity")
    return str(value) if value else None


def wait_holder(cluster: Cluster, *, other_than: str | None = None) -> str:
    found: str = wait_for(
        lambda: (h := holder(cluster)) and h != other_than and h,
        timeout=30,
        what=f"a Lease holder other than {other_than}",
        describe=lambda: f"holder={holder(cluster)}",
    )
    return found


def pid_of(identity: str) -> int:
    """Identities are ``<host>-<pid>-<random>``."""
    return int(identity.rsplit("-", 2)[1])


def running_node(cluster: Cluster, name: str, node: str, attempt: int) -> dict[str, Any]:
    """Wait until ``node`` runs its ``attempt``-th attempt (counted, no output yet)."""

    def check() -> dict[str, Any] | None:
        status = cluster.status(name)
        cp = status.get("checkpoint") or {}
        if (
            status.get("phase") == "Running"
            and cp.get("nodeAttempts", {}).get(node) == attempt
            and node not in cp.get("nodeOutputs", {})
        ):
            return status
        return None

    found: dict[str, Any] = wait_for(
        check,
        timeout=45,
        what=f"{name}: node {node} attempt {attempt} running",
        describe=lambda: json.dumps(cluster.status(name).get("checkpoint", {}).get("nodeAttempts")),
    )
    return found


def canary(cluster: Cluster, name: str) -> None:
    """A run that completes proves the current operator is leading and acting."""
    cluster.apply(simulated_run(name, [sim("a")]))
    cluster.wait_phase(name, "Completed", timeout=45)


# --------------------------------------------------------------------------- crashes


def test_sigkill_twice_settles_once_after_the_lease_runs_out(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    first = operators()
    cluster.apply(simulated_run("crash", [sim("a", after=60), sim("b", dependsOn=["a"])]))
    status = running_node(cluster, "crash", "a", 1)
    first_identity = status["executionClaim"]["claimant"]
    assert first_identity == holder(cluster)
    first.kill()
    # The dead instance's Lease as it will stay: nobody renews it any more.
    dead = lease(cluster)
    assert dead["holderIdentity"] == first_identity
    expires = parse_time(dead["renewTime"]) + timedelta(seconds=dead["leaseDurationSeconds"])

    second = operators()
    status = cluster.wait_phase("crash", "Failed", "Completed", timeout=45)
    assert status["phase"] == "Failed"
    assert status["stopKind"] == "ServerRestart"
    assert status["detail"] == status["stopReason"] == RESTART_DETAIL
    assert count(status, "run_failed_server_restart") == 1
    failed_at = parse_time(
        next(r for r in lifecycle(status) if r["event"] == "run_failed_server_restart")[
            "recordedAt"
        ]
    )
    # Not a moment before the old Lease ran out (1 ms: recordedAt is truncated to ms).
    assert failed_at >= expires - timedelta(milliseconds=1), (failed_at, expires)
    second_identity = wait_holder(cluster, other_than=first_identity)
    assert second.proc is not None
    assert pid_of(second_identity) == second.proc.pid

    second.kill()
    settled = cluster.run("crash")
    operators()
    wait_holder(cluster, other_than=second_identity)
    canary(cluster, "canary")
    time.sleep(2)
    again = cluster.run("crash")
    assert again["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
    assert count(again["status"], "run_failed_server_restart") == 1
    assert count(again["status"], "run_started") == 1


def test_sigkill_twice_under_requeue_resumes_each_time_once(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    env = {"TANDEM_RESTART_RECOVERY": "requeue"}
    first = operators(**env)
    cluster.apply(
        simulated_run("twice", [sim("a", after=2.5), sim("b", after=2.5, dependsOn=["a"])])
    )
    running_node(cluster, "twice", "a", 1)
    first.kill()
    second = operators(**env)
    running_node(cluster, "twice", "b", 1)
    second.kill()
    operators(**env)
    status = cluster.wait_phase("twice", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    requeued = [
        r["metadata"]["interrupted_nodes"]
        for r in lifecycle(status)
        if r["event"] == "run_queued_for_resume_after_restart"
    ]
    assert requeued == [["a"], ["b"]]
    assert count(status, "run_started") == 3
    assert count(status, "run_completed") == 1
    assert count(status, "run_failed_server_restart") == 0
    # Each interrupted attempt counts once, each re-run once more.
    assert status["checkpoint"]["nodeAttempts"] == {"a": 2, "b": 2}
    assert status["checkpoint"]["completedNodes"] == ["a", "b"]


# --------------------------------------------------------------------------- standby


def _claimants(cluster: Cluster) -> dict[str, set[str]]:
    items = json.loads(cluster.kubectl("get", "automationruns", "-o", "json"))["items"]
    seen: dict[str, set[str]] = {}
    for item in items:
        claim = (item.get("status") or {}).get("executionClaim")
        if claim:
            seen.setdefault(item["metadata"]["name"], set()).add(claim["claimant"])
    return seen


def test_two_operators_never_both_act_on_a_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    operators()
    operators()
    leader = wait_holder(cluster)
    names = [f"pair-{i}" for i in range(4)]
    cluster.apply(
        *(
            simulated_run(
                name,
                [sim("a", after=1), sim("b", after=1, dependsOn=["a"])],
                execution={"maxParallelNodes": 2},
            )
            for name in names
        )
    )
    claimants: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for found in _claimants(cluster).values():
            claimants |= found
        phases = {cluster.phase(n) for n in names}
        if phases <= {"Completed", "Failed", "Blocked", "Cancelled"}:
            break
        time.sleep(0.2)
    assert claimants == {leader}
    for name in names:
        status = cluster.status(name)
        assert status["phase"] == "Completed", (name, status.get("detail"))
        assert status["checkpoint"]["nodeAttempts"] == {"a": 1, "b": 1}
        assert count(status, "run_started") == 1
        assert count(status, "run_completed") == 1


def test_standby_takes_over_and_settles_the_dead_leaders_runs(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    procs = [operators(), operators()]
    leader = wait_holder(cluster)
    names = [f"orphan-{i}" for i in range(3)]
    cluster.apply(*(simulated_run(name, [sim("a", after=60)]) for name in names))
    for name in names:
        status = running_node(cluster, name, "a", 1)
        assert status["executionClaim"]["claimant"] == leader
    by_pid = {p.proc.pid: p for p in procs if p.proc is not None}
    by_pid[pid_of(leader)].kill()
    survivor = next(p for p in procs if p.alive)
    new_leader = wait_holder(cluster, other_than=leader)
    assert survivor.proc is not None
    assert pid_of(new_leader) == survivor.proc.pid
    for name in names:
        status = cluster.wait_phase(name, "Failed", "Completed", timeout=45)
        assert status["phase"] == "Failed"
        assert status["stopKind"] == "ServerRestart"
        assert status["detail"] == RESTART_DETAIL
        assert count(status, "run_failed_server_restart") == 1
        assert count(status, "run_started") == 1
    # The survivor is the leader now and runs new work.
    canary(cluster, "after-takeover")
    assert cluster.status("after-takeover")["checkpoint"]["nodeAttempts"] == {"a": 1}


# --------------------------------------------------------------------------- B15


def test_graceful_shutdown_lets_short_attempts_finish(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    first = operators()
    cluster.apply(
        simulated_run("single", [sim("a", after=1.5)]),
        simulated_run("chain", [sim("a", after=1.5), sim("b", dependsOn=["a"])]),
    )
    running_node(cluster, "single", "a", 1)
    running_node(cluster, "chain", "a", 1)
    assert first.stop() == 0
    # A graceful stop gives the Lease up at once.
    assert holder(cluster) is None
    single = cluster.status("single")
    assert single["phase"] == "Completed", single.get("detail")
    chain = cluster.status("chain")
    # The attempt in flight finished and was recorded; nothing new was started.
    assert chain["phase"] == "Running"
    assert chain["checkpoint"]["nodeOutputs"]["a"]["status"] == "completed"
    assert chain["checkpoint"]["completedNodes"] == ["a"]
    assert "b" not in chain["checkpoint"]["nodeAttempts"]

    operators()
    chain = cluster.wait_phase("chain", "Failed", "Completed", timeout=45)
    assert chain["phase"] == "Failed"
    assert chain["stopKind"] == "ServerRestart"
    assert count(chain, "run_failed_server_restart") == 1


def test_graceful_shutdown_cuts_off_long_attempts_for_the_next_operator(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    # The fast settings give attempts 3 s of grace; this one needs 60 s.
    first = operators(TANDEM_RESTART_RECOVERY="requeue")
    cluster.apply(simulated_run("long", [sim("a", after=60, maxAttempts=2), sim("b")]))
    running_node(cluster, "long", "a", 1)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    # Created while the operator drains its attempts: not admitted by it.
    cluster.apply(simulated_run("late", [sim("a")]))
    assert first.proc.wait(timeout=30) == 0
    assert cluster.status("late").get("phase") in (None, "Queued")
    assert "startedAt" not in cluster.status("late")
    status = cluster.status("long")
    assert status["phase"] == "Running"
    # The cut-off attempt still counts and has no output: it is in progress for B1r.
    assert status["checkpoint"]["nodeAttempts"].get("a") == 1
    assert "a" not in status["checkpoint"].get("nodeOutputs", {})

    # The next operator requeues; attempt 2 is the last one allowed and runs for 60 s,
    # so a second graceful stop leaves `a` out of attempts: B1 instead of B1r.
    second = operators(TANDEM_RESTART_RECOVERY="requeue")
    running_node(cluster, "long", "a", 2)
    status = cluster.status("long")
    assert count(status, "run_queued_for_resume_after_restart") == 1
    assert "a" not in status["checkpoint"].get("nodeOutputs", {})
    assert second.stop() == 0
    operators(TANDEM_RESTART_RECOVERY="requeue")
    status = cluster.wait_phase("long", "Failed", "Completed", "Queued", timeout=45)
    assert status["phase"] == "Failed"
    assert status["stopKind"] == "ServerRestart"
    assert count(status, "run_failed_server_restart") == 1
    assert status["checkpoint"]["nodeAttempts"]["a"] == 2
    assert cluster.wait_phase("late", "Completed", timeout=45)["phase"] == "Completed"


def test_operators_for_different_namespaces_both_act(
    cluster: Cluster, operators: Callable[..., OperatorProcess], tmp_path: Path
) -> None:
    """Two installs whose Leases share a namespace (two releases in one namespace, or two
    operators started outside a Pod) but that watch different namespaces never wait for
    each other: each Lease is scoped to what its operator watches."""
    kube = cluster.kube
    other = unique_namespace_name("ha-other")
    kube.kubectl("create", "namespace", other)
    second = OperatorProcess(
        kube=kube,
        namespace=other,
        lease_namespace=cluster.namespace,
        log_path=tmp_path / "other-operator.log",
    )
    try:
        operators()
        second.start()
        elsewhere = Cluster(kube, other)
        cluster.apply(simulated_run("here", [sim("a")]))
        elsewhere.apply(simulated_run("there", [sim("a")]))
        assert cluster.wait_phase("here", "Completed", timeout=60)["phase"] == "Completed"
        done = elsewhere.wait_phase("there", "Completed", timeout=60)
        assert done["phase"] == "Completed", second.log()[-3000:]
        leases = json.loads(cluster.kubectl("get", "leases", "-o", "json"))["items"]
        holders = {item["metadata"]["name"]: item["spec"].get("holderIdentity") for item in leases}
        assert len(holders) == 2, holders
        assert all(holders.values()), holders
    finally:
        second.kill()
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)
