"""Trusted approvals (B18) against the real API server, with the operator's default command.

People are impersonated with the admin kubeconfig (``kubectl --as=alice --as-group=...``),
so the API server authenticates them exactly as it would a real user: the webhook sees
the impersonated name and groups in the admission request, RBAC checks them too.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import (
    Cluster,
    OperatorProcess,
    admission_registered,
    sim,
    simulated_run,
    wait_for,
)

from tandem_operator.devcluster.session import KubeSession
from tandem_operator.handlers.webhook import install_name

RUNS = "automationruns.automation.tandem.dev"


def gated(name: str, **approval: Any) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("draft"),
            {
                "id": "review",
                "kind": "Approval",
                "dependsOn": ["draft"],
                "approval": {"title": "Review", **approval},
            },
            sim("publish", dependsOn=["review"]),
        ],
    )


def approvers_role(cluster: Cluster) -> None:
    """alice, bob and the group release-managers may patch runs (the RBAC an approver needs)."""
    cluster.kubectl("create", "role", "approver", "--verb=get,list,patch", f"--resource={RUNS}")
    cluster.kubectl(
        "create",
        "rolebinding",
        "approvers",
        "--role=approver",
        "--user=alice",
        "--user=bob",
        "--group=release-managers",
    )


def decide(
    cluster: Cluster,
    name: str,
    *,
    as_user: str,
    groups: tuple[str, ...] = (),
    decision: str = "approve",
    dry_run: bool = False,
    **extra: str,
) -> Any:
    """Append one decision as ``as_user``; returns kubectl's CompletedProcess."""
    entry = {"gate": "review", "decision": decision, "requestId": uuid.uuid4().hex, **extra}
    ops = [{"op": "add", "path": "/spec/gateDecisions/-", "value": entry}]
    if "gateDecisions" not in (cluster.run(name).get("spec") or {}):
        ops = [{"op": "add", "path": "/spec/gateDecisions", "value": [entry]}]
    args = [f"--as={as_user}", *(f"--as-group={g}" for g in groups)]
    if dry_run:
        args.append("--dry-run=server")
    return cluster.kube.kubectl(
        "-n",
        cluster.namespace,
        *args,
        "patch",
        "automationrun",
        name,
        "--type=json",
        "-p",
        json.dumps(ops),
        check=False,
    )


def test_the_approver_is_the_user_and_a_forged_name_never_survives(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    approvers_role(cluster)
    cluster.apply(gated("signed"))
    cluster.wait_phase("signed", "AwaitingApproval", timeout=60)

    result = decide(cluster, "signed", as_user="alice", decidedBy="mallory")
    assert result.returncode == 0, result.stderr
    stored = cluster.run("signed")["spec"]["gateDecisions"]
    assert [d["decidedBy"] for d in stored] == ["alice"]

    status = cluster.wait_phase("signed", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    (entry,) = status["checkpoint"]["gateHistory"]
    assert (entry["nodeId"], entry["decision"], entry["decidedBy"]) == (
        "review",
        "approve",
        "alice",
    )

    # kubectl apply of a manifest listing the earlier decision without decidedBy, plus a new
    # one: the old entry keeps its recorded name, the new one gets the writer's.
    manifest = gated("signed")
    manifest["spec"]["gateDecisions"] = [
        {k: v for k, v in stored[0].items() if k != "decidedBy"},
        {"gate": "review", "decision": "cancel", "requestId": "late", "decidedBy": "alice"},
    ]
    cluster.apply(manifest)
    admin = cluster.kube.kubectl_json("auth", "whoami")["status"]["userInfo"]["username"]
    stored = cluster.run("signed")["spec"]["gateDecisions"]
    assert [d["decidedBy"] for d in stored] == ["alice", admin]


def test_allow_lists_admit_users_and_groups_and_refuse_the_rest(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    approvers_role(cluster)
    cluster.apply(gated("listed", approvers={"users": ["alice"], "groups": ["release-managers"]}))
    cluster.wait_phase("listed", "AwaitingApproval", timeout=60)
    before = cluster.run("listed")

    refused = decide(cluster, "listed", as_user="bob", groups=("system:authenticated",))
    assert refused.returncode != 0
    assert "denied the request" in refused.stderr, refused.stderr
    assert "user `bob` may not decide gate `review`" in refused.stderr, refused.stderr
    after = cluster.run("listed")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"] == before["spec"]

    # By name, and by group as the API server authenticated it (checked without storing).
    by_name = decide(cluster, "listed", as_user="alice", dry_run=True)
    assert by_name.returncode == 0, by_name.stderr
    by_group = decide(cluster, "listed", as_user="carol", groups=("release-managers",))
    assert by_group.returncode == 0, by_group.stderr
    status = cluster.wait_phase("listed", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")
    assert status["checkpoint"]["gateHistory"][0]["decidedBy"] == "carol"


def test_decisions_before_the_flow_is_known_and_for_unknown_gates_are_refused(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    run = gated("early")
    run["spec"]["gateDecisions"] = [{"gate": "nope", "decision": "approve"}]
    result = cluster.apply_result(run)
    assert result.returncode != 0
    assert "spec.gateDecisions[0].gate: `nope` is not an approval gate" in result.stderr

    # An automationRef run the operator has not resolved yet (its Automation is missing).
    by_ref = {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {"name": "by-ref"},
        "spec": {
            "automationRef": {"name": "missing"},
            "gateDecisions": [{"gate": "review", "decision": "approve"}],
        },
    }
    result = cluster.apply_result(by_ref)
    assert result.returncode != 0
    assert "spec.gateDecisions[0]: the run's flow is not resolved yet" in result.stderr


def test_decisions_fail_closed_while_the_operator_is_down(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    approvers_role(cluster)
    cluster.apply(gated("closed"))
    cluster.wait_phase("closed", "AwaitingApproval", timeout=60)
    webhook_operator.stop()
    assert admission_registered(cluster.kube, cluster.namespace)

    refused = decide(cluster, "closed", as_user="alice")
    assert refused.returncode != 0
    assert "failed calling webhook" in refused.stderr, refused.stderr
    assert "gateDecisions" not in cluster.run("closed")["spec"]

    # Other writes pass: the flow checks fail open (the operator re-checks what it runs).
    cluster.patch_spec("closed", {"pauseReason": "kept while the operator is down"})
    cluster.apply(simulated_run("cyclic", [sim("a", dependsOn=["b"]), sim("b", dependsOn=["a"])]))
    cluster.kubectl("label", "automationrun", "closed", "team=a")


def test_two_operators_for_two_namespaces_both_keep_admission(
    crds: KubeSession, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    other = f"{namespace[:50].rstrip('-')}-b"
    crds.kubectl("create", "namespace", other)
    procs = [
        OperatorProcess(kube=crds, namespace=ns, log_path=tmp_path / f"{ns}.log").start()
        for ns in (namespace, other)
    ]
    try:
        for ns, proc in zip((namespace, other), procs, strict=True):
            wait_for(
                lambda ns=ns: admission_registered(crds, ns),
                timeout=60,
                what=f"admission for {ns}",
                describe=proc.log,
            )
        for ns in (namespace, other):
            config = crds.kubectl_json("get", "validatingwebhookconfiguration", install_name(ns))
            for hook in config["webhooks"]:
                (expr,) = hook["namespaceSelector"]["matchExpressions"]
                assert expr == {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": [ns],
                }
            cyclic = simulated_run("loop", [sim("a", dependsOn=["a"])])
            result = Cluster(crds, ns).apply_result(cyclic)
            assert result.returncode != 0, ns
            assert "dependsOn forms a cycle: a -> a" in result.stderr, (ns, result.stderr)
    finally:
        for proc in procs:
            proc.kill()
        for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
            crds.kubectl("delete", kind, install_name(other), "--ignore-not-found", check=False)
        crds.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_a_quorum_of_distinct_users_passes_the_gate(
    cluster: Cluster, webhook_operator: OperatorProcess
) -> None:
    approvers_role(cluster)
    cluster.apply(gated("quorum", requiredApprovals=2))
    cluster.wait_phase("quorum", "AwaitingApproval", timeout=60)
    assert decide(cluster, "quorum", as_user="alice").returncode == 0
    wait_for(
        lambda: (
            [
                a["user"]
                for a in cluster.status("quorum")["checkpoint"]["awaitingGate"].get("approvals", [])
            ]
            == ["alice"]
        ),
        timeout=30,
        what="alice's approval to be counted",
    )
    assert decide(cluster, "quorum", as_user="alice").returncode == 0  # adds nothing

    def seen() -> dict[str, Any] | None:
        run = cluster.run("quorum")
        status: dict[str, Any] = run.get("status") or {}
        generation = run["metadata"]["generation"]
        return status if status.get("observedGeneration") == generation else None

    status = wait_for(seen, timeout=30, what="the operator to see the second approval")
    assert status["phase"] == "AwaitingApproval"
    assert [a["user"] for a in status["checkpoint"]["awaitingGate"]["approvals"]] == ["alice"]
    assert [e["decidedBy"] for e in status["checkpoint"]["gateHistory"]] == ["alice"]
    assert decide(cluster, "quorum", as_user="bob").returncode == 0
    status = cluster.wait_phase("quorum", "Completed", "Failed", timeout=60)
    assert status["phase"] == "Completed"
    approvals = [e["decidedBy"] for e in status["checkpoint"]["gateHistory"]]
    assert approvals == ["alice", "bob"]


def test_a_second_process_of_an_install_takes_over_the_registration_when_one_goes(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> None:
    def url() -> str | None:
        result = cluster.kube.kubectl(
            "get",
            "validatingwebhookconfiguration",
            install_name(cluster.namespace),
            "-o",
            "jsonpath={.webhooks[0].clientConfig.url}",
            check=False,
        )
        return result.stdout.strip() or None

    first = operators()
    first_url = wait_for(url, timeout=60, what="the first registration", describe=first.log)
    second = operators()
    wait_for(lambda: url() not in (None, first_url), timeout=60, what="the second one")
    second.kill()
    wait_for(lambda: url() == first_url, timeout=30, what="the first to register again")

    approvers_role(cluster)
    cluster.apply(gated("after"))
    result = decide(cluster, "after", as_user="alice", dry_run=True)
    assert result.returncode == 0, result.stderr
