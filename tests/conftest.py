"""Shared fixtures: a real kube-apiserver for the session and a fresh namespace per test.

``kube`` starts etcd + kube-apiserver from the binaries ``hack/build-tools.sh`` builds (the
first run builds them, which takes minutes) in a pytest temp directory, so the logs of the
last runs stay under ``pytest-of-$USER`` for post-mortems. Set ``TANDEM_TEST_KUBECONFIG`` to
run against an existing cluster instead; ``kube.control_plane`` is then None.

Every test under ``tests/integration/`` is marked ``integration`` automatically, so
``pytest -m "not integration"`` runs without building anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.session import KubeSession, unique_namespace_name
from tandem_operator.devcluster.tools import ensure_binaries

_INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.resolve().is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kube(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[KubeSession]:
    # The first run builds the binaries for minutes; show its progress instead of capturing it.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            tools = ensure_binaries()
    else:
        tools = ensure_binaries()
    external = os.environ.get("TANDEM_TEST_KUBECONFIG")
    if external:
        yield KubeSession(kubeconfig=Path(external).expanduser().resolve(), tools=tools)
        return
    plane = ControlPlane(tools=tools, directory=tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        yield KubeSession(kubeconfig=plane.kubeconfig, tools=tools, control_plane=plane)
    finally:
        plane.stop()


@pytest.fixture
def namespace(kube: KubeSession, request: pytest.FixtureRequest) -> Iterator[str]:
    name = unique_namespace_name(request.node.name)
    kube.kubectl("create", "namespace", name)
    yield name
    # Without a controller-manager the namespace stays Terminating forever; do not wait.
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
