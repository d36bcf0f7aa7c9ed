"""Chaos: operator crashes and control-plane restarts while many runs are in flight.

Two tests, each a promise that could fail:

1. **200 runs survive 10 SIGKILLs of the operator.** The runs mix plain 3-node chains,
   flows with an approval gate (the test approves each gate as it appears, as a person
   would), chains sharing 5 workspaces, and chains with a single-attempt node. The operator
   runs with ``TANDEM_RESTART_RECOVERY=requeue`` (B1r) and a 3 s claim lease, and is
   SIGKILLed at random moments while nodes are running, then started again at once. At the
   end every run has reached the end the rules predict from its own history:

   - a node interrupted by a crash is recorded in a ``run_queued_for_resume_after_restart``
     record (``metadata.interrupted_nodes``) and runs again, so a completed node has
     exactly ``1 + interruptions`` attempts, never more than ``maxAttempts``, and exactly
     one ``completed`` verdict (no outcome counted twice, none lost);
   - a node interrupted on its last attempt fails the run as B1 says (``ServerRestart``),
     and only then: such a run has ``maxAttempts - 1`` recorded interruptions of that node;
   - four runs whose single-attempt node runs for 40 s are admitted first, so a kill
     certainly interrupts them: they must end Failed, and every run that has no
     single-attempt node must end Completed;
   - each gate decision lands in ``gateHistory`` exactly once;
   - throughout, no operator instance runs two runs of the same workspace at once.

   It takes two to four minutes on a 2-core machine, so it is marked ``slow``.

2. **A kube-apiserver restart and an etcd restart mid-flight**: the operator keeps running,
   reconnects, and every run completes.

The control plane is the session's, shared with every other test: only this module
restarts it, and it waits for ``/readyz`` afterwards so later tests find it ready.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

RESTART_DETAIL = "automation run interrupted by server restart"
TERMINAL = frozenset({"Completed", "Failed", "Blocked", "Cancelled"})
CHAOS_ENV = {
    "TANDEM_RESTART_RECOVERY": "requeue",
    "TANDEM_CLAIM_LEASE_SECONDS": "3",
    "TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS": "24",
}
KILLS = 10


# ------------------------------------------------------------------------ the workload


def _plain(name: str, *, after: float, workspace: str | None = None) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("collect", after=after),
            sim("draft", after=after, dependsOn=["collect"]),
            sim("publish", after=after, dependsOn=["draft"]),
        ],
        workspace=workspace,
    )


def _gated(name: str, *, after: float) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("draft", after=after),
            {"id": "review", "kind": "Approval", "dependsOn": ["draft"], "approval": {}},
            sim("publish", after=after, dependsOn=["review"]),
        ],
    )


def _fragile(name: str, *, after: float, once: float) -> dict[str, Any]:
    """A chain whose middle node gets one attempt: a crash while it runs fails the run."""
    return simulated_run(
        name,
        [
            sim("prepare", after=after),
            sim("once", after=once, dependsOn=["prepare"], maxAttempts=1),
            sim("finish", after=after, dependsOn=["once"]),
        ],
    )


DOOMED = 4
"""Fragile runs created first (so admitted first) whose single-attempt node runs for 40 s:
a kill certainly interrupts it, and B1r must fail them (out of attempts)."""


def _workload(rng: random.Random) -> list[dict[str, Any]]:
    """The doomed runs first, then the other 196 in random order."""
    runs: list[dict[str, Any]] = []
    for i in range(80):
        runs.append(_plain(f"plain-{i:03d}", after=rng.choice([0.2, 0.4, 0.6])))
    for i in range(50):
        runs.append(_gated(f"gated-{i:03d}", after=rng.choice([0.2, 0.4])))
    for i in range(50):
        runs.append(_plain(f"shared-{i:03d}", after=0.3, workspace=f"/workspaces/ws-{i % 5}"))
    for i in range(16):
        runs.append(_fragile(f"fragile-{i:03d}", after=0.4, once=3.0))
    rng.shuffle(runs)
    doomed = [_fragile(f"doomed-{i}", after=0.2, once=40.0) for i in range(DOOMED)]
    return [*doomed, *runs]


# ---------------------------------------------------------------------- observations


def _list_runs(cluster: Cluster) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(
        cluster.kubectl("get", "automationruns", "-o", "json")
    )["items"]
    return items


def _phase(run: dict[str, Any]) -> str | None:
    phase: str | None = (run.get("status") or {}).get("phase")
    return phase


def _workspace_holders(items: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Workspaces one operator instance holds for more than one run at once (B9 forbids it).

    Grouped by claimant: right after a SIGKILL the dead instance's runs still read Running
    until the next leader recovers them, but nothing executes them any more.
    """
    holders: dict[tuple[str, str], list[str]] = {}
    for run in items:
        status = run.get("status") or {}
        if status.get("phase") not in ("Running", "Pausing"):
            continue
        flow = status.get("automationSnapshot") or run["spec"]["automation"]
        root = (flow.get("workspace") or {}).get("root")
        claimant = (status.get("executionClaim") or {}).get("claimant", "")
        if root:
            holders.setdefault((claimant, root), []).append(run["metadata"]["name"])
    return {key: names for key, names in holders.items() if len(names) > 1}


def _progress(items: list[dict[str, Any]]) -> frozenset[tuple[str, int]]:
    """Completed nodes per run: grows only when an operator completes a node."""
    return frozenset(
        (
            run["metadata"]["name"],
            len((run.get("status") or {}).get("checkpoint", {}).get("completedNodes", [])),
        )
        for run in items
    )


class Approver:
    """Approves each gate once, as soon as it is seen awaiting, with one kubectl apply.

    Runs named in ``held`` are left waiting until they are taken out of it.
    """

    def __init__(self, cluster: Cluster, manifests: dict[str, dict[str, Any]]) -> None:
        self.cluster = cluster
        self.manifests = manifests
        self.approved: set[str] = set()
        self.held: set[str] = set()

    def approve_waiting(self, items: list[dict[str, Any]]) -> None:
        waiting = [
            run["metadata"]["name"]
            for run in items
            if _phase(run) == "AwaitingApproval"
            and run["metadata"]["name"] not in self.approved | self.held
        ]
        if not waiting:
            return
        docs = []
        for name in waiting:
            manifest = json.loads(json.dumps(self.manifests[name]))
            manifest["spec"]["gateDecisions"] = [
                {"gate": "review", "decision": "approve", "requestId": f"approve-{name}"}
            ]
            docs.append(yaml.safe_dump(manifest))
        self.cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))
        self.approved.update(waiting)


def _interruptions(status: dict[str, Any]) -> Counter[str]:
    found: Counter[str] = Counter()
    for record in status["checkpoint"]["lifecycleHistory"]:
        if record["event"] == "run_queued_for_resume_after_restart":
            found.update(record["metadata"]["interrupted_nodes"])
    return found


def _check_run(run: dict[str, Any]) -> str:
    """The end this run's own history predicts; raises if it ended anywhere else."""
    name = run["metadata"]["name"]
    status = run["status"]
    cp = status["checkpoint"]
    flow = status["automationSnapshot"]
    tasks = {n["id"]: n.get("maxAttempts", 3) for n in flow["nodes"] if n.get("kind") != "Approval"}
    history = cp["lifecycleHistory"]
    # The whole history is there, so the interruptions counted from it are all of them.
    assert status["counters"]["lifecycleRecords"] == len(history), name
    interrupted = _interruptions(status)
    attempts = cp.get("nodeAttempts", {})
    verdicts = cp.get("nodeAttemptVerdicts", {})
    for node_id, limit in tasks.items():
        assert attempts.get(node_id, 0) <= limit, f"{name}: {node_id} went past maxAttempts"
    for node_id in cp.get("completedNodes", []):
        if node_id not in tasks:
            continue
        assert attempts[node_id] == 1 + interrupted[node_id], (name, node_id, attempts, history)
        assert [v["status"] for v in verdicts[node_id]] == ["completed"], (name, node_id)
    if status["phase"] == "Completed":
        assert sorted(cp["completedNodes"]) == sorted(n["id"] for n in flow["nodes"]), name
        return "Completed"
    # The only other end: a node interrupted on its last attempt (B1r falls back to B1).
    assert status["phase"] == "Failed", (name, status["phase"], status.get("detail"))
    assert status["stopKind"] == "ServerRestart", (name, status.get("detail"))
    assert status["detail"] == RESTART_DETAIL
    assert history[-1]["event"] == "run_failed_server_restart"
    lost = [
        n
        for n in cp["pendingNodes"]
        if n in tasks and attempts.get(n, 0) == tasks[n] and n not in cp.get("nodeOutputs", {})
    ]
    assert len(lost) == 1, (name, cp)
    assert interrupted[lost[0]] == tasks[lost[0]] - 1, (name, lost, history)
    return "Failed"


# ------------------------------------------------------------------------------ kills


@pytest.mark.slow
def test_two_hundred_runs_survive_ten_operator_kills(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    rng = random.Random(20261124)
    runs = _workload(rng)
    manifests = {r["metadata"]["name"]: r for r in runs}
    cluster.apply(*runs[:DOOMED])
    time.sleep(1.1)  # creationTimestamp has whole seconds: the doomed runs are older
    for start in range(DOOMED, len(runs), 49):
        cluster.apply(*runs[start : start + 49])
    approver = Approver(cluster, manifests)

    operator = operators(**CHAOS_ENV)
    kills = 0
    kill_at: float | None = None
    since_start = _progress([])
    began = time.monotonic()
    deadline = began + 600
    while True:
        items = _list_runs(cluster)
        assert len(items) == len(runs), "a run was lost"
        doubled = _workspace_holders(items)
        assert not doubled, f"workspace held twice: {doubled}"
        approver.approve_waiting(items)
        phases = Counter(_phase(r) for r in items)
        if sum(phases[p] for p in TERMINAL) == len(items):
            break
        assert time.monotonic() < deadline, f"runs did not finish: {dict(phases)}"
        # Kill at a random moment once the current operator has moved some run on, so
        # every kill lands on an operator at work with nodes running.
        progress = _progress(items)
        if kills < KILLS and kill_at is None and progress != since_start and phases["Running"]:
            kill_at = time.monotonic() + rng.uniform(0.2, 2.0)
        if kill_at is not None and time.monotonic() >= kill_at:
            assert operator.alive, operator.log()[-3000:]
            operator.kill()
            kills += 1
            kill_at = None
            operator = operators(**CHAOS_ENV)
            since_start = progress
            print(f"kill {kills} at {time.monotonic() - began:.0f}s: {dict(phases)}")
        # Listing 200 runs is work for the API server and this machine too: not too often.
        time.sleep(0.7)

    assert kills == KILLS, f"the runs finished after {kills} kills; the workload is too short"
    assert operator.alive
    items = _list_runs(cluster)
    ends = Counter(_check_run(run) for run in items)
    interrupted = sum(sum(_interruptions(run["status"]).values()) for run in items)
    # The kills did hit running nodes; only single-attempt nodes can fail a run.
    assert interrupted > 0
    for run in items:
        name, phase = run["metadata"]["name"], run["status"]["phase"]
        if name.startswith("doomed-"):
            assert phase == "Failed", (name, run["status"].get("detail"))
        elif not name.startswith("fragile-"):
            assert phase == "Completed", (name, run["status"].get("detail"))
    for run in items:
        name = run["metadata"]["name"]
        history = run["status"]["checkpoint"].get("gateHistory", [])
        if name.startswith("gated-"):
            assert [(e["nodeId"], e["decision"]) for e in history] == [("review", "approve")]
        else:
            assert history == [], name
    print(f"kills={kills} ends={dict(ends)} interrupted_attempts={interrupted}")


# ------------------------------------------------------------------ control plane


def test_apiserver_and_etcd_restarts_mid_flight(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    plane = cluster.kube.control_plane
    if plane is None:
        pytest.skip("the cluster is not a local control plane this test can restart")
    runs = [_plain(f"steady-{i:02d}", after=1.0) for i in range(12)]
    runs += [_gated(f"gate-{i:02d}", after=1.0) for i in range(4)]
    manifests = {r["metadata"]["name"]: r for r in runs}
    approver = Approver(cluster, manifests)
    # Two runs wait at their gates until etcd has restarted, so that work is still in
    # flight at both restarts however fast the others finish.
    approver.held = {"gate-02", "gate-03"}
    operator = operators(**CHAOS_ENV)
    cluster.apply(*runs)

    def some_running() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return any(_phase(r) == "Running" for r in items)

    wait_for(some_running, timeout=60, what="runs to be running")
    plane.restart_apiserver(downtime=2.0)
    assert plane.is_ready()
    before = Counter(_phase(r) for r in _list_runs(cluster))
    assert sum(before[p] for p in TERMINAL) < len(runs), "everything ended before the restart"

    # The operator is back at work: more runs end than had ended before the restart.
    done_before = sum(before[p] for p in TERMINAL)

    def progressed() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return sum(_phase(r) in TERMINAL for r in items) > done_before

    wait_for(progressed, timeout=90, what="progress after the kube-apiserver restart")
    mid = Counter(_phase(r) for r in _list_runs(cluster))
    assert sum(mid[p] for p in TERMINAL) < len(runs), "everything ended before etcd restarted"
    plane.restart_etcd(downtime=2.0)
    assert plane.is_ready()
    approver.held.clear()

    def finished() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return all(_phase(r) in TERMINAL for r in items)

    wait_for(
        finished,
        timeout=180,
        what="every run to finish after the etcd restart",
        describe=lambda: str(Counter(_phase(r) for r in _list_runs(cluster))),
    )
    assert operator.alive, operator.log()[-3000:]
    items = _list_runs(cluster)
    assert Counter(_phase(r) for r in items) == {"Completed": len(runs)}
    for run in items:
        cp = run["status"]["checkpoint"]
        assert all(a <= 3 for a in cp["nodeAttempts"].values()), cp["nodeAttempts"]
        gates = [e["nodeId"] for e in cp.get("gateHistory", [])]
        assert gates == (["review"] if run["metadata"]["name"].startswith("gate-") else [])
