"""The Helm chart against the real API server: its RBAC is enough for the operator, and no more.

The local control plane has RBAC on but no controller-manager or kubelet, so the chart's
Deployment never gets a pod. The test does what the pod would do instead: it asks the API
server for a token of the chart's ServiceAccount (TokenRequest, as the kubelet does), and
runs the operator on this machine with exactly the container command line and environment
of the installed Deployment, authenticated only by that token. A run with an approval gate
then has to go all the way to Completed, which needs every rule the operator uses; after
that the same token is refused what the operator must never do.

Runs are approved by a second ServiceAccount bound to the chart's ``-edit`` and ``-view``
ClusterRoles, the access the built-in ``edit`` role aggregates (aggregation itself is done
by the controller-manager, which is not running here).

The chart's admission webhook is called the way the API server calls it in a cluster:
through the chart's Service, with the chart's certificate. Without a kubelet or an
endpoints controller the test writes the Service's endpoints itself, pointing at this
machine's address and the port the operator listens on (the local control plane resolves
webhook Services to their endpoints, ``--enable-aggregator-routing``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, sim, simulated_run, wait_for

from tandem_operator.devcluster.session import KubeSession

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tandem-operator"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def helm(kube: KubeSession, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(kube.tools.helm), f"--kubeconfig={kube.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def token_kubeconfig(kube: KubeSession, *, account: str, namespace: str, path: Path) -> Path:
    token = kube.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    return kube.token_kubeconfig(token, path)


def can_i(kube: KubeSession, kubeconfig: Path, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, kubeconfig=kubeconfig, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def refused(kube: KubeSession, kubeconfig: Path, *args: str) -> str:
    """Run a real request with ``kubeconfig``; it must fail as Forbidden. Returns stderr."""
    proc = kube.kubectl(*args, kubeconfig=kubeconfig, check=False)
    assert proc.returncode != 0, f"kubectl {' '.join(args)} was allowed: {proc.stdout}"
    assert "forbidden" in proc.stderr.lower(), proc.stderr
    return proc.stderr


class DeployedOperator:
    """The operator process started with the installed Deployment's command line and env."""

    def __init__(
        self,
        *,
        deployment: dict[str, Any],
        kubeconfig: Path,
        log_path: Path,
        webhook_dir: Path | None = None,
    ) -> None:
        pod = deployment["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        assert main["command"] == ["tandem-operator"]
        namespace = deployment["metadata"]["namespace"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
        env.pop("KUBECONFIG", None)
        for var in main["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                # The API server defaults fieldRef.apiVersion to v1.
                assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
                env[var["name"]] = namespace
        env["PYTHONPATH"] = str(REPO / "operator")
        env["PYTHONUNBUFFERED"] = "1"
        self.args = list(main["args"])
        self.webhook_port = 0
        if webhook_dir is not None:
            self.webhook_port = free_port()
            self.args = [
                f"--webhook-port={self.webhook_port}"
                if a.startswith("--webhook-port=")
                else f"--webhook-cert-dir={webhook_dir}"
                if a.startswith("--webhook-cert-dir=")
                else a
                for a in self.args
            ]
        self.env = env
        self.log_path = log_path
        argv = [sys.executable, "-m", "tandem_operator.cli.main", *self.args]
        argv += ["--kubeconfig", str(kubeconfig)]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def release(crds: KubeSession, namespace: str) -> Iterator[str]:
    """A release name unique to the test; uninstalled (cluster-scoped roles too) at the end."""
    name = f"op-{namespace.rsplit('-', 1)[-1]}"
    yield name
    subprocess.run(
        [
            str(crds.tools.helm),
            f"--kubeconfig={crds.kubeconfig}",
            "uninstall",
            name,
            "-n",
            namespace,
            "--wait=false",
        ],
        capture_output=True,
        check=False,
        timeout=60,
    )


def gated_run(name: str) -> dict[str, Any]:
    approval = {"title": "Check the draft", "decisions": ["approve", "rework", "cancel"]}
    return simulated_run(
        name,
        [
            sim("draft"),
            {"id": "review", "kind": "Approval", "dependsOn": ["draft"], "approval": approval},
            sim("publish", dependsOn=["review"]),
        ],
    )


def test_chart_rbac_runs_the_operator_and_refuses_the_rest(
    crds: KubeSession, namespace: str, release: str, tmp_path: Path
) -> None:
    kube = crds
    cluster = Cluster(kube, namespace)
    health_port, metrics_port = free_port(), free_port()
    fast = {
        "leaseSeconds": "4",
        "shutdownGraceSeconds": "3",
        "settings.lifecycleTimerIntervalSeconds": "1",
    }
    install = helm(
        kube,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",  # the crds fixture installed them as the admin
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"healthPort={health_port}",
        "--set",
        f"metrics.port={metrics_port}",
        *[arg for key, value in fast.items() for arg in ("--set", f"{key}={value}")],
    )
    fullname = f"{release}-tandem-operator"
    # NOTES.txt names the Deployment to watch; it is the one installed.
    assert f"rollout status deployment/{fullname}" in install.stdout
    deployment = kube.kubectl_json("get", "deployment", fullname, "-n", namespace)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == fullname

    operator_kc = token_kubeconfig(
        kube, account=fullname, namespace=namespace, path=tmp_path / "operator.kubeconfig"
    )
    who = kube.kubectl_json("auth", "whoami", kubeconfig=operator_kc)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{fullname}"
    # What the kubelet would mount: the chart's webhook certificate.
    webhook_dir = mount_secret(kube, f"{fullname}-webhook-tls", namespace, tmp_path / "tls")
    operator = DeployedOperator(
        deployment=deployment,
        kubeconfig=operator_kc,
        log_path=tmp_path / "operator.log",
        webhook_dir=webhook_dir,
    )
    admission = f"{fullname}.{namespace}.automation.tandem.dev"
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        config = kube.kubectl_json("get", kind, admission)
        for hook in config["webhooks"]:
            assert hook["clientConfig"]["service"]["name"] == f"{fullname}-webhook"
            (expr,) = hook["namespaceSelector"]["matchExpressions"]
            assert expr["values"] == [namespace]
    point_service_here(kube, f"{fullname}-webhook", namespace, port=operator.webhook_port)
    try:
        assert f"--liveness=http://0.0.0.0:{health_port}/healthz" in operator.args
        assert operator.env["TANDEM_CLAIM_LEASE_SECONDS"] == "4"
        editor_kc = editor(kube, namespace=namespace, fullname=fullname, tmp_path=tmp_path)
        cluster.apply(gated_run("gated"))
        status = cluster.wait_phase("gated", "AwaitingApproval", timeout=60)
        assert status["checkpoint"]["awaitingGate"]["nodeId"] == "review"

        # The probes' endpoint answers, and the metrics Service's target port serves metrics.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{health_port}/healthz", timeout=10
        ) as response:
            assert response.status == 200
        service = kube.kubectl_json("get", "service", f"{fullname}-metrics", "-n", namespace)
        (port,) = service["spec"]["ports"]
        assert port["port"] == metrics_port
        assert port["targetPort"] == "metrics"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert b"# TYPE" in r.read()

        # The webhook answers through the Service: a cyclic flow is refused at apply.
        cyclic = simulated_run("cyclic", [sim("a", dependsOn=["a"])])

        def refused_cycle() -> bool:
            result = cluster.apply_result(cyclic)
            assert result.returncode != 0, "a cyclic flow was stored"
            return "dependsOn forms a cycle" in result.stderr

        wait_for(refused_cycle, timeout=60, what="the chart's webhook to answer")

        # A person with the edit role records the decision; the name typed is not kept.
        decision = {"gate": "review", "decision": "approve", "requestId": "r1", "decidedBy": "x"}
        kube.kubectl(
            "-n",
            namespace,
            "patch",
            "automationrun",
            "gated",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"gateDecisions": [decision]}}),
            kubeconfig=editor_kc,
        )
        status = cluster.wait_phase("gated", "Completed", "Failed", timeout=60)
        assert status["phase"] == "Completed", status.get("detail")
        editor_name = f"system:serviceaccount:{namespace}:editor"
        assert status["checkpoint"]["gateHistory"][0]["decidedBy"] == editor_name
        events = [r["event"] for r in status["checkpoint"]["lifecycleHistory"]]
        assert "run_awaiting_approval" in events
        assert events[-1] == "run_completed"
        # The Events were posted with the operator's token.
        reasons = wait_for(
            lambda: (
                (found := {e["reason"] for e in cluster.events("gated")}) >= {"RunCompleted"}
                and found
            ),
            timeout=30,
            what="the operator's Events",
        )
        assert "RunAwaitingApproval" in reasons
        lease = kube.kubectl_json("get", "lease", fullname, "-n", namespace)
        assert lease["spec"]["holderIdentity"]

        # The container executor with the same token: the attempt's Pod is created and
        # watched, and deleted when the run is cancelled.
        boxed = {
            "id": "x",
            "agentId": "agent",
            "executor": {
                "container": {
                    "image": "registry.example.com/agents/test:1",
                    "podAnnotations": {"tandem.test/phase": "Running"},
                }
            },
        }
        cluster.apply(simulated_run("boxed", [boxed]))
        wait_for(
            lambda: cluster.kubectl("get", "pods", "-o", "name").strip() == "pod/boxed-x-1",
            timeout=60,
            what="the attempt's Pod",
        )
        cluster.patch_spec("boxed", {"desiredState": "Cancelled"})
        cluster.wait_phase("boxed", "Cancelled", timeout=60)
        wait_for(
            lambda: not cluster.kubectl("get", "pods", "-o", "name").strip(),
            timeout=60,
            what="the Pod deleted",
        )
    finally:
        code = operator.stop()
    log = operator.log()
    assert code == 0, log[-3000:]
    for complaint in ("forbidden", "Forbidden", "Not enough permissions", "Failed to post"):
        assert complaint not in log, log[-3000:]
    # A graceful stop gives the Lease up (an update the Role allows).
    lease = kube.kubectl_json("get", "lease", fullname, "-n", namespace)
    assert not lease["spec"].get("holderIdentity")
    # No operator answers: decisions fail closed, other writes pass.
    late = {"gate": "review", "decision": "cancel", "requestId": "late"}
    closed = kube.kubectl(
        "-n",
        namespace,
        "patch",
        "automationrun",
        "gated",
        "--type=json",
        "-p",
        json.dumps([{"op": "add", "path": "/spec/gateDecisions/-", "value": late}]),
        kubeconfig=editor_kc,
        check=False,
    )
    assert closed.returncode != 0
    assert "failed calling webhook" in closed.stderr, closed.stderr
    cluster.kubectl("label", "automationrun", "gated", "checked=yes")

    # What the operator's token must never do.
    group = "automationruns.automation.tandem.dev"
    assert can_i(kube, operator_kc, "patch", group, "--subresource=status", "-n", namespace)
    assert not can_i(kube, operator_kc, "list", "secrets", "--all-namespaces")
    refused(kube, operator_kc, "get", "secrets", "--all-namespaces")
    refused(kube, operator_kc, "get", "secret", "anything", "-n", "default")
    assert not can_i(kube, operator_kc, "update", group, "-n", namespace)
    # Schedules create, cancel (spec.desiredState) and delete runs, one by one.
    for verb in ("create", "patch", "delete"):
        assert can_i(kube, operator_kc, verb, group, "-n", namespace), verb
    assert not can_i(kube, operator_kc, "deletecollection", group, "-n", namespace)
    assert not can_i(kube, operator_kc, "update", "automations.automation.tandem.dev")
    assert not can_i(kube, operator_kc, "patch", "automations.automation.tandem.dev")
    assert not can_i(kube, operator_kc, "delete", "namespaces")
    refused(kube, operator_kc, "delete", "namespace", namespace, "--wait=false")
    assert not can_i(kube, operator_kc, "list", group, "-n", "default")
    assert not can_i(kube, operator_kc, "create", "leases", "-n", "default")
    assert can_i(kube, operator_kc, "create", "pods", "-n", namespace)
    assert not can_i(kube, operator_kc, "create", "pods", "-n", "default")
    assert not can_i(kube, operator_kc, "update", "pods", "-n", namespace)
    assert not can_i(kube, operator_kc, "create", "pods", "--subresource=exec", "-n", namespace)
    assert not can_i(kube, operator_kc, "get", "pods", "--subresource=log", "-n", namespace)

    # The editor drives runs but neither writes status nor approves budgets.
    assert not can_i(kube, editor_kc, "patch", group, "--subresource=status", "-n", namespace)
    overrides = "agentquotaoverrides.automation.tandem.dev"
    assert not can_i(kube, editor_kc, "create", overrides, "-n", namespace)
    # ... and reads container attempts' logs (kubectl automationrun logs).
    assert can_i(kube, editor_kc, "get", "pods", "--subresource=log", "-n", namespace)

    # Uninstalling keeps the API and the runs; with no finalizer a run is still deletable.
    helm(kube, "uninstall", release, "--namespace", namespace)
    assert cluster.phase("gated") == "Completed"
    assert not cluster.run("gated")["metadata"].get("finalizers")
    cluster.kubectl("delete", "automationrun", "gated", "--timeout=30s")


def mount_secret(kube: KubeSession, name: str, namespace: str, directory: Path) -> Path:
    """The Secret's keys as files in ``directory``, as a Secret volume shows them."""
    secret = kube.kubectl_json("get", "secret", name, "-n", namespace)
    directory.mkdir(parents=True)
    for key, value in secret["data"].items():
        (directory / key).write_bytes(base64.b64decode(value))
    return directory


def host_address() -> str:
    """This machine's non-loopback address (Endpoints may not name a loopback one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
            address: str = sock.getsockname()[0]
        except OSError:
            pytest.skip("no non-loopback IPv4 address for the webhook Service's endpoints")
    if address.startswith("127."):
        pytest.skip("no non-loopback IPv4 address for the webhook Service's endpoints")
    return address


def point_service_here(kube: KubeSession, service: str, namespace: str, *, port: int) -> None:
    """Endpoints (and the EndpointSlice) of ``service``: this machine at ``port``."""
    address = host_address()
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": service, "namespace": namespace},
        "subsets": [{"addresses": [{"ip": address}], "ports": [{"name": "webhook", "port": port}]}],
    }
    endpoint_slice = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-here",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}],
    }
    docs = [json.dumps(endpoints), json.dumps(endpoint_slice)]
    kube.kubectl("apply", "-f", "-", input="\n---\n".join(docs))


def test_chart_rbac_runs_schedules_and_deletes_finished_runs(
    crds: KubeSession, namespace: str, release: str, tmp_path: Path
) -> None:
    """A schedule creates runs, Replace cancels one and the TTL deletes it, under the token.

    ``finishedRunTtlSeconds`` comes from the chart's values, so the setting's way into the
    Deployment is proven too. Nothing else deletes runs here: the control plane has no
    garbage collector.
    """
    kube = crds
    cluster = Cluster(kube, namespace)
    metrics_port = free_port()
    fast = {
        "leaseSeconds": "4",
        "shutdownGraceSeconds": "3",
        "settings.lifecycleTimerIntervalSeconds": "1",
        "settings.finishedRunTtlSeconds": "2",
    }
    helm(
        kube,
        "install",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        f"healthPort={free_port()}",
        "--set",
        f"metrics.port={metrics_port}",
        *[arg for key, value in fast.items() for arg in ("--set", f"{key}={value}")],
    )
    fullname = f"{release}-tandem-operator"
    deployment = kube.kubectl_json("get", "deployment", fullname, "-n", namespace)
    operator_kc = token_kubeconfig(
        kube, account=fullname, namespace=namespace, path=tmp_path / "operator.kubeconfig"
    )
    operator = DeployedOperator(
        deployment=deployment, kubeconfig=operator_kc, log_path=tmp_path / "operator.log"
    )
    label = "automation.tandem.dev/automation=every5"
    try:
        assert operator.env["TANDEM_FINISHED_RUN_TTL_SECONDS"] == "2"
        wait_for(
            lambda: "leader=True" in operator.log(),
            timeout=180,
            what="the operator to lead",
            describe=lambda: operator.log()[-500:],
        )
        node = sim("slow", after=60)
        cluster.apply(
            {
                "apiVersion": "automation.tandem.dev/v1alpha1",
                "kind": "Automation",
                "metadata": {"name": "every5"},
                "spec": {
                    "agents": [{"agentId": "agent"}],
                    "nodes": [node],
                    "schedule": {"cron": "@every 5s", "concurrencyPolicy": "Replace"},
                },
            }
        )

        def names() -> list[str]:
            out = cluster.kubectl("get", "automationruns", "-l", label, "-o", "json")
            return sorted(r["metadata"]["name"] for r in json.loads(out)["items"])

        # Two due times: the first run is created, then cancelled by the second (a spec
        # patch), then deleted 2 s after it finished.
        first = wait_for(lambda: names(), timeout=60, what="a scheduled run")[0]
        wait_for(lambda: len(names()) >= 2, timeout=60, what="a second scheduled run")
        cancelled = cluster.wait_phase(first, "Cancelled", timeout=60)
        wait_for(lambda: first not in names(), timeout=30, what=f"{first} to be deleted by its TTL")
        assert cancelled["finishedAt"]
        status = kube.kubectl_json("get", "automation", "every5", "-n", namespace)["status"]
        assert status["lastRunName"] in names()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("tandem_automation_")
        }
        assert samples['tandem_automation_runs_deleted_total{reason="ttl"}'] >= 1
        assert samples["tandem_automation_scheduled_runs_total"] >= 2
    finally:
        code = operator.stop()
    log = operator.log()
    assert code == 0, log[-3000:]
    for complaint in ("forbidden", "Forbidden", "Not enough permissions", "Failed to post"):
        assert complaint not in log, log[-3000:]


def editor(kube: KubeSession, *, namespace: str, fullname: str, tmp_path: Path) -> Path:
    """A kubeconfig of a person bound to the chart's -edit and -view roles in ``namespace``."""
    kube.kubectl("create", "serviceaccount", "editor", "-n", namespace)
    for role in ("edit", "view"):
        kube.kubectl(
            "create",
            "rolebinding",
            f"editor-{role}",
            "-n",
            namespace,
            f"--clusterrole={fullname}-{role}",
            f"--serviceaccount={namespace}:editor",
        )
    return token_kubeconfig(
        kube, account="editor", namespace=namespace, path=tmp_path / "editor.kubeconfig"
    )


def test_cluster_mode_rbac_serves_every_namespace(
    crds: KubeSession, namespace: str, release: str, tmp_path: Path
) -> None:
    kube = crds
    helm(kube, "install", release, str(CHART), "--namespace", namespace, "--skip-crds")
    fullname = f"{release}-tandem-operator"
    deployment = kube.kubectl_json("get", "deployment", fullname, "-n", namespace)
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    token = token_kubeconfig(
        kube, account=fullname, namespace=namespace, path=tmp_path / "operator.kubeconfig"
    )
    group = "automation.tandem.dev"
    elsewhere = "default"
    for kind in ("automationruns", "automations", "agentquotaoverrides", "agentendpoints"):
        for verb in ("get", "list", "watch"):
            assert can_i(kube, token, verb, f"{kind}.{group}", "-n", elsewhere), (verb, kind)
    assert can_i(kube, token, "patch", f"automationruns.{group}", "--subresource=status", "-A")
    assert can_i(kube, token, "get", "secrets", "-n", elsewhere)
    assert can_i(kube, token, "create", "events", "-n", elsewhere)
    assert can_i(kube, token, "watch", "customresourcedefinitions.apiextensions.k8s.io")
    assert can_i(kube, token, "update", f"leases/{fullname}", "-n", namespace)
    # A real cluster-wide list, as kopf's watch starts.
    kube.kubectl("get", f"automationruns.{group}", "--all-namespaces", kubeconfig=token)

    assert not can_i(kube, token, "list", "secrets", "--all-namespaces")
    refused(kube, token, "get", "secrets", "--all-namespaces")
    assert not can_i(kube, token, "update", f"automationruns.{group}", "-n", elsewhere)
    assert not can_i(kube, token, "delete", "namespaces")
    assert not can_i(kube, token, "list", "namespaces")  # only namespaced mode needs it
    assert not can_i(kube, token, "create", "leases", "-n", elsewhere)
    assert not can_i(kube, token, "update", "leases/other", "-n", namespace)
