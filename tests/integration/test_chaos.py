"""Chaos: operator crashes and control-plane restarts while many runs are in flight.

Two tests, each a promise that could fail:

1. **200 runs survive 10 SIGKILLs of the operator.** The runs mix plain 3-node chains,
   flows with an approval gate (the test approves each gate as it appears, as a person
   would), chains sharing 5 workspaces, and chains with a single-attempt node. The operator
   runs with ``TANDEM_RESTART_RECOVERY=requeue`` (B1r) and a 3 s claim lease, and is
   SIGKILLed at random moments while nodes are running, then started again at once. Each
   operator is killed only after it has completed nodes of the workload; should the
   workload run dry before the tenth kill, a wave held in reserve gives the operator some
   just before its kill is due. At the end every run has reached the end the rules predict
   from its own history, whatever the kills happened to hit:

   - a node interrupted by a crash is recorded in a ``run_queued_for_resume_after_restart``
     record (``metadata.interrupted_nodes``) and runs again, so a completed node has
     exactly ``1 + interruptions`` attempts, never more than ``maxAttempts``, and exactly
     one ``completed`` verdict (no outcome counted twice, none lost);
   - a run ends Failed (``ServerRestart``, B1) only when its history says a kill
     interrupted a node on its last attempt: a ``run_failed_server_restart`` record, last
     in the history, and a node out of attempts without output that has ``maxAttempts -
     1`` recorded interruptions. Any other run ends Completed. So a run without a
     single-attempt node ends Completed unless kills used up all attempts of one node;
   - every restart record follows a kill, and no run is recovered twice after one kill;
   - each gate decision lands in ``gateHistory`` exactly once;
   - throughout, no operator instance runs two runs of the same workspace at once.

   Which of the random runs a kill interrupts is luck; the witnesses below are not, because
   the kills wait for them (and their nodes cannot end while the kill is awaited):

   - four ``doomed-*`` runs whose single-attempt node never ends on its own: the first kill
     waits until all four are running it, so all four must end Failed;
   - ``stubborn``, whose 10-attempt node never ends on its own: every kill waits until its
     next attempt is running, so it is interrupted exactly 10 times, requeued 9 times (B1r)
     and fails on the tenth (B1), and the workload lasts through every kill;
   - ``resumed``, whose node runs on an agent endpoint that holds the first attempt open
     and answers the next one at once: the first kill waits until attempt 1 is running and
     the second until the run has ended, so it completes with 2 attempts, 1 interruption.

   It takes two to four minutes on a 2-core machine, so it is marked ``slow``.

2. **A kube-apiserver restart and an etcd restart mid-flight**: the operator keeps running,
   reconnects, takes decisions written after each restart, and every run completes.

The control plane is the session's, shared with every other test: only this module
restarts it, and it waits for ``/readyz`` afterwards so later tests find it ready.
"""

from __future__ import annotations

import bisect
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
import yaml
from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

from agentserver import Activity, AgentServer, Result

RESTART_DETAIL = "automation run interrupted by server restart"
REQUEUED = "run_queued_for_resume_after_restart"
FAILED_ON_RESTART = "run_failed_server_restart"
TERMINAL = frozenset({"Completed", "Failed", "Blocked", "Cancelled"})
CHAOS_ENV = {
    "TANDEM_RESTART_RECOVERY": "requeue",
    "TANDEM_CLAIM_LEASE_SECONDS": "3",
    "TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS": "24",
}
KILLS = 10
STALL_SECONDS = 300
"""The kill test fails when no run has moved (phase, attempts, completed nodes) and no kill
happened for this long. A budget for the whole test would depend on the machine's load."""
AGENT_ENDPOINT = "engine"
"""The AgentEndpoint the ``agent`` fixture creates."""


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
"""Runs whose single-attempt node ``once`` never ends on its own (outcome ``stall``)."""
STUBBORN = "stubborn"
"""The run whose node ``stuck`` (``KILLS`` attempts, outcome ``stall``) every kill waits for."""
RESUMED = "resumed"
"""The run whose agent node ``resume`` is held open on attempt 1 and answered on attempt 2."""


def _doomed(name: str) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("prepare", after=0.2),
            sim("once", outcome="stall", dependsOn=["prepare"], maxAttempts=1),
            sim("finish", after=0.2, dependsOn=["once"]),
        ],
    )


def _stubborn() -> dict[str, Any]:
    return simulated_run(
        STUBBORN,
        [
            sim("stuck", outcome="stall", maxAttempts=KILLS),
            sim("finish", after=0.2, dependsOn=["stuck"]),
        ],
    )


def _resumed() -> dict[str, Any]:
    return simulated_run(
        RESUMED,
        [
            {
                "id": "resume",
                "agentId": "agent",
                "executor": {"endpointRef": {"name": AGENT_ENDPOINT}},
            },
            sim("finish", after=0.2, dependsOn=["resume"]),
        ],
    )


def _workload(rng: random.Random) -> list[dict[str, Any]]:
    """The witnesses first (so admitted first), then the other 196 in random order."""
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
    witnesses = [*(_doomed(f"doomed-{i}") for i in range(DOOMED)), _stubborn(), _resumed()]
    return [*witnesses, *runs]


WITNESS_NAMES = frozenset({*(f"doomed-{i}" for i in range(DOOMED)), STUBBORN, RESUMED})
WITNESSES = len(WITNESS_NAMES)


RESERVE_WAVE = 8


def _reserve(workload: list[dict[str, Any]]) -> tuple[list[Any], list[list[Any]]]:
    """The workload created at once, and ``KILLS`` small waves held in reserve.

    A wave is created only when the next kill waits for nothing but the workload: the
    witnesses are running, and the current operator has nothing of the workload left to do
    (the rest finished quickly). That happens at most once per operator, so every operator
    that is killed has completed nodes of the workload, however fast the rest ran, and the
    wave is still young when the kill lands. Whatever is left is created after the last kill.
    """
    cut = len(workload) - KILLS * RESERVE_WAVE
    reserve = workload[cut:]
    return workload[:cut], [
        reserve[i : i + RESERVE_WAVE] for i in range(0, len(reserve), RESERVE_WAVE)
    ]


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


def _workload_done(items: list[dict[str, Any]]) -> int:
    """Completed nodes of the workload (not the witnesses): grows only when an operator
    completes one of its nodes, and never shrinks (B1r keeps completed nodes)."""
    return sum(
        len((run.get("status") or {}).get("checkpoint", {}).get("completedNodes", []))
        for run in items
        if run["metadata"]["name"] not in WITNESS_NAMES
    )


def _movement(items: list[dict[str, Any]]) -> frozenset[tuple[str, Any, int, int]]:
    """Per run: phase, completed nodes and attempts started; changes whenever a run moves."""
    return frozenset(
        (
            run["metadata"]["name"],
            _phase(run),
            len(((run.get("status") or {}).get("checkpoint") or {}).get("completedNodes", [])),
            sum(
                (
                    ((run.get("status") or {}).get("checkpoint") or {}).get("nodeAttempts") or {}
                ).values()
            ),
        )
        for run in items
    )


def _running_attempt(run: dict[str, Any], node_id: str, attempt: int) -> bool:
    """The run is Running and ``node_id`` is in progress on exactly this attempt (stored)."""
    status = run.get("status") or {}
    cp = status.get("checkpoint") or {}
    return (
        status.get("phase") == "Running"
        and node_id in cp.get("pendingNodes", [])
        and node_id not in cp.get("blockedNodes", [])
        and (cp.get("nodeAttempts") or {}).get(node_id) == attempt
        and node_id not in (cp.get("nodeOutputs") or {})
    )


def _kill_awaits(runs: dict[str, dict[str, Any]], kills: int) -> str | None:
    """What kill number ``kills + 1`` still waits for; None when it may land.

    Each awaited node is one that cannot end on its own (``stall``, or an agent that holds
    the attempt open), so once it is seen running, the kill is certain to interrupt it.
    """
    if not _running_attempt(runs[STUBBORN], "stuck", kills + 1):
        return f"{STUBBORN}: node stuck running attempt {kills + 1}"
    if kills == 0:
        for i in range(DOOMED):
            if not _running_attempt(runs[f"doomed-{i}"], "once", 1):
                return f"doomed-{i}: node once running attempt 1"
        if not _running_attempt(runs[RESUMED], "resume", 1):
            return f"{RESUMED}: node resume running attempt 1"
    if kills == 1 and _phase(runs[RESUMED]) not in TERMINAL:
        return f"{RESUMED} to end"
    return None


class Approver:
    """Approves each gate once, as soon as it is seen awaiting, with one kubectl apply
    (again at the next look for a gate whose approval was refused).

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
        # While no operator runs, the admission webhook is down and decisions fail closed
        # (B18d): a refused approval is tried again at the next look, as a person would.
        result = self.cluster.kube.kubectl(
            "-n",
            self.cluster.namespace,
            "apply",
            "-f",
            "-",
            input="\n---\n".join(docs),
            check=False,
        )
        applied = {
            line.split("/", 1)[1].split()[0]
            for line in result.stdout.splitlines()
            if line.startswith("automationrun.") and "/" in line
        }
        self.approved.update(name for name in waiting if name in applied)


def _interruptions(status: dict[str, Any]) -> Counter[str]:
    found: Counter[str] = Counter()
    for record in status["checkpoint"]["lifecycleHistory"]:
        if record["event"] == REQUEUED:
            found.update(record["metadata"]["interrupted_nodes"])
    return found


def _check_restart_records(name: str, history: list[dict[str, Any]], kills: list[float]) -> None:
    """Every restart record follows a kill, and one kill recovers a run at most once.

    ``kills`` holds the wall-clock time right after each killed process was reaped: the
    records of the operator started after kill ``k`` fall between kill ``k`` and kill
    ``k + 1`` (that operator was started after the one and was dead before the other).
    """
    after_kill = [
        bisect.bisect_right(kills, datetime.fromisoformat(r["recordedAt"]).timestamp())
        for r in history
        if r["event"] in (REQUEUED, FAILED_ON_RESTART)
    ]
    assert 0 not in after_kill, (name, "restart recovery before the first kill", history)
    assert len(set(after_kill)) == len(after_kill), (name, "recovered twice after one kill")


def _check_run(run: dict[str, Any], kills: list[float]) -> tuple[str, str | None]:
    """The end this run's own history predicts, checked: ``(phase, lost node)``.

    Raises if the run ended anywhere else. ``lost node`` is the node whose last attempt a
    kill interrupted (a Failed run), None for a Completed run.
    """
    name = run["metadata"]["name"]
    status = run["status"]
    cp = status["checkpoint"]
    flow = status["automationSnapshot"]
    tasks = {n["id"]: n.get("maxAttempts", 3) for n in flow["nodes"] if n.get("kind") != "Approval"}
    history = cp["lifecycleHistory"]
    # The whole history is there, so the interruptions counted from it are all of them.
    assert status["counters"]["lifecycleRecords"] == len(history), name
    _check_restart_records(name, history, kills)
    interrupted = _interruptions(status)
    attempts = cp.get("nodeAttempts", {})
    verdicts = cp.get("nodeAttemptVerdicts", {})
    outputs = cp.get("nodeOutputs", {})
    completed = cp.get("completedNodes", [])
    for node_id, limit in tasks.items():
        assert attempts.get(node_id, 0) <= limit, f"{name}: {node_id} went past maxAttempts"
    for node_id in completed:
        if node_id not in tasks:
            continue
        assert attempts[node_id] == 1 + interrupted[node_id], (name, node_id, attempts, history)
        assert [v["status"] for v in verdicts[node_id]] == ["completed"], (name, node_id)

    # The prediction, from the history alone: B1 applies only to a run a kill caught on a
    # node's last attempt, recorded as the run's last record; every other run completes.
    failed_on_restart = [i for i, r in enumerate(history) if r["event"] == FAILED_ON_RESTART]
    expected = "Failed" if failed_on_restart else "Completed"
    assert status["phase"] == expected, (
        name,
        f"history predicts {expected}",
        status["phase"],
        status.get("detail"),
        [r["event"] for r in history],
    )
    if expected == "Completed":
        assert sorted(completed) == sorted(n["id"] for n in flow["nodes"]), name
        return "Completed", None
    assert failed_on_restart == [len(history) - 1], (name, "B1 is not the last record", history)
    assert status["stopKind"] == "ServerRestart", (name, status.get("detail"))
    assert status["detail"] == RESTART_DETAIL, name
    # The node the last kill caught: out of attempts, no output, each earlier attempt
    # interrupted by a kill (recorded by B1r); B1 on a node with attempts left is a bug.
    lost = [
        n
        for n in cp["pendingNodes"]
        if n in tasks and attempts.get(n, 0) == tasks[n] and n not in outputs
    ]
    assert len(lost) == 1, (name, "B1 without exactly one node out of attempts", cp)
    assert interrupted[lost[0]] == tasks[lost[0]] - 1, (name, lost, history)
    for node_id in tasks:
        if node_id != lost[0] and node_id not in completed:
            assert attempts.get(node_id, 0) == 0, (name, node_id, "ran after the lost node")
    return "Failed", lost[0]


# ------------------------------------------------------------------------------ kills


@pytest.mark.slow
def test_two_hundred_runs_survive_ten_operator_kills(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    # Attempt 1 of ``resume`` keeps talking (so no idle timeout ends it) for 20 minutes:
    # only a kill ends it. Later attempts get the default answer: completed at once.
    agent.script(node="resume", attempt=1, steps=[Activity(count=2400, delay=0.5), Result()])
    rng = random.Random(20261124)
    runs = _workload(rng)
    manifests = {r["metadata"]["name"]: r for r in runs}
    at_once, reserve = _reserve(runs[WITNESSES:])
    cluster.apply(*runs[:WITNESSES])
    time.sleep(1.1)  # creationTimestamp has whole seconds: the witnesses are older
    for start in range(0, len(at_once), 49):
        cluster.apply(*at_once[start : start + 49])
    created = WITNESSES + len(at_once)
    approver = Approver(cluster, manifests)

    operator = operators(**CHAOS_ENV)
    kill_walls: list[float] = []
    kill_at: float | None = None
    done_at_start = 0
    began = time.monotonic()
    moved_at, last_movement = began, (0, _movement([]))
    while True:
        items = _list_runs(cluster)
        assert len(items) == created, "a run was lost"
        doubled = _workspace_holders(items)
        assert not doubled, f"workspace held twice: {doubled}"
        approver.approve_waiting(items)
        phases = Counter(_phase(r) for r in items)
        if sum(phases[p] for p in TERMINAL) == len(runs):
            break
        by_name = {r["metadata"]["name"]: r for r in items}
        kills = len(kill_walls)
        awaits = _kill_awaits(by_name, kills) if kills < KILLS else None
        movement = (kills, _movement(items))
        if movement != last_movement:
            moved_at, last_movement = time.monotonic(), movement
        if time.monotonic() - moved_at >= STALL_SECONDS:
            open_runs = sorted(n for n, r in by_name.items() if _phase(r) not in TERMINAL)
            raise AssertionError(
                f"nothing moved for {STALL_SECONDS}s: {dict(phases)}; after {kills} kills; "
                f"next kill waits for: {awaits}; not ended: {open_runs[:20]}"
            )
        # Kill at a random moment once the current operator is running the witnesses'
        # next attempts and has completed a node of the workload (the reserve guarantees
        # it has some), so every kill lands on an operator at work.
        done = _workload_done(items)
        if kills < KILLS and kill_at is None and awaits is None and done > done_at_start:
            kill_at = time.monotonic() + rng.uniform(0.2, 2.0)
        workload_open = any(
            _phase(r) not in TERMINAL for n, r in by_name.items() if n not in WITNESS_NAMES
        )
        if kills < KILLS and awaits is None and done == done_at_start and not workload_open:
            # Nothing of the workload left for this operator, which has not completed a
            # node of it yet: a wave from the reserve (its nodes will complete).
            wave = reserve.pop(0)
            cluster.apply(*wave)
            created += len(wave)
            print(f"reserve wave after {kills} kills: {[r['metadata']['name'] for r in wave]}")
        if kill_at is not None and time.monotonic() >= kill_at:
            assert operator.alive, operator.log()[-3000:]
            operator.kill()
            kill_walls.append(time.time())
            kill_at = None
            # Counted with the killed operator dead and the next not started: what the
            # next one must add to.
            done_at_start = _workload_done(_list_runs(cluster))
            operator = operators(**CHAOS_ENV)
            print(f"kill {len(kill_walls)} at {time.monotonic() - began:.0f}s: {dict(phases)}")
            if len(kill_walls) == KILLS and reserve:
                rest = [run for wave in reserve for run in wave]
                reserve.clear()
                cluster.apply(*rest)
                created += len(rest)
        # Listing 200 runs is work for the API server and this machine too: not too often.
        time.sleep(0.7)

    assert operator.alive, operator.log()[-3000:]
    items = _list_runs(cluster)
    by_name = {r["metadata"]["name"]: r for r in items}
    ends = {name: _check_run(run, kill_walls) for name, run in by_name.items()}
    interrupted = {name: _interruptions(run["status"]) for name, run in by_name.items()}

    # The witnesses end as their construction says (each kill waited for them).
    for i in range(DOOMED):
        assert ends[f"doomed-{i}"] == ("Failed", "once"), (f"doomed-{i}", ends[f"doomed-{i}"])
    assert ends[STUBBORN] == ("Failed", "stuck"), ends[STUBBORN]
    assert interrupted[STUBBORN] == Counter({"stuck": KILLS - 1}), interrupted[STUBBORN]
    assert len(kill_walls) == KILLS
    assert ends[RESUMED] == ("Completed", None), ends[RESUMED]
    assert interrupted[RESUMED] == Counter({"resume": 1}), interrupted[RESUMED]
    assert by_name[RESUMED]["status"]["checkpoint"]["nodeAttempts"] == {"resume": 2, "finish": 1}
    assert [r.attempt for r in agent.requests_for("resume")] == [1, 2]
    # Every other run ended where _check_run's prediction says: Completed, or Failed only
    # with a node whose every attempt a kill interrupted (for a run without a
    # single-attempt node, that takes maxAttempts - 1 recorded interruptions first).
    for name, run in by_name.items():
        history = run["status"]["checkpoint"].get("gateHistory", [])
        if name.startswith("gated-"):
            assert [(e["nodeId"], e["decision"]) for e in history] == [("review", "approve")]
        else:
            assert history == [], name
    exhausted = sorted(n for n, (end, _) in ends.items() if end == "Failed")
    print(
        f"kills={len(kill_walls)} ends={dict(Counter(end for end, _ in ends.values()))} "
        f"interrupted_attempts={sum(sum(c.values()) for c in interrupted.values())} "
        f"failed={exhausted}"
    )


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
    # Three runs wait at their gates: gate-01 until the kube-apiserver has restarted,
    # gate-02 and gate-03 until etcd has. So work is in flight at both restarts, however
    # fast the others finish, and after each restart the operator has to take a decision
    # written after it and run the node behind the gate.
    after_apiserver, after_etcd = {"gate-01"}, {"gate-02", "gate-03"}
    approver.held = after_apiserver | after_etcd
    operator = operators(**CHAOS_ENV)
    cluster.apply(*runs)

    def phases_of(names: set[str]) -> dict[str, str | None]:
        return {
            r["metadata"]["name"]: _phase(r)
            for r in _list_runs(cluster)
            if r["metadata"]["name"] in names
        }

    def held_awaiting() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return all(
            _phase(r) == "AwaitingApproval" for r in items if r["metadata"]["name"] in approver.held
        )

    wait_for(
        held_awaiting,
        timeout=60,
        what="the held gates to await approval",
        describe=lambda: str(phases_of(approver.held)),
    )
    plane.restart_apiserver(downtime=2.0)
    assert plane.is_ready()
    assert phases_of(approver.held) == dict.fromkeys(approver.held, "AwaitingApproval")

    # The operator is back at work: it takes gate-01's decision, written after the
    # restart, and runs gate-01 to its end.
    approver.held -= after_apiserver

    def gate_01_ended() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return all(_phase(r) in TERMINAL for r in items if r["metadata"]["name"] in after_apiserver)

    wait_for(
        gate_01_ended,
        timeout=90,
        what="gate-01, approved after the kube-apiserver restart, to end",
        describe=lambda: str(phases_of(after_apiserver)),
    )
    assert phases_of(after_apiserver) == dict.fromkeys(after_apiserver, "Completed")
    assert phases_of(after_etcd) == dict.fromkeys(after_etcd, "AwaitingApproval")
    plane.restart_etcd(downtime=2.0)
    assert plane.is_ready()
    assert phases_of(after_etcd) == dict.fromkeys(after_etcd, "AwaitingApproval")
    approver.held.clear()

    def finished() -> bool:
        items = _list_runs(cluster)
        approver.approve_waiting(items)
        return all(_phase(r) in TERMINAL for r in items)

    def unfinished() -> str:
        """The runs that have not ended, as stored, and whether the operator still runs."""
        items = _list_runs(cluster)
        stuck = {
            r["metadata"]["name"]: {
                key: (r.get("status") or {}).get(key)
                for key in ("phase", "detail", "updatedAt", "executionClaim", "scheduler")
            }
            | {
                key: ((r.get("status") or {}).get("checkpoint") or {}).get(key)
                for key in ("pendingNodes", "nodeAttempts", "nodeOutputs", "gateHistory")
            }
            | {"spec.gateDecisions": r["spec"].get("gateDecisions")}
            for r in items
            if _phase(r) not in TERMINAL
        }
        return (
            f"{Counter(_phase(r) for r in items)}; operator alive={operator.alive}; "
            f"not ended: {json.dumps(stuck, indent=1)}; "
            f"operator log tail:\n{operator.log()[-4000:]}"
        )

    wait_for(
        finished,
        timeout=180,
        what="every run to finish after the etcd restart",
        describe=unfinished,
    )
    assert operator.alive, operator.log()[-3000:]
    items = _list_runs(cluster)
    assert Counter(_phase(r) for r in items) == {"Completed": len(runs)}
    for run in items:
        cp = run["status"]["checkpoint"]
        assert all(a <= 3 for a in cp["nodeAttempts"].values()), cp["nodeAttempts"]
        gates = [e["nodeId"] for e in cp.get("gateHistory", [])]
        assert gates == (["review"] if run["metadata"]["name"].startswith("gate-") else [])
