"""``kubectl automationrun`` against the real control plane, with the operator running.

The plugin runs as its own process (``python -m tandem_operator.cli.plugin``, which is
what the ``kubectl-automationrun`` console script calls) with ``$KUBECONFIG`` pointing at
the test cluster, and once through kubectl's own plugin discovery. Effects are checked
with kubectl: what the plugin wrote to spec, and what the operator made of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Cluster, OperatorProcess, sim, simulated_run, wait_for

from tandem_operator.cli.client import Conflict, RunClient
from tandem_operator.cli.writes import gate_decision_patch

Plugin = Callable[..., subprocess.CompletedProcess[str]]

GATED = [
    sim("draft"),
    {
        "id": "review",
        "kind": "Approval",
        "dependsOn": ["draft"],
        "approval": {
            "title": "Review the draft",
            "instructions": "Check the numbers.\nThen decide.",
            "decisions": ["approve", "rework"],
        },
    },
    sim("publish", dependsOn=["review"]),
]


def _env(cluster: Cluster) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(cluster.kube.kubeconfig),
        "PYTHONPATH": str(REPO / "operator"),
    }


@pytest.fixture
def plugin(cluster: Cluster) -> Plugin:
    """Run the plugin in the test namespace; returns the finished process."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tandem_operator.cli.plugin", *args, "-n", cluster.namespace],
            env=_env(cluster),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" or proc.stderr.startswith("note:"), proc.stderr
    return proc.stdout


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    return proc.stderr.strip()


def events(status: dict[str, Any]) -> list[str]:
    return [r["event"] for r in status["checkpoint"]["lifecycleHistory"]]


def test_approve_completes_a_gated_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess], plugin: Plugin
) -> None:
    operators()
    cluster.apply(simulated_run("gated", GATED))
    cluster.wait_phase("gated", "AwaitingApproval", timeout=60)

    described = ok(plugin("describe", "gated"))
    assert "Phase:          AwaitingApproval" in described
    tree = described.split("Nodes:\n", 1)[1].split("Gate:", 1)[0].splitlines()
    assert [line.split()[:3] for line in tree] == [
        ["draft", "completed", "1/3"],
        ["└─", "review", "awaiting-approval"],
        ["└─", "publish", "blocked"],
    ]
    assert "  Title:        Review the draft" in described
    assert "  Instructions: Check the numbers.\n                Then decide." in described
    assert "  Decisions:    approve, rework" in described
    assert "  Approvers:    anyone who may patch the run" in described
    assert "  Approvals:    0/1" in described
    assert "run_awaiting_approval" in described

    message = refused(plugin("approve", "gated", "--gate", "publish"))
    assert message == (
        'error: gate "publish" is not awaiting a decision: automationrun "gated" waits at '
        'gate "review"'
    )
    message = refused(plugin("cancel-gate", "gated"))
    assert message == 'error: gate "review" does not allow "cancel" (allowed: approve, rework)'
    assert "gateDecisions" not in cluster.run("gated")["spec"]

    out = ok(plugin("approve", "gated", "--reason", "numbers check out"))
    # The admission webhook records who wrote the decision; the plugin says so.
    admin = cluster.kube.kubectl_json("auth", "whoami")["status"]["userInfo"]["username"]
    assert out.startswith(f"automationrun/gated: approve recorded for gate review by {admin} (")
    status = cluster.wait_phase("gated", "Completed", timeout=60)
    (decision,) = cluster.run("gated")["spec"]["gateDecisions"]
    assert decision["gate"] == "review"
    assert decision["decision"] == "approve"
    assert decision["reason"] == "numbers check out"
    assert decision["requestId"].startswith("kubectl-")
    assert decision["requestId"] in out
    (entry,) = status["checkpoint"]["gateHistory"]
    assert (entry["decision"], entry["requestId"]) == ("approve", decision["requestId"])
    assert entry["decidedBy"] == admin
    assert f"review approve by {admin}" in ok(plugin("describe", "gated"))

    message = refused(plugin("approve", "gated"))
    assert (
        message == 'error: automationrun "gated" has no gate awaiting a decision (phase Completed)'
    )
    assert len(cluster.run("gated")["spec"]["gateDecisions"]) == 1

    listed = ok(plugin("list")).splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "NODES", "DETAIL", "AGE"]
    assert listed[1].split()[:3] == ["gated", "Completed", "3/3"]
    history = json.loads(ok(plugin("history", "gated", "-o", "json")))
    assert [r["event"] for r in history] == events(status)
    table = ok(plugin("history", "gated")).splitlines()
    assert [row.split()[1] for row in table[1:]] == events(status)


def test_a_decision_from_a_stale_read_is_refused(cluster: Cluster, plugin: Plugin) -> None:
    """The JSON patch pins the resourceVersion it was checked against (no operator here)."""
    cluster.apply(simulated_run("gated", GATED))
    gate = {"nodeId": "review", "decisions": ["approve", "rework"]}
    cluster.patch_status(
        "gated", {"phase": "AwaitingApproval", "checkpoint": {"awaitingGate": gate}}
    )
    client = RunClient.connect(kubeconfig=cluster.kube.kubeconfig, namespace=cluster.namespace)
    seen = client.get("gated")
    cluster.kubectl("label", "automationrun", "gated", "touched=yes")

    ops = gate_decision_patch(
        seen, decision="approve", gate=None, reason=None, request_id="from-stale-read"
    )
    with pytest.raises(Conflict):
        client.json_patch("gated", ops)
    assert "gateDecisions" not in cluster.run("gated")["spec"]

    # The command reads again before it writes, so it is not affected.
    ok(plugin("rework", "gated", "--reason", "again"))
    (decision,) = cluster.run("gated")["spec"]["gateDecisions"]
    assert decision["decision"] == "rework"


def test_pause_resume_and_cancel(
    cluster: Cluster, operators: Callable[..., OperatorProcess], plugin: Plugin
) -> None:
    operators()
    cluster.apply(simulated_run("long", [sim("slow", after=60)]))
    cluster.wait_phase("long", "Running", timeout=60)

    assert ok(plugin("pause", "long", "--reason", "maintenance window")) == (
        "automationrun/long: desiredState set to Paused\n"
    )
    status = cluster.wait_phase("long", "Paused", timeout=60)
    assert status["pauseReason"] == "maintenance window"
    assert cluster.run("long")["spec"]["pauseReason"] == "maintenance window"

    ok(plugin("resume", "long"))
    status = cluster.wait_phase("long", "Running", timeout=60)
    assert status["resumeReason"] == "resumed by user"
    spec = cluster.run("long")["spec"]
    assert spec["desiredState"] == "Running"
    assert "pauseReason" not in spec
    assert events(status)[-3:] == ["run_paused", "run_resumed", "run_started"]

    ok(plugin("cancel", "long"))
    status = cluster.wait_phase("long", "Cancelled", timeout=60)
    assert status["stopKind"] == "OperatorStopped"
    assert refused(plugin("cancel", "long")) == (
        'error: automationrun "long" is Cancelled; nothing to cancel'
    )
    assert refused(plugin("recover", "long")) == (
        'error: automationrun "long" is Cancelled; only Failed, Paused or Blocked runs can be '
        "recovered"
    )


def test_recover_a_failed_run(
    cluster: Cluster, operators: Callable[..., OperatorProcess], plugin: Plugin
) -> None:
    operators()
    cluster.apply(simulated_run("broken", [sim("a", outcome="failed", maxAttempts=1)]))
    cluster.wait_phase("broken", "Failed", timeout=60)
    out = ok(plugin("recover", "broken"))
    request_id = cluster.run("broken")["spec"]["recover"]["requestId"]
    assert out == f"automationrun/broken: recover requested (requestId {request_id})\n"

    def recovered_and_failed_again() -> dict[str, Any] | None:
        status = cluster.status("broken")
        if status.get("phase") == "Failed" and "run_recovered" in events(status):
            return status
        return None

    status = wait_for(recovered_and_failed_again, timeout=60, what="recover, then fail again")
    assert events(status).count("run_failed") == 2
    assert "Last failure:   node a: node `a` reported failed (failed)" in ok(
        plugin("describe", "broken")
    )


@pytest.mark.parametrize(
    "args",
    [
        ("describe", "nope"),
        ("history", "nope"),
        ("approve", "nope"),
        ("pause", "nope"),
        ("recover", "nope"),
    ],
)
def test_a_missing_run_is_a_clear_error(cluster: Cluster, plugin: Plugin, args: tuple[str]) -> None:
    message = refused(plugin(*args))
    assert message == f'error: automationrun "nope" not found in namespace "{cluster.namespace}"'


def test_kubectl_finds_the_plugin_on_path(cluster: Cluster, tmp_path: Path) -> None:
    """kubectl runs ``kubectl-automationrun`` from PATH for ``kubectl automationrun``."""
    script = tmp_path / "kubectl-automationrun"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m tandem_operator.cli.plugin "$@"\n')
    script.chmod(0o755)
    cluster.apply(simulated_run("listed", [sim("a")]))
    env = _env(cluster)
    env["PATH"] = f"{tmp_path}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(cluster.kube.tools.kubectl), "automationrun", "list", "-n", cluster.namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()
    assert rows[0].split() == ["NAME", "PHASE", "NODES", "DETAIL", "AGE"]
    assert rows[1].split()[:3] == ["listed", "-", "-"]
