"""The local control plane really is a usable, secured Kubernetes API.

These run against the session ``kube`` fixture (or ``TANDEM_TEST_KUBECONFIG``); the tests
that restart or orphan processes need a ``ControlPlane`` of their own making and skip
otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tandem_operator.cli.cluster import cluster_down, cluster_up
from tandem_operator.devcluster.controlplane import (
    NODE_COMPONENTS,
    ControlPlane,
    ControlPlaneState,
    pid_alive,
    render_kubeconfig,
)
from tandem_operator.devcluster.pki import issue_client_cert
from tandem_operator.devcluster.session import KubeSession
from tandem_operator.devcluster.tools import ensure_binaries, pinned_versions


def _needs_control_plane(kube: KubeSession) -> ControlPlane:
    if kube.control_plane is None:
        pytest.skip("needs a control plane started by the tests, not TANDEM_TEST_KUBECONFIG")
    return kube.control_plane


def _eventually(check: Callable[[], bool], *, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


# ------------------------------------------------------------------------------ basics


def test_readyz_is_ok(kube: KubeSession) -> None:
    assert kube.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    verbose = kube.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "[+]etcd ok" in verbose
    assert "[+]poststarthook/rbac/bootstrap-roles ok" in verbose
    if kube.control_plane is not None:
        assert kube.control_plane.is_ready()


def test_server_version_is_the_pinned_release(kube: KubeSession) -> None:
    _needs_control_plane(kube)
    expected = f"v{pinned_versions()['KUBERNETES_VERSION']}"
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected


def test_admin_kubeconfig_is_cluster_admin_over_verified_tls(kube: KubeSession) -> None:
    can_i = kube.kubectl("auth", "can-i", "*", "*", "--all-namespaces")
    assert can_i.stdout.strip() == "yes"
    config = yaml.safe_load(kube.kubeconfig.read_text())
    for cluster in config["clusters"]:
        assert not cluster["cluster"].get("insecure-skip-tls-verify", False)
    if kube.control_plane is not None:
        assert config["current-context"] == "tandem-local"
        whoami = kube.kubectl_json("auth", "whoami")
        assert "system:masters" in whoami["status"]["userInfo"]["groups"]


def test_tls_is_verified_against_the_pinned_ca(kube: KubeSession, tmp_path: Path) -> None:
    """The same request with a CA that did not sign the serving cert must fail."""
    config = kube.kubectl_json("config", "view", "--raw", "--minify", "--flatten")
    server = config["clusters"][0]["cluster"]["server"]
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "impostor-ca")])
    impostor = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    bad = tmp_path / "impostor.kubeconfig"
    bad.write_text(
        render_kubeconfig(
            server=server,
            ca_pem=impostor.public_bytes(serialization.Encoding.PEM),
            token="irrelevant",
        )
    )
    proc = kube.kubectl("get", "--raw", "/readyz", kubeconfig=bad, check=False)
    assert proc.returncode != 0
    assert "certificate signed by unknown authority" in proc.stderr


# ------------------------------------------------------------------------------ identities


def test_token_request_token_is_accepted_and_limited_by_rbac(
    kube: KubeSession, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    kube.kubectl("-n", ns, "create", "serviceaccount", "robot")
    token = kube.kubectl("-n", ns, "create", "token", "robot", "--duration=10m").stdout.strip()
    assert token.count(".") == 2, "expected a JWT"
    robot = kube.token_kubeconfig(token, tmp_path / "robot.kubeconfig")

    whoami = kube.kubectl_json("auth", "whoami", kubeconfig=robot)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:robot"

    denied = kube.kubectl("-n", ns, "get", "configmaps", kubeconfig=robot, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()

    kube.kubectl(
        "-n", ns, "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps"
    )
    kube.kubectl(
        "-n", ns, "create", "rolebinding", "robot-reads", "--role=cm-reader",
        f"--serviceaccount={ns}:robot",
    )  # fmt: skip
    assert _eventually(
        lambda: (
            kube.kubectl("-n", ns, "get", "configmaps", kubeconfig=robot, check=False).returncode
            == 0
        )
    ), "the RoleBinding never took effect"

    def can_i(*args: str) -> str:
        return kube.kubectl("auth", "can-i", *args, kubeconfig=robot, check=False).stdout.strip()

    assert can_i("-n", ns, "list", "configmaps") == "yes"
    assert can_i("-n", ns, "create", "configmaps") == "no"
    assert can_i("-n", ns, "get", "secrets") == "no"
    assert can_i("-n", "default", "list", "configmaps") == "no"

    header, payload, signature = token.split(".")
    flipped = "A" if signature[10] != "A" else "B"
    tampered = f"{header}.{payload}.{signature[:10]}{flipped}{signature[11:]}"
    forged = kube.token_kubeconfig(tampered, tmp_path / "forged.kubeconfig")
    rejected = kube.kubectl("-n", ns, "get", "configmaps", kubeconfig=forged, check=False)
    assert rejected.returncode != 0
    assert "unauthorized" in rejected.stderr.lower()


def test_client_certificates_for_other_users(kube: KubeSession, tmp_path: Path) -> None:
    plane = _needs_control_plane(kube)
    creds = issue_client_cert(plane.pki, user="alice", groups=["tandem-devs"])
    alice = tmp_path / "alice.kubeconfig"
    alice.write_text(
        render_kubeconfig(
            server=plane.server,
            ca_pem=plane.pki.serving_ca_cert.read_bytes(),
            credentials=creds,
            user_name="alice",
        )
    )
    user = kube.kubectl_json("auth", "whoami", kubeconfig=alice)["status"]["userInfo"]
    assert user["username"] == "alice"
    assert "tandem-devs" in user["groups"]
    assert (
        kube.kubectl("auth", "can-i", "list", "pods", kubeconfig=alice, check=False).stdout.strip()
        == "no"
    )


def test_pods_need_no_service_account_in_the_namespace(kube: KubeSession, namespace: str) -> None:
    """The container executor creates Pods in namespaces that may lack a ``default``
    ServiceAccount (no controller-manager, or before it made one). The ServiceAccount
    admission plugin is off, so such a Pod is accepted as it is: no account, no token."""
    plane = _needs_control_plane(kube)
    if plane.nodes_running():
        pytest.skip("the controller-manager is running and creates default ServiceAccounts")
    missing = kube.kubectl("-n", namespace, "get", "serviceaccount", "default", check=False)
    assert missing.returncode != 0
    assert "notfound" in missing.stderr.lower().replace(" ", "")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "attempt"},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "registry.example.com/agent:1"}],
        },
    }
    created = kube.kubectl_json("-n", namespace, "create", "-f", "-", input=json.dumps(pod))
    assert created["spec"].get("serviceAccountName") in (None, "")
    assert not created["spec"].get("volumes")
    assert created["status"]["phase"] == "Pending"


# ------------------------------------------------------------------------------ restarts


def test_apiserver_restart_keeps_objects_ports_and_tokens(
    kube: KubeSession, namespace: str, tmp_path: Path
) -> None:
    plane = _needs_control_plane(kube)
    kube.kubectl("-n", namespace, "create", "configmap", "survivor", "--from-literal=k=v")
    kube.kubectl("-n", namespace, "create", "serviceaccount", "robot")
    token = kube.kubectl("-n", namespace, "create", "token", "robot").stdout.strip()
    robot = kube.token_kubeconfig(token, tmp_path / "robot.kubeconfig")
    ports, pid = plane.ports, plane.apiserver_pid

    plane.restart_apiserver()

    assert plane.apiserver_pid != pid
    assert pid is not None
    assert not pid_alive(pid)
    assert plane.ports == ports
    cm = kube.kubectl_json("-n", namespace, "get", "configmap", "survivor")
    assert cm["data"] == {"k": "v"}
    whoami = kube.kubectl_json("auth", "whoami", kubeconfig=robot)
    assert whoami["status"]["userInfo"]["username"].endswith(f":{namespace}:robot")
    state = ControlPlaneState.from_json(plane.state_file.read_text())
    assert state.apiserver is not None
    assert state.apiserver.pid == plane.apiserver_pid


@pytest.mark.parametrize("graceful", [True, False], ids=["sigterm", "sigkill"])
def test_etcd_restart_keeps_objects(kube: KubeSession, namespace: str, graceful: bool) -> None:
    plane = _needs_control_plane(kube)
    kube.kubectl("-n", namespace, "create", "configmap", "survivor", "--from-literal=k=v")
    pid = plane.etcd_pid

    plane.restart_etcd(downtime=1.0, graceful=graceful)

    assert plane.etcd_pid != pid
    cm = kube.kubectl_json("-n", namespace, "get", "configmap", "survivor")
    assert cm["data"] == {"k": "v"}
    kube.kubectl("-n", namespace, "create", "configmap", "after-restart")


def test_apiserver_down_is_visible_then_recovers(kube: KubeSession, namespace: str) -> None:
    plane = _needs_control_plane(kube)
    plane.stop_apiserver(graceful=False)
    try:
        assert not plane.is_ready()
        down = kube.kubectl("-n", namespace, "get", "configmaps", check=False, timeout=30)
        assert down.returncode != 0
        assert "refused" in down.stderr
    finally:
        plane.start_apiserver()
    assert plane.is_ready()


# ------------------------------------------------------------------------------ lifetimes

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tandem_operator.devcluster.controlplane import ControlPlane, Ports, find_free_ports
    from tandem_operator.devcluster.tools import ensure_binaries

    plane = ControlPlane(
        tools=ensure_binaries(),
        directory=Path(sys.argv[1]),
        ports=Ports(*find_free_ports(3)),
        detached=sys.argv[2] == "detached",
    )
    plane.start_etcd()
    print(plane.etcd_pid, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("mode", ["attached", "detached"])
def test_etcd_lifetime_follows_the_mode_when_the_parent_is_killed(
    tmp_path: Path, mode: str
) -> None:
    ensure_binaries()  # build outside the child's timeout if needed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    etcd_pid = None
    try:
        assert parent.stdout is not None
        etcd_pid = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        if mode == "attached":
            assert _eventually(lambda: not pid_alive(etcd_pid), timeout=15), "etcd outlived pytest"
        else:
            time.sleep(1.0)
            assert pid_alive(etcd_pid), "a detached etcd died with its parent"
    finally:
        parent.kill()
        if etcd_pid is not None and pid_alive(etcd_pid):
            os.kill(etcd_pid, signal.SIGKILL)


def test_cluster_up_is_idempotent_and_down_stops_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cluster"
    try:
        kubeconfig = cluster_up(directory)
        assert kubeconfig == directory / "kubeconfig"
        assert capsys.readouterr().out.strip() == str(kubeconfig)
        first = ControlPlaneState.from_json((directory / "state.json").read_text())
        assert first.etcd is not None
        assert first.apiserver is not None
        # Fake Nodes by default: their components are recorded too.
        assert set(first.nodes) == set(NODE_COMPONENTS)

        assert cluster_up(directory) == kubeconfig
        second = ControlPlaneState.from_json((directory / "state.json").read_text())
        assert (second.etcd, second.apiserver) == (first.etcd, first.apiserver)
        assert second.nodes == first.nodes
        tools = ensure_binaries()
        readyz = subprocess.run(
            [str(tools.kubectl), f"--kubeconfig={kubeconfig}", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert readyz.stdout.strip() == "ok"

        # Half a pair is repaired in place: same ports, so the kubeconfig keeps working.
        killed = first.apiserver
        os.kill(killed.pid, signal.SIGKILL)
        assert _eventually(lambda: not pid_alive(killed.pid, killed.start_time))
        assert cluster_up(directory) == kubeconfig
        third = ControlPlaneState.from_json((directory / "state.json").read_text())
        assert third.apiserver is not None
        assert third.apiserver.pid != first.apiserver.pid
        assert third.ports == first.ports
        # The repair restarts everything, node components included.
        assert set(third.nodes) == set(NODE_COMPONENTS)
        for record in first.nodes.values():
            assert not pid_alive(record.pid, record.start_time)
    finally:
        cluster_down(directory)
    stopped = ControlPlaneState.from_json((directory / "state.json").read_text())
    assert (stopped.etcd, stopped.apiserver, stopped.nodes) == (None, None, {})
    for record in (first.etcd, first.apiserver, third.apiserver, *third.nodes.values()):
        assert not pid_alive(record.pid, record.start_time)
    cluster_down(directory)  # nothing left to stop is fine
