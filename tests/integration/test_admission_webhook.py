"""The admission webhook: what CEL cannot say is refused at apply, and approvers are real users.

The operator, started by its default command, serves the webhook over TLS on loopback and
registers its own Validating/MutatingWebhookConfiguration (named for its install, limited
to its namespace) on the local control plane.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

from tandem_operator.devcluster.session import KubeSession


def _gated(name: str) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("draft"),
            {
                "id": "review",
                "kind": "Approval",
                "dependsOn": ["draft"],
                "approval": {"title": "Review", "decisions": ["approve", "cancel"]},
            },
        ],
    )


def _rejected(cluster: Cluster, manifest: dict[str, Any], message: str) -> None:
    # The webhook may need a moment after registration before the API server reaches it.
    def attempt() -> str | None:
        result = cluster.apply_result(manifest)
        if result.returncode == 0:
            raise AssertionError(f"accepted: {manifest['metadata']['name']}")
        return result.stderr if "denied the request" in result.stderr else None

    stderr = wait_for(attempt, timeout=30, what="the webhook to answer")
    assert message in stderr, stderr


def test_cycles_and_unknown_gates_are_refused(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    cyclic = simulated_run(
        "cyclic", [sim("a", dependsOn=["c"]), sim("b", dependsOn=["a"]), sim("c", dependsOn=["b"])]
    )
    _rejected(cluster, cyclic, "spec.automation.nodes: dependsOn forms a cycle")

    self_loop = simulated_run("self-loop", [sim("a", dependsOn=["a"])])
    _rejected(cluster, self_loop, "dependsOn forms a cycle: a -> a")

    unknown_gate = _gated("unknown-gate")
    unknown_gate["spec"]["gateDecisions"] = [{"gate": "draft", "decision": "approve"}]
    _rejected(cluster, unknown_gate, "spec.gateDecisions[0].gate: `draft` is not an approval gate")

    disallowed = _gated("disallowed")
    disallowed["spec"]["gateDecisions"] = [{"gate": "review", "decision": "rework"}]
    _rejected(
        cluster, disallowed, "spec.gateDecisions[0].decision: gate `review` allows approve, cancel"
    )

    downstream = _gated("rework-downstream")
    downstream["spec"]["automation"]["nodes"].append(sim("publish", dependsOn=["review"]))
    downstream["spec"]["automation"]["nodes"][1]["approval"]["reworkTargets"] = ["publish"]
    _rejected(cluster, downstream, "reworkTargets: publish not upstream of gate `review`")

    automation = {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "Automation",
        "metadata": {"name": "loop"},
        "spec": cyclic["spec"]["automation"],
    }
    _rejected(cluster, automation, "spec.nodes: dependsOn forms a cycle")
    scheduled = {
        **automation,
        "metadata": {"name": "scheduled"},
        "spec": {**automation["spec"], "nodes": [sim("a")]},
    }
    scheduled["spec"]["schedule"] = {"cron": "61 * * * *", "runTemplate": {}}
    _rejected(cluster, scheduled, "spec.schedule.cron: '61 * * * *' is not a valid cron")
    scheduled["spec"]["schedule"] = {
        "cron": "@daily",
        "timeZone": "Mars/Olympus",
        "runTemplate": {},
    }
    _rejected(cluster, scheduled, "spec.schedule.timeZone: 'Mars/Olympus' is not a known IANA")
    # Nothing was stored.
    assert cluster.kubectl("get", "automationruns,automations", "-o", "name").strip() == ""


def test_approver_is_the_authenticated_user(
    cluster: Cluster, webhook_operator: OperatorProcess, tmp_path: Path
) -> None:
    kube: KubeSession = cluster.kube
    ns = cluster.namespace
    cluster.kubectl("create", "serviceaccount", "alice")
    cluster.kubectl(
        "create",
        "role",
        "approver",
        "--verb=get,list,patch,update",
        "--resource=automationruns.automation.tandem.dev",
    )
    cluster.kubectl(
        "create", "rolebinding", "alice-approves", "--role=approver", f"--serviceaccount={ns}:alice"
    )
    token = cluster.kubectl("create", "token", "alice").strip()
    alice = kube.token_kubeconfig(token, tmp_path / "alice.kubeconfig")

    wait_for(
        lambda: cluster.apply_result(_gated("signed")).returncode == 0, timeout=30, what="apply"
    )
    cluster.wait_phase("signed", "AwaitingApproval", timeout=30)
    forged = {
        "spec": {
            "gateDecisions": [
                {"gate": "review", "decision": "approve", "requestId": "r1", "decidedBy": "mallory"}
            ]
        }
    }
    kube.kubectl(
        "-n",
        ns,
        "patch",
        "automationrun",
        "signed",
        "--type=merge",
        "-p",
        json.dumps(forged),
        kubeconfig=alice,
    )

    status = cluster.wait_phase("signed", "Completed", timeout=30)
    history = status["checkpoint"]["gateHistory"]
    assert len(history) == 1
    assert history[0]["decidedBy"] == f"system:serviceaccount:{ns}:alice"
    stored = cluster.run("signed")["spec"]["gateDecisions"][0]
    assert stored["decidedBy"] == f"system:serviceaccount:{ns}:alice"
