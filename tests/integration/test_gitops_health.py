"""GitOps health of AutomationRuns, judged by the real tools over objects from the control plane.

Three judges, each run for real over ``kubectl get -o json`` of a run:

* **kstatus** (``sigs.k8s.io/cli-utils``), which Flux, kpt and cli-utils use to decide whether
  an applied object has reconciled: ``hack/kstatus``, built by ``hack/build-kstatus.sh``.
* **Argo CD**: ``charts/tandem-operator/argocd/health.lua`` run by Lua 5.1 (``lupa.lua51``;
  Argo CD runs health checks with gopher-lua, a Lua 5.1).
* **Flux ``healthCheckExprs``**: the recipe exactly as ``docs/gitops.md`` documents it,
  evaluated by Flux's own ``StatusEvaluator`` (``fluxcd/pkg/runtime/cel``, the package
  kustomize-controller uses), through ``hack/kstatus -current ...``.

Every phase is judged twice: with status written by hand (every phase, including the
transient Pausing, a run not yet seen, a spec not yet observed, a run being deleted; the
conditions are the engine's own ``apply_conditions``), and as the operator writes it (every
phase but Pausing, which lasts only until the in-flight attempts are cancelled). The
expected verdicts are the tables of docs/gitops.md.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lupa.lua51
import pytest
import yaml
from support import REPO, Cluster, OperatorProcess, sim, simulated_run, wait_for

from agentserver import Activity, AgentServer, Result
from tandem_operator.api.models import AutomationRunStatus
from tandem_operator.lifecycle.invariants import apply_conditions

HEALTH_LUA = REPO / "charts" / "tandem-operator" / "argocd" / "health.lua"
GITOPS_DOC = REPO / "docs" / "gitops.md"
ARGO_KEY = "resource.customizations.health.automation.tandem.dev_AutomationRun"

# phase -> (kstatus, Argo CD health, Flux healthCheckExprs recipe)
TABLE: dict[str, tuple[str, str, str]] = {
    "Queued": ("InProgress", "Progressing", "InProgress"),
    "Running": ("InProgress", "Progressing", "InProgress"),
    "Pausing": ("InProgress", "Progressing", "InProgress"),
    "Paused": ("InProgress", "Suspended", "Current"),
    "AwaitingApproval": ("InProgress", "Suspended", "Current"),
    "Completed": ("Current", "Healthy", "Current"),
    "Failed": ("Failed", "Degraded", "Failed"),
    "Blocked": ("Failed", "Degraded", "Failed"),
    "Cancelled": ("Failed", "Degraded", "Failed"),
}


@dataclass(frozen=True)
class Verdict:
    kstatus: str
    kstatus_message: str
    argo: str
    argo_message: str
    flux: str | None
    flux_error: str | None

    def row(self) -> tuple[str, str, str | None]:
        return (self.kstatus, self.argo, self.flux)


@pytest.fixture(scope="module")
def kstatus() -> Path:
    """The kstatus probe, built on first use into the tool cache (about four CPU-minutes)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "build-kstatus.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def flux_recipe() -> dict[str, str]:
    """The healthCheckExprs entry for AutomationRun, read from the Kustomization in the docs."""
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS_DOC.read_text(), flags=re.S)
    for block in blocks:
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") == "Kustomization":
                for entry in doc["spec"].get("healthCheckExprs", []):
                    if entry["kind"] == "AutomationRun":
                        return dict(entry)
    raise AssertionError("docs/gitops.md has no Kustomization with an AutomationRun recipe")


def argo_health(obj: Mapping[str, Any]) -> dict[str, str]:
    """Run health.lua as Argo CD does: the live object in global ``obj``, a table back."""
    lua = lupa.lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.execute(HEALTH_LUA.read_text())
    return {"status": str(result["status"]), "message": str(result["message"] or "")}


def judge(kstatus_bin: Path, obj: Mapping[str, Any]) -> Verdict:
    recipe = flux_recipe()
    out = subprocess.run(
        [
            str(kstatus_bin),
            "-current",
            recipe["current"],
            "-in-progress",
            recipe.get("inProgress", ""),
            "-failed",
            recipe.get("failed", ""),
        ],
        input=json.dumps(obj),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    computed = json.loads(out)
    argo = argo_health(obj)
    flux = computed["healthCheckExprs"]
    return Verdict(
        kstatus=computed["status"],
        kstatus_message=computed["message"],
        argo=argo["status"],
        argo_message=argo["message"],
        flux=flux.get("status"),
        flux_error=flux.get("error"),
    )


def hand_status(phase: str, *, generation: int, detail: str) -> dict[str, Any]:
    """A status as the operator writes it for ``phase``, conditions by the engine itself."""
    status = AutomationRunStatus.model_validate(
        {
            "phase": phase,
            "detail": detail,
            "observedGeneration": generation,
            "createdAt": "2026-01-01T00:00:00.000Z",
        }
    )
    apply_conditions(status, now="2026-01-01T00:00:00.000Z", generation=generation)
    return status.to_api()


DETAILS = {
    "Queued": "admitted",
    "Running": "running node `a` attempt 1",
    "Pausing": "running node `a` attempt 1",
    "Paused": "paused by user",
    "AwaitingApproval": "awaiting approval at gate `review`",
    "Completed": "completed",
    "Failed": "node `a` failed after 1/1 attempts",
    "Blocked": "blocked nodes: a",
    "Cancelled": "cancelled by user",
}


def test_every_phase_written_by_hand_is_judged_per_the_table(
    cluster: Cluster, kstatus: Path
) -> None:
    # No operator runs in this namespace: the status stays exactly as written.
    for phase in TABLE:
        name = f"hand-{phase.lower()}"
        cluster.apply(simulated_run(name, [sim("a")]))
        generation = cluster.run(name)["metadata"]["generation"]
        cluster.patch_status(name, hand_status(phase, generation=generation, detail=DETAILS[phase]))
        verdict = judge(kstatus, cluster.run(name))
        assert verdict.row() == TABLE[phase], phase
        assert verdict.argo_message == f"{phase}: {DETAILS[phase]}"
        if verdict.kstatus != "Current":
            assert verdict.kstatus_message == DETAILS[phase]

    # Not yet seen by any operator: kstatus's generic rules find no condition and call it
    # Current (documented); Argo CD waits; the Flux recipe cannot evaluate `status` and
    # Flux keeps polling it as Unknown until the operator writes one.
    cluster.apply(simulated_run("unseen", [sim("a")]))
    verdict = judge(kstatus, cluster.run("unseen"))
    assert (verdict.kstatus, verdict.argo) == ("Current", "Progressing")
    assert verdict.argo_message == "Waiting for the operator"
    assert verdict.flux is None
    assert verdict.flux_error is not None
    assert "no such attribute" in verdict.flux_error

    # A spec the operator has not observed yet: status is stale, every judge says so.
    cluster.patch_spec("hand-completed", {"pauseReason": "spec edited after the run ended"})
    run = cluster.run("hand-completed")
    assert run["metadata"]["generation"] == run["status"]["observedGeneration"] + 1
    verdict = judge(kstatus, run)
    assert verdict.row() == ("InProgress", "Progressing", "InProgress")
    assert "latest observed generation is 1" in verdict.kstatus_message
    assert verdict.argo_message == "Waiting for the operator to observe generation 2 (observed 1)"

    # Being deleted (held by a finalizer so the object can be read).
    held = simulated_run("leaving", [sim("a")])
    held["metadata"]["finalizers"] = ["example.com/hold"]
    cluster.apply(held)
    cluster.patch_status("leaving", hand_status("Running", generation=1, detail="running"))
    cluster.kubectl("delete", "automationrun", "leaving", "--wait=false")
    verdict = judge(kstatus, cluster.run("leaving"))
    assert (verdict.kstatus, verdict.argo) == ("Terminating", "Progressing")
    assert verdict.argo_message == "Pending deletion"
    cluster.kubectl(
        "patch",
        "automationrun",
        "leaving",
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )


def test_health_lua_reports_a_phase_it_does_not_know_as_unknown() -> None:
    # The CRD's enum keeps such a phase out of the API server (a newer operator would add
    # it to the enum first); the script must still answer rather than guess.
    health = argo_health({"metadata": {"generation": 1}, "status": {"phase": "Hibernating"}})
    assert health == {"status": "Unknown", "message": "Unknown phase Hibernating"}


GATED = [
    sim("a"),
    {
        "id": "review",
        "kind": "Approval",
        "dependsOn": ["a"],
        "approval": {"title": "Review the draft", "reworkTargets": ["a"]},
    },
    sim("c", dependsOn=["review"]),
]


def settled(cluster: Cluster, name: str, phase: str) -> dict[str, Any]:
    """The run once the operator wrote ``phase`` and observed the current spec."""

    def ready() -> dict[str, Any] | None:
        run = cluster.run(name)
        status = run.get("status") or {}
        if (
            status.get("phase") == phase
            and status.get("observedGeneration") == run["metadata"]["generation"]
        ):
            return run
        return None

    result: dict[str, Any] = wait_for(
        ready,
        timeout=60,
        what=f"run {name} to settle in {phase}",
        describe=lambda: str(cluster.phase(name)),
    )
    return result


def test_phases_written_by_the_operator_are_judged_per_the_table(
    cluster: Cluster,
    operators: Callable[..., OperatorProcess],
    agent: AgentServer,
    kstatus: Path,
) -> None:
    agent.script(node="x", steps=[Activity(), Result(status="blocked")])
    # Room for every run at once, so `waiting` queues on its workspace, not on capacity.
    operators(TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS="16")
    cluster.apply(
        simulated_run("done", [sim("a"), sim("b", dependsOn=["a"])]),
        simulated_run("gated", GATED),
        simulated_run("broken", [sim("a", outcome="failed", maxAttempts=1)]),
        simulated_run("refused", GATED),
        simulated_run("dropped", GATED),
        simulated_run("held", GATED),
        simulated_run("slow", [sim("a", after=300)], workspace="/ws/shared"),
        simulated_run(
            "stuck",
            [{"id": "x", "agentId": "researcher", "objective": "do x"}],
            agents=[{"agentId": "researcher", "endpointRef": {"name": "engine"}}],
        ),
        {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "AutomationRun",
            "metadata": {"name": "orphan"},
            "spec": {"automationRef": {"name": "no-such-automation"}},
        },
    )
    settled(cluster, "slow", "Running")
    cluster.apply(simulated_run("waiting", [sim("a")], workspace="/ws/shared"))
    for name in ("refused", "dropped", "held"):
        settled(cluster, name, "AwaitingApproval")
    cluster.patch_spec(
        "refused", {"gateDecisions": [{"gate": "review", "decision": "cancel", "requestId": "n1"}]}
    )
    cluster.patch_spec("dropped", {"desiredState": "Cancelled"})
    cluster.patch_spec("held", {"desiredState": "Paused"})

    observed = {
        "done": settled(cluster, "done", "Completed"),
        "gated": settled(cluster, "gated", "AwaitingApproval"),
        "broken": settled(cluster, "broken", "Failed"),
        "refused": settled(cluster, "refused", "Cancelled"),
        "dropped": settled(cluster, "dropped", "Cancelled"),
        "held": settled(cluster, "held", "Paused"),
        "slow": settled(cluster, "slow", "Running"),
        "waiting": settled(cluster, "waiting", "Queued"),
        "stuck": settled(cluster, "stuck", "Blocked"),
        "orphan": settled(cluster, "orphan", "Queued"),
    }
    assert observed["waiting"]["status"]["scheduler"]["queueReason"] == "workspace_lock"
    assert observed["refused"]["status"]["stopKind"] == "Cancelled"
    assert observed["dropped"]["status"]["stopKind"] == "OperatorStopped"
    assert "no-such-automation" in observed["orphan"]["status"]["detail"]

    for name, run in observed.items():
        phase = run["status"]["phase"]
        verdict = judge(kstatus, run)
        assert verdict.row() == TABLE[phase], (name, phase, verdict)
        assert verdict.argo_message.startswith(phase), (name, verdict.argo_message)

    # The gate, as docs/user-guide.md does it: rework with a merge patch (the first entry of
    # gateDecisions), approve with a JSON patch that appends, then wait for Succeeded.
    cluster.kubectl(
        "patch",
        "arun",
        "gated",
        "--type=merge",
        "-p",
        '{"spec":{"gateDecisions":[{"gate":"review","decision":"rework",'
        '"reason":"cite sources","requestId":"r1"}]}}',
    )
    wait_for(
        lambda: (
            len(cluster.status("gated")["checkpoint"]["gateHistory"]) == 1
            and cluster.phase("gated") == "AwaitingApproval"
        ),
        timeout=60,
        what="gated to come back to its gate after the rework",
    )
    cluster.kubectl(
        "patch",
        "arun",
        "gated",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/spec/gateDecisions/-","value":'
        '{"gate":"review","decision":"approve","requestId":"r2"}}]',
    )
    waited = cluster.kubectl("wait", "--for=condition=Succeeded", "arun/gated", "--timeout=60s")
    assert "condition met" in waited
    run = cluster.run("gated")
    assert run["status"]["phase"] == "Completed"
    assert [e["decision"] for e in run["status"]["checkpoint"]["gateHistory"]] == [
        "rework",
        "approve",
    ]
    assert judge(kstatus, run).row() == TABLE["Completed"]

    # Waiting for a run to end whatever the outcome: Succeeded=False, or finishedAt is set.
    failed = cluster.kubectl(
        "wait", "--for=condition=Succeeded=False", "arun/broken", "--timeout=30s"
    )
    assert "condition met" in failed
    ended = cluster.kubectl(
        "wait", "--for=jsonpath={.status.finishedAt}", "arun/refused", "--timeout=30s"
    )
    assert "condition met" in ended

    cluster.patch_spec("slow", {"desiredState": "Cancelled"})
    settled(cluster, "slow", "Cancelled")


@pytest.fixture
def argocd_cm(cluster: Cluster) -> str:
    """A stand-in for Argo CD's argocd-cm, with a setting of its own to keep."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "argocd-cm"},
            "data": {"timeout.reconciliation": "180s"},
        }
    )
    return "argocd-cm"


def test_argocd_cm_install_command_adds_only_the_health_check(
    cluster: Cluster, argocd_cm: str
) -> None:
    # The command of docs/gitops.md (in the test namespace instead of argocd). argocd-cm was
    # created by a client-side `kubectl apply`, as Argo CD's install manifests are; a
    # server-side apply would take over and drop its other keys, a merge patch does not.
    rendered = cluster.kubectl(
        "create",
        "configmap",
        argocd_cm,
        "--dry-run=client",
        "-o",
        "json",
        f"--from-file={ARGO_KEY}={HEALTH_LUA}",
    )
    cluster.kubectl(
        "patch", "configmap", argocd_cm, "--type=merge", "--patch-file=/dev/stdin", input=rendered
    )
    data = cluster.get("configmap", argocd_cm)["data"]
    assert data == {"timeout.reconciliation": "180s", ARGO_KEY: HEALTH_LUA.read_text()}
