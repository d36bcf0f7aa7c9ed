"""``KubeApi`` against the real API server: status merge patches, reads, errors, credentials.

The operator's status writes and point reads go over HTTP on the event loop, with the TLS
settings and credentials of a ``kubernetes.client.Configuration``. These tests build that
configuration from the test cluster's kubeconfig (client certificate) or from a
ServiceAccount token (TokenRequest), and check what the reconciler relies on: the stored
object comes back, a stale ``resourceVersion`` is a ``Conflict``, a missing object is
``Gone``, other refusals carry the API server's status, and unreachable servers raise.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import kubernetes
import pytest
from support import Cluster, sim, simulated_run, wait_for

from tandem_operator.devcluster.session import KubeSession, unique_namespace_name
from tandem_operator.runtime.kubeapi import ApiError, Conflict, Gone, KubeApi

T = TypeVar("T")

PLURAL = "automationruns"


def configuration(kubeconfig: Path) -> Any:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=config)
    return config


def with_api(config: Any, body: Callable[[KubeApi], Awaitable[T]], **options: Any) -> T:
    """Run ``body`` on a fresh event loop with a ``KubeApi`` that is closed afterwards."""

    async def main() -> T:
        api = KubeApi(configuration=config, **options)
        try:
            return await body(api)
        finally:
            await api.aclose()

    return asyncio.run(main())


async def refusals(
    api: KubeApi, namespace: str, name: str, expected: type[ApiError]
) -> list[ApiError]:
    """The errors of a get and of a status patch of ``name``, both expected to fail."""
    errors: list[ApiError] = []
    with pytest.raises(expected) as caught:
        await api.get(plural=PLURAL, namespace=namespace, name=name)
    errors.append(caught.value)
    with pytest.raises(expected) as caught:
        await api.patch_status(
            plural=PLURAL,
            namespace=namespace,
            name=name,
            resource_version="1",
            status_patch={"phase": "Running"},
        )
    errors.append(caught.value)
    return errors


def create_run(cluster: Cluster, name: str) -> dict[str, Any]:
    cluster.apply(simulated_run(name, [sim("a")]))
    return cluster.run(name)


@pytest.fixture
def other(crds: KubeSession) -> Iterator[Cluster]:
    """A second namespace."""
    name = unique_namespace_name("kubeapi-other")
    crds.kubectl("create", "namespace", name)
    yield Cluster(crds, name)
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def writer_kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """A token-only kubeconfig of ServiceAccount ``writer``, which may read runs and patch
    their status in the test namespace and nothing else."""
    account = "writer"
    cluster.kubectl("create", "serviceaccount", account)
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": account},
            "rules": [
                {
                    "apiGroups": ["automation.tandem.dev"],
                    "resources": ["automationruns"],
                    "verbs": ["get"],
                },
                {
                    "apiGroups": ["automation.tandem.dev"],
                    "resources": ["automationruns/status"],
                    "verbs": ["get", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [
                {"kind": "ServiceAccount", "name": account, "namespace": cluster.namespace}
            ],
        },
    )
    user = f"system:serviceaccount:{cluster.namespace}:{account}"
    wait_for(
        lambda: (
            cluster.kubectl(
                "auth", "can-i", "patch", "automationruns", "--subresource=status", f"--as={user}",
                check=False,
            ).strip()
            == "yes"
        ),
        timeout=30,
        what="the RoleBinding to take effect",
    )  # fmt: skip
    token = cluster.kubectl("create", "token", account, "--duration=10m").strip()
    return cluster.kube.token_kubeconfig(token, tmp_path / "writer.kubeconfig")


# ---------------------------------------------------------------------------- status patches


def test_status_merge_patch_returns_the_stored_object(cluster: Cluster) -> None:
    before = create_run(cluster, "patched")
    rv = before["metadata"]["resourceVersion"]

    async def body(api: KubeApi) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        first = await api.patch_status(
            plural=PLURAL,
            namespace=cluster.namespace,
            name="patched",
            resource_version=rv,
            status_patch={"phase": "Running", "detail": "started"},
        )
        # A merge patch: null removes a field, fields not named stay.
        second = await api.patch_status(
            plural=PLURAL,
            namespace=cluster.namespace,
            name="patched",
            resource_version=first["metadata"]["resourceVersion"],
            status_patch={"detail": None, "progress": "1/1"},
        )
        read = await api.get(plural=PLURAL, namespace=cluster.namespace, name="patched")
        return first, second, read

    first, second, read = with_api(configuration(cluster.kube.kubeconfig), body)

    assert first["metadata"]["uid"] == before["metadata"]["uid"]
    assert first["kind"] == "AutomationRun"
    assert first["status"]["phase"] == "Running"
    assert first["status"]["detail"] == "started"
    assert int(first["metadata"]["resourceVersion"]) > int(rv)
    assert first["spec"] == before["spec"]

    assert second["status"]["phase"] == "Running"
    assert "detail" not in second["status"]
    assert second["status"]["progress"] == "1/1"

    assert read["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]
    assert read["status"] == second["status"]
    stored = cluster.run("patched")
    assert stored["status"] == second["status"]
    assert stored["metadata"]["resourceVersion"] == second["metadata"]["resourceVersion"]


def test_stale_resource_version_is_a_conflict(cluster: Cluster) -> None:
    stale = create_run(cluster, "contended")["metadata"]["resourceVersion"]

    async def body(api: KubeApi) -> Conflict:
        await api.patch_status(
            plural=PLURAL,
            namespace=cluster.namespace,
            name="contended",
            resource_version=stale,
            status_patch={"phase": "Running", "detail": "first writer"},
        )
        with pytest.raises(Conflict) as caught:
            await api.patch_status(
                plural=PLURAL,
                namespace=cluster.namespace,
                name="contended",
                resource_version=stale,
                status_patch={"phase": "Failed", "detail": "second writer"},
            )
        return caught.value

    conflict = with_api(configuration(cluster.kube.kubeconfig), body)

    assert isinstance(conflict, ApiError)
    assert conflict.status == 409
    assert "modified" in conflict.message
    status = cluster.status("contended")
    assert status["phase"] == "Running"
    assert status["detail"] == "first writer"


def test_missing_object_is_gone_for_get_and_patch(cluster: Cluster) -> None:
    create_run(cluster, "present")

    async def body(api: KubeApi) -> list[ApiError]:
        gone = await refusals(api, cluster.namespace, "absent", Gone)
        # A name is one path segment, never a query or a path to something else.
        with pytest.raises(Gone) as caught:
            await api.get(plural=PLURAL, namespace=cluster.namespace, name="present?watch=1")
        gone.append(caught.value)
        for name in ("present/status", "..", ""):
            with pytest.raises(ValueError, match="invalid name"):
                await api.get(plural=PLURAL, namespace=cluster.namespace, name=name)
        return gone

    errors = with_api(configuration(cluster.kube.kubeconfig), body)

    assert [e.status for e in errors] == [404, 404, 404]
    assert all("absent" in e.message for e in errors[:2])
    assert "phase" not in cluster.status("present")


def test_a_patch_touches_only_its_namespace(cluster: Cluster, other: Cluster) -> None:
    mine = create_run(cluster, "twin")
    theirs = create_run(other, "twin")

    async def body(api: KubeApi) -> tuple[dict[str, Any], dict[str, Any]]:
        stored = await api.patch_status(
            plural=PLURAL,
            namespace=cluster.namespace,
            name="twin",
            resource_version=mine["metadata"]["resourceVersion"],
            status_patch={"phase": "Running"},
        )
        read = await api.get(plural=PLURAL, namespace=other.namespace, name="twin")
        return stored, read

    stored, read = with_api(configuration(cluster.kube.kubeconfig), body)

    assert stored["metadata"]["uid"] == mine["metadata"]["uid"]
    assert stored["metadata"]["namespace"] == cluster.namespace
    assert read["metadata"]["uid"] == theirs["metadata"]["uid"] != mine["metadata"]["uid"]
    assert read["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert "phase" not in (read.get("status") or {})
    after = other.run("twin")
    assert after["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert "phase" not in (after.get("status") or {})


def test_listing_comes_in_pages_of_whole_objects(cluster: Cluster, other: Cluster) -> None:
    names = [f"paged-{i}" for i in range(7)]
    for name in names:
        cluster.apply(simulated_run(name, [sim("a")]))
    other.apply(simulated_run("elsewhere", [sim("a")]))

    async def body(api: KubeApi) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
        mine = [
            p async for p in api.list_pages(plural=PLURAL, namespace=cluster.namespace, limit=3)
        ]
        everywhere = [p async for p in api.list_pages(plural=PLURAL, namespace=None, limit=3)]
        return mine, everywhere

    mine, everywhere = with_api(configuration(cluster.kube.kubeconfig), body)

    assert [len(page) for page in mine] == [3, 3, 1]
    items = [item for page in mine for item in page]
    assert sorted(i["metadata"]["name"] for i in items) == names
    # List items come without kind; the listing restores it for the caches and Events.
    assert {(i["apiVersion"], i["kind"]) for i in items} == {
        ("automation.tandem.dev/v1alpha1", "AutomationRun")
    }
    assert all(len(page) <= 3 for page in everywhere)
    seen = {(i["metadata"]["namespace"], i["metadata"]["name"]) for p in everywhere for i in p}
    assert (other.namespace, "elsewhere") in seen
    assert {(cluster.namespace, n) for n in names} <= seen


# ------------------------------------------------------------------------------ credentials


def test_service_account_token_works_only_where_its_role_allows(
    cluster: Cluster, other: Cluster, writer_kubeconfig: Path
) -> None:
    mine = create_run(cluster, "guarded")
    create_run(other, "guarded")
    config = configuration(writer_kubeconfig)
    assert not config.cert_file, "the token kubeconfig must carry no client certificate"

    async def body(api: KubeApi) -> tuple[dict[str, Any], dict[str, Any], list[ApiError]]:
        read = await api.get(plural=PLURAL, namespace=cluster.namespace, name="guarded")
        stored = await api.patch_status(
            plural=PLURAL,
            namespace=cluster.namespace,
            name="guarded",
            resource_version=read["metadata"]["resourceVersion"],
            status_patch={"phase": "Running"},
        )
        refused = await refusals(api, other.namespace, "guarded", ApiError)
        return read, stored, refused

    read, stored, refused = with_api(config, body)

    assert read["metadata"]["uid"] == mine["metadata"]["uid"]
    assert stored["status"]["phase"] == "Running"
    assert cluster.phase("guarded") == "Running"
    for error in refused:
        assert type(error) is ApiError
        assert error.status == 403
        assert f"system:serviceaccount:{cluster.namespace}:writer" in error.message
    assert other.phase("guarded") is None


def test_token_is_read_for_every_request_through_the_refresh_hook(
    cluster: Cluster, writer_kubeconfig: Path
) -> None:
    """A rotated token (in-cluster: the kubelet rewrites the file) is used at once."""
    create_run(cluster, "rotated")
    config = configuration(writer_kubeconfig)
    valid = config.api_key["BearerToken"]
    current = ["Bearer not-a-valid-token"]
    calls: list[int] = []

    def refresh(conf: Any) -> None:
        calls.append(1)
        conf.api_key["BearerToken"] = current[0]

    config.api_key["BearerToken"] = current[0]
    config.refresh_api_key_hook = refresh

    async def body(api: KubeApi) -> tuple[ApiError, dict[str, Any]]:
        with pytest.raises(ApiError) as caught:
            await api.get(plural=PLURAL, namespace=cluster.namespace, name="rotated")
        current[0] = valid
        read = await api.get(plural=PLURAL, namespace=cluster.namespace, name="rotated")
        return caught.value, read

    refused, read = with_api(config, body)

    assert refused.status == 401
    assert read["metadata"]["name"] == "rotated"
    assert len(calls) == 2


# --------------------------------------------------------------------------- unreachable


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_api_server_raises(kube: KubeSession) -> None:
    config = configuration(kube.kubeconfig)
    config.host = f"https://127.0.0.1:{_closed_port()}"

    async def body(api: KubeApi) -> None:
        await asyncio.wait_for(api.get(plural=PLURAL, namespace="default", name="any"), timeout=10)

    with pytest.raises(aiohttp.ClientConnectionError):
        with_api(config, body)


def test_silent_api_server_times_out(kube: KubeSession) -> None:
    config = configuration(kube.kubeconfig)
    with socket.socket() as silent:
        # The kernel completes the handshakes; nothing ever answers.
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        config.host = f"https://127.0.0.1:{silent.getsockname()[1]}"

        async def body(api: KubeApi) -> None:
            await api.patch_status(
                plural=PLURAL,
                namespace="default",
                name="any",
                resource_version="1",
                status_patch={"phase": "Running"},
            )

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with_api(config, body, timeout_seconds=1.0)
        assert time.monotonic() - started < 10


# ------------------------------------------------------------------------------- closing


def test_close_releases_the_http_session(cluster: Cluster) -> None:
    create_run(cluster, "closing")
    config = configuration(cluster.kube.kubeconfig)

    async def main() -> None:
        api = KubeApi(configuration=config)
        await api.get(plural=PLURAL, namespace=cluster.namespace, name="closing")
        session = api._session
        assert session is not None
        assert not session.closed
        await api.aclose()
        assert session.closed
        with pytest.raises(RuntimeError):
            await api.get(plural=PLURAL, namespace=cluster.namespace, name="closing")

        # The synchronous close, as a cleanup handler on the loop calls it.
        api = KubeApi(configuration=config)
        await api.get(plural=PLURAL, namespace=cluster.namespace, name="closing")
        session = api._session
        assert session is not None
        api.close()
        for _ in range(100):
            if session.closed:
                break
            await asyncio.sleep(0.01)
        assert session.closed

    asyncio.run(main())
