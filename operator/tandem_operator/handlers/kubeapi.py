"""The operator's writes and point reads, through the official ``kubernetes`` client.

kopf watches (it lists and streams every resource the operator reacts to). Everything the
operator *writes* goes through this module: one JSON merge patch of ``status`` per
decision, carrying ``metadata.resourceVersion`` so that the API server refuses it (409)
when the object changed since it was read — the operator then re-reads and decides again
instead of overwriting a newer checkpoint. Leases and Secret reads live here too.

The ``kubernetes`` client is synchronous; calls run in a small thread pool so the event
loop stays free. ``pykube-ng`` is the client of the command-line tools (see
``tandem_operator.cli``), which apply manifests and read runs for people.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from tandem_operator.api.models import GROUP, VERSION

_KINDS = {
    "automationruns": "AutomationRun",
    "automations": "Automation",
    "agentendpoints": "AgentEndpoint",
    "agentquotaoverrides": "AgentQuotaOverride",
}


class Conflict(Exception):
    """The object changed since it was read (HTTP 409)."""


class Gone(Exception):
    """The object no longer exists (HTTP 404)."""


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch that turns ``old`` into ``new`` (``None`` where nothing changes)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch


class KubeApi:
    def __init__(self, api_client: Any | None = None, *, workers: int = 8) -> None:
        if api_client is None:
            try:
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
            configuration = kubernetes.client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = workers * 2
            api_client = kubernetes.client.ApiClient(configuration)
        self._client = api_client
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._core = kubernetes.client.CoreV1Api(api_client)
        self._coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubeapi")

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            if exc.status == 404:
                raise Gone(str(exc.reason)) from exc
            raise

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status_patch)}
        result: dict[str, Any] = await self._call(
            self._custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            body,
            _content_type="application/merge-patch+json",
        )
        return result

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(
            self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return result

    async def list(self, *, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """Every object of a kind, in one namespace or all of them."""
        if namespace is None:
            result = await self._call(
                self._custom.list_cluster_custom_object, GROUP, VERSION, plural
            )
        else:
            result = await self._call(
                self._custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
        items: list[dict[str, Any]] = []
        for item in result.get("items") or []:
            # List items carry no kind; the caches and Events expect full objects.
            item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
            item.setdefault("kind", _KINDS.get(plural, ""))
            items.append(item)
        return items

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None:
        secret = await self._call(self._core.read_namespaced_secret, name, namespace)
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    # -- leases ---------------------------------------------------------------------

    async def read_lease(self, *, namespace: str, name: str) -> Any | None:
        try:
            return await self._call(self._coordination.read_namespaced_lease, name, namespace)
        except Gone:
            return None

    async def create_lease(self, *, namespace: str, body: Any) -> Any:
        return await self._call(self._coordination.create_namespaced_lease, namespace, body)

    async def replace_lease(self, *, namespace: str, name: str, body: Any) -> Any:
        return await self._call(self._coordination.replace_namespaced_lease, name, namespace, body)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
