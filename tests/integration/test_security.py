"""Security promises, each as a test that fails if the operator breaks it.

- **Runs reach URLs only through an AgentEndpoint in their own namespace.** The operator
  below watches two namespaces, so it knows an endpoint of the other one and must still
  refuse it; this covers an agent's ``endpointRef`` (``test_execution_agent`` covers a
  node's ``executor.endpointRef``) and a Secret that exists only in the other namespace.
- **The operator reads only the Secrets AgentEndpoints reference.** It runs with a
  ServiceAccount token whose Role lets it ``get`` exactly one Secret by name and neither
  list nor watch any: the run completes (the agent server refuses requests without that
  Secret's token), another endpoint's Secret is never touched, and the API server never
  had to refuse the operator anything.
- **The approver in gateHistory is the authenticated user of the admission request.**
  ``decidedBy`` forged on create and on update is overwritten by the webhook; a second
  decision by another user is recorded as that user; a recorded decision cannot be
  re-attributed afterwards.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import yaml
from support import Cluster, OperatorProcess, sim, simulated_run, wait_for

from agentserver import AgentServer
from tandem_operator.devcluster.session import KubeSession

API_VERSION = "automation.tandem.dev/v1alpha1"
AGENT_ENDPOINT = "engine"
"""The AgentEndpoint the ``agent`` fixture creates; its Secret is ``engine-token``."""


def _endpoint(name: str, url: str, secret: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"url": url}
    if secret is not None:
        spec["authSecretRef"] = {"name": secret, "key": "token"}
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentEndpoint",
        "metadata": {"name": name},
        "spec": spec,
    }


def _secret(name: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"token": token},
    }


def _agent_run(name: str, endpoint: str, node: str) -> dict[str, Any]:
    """A run whose only node has no executor of its own: its agent's endpoint runs it."""
    return simulated_run(
        name,
        [{"id": node, "agentId": "researcher", "objective": f"work on {node}"}],
        agents=[{"agentId": "researcher", "endpointRef": {"name": endpoint}}],
    )


def _apply_in(kube: KubeSession, namespace: str, *docs: dict[str, Any]) -> None:
    kube.kubectl(
        "-n", namespace, "apply", "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in docs)
    )


# ---------------------------------------------------------------- namespaces and URLs


def test_agent_endpoints_and_their_secrets_resolve_only_in_the_runs_namespace(
    cluster: Cluster, tmp_path: Path
) -> None:
    kube = cluster.kube
    other = f"t-sec-other-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", other)
    server = AgentServer(token="other-token").start()
    try:
        # Namespace `other` has a working endpoint `remote` and the Secret `remote-token`.
        _apply_in(
            kube,
            other,
            _secret("remote-token", "other-token"),
            _endpoint("remote", server.url, secret="remote-token"),
        )
        # The run's namespace has an endpoint whose Secret exists only in `other`.
        cluster.apply(_endpoint("borrower", server.url, secret="remote-token"))
        operator = OperatorProcess(
            kube=kube,
            namespace=cluster.namespace,
            also_watch=(other,),
            log_path=tmp_path / "operator.log",
        ).start()
        try:
            # The endpoint works for runs of its own namespace.
            _apply_in(kube, other, _agent_run("home", "remote", "home-node"))
            wait_for(
                lambda: Cluster(kube, other).phase("home") == "Completed",
                timeout=60,
                what="the run in the endpoint's namespace to complete",
                describe=lambda: str(Cluster(kube, other).status("home").get("detail")),
            )
            server.clear_records()

            cluster.apply(
                _agent_run("foreign-endpoint", "remote", "reach-out"),
                _agent_run("foreign-secret", "borrower", "borrow"),
            )
            endpoint_failed = cluster.wait_phase("foreign-endpoint", "Failed", "Completed")
            secret_failed = cluster.wait_phase("foreign-secret", "Failed", "Completed")
        finally:
            operator.kill()
    finally:
        server.stop()
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)

    ns = cluster.namespace
    assert endpoint_failed["phase"] == "Failed"
    assert endpoint_failed["checkpoint"]["lastFailure"]["nodeId"] == "reach-out"
    assert endpoint_failed["checkpoint"]["lastFailure"]["reason"] == (
        f"AgentEndpoint remote not found in namespace {ns}"
    )
    assert secret_failed["phase"] == "Failed"
    assert secret_failed["checkpoint"]["lastFailure"]["reason"] == (
        f"Secret remote-token of AgentEndpoint borrower not found in namespace {ns}"
    )
    # Neither run sent the agent anything: no request at all since the records were cleared.
    assert server.requests == []


# ------------------------------------------------------------------------- Secrets


def _operator_rbac(cluster: Cluster, *, account: str, secret: str) -> str:
    """A ServiceAccount for the operator allowed exactly what it needs, one Secret by name.

    The same rules as the Helm chart's, except that Secrets are limited to ``secret``.
    Returns the name of the cluster-scoped objects to delete afterwards.
    """
    ns = cluster.namespace
    cluster_wide = f"{ns}-{account}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": account},
        "rules": [
            {
                "apiGroups": ["automation.tandem.dev"],
                "resources": [
                    "automationruns",
                    "automations",
                    "agentquotaoverrides",
                    "agentendpoints",
                ],
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["automation.tandem.dev"],
                "resources": ["automationruns/status"],
                "verbs": ["patch"],
            },
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [secret],
                "verbs": ["get"],
            },
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["tandem-operator"],
                "verbs": ["get", "update"],
            },
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
    }
    # What kopf itself watches cluster-wide: CRDs, and namespaces to match its namespace list.
    discovery = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": cluster_wide},
        "rules": [
            {
                "apiGroups": ["apiextensions.k8s.io"],
                "resources": ["customresourcedefinitions"],
                "verbs": ["list", "watch"],
            },
            {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
        ],
    }
    discovery_binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": cluster_wide},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_wide,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
    }
    cluster.kubectl("create", "serviceaccount", account)
    cluster.apply(role, binding, discovery, discovery_binding)
    return cluster_wide


def _can_i(cluster: Cluster, account: str, *args: str) -> bool:
    result = cluster.kubectl(
        "auth",
        "can-i",
        *args,
        f"--as=system:serviceaccount:{cluster.namespace}:{account}",
        check=False,
    )
    return result.strip() == "yes"


def test_operator_reads_only_the_secret_its_endpoint_names(
    cluster: Cluster, agent: AgentServer, tmp_path: Path
) -> None:
    kube = cluster.kube
    account = "operator"
    secret = f"{AGENT_ENDPOINT}-token"
    cluster_wide = _operator_rbac(cluster, account=account, secret=secret)
    try:
        # Another endpoint with its own Secret: the run does not use it, so its Secret is
        # never read (the Role could not read it anyway, and the log would say so).
        cluster.apply(
            _secret("spare-token", "spare"), _endpoint("spare", agent.url, secret="spare-token")
        )
        # The Role is what the test claims it is.
        assert _can_i(cluster, account, "get", f"secrets/{secret}")
        assert not _can_i(cluster, account, "get", "secrets/spare-token")
        assert not _can_i(cluster, account, "list", "secrets")
        assert not _can_i(cluster, account, "watch", "secrets")

        token = cluster.kubectl("create", "token", account).strip()
        kubeconfig = kube.token_kubeconfig(token, tmp_path / "operator.kubeconfig")
        who = kube.kubectl_json("auth", "whoami", kubeconfig=kubeconfig)
        username = f"system:serviceaccount:{cluster.namespace}:{account}"
        assert who["status"]["userInfo"]["username"] == username
        # The webhook is registered by whoever installs the operator (the Helm chart does),
        # not by the operator with these rules.
        operator = OperatorProcess(
            kube=KubeSession(kubeconfig=kubeconfig, tools=kube.tools),
            namespace=cluster.namespace,
            log_path=tmp_path / "operator.log",
            env={"TANDEM_EXTRA_ARGS": "--webhook-registration=none"},
        ).start()
        try:
            cluster.apply(_agent_run("least-privilege", AGENT_ENDPOINT, "fetch"))
            status = cluster.wait_phase("least-privilege", "Completed", "Failed", timeout=90)
            log = operator.log()
        finally:
            operator.kill()
    finally:
        kube.kubectl("delete", "clusterrolebinding,clusterrole", cluster_wide, check=False)

    assert status["phase"] == "Completed", status.get("detail")
    # The agent answered only requests carrying the token from the referenced Secret.
    (request,) = agent.requests_for("fetch")
    assert request.headers["authorization"] == f"Bearer token-{cluster.namespace}"
    # Nothing the operator did was refused: it never listed, watched or read another Secret.
    for complaint in ("forbidden", "Forbidden", "Traceback"):
        assert complaint not in log, log[-4000:]
    # A 403 as a status, not as digits of a pid, a port or a random name suffix.
    assert not re.search(r"\b403\b", re.sub(r"identity=\S+", "", log)), log[-4000:]


# ---------------------------------------------------------------------- approvers


def _person(cluster: Cluster, name: str, tmp_path: Path) -> tuple[Path, str]:
    """A ServiceAccount ``name`` that may create and change runs; its kubeconfig and user."""
    cluster.kubectl("create", "serviceaccount", name)
    cluster.kubectl(
        "create",
        "rolebinding",
        f"{name}-approves",
        "--role=approver",
        f"--serviceaccount={cluster.namespace}:{name}",
    )
    token = cluster.kubectl("create", "token", name).strip()
    path = cluster.kube.token_kubeconfig(token, tmp_path / f"{name}.kubeconfig")
    return path, f"system:serviceaccount:{cluster.namespace}:{name}"


def _as(
    cluster: Cluster, kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
) -> Any:
    return cluster.kube.kubectl(
        "-n", cluster.namespace, *args, input=input, kubeconfig=kubeconfig, check=check
    )


def _append_decision(
    cluster: Cluster, kubeconfig: Path, name: str, decision: dict[str, Any]
) -> None:
    patch = [{"op": "add", "path": "/spec/gateDecisions/-", "value": decision}]
    _as(cluster, kubeconfig, "patch", "automationrun", name, "--type=json", "-p", json.dumps(patch))


def _two_gates(name: str) -> dict[str, Any]:
    return simulated_run(
        name,
        [
            sim("draft"),
            {"id": "review-1", "kind": "Approval", "dependsOn": ["draft"], "approval": {}},
            sim("revise", dependsOn=["review-1"]),
            {"id": "review-2", "kind": "Approval", "dependsOn": ["revise"], "approval": {}},
            sim("publish", dependsOn=["review-2"]),
        ],
    )


def test_approvers_are_the_users_who_wrote_the_decisions(
    cluster: Cluster, webhook_operator: OperatorProcess, tmp_path: Path
) -> None:
    cluster.kubectl(
        "create",
        "role",
        "approver",
        "--verb=get,list,create,patch,update",
        "--resource=automationruns.automation.tandem.dev",
    )
    alice, alice_user = _person(cluster, "alice", tmp_path)
    bob, bob_user = _person(cluster, "bob", tmp_path)

    # Created by alice with a decision that claims to be mallory's. It names the first
    # gate before that gate awaits, so it is also rejected (B11) and never applied.
    run = _two_gates("signed")
    run["spec"]["gateDecisions"] = [
        {"gate": "review-1", "decision": "approve", "requestId": "early", "decidedBy": "mallory"}
    ]
    wait_for(
        lambda: (
            _as(
                cluster, alice, "apply", "-f", "-", input=yaml.safe_dump(run), check=False
            ).returncode
            == 0
        ),
        timeout=30,
        what="the webhook to admit the run",
    )
    stored = cluster.run("signed")["spec"]["gateDecisions"]
    assert [d["decidedBy"] for d in stored] == [alice_user]

    cluster.wait_phase("signed", "AwaitingApproval", timeout=60)
    assert cluster.status("signed")["checkpoint"]["awaitingGate"]["nodeId"] == "review-1"
    # Alice approves the first gate, claiming to be bob.
    _append_decision(
        cluster,
        alice,
        "signed",
        {"gate": "review-1", "decision": "approve", "requestId": "a1", "decidedBy": bob_user},
    )
    wait_for(
        lambda: (
            (cluster.status("signed").get("checkpoint") or {}).get("awaitingGate", {}).get("nodeId")
            == "review-2"
        ),
        timeout=60,
        what="the second gate",
    )
    # Bob approves the second gate, claiming to be alice.
    _append_decision(
        cluster,
        bob,
        "signed",
        {"gate": "review-2", "decision": "approve", "requestId": "b1", "decidedBy": alice_user},
    )
    status = cluster.wait_phase("signed", "Completed", "Failed", "Cancelled", timeout=60)
    assert status["phase"] == "Completed", status.get("detail")

    history = status["checkpoint"]["gateHistory"]
    assert [(e["nodeId"], e["decision"], e["decidedBy"]) for e in history] == [
        ("review-1", "approve", alice_user),
        ("review-2", "approve", bob_user),
    ]
    assert "mallory" not in json.dumps(status)
    stored = cluster.run("signed")["spec"]["gateDecisions"]
    assert [(d["requestId"], d["decidedBy"]) for d in stored] == [
        ("early", alice_user),
        ("a1", alice_user),
        ("b1", bob_user),
    ]
    assert "GateDecisionRejected" in {e["reason"] for e in cluster.events("signed")}

    # A recorded decision cannot be re-attributed, by its author or anyone else.
    rewrite = [{"op": "replace", "path": "/spec/gateDecisions/1/decidedBy", "value": bob_user}]
    refused = _as(
        cluster,
        bob,
        "patch",
        "automationrun",
        "signed",
        "--type=json",
        "-p",
        json.dumps(rewrite),
        check=False,
    )
    assert refused.returncode != 0
    assert "gateDecisions is append-only" in refused.stderr
    assert [d["decidedBy"] for d in cluster.run("signed")["spec"]["gateDecisions"]] == [
        alice_user,
        alice_user,
        bob_user,
    ]
