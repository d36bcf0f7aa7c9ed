"""Fixtures for tests that run the operator process against the real control plane.

Each test gets its own namespace, and its operators watch only that namespace and hold
their leader Lease there, so tests never see each other's runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import Cluster, OperatorProcess, admission_registered, wait_for

from agentserver import AgentServer
from tandem_operator.cli.main import install_crds
from tandem_operator.devcluster.session import KubeSession
from tandem_operator.devcluster.tools import ensure_node_binaries
from tandem_operator.handlers.webhook import install_name


@pytest.fixture(scope="session")
def crds(kube: KubeSession) -> KubeSession:
    install_crds(kube.kubeconfig)
    return kube


@pytest.fixture(scope="module")
def kwok_nodes(kube: KubeSession, pytestconfig: pytest.Config) -> Iterator[KubeSession]:
    """The session's control plane with fake Nodes that run Pods, for one test module.

    Starts kube-controller-manager, kube-scheduler and kwok next to the session's apiserver
    (``ControlPlane.start_nodes``) and stops them after the module, so the modules that do
    not ask for Pods keep the bare apiserver they were written for (no garbage collection,
    no namespace deletion). A Pod's fate is scripted with its ``tandem.test/*``
    annotations (``tandem_operator.devcluster.nodes``). The first use builds the three
    binaries, which takes minutes.
    """
    plane = kube.control_plane
    if plane is None:
        pytest.skip("fake Nodes need the local control plane, not TANDEM_TEST_KUBECONFIG")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            tools = ensure_node_binaries()
    else:
        tools = ensure_node_binaries()
    plane.start_nodes(tools)
    try:
        yield kube
    finally:
        plane.stop_nodes()


@pytest.fixture
def cluster(crds: KubeSession, namespace: str) -> Iterator[Cluster]:
    yield Cluster(crds, namespace)
    # Operators register their admission webhook by URL and leave it registered when they
    # stop (decisions fail closed); the test's namespace goes, so do its configurations.
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        crds.kubectl("delete", kind, install_name(namespace), "--ignore-not-found", check=False)


@pytest.fixture
def operators(
    crds: KubeSession, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator processes for this test's namespace; all are stopped at the end."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        index = len(started)
        proc = OperatorProcess(
            kube=crds,
            namespace=namespace,
            log_path=tmp_path / f"operator-{index}.log",
            env=env,
        ).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


AGENT_ENDPOINT = "engine"
"""Name of the AgentEndpoint the ``agent`` fixture creates in the test namespace."""


@pytest.fixture
def agent(cluster: Cluster) -> Iterator[AgentServer]:
    """A real NDJSON agent server on 127.0.0.1, reachable as AgentEndpoint ``engine``.

    The server runs in the test process; the operator process reaches it through the
    AgentEndpoint, whose bearer token comes from Secret ``engine-token`` (key ``token``)
    in the test namespace. The server refuses requests without that token (401), so a
    run that completes on it proves the operator read the Secret.
    """
    token = f"token-{cluster.namespace}"
    server = AgentServer(token=token).start()
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{AGENT_ENDPOINT}-token"},
            "stringData": {"token": token},
        },
        {
            "apiVersion": "automation.tandem.dev/v1alpha1",
            "kind": "AgentEndpoint",
            "metadata": {"name": AGENT_ENDPOINT},
            "spec": {
                "url": server.url,
                "authSecretRef": {"name": f"{AGENT_ENDPOINT}-token", "key": "token"},
            },
        },
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def webhook_operator(
    cluster: Cluster, operators: Callable[..., OperatorProcess]
) -> Iterator[OperatorProcess]:
    """An operator started by its default command, once its webhook is registered."""
    proc = operators()
    wait_for(
        lambda: admission_registered(cluster.kube, cluster.namespace),
        timeout=60,
        what="the admission webhook to be registered",
        describe=proc.log,
    )
    yield proc
    proc.stop()
