"""The operator's writes, reads and the watch of its runs on the Kubernetes API.

Everything the operator *writes* goes through this module (Events too): one JSON merge
patch of ``status`` per decision, carrying ``metadata.resourceVersion`` so that the API
server refuses it (409) when the object changed since it was read; the operator then
re-reads and decides again instead of overwriting a newer checkpoint. The listing and the
watch of runs (``runtime.runwatch``), Leases and Secret reads live here too.

Two clients, one configuration:

- The hot path (``patch_status`` and ``get`` of the operator's custom objects, thousands
  of calls when many runs move at once; paged listings; watches; Secret reads) is plain
  HTTP over ``aiohttp`` on the event loop: a body is serialised once and parsed once.
  At most ``workers`` (8) requests are in flight; every request has a total timeout, so an
  unreachable API server raises (the reconciler retries) instead of hanging.
- The official ``kubernetes`` client stays the source of configuration and credentials
  (in-cluster ServiceAccount or kubeconfig: server, CA, client certificate, bearer token)
  and makes the rare calls: Leases. It is synchronous; those calls run in a small thread
  pool so the event loop stays free. Its per-call overhead (model
  serialisation, urllib3, the hand-off to a thread) is why the hot path does not use it.

The bearer token is read for every request, through the configuration's refresh hook: a
rotated ServiceAccount token is used at once, as by the official client.

Errors are the same on both paths: 409 raises :class:`Conflict`, 404 :class:`Gone`, any
other refusal :class:`ApiError` with the status and the API server's message. Network
errors and timeouts raise as the client raised them (``aiohttp.ClientError``, ...).

``pykube-ng`` is the client of the command-line tools (see ``tandem_operator.cli``), which
apply manifests and read runs for people.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import kubernetes
from kubernetes.client.exceptions import ApiException

from tandem_operator.api.models import GROUP, VERSION

_KINDS = {
    "automationruns": "AutomationRun",
    "automations": "Automation",
    "agentendpoints": "AgentEndpoint",
    "agentquotaoverrides": "AgentQuotaOverride",
}

LIST_PAGE_SIZE = 100
"""Objects per page of a listing (``limit``/``continue``)."""

REQUEST_TIMEOUT_SECONDS = 30.0
"""Upper bound of one request to the API server, from connecting to the last byte read."""

LEASE_CALL_TIMEOUT_S = 5.0
"""Default bound of one Lease call (the leader passes a third of its Lease's duration)."""

_USER_AGENT = "tandem-operator"


class ApiError(Exception):
    """The API server refused a request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str, *, reason: str = "") -> None:
        self.status = status
        self.message = message
        self.reason = reason
        head = f"{status} {reason}".strip()
        super().__init__(f"{head}: {message}" if message else head)


class Conflict(ApiError):
    """The object changed since it was read (HTTP 409)."""


class Gone(ApiError):
    """The object no longer exists (HTTP 404)."""


class Invalid(ApiError):
    """The API server refused the object's content (HTTP 422): sending it again will not
    help."""


def _api_error(status: int, message: str, reason: str = "") -> ApiError:
    if status == 409:
        return Conflict(status, message, reason=reason or "Conflict")
    if status == 404:
        return Gone(status, message, reason=reason or "NotFound")
    if status == 422:
        return Invalid(status, message, reason=reason or "Invalid")
    return ApiError(status, message, reason=reason)


def _status_message(body: bytes | str | None) -> tuple[str, str]:
    """``(message, reason)`` of an API server error body (a ``Status`` object, usually)."""
    if not body:
        return "", ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        status = json.loads(text)
    except ValueError:
        return text.strip()[:500], ""
    if not isinstance(status, dict):
        return text.strip()[:500], ""
    return str(status.get("message") or ""), str(status.get("reason") or "")


def _segment(value: str, what: str) -> str:
    """One path segment, percent-encoded.

    The API server decodes the path before routing, so quoting alone would let ``a/status``
    reach the status of ``a``: as the API server itself, refuse what is never a name.
    """
    if value in ("", ".", "..") or "/" in value or "%" in value:
        raise ValueError(f"invalid {what}: {value!r}")
    return quote(value, safe="")


def ssl_context(configuration: Any) -> ssl.SSLContext:
    """The TLS settings of a ``kubernetes.client.Configuration`` as an ``SSLContext``."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.ca_cert_data:
        context.load_verify_locations(cadata=configuration.ca_cert_data)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.assert_hostname is False:
        context.check_hostname = False
    return context


class KubeApi:
    """Calls to the API server with one configuration (loaded from the environment if none).

    ``configuration`` is a ``kubernetes.client.Configuration``; without it (and without
    ``api_client``) the in-cluster ServiceAccount is used, else ``$KUBECONFIG``.
    """

    def __init__(
        self,
        api_client: Any | None = None,
        *,
        configuration: Any | None = None,
        workers: int = 8,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        if api_client is None:
            if configuration is None:
                try:
                    kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
                except kubernetes.config.ConfigException:
                    kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
                configuration = kubernetes.client.Configuration.get_default_copy()
                configuration.connection_pool_maxsize = workers * 2
            api_client = kubernetes.client.ApiClient(configuration)
        self._client = api_client
        self._configuration: Any = api_client.configuration
        # Not CoreV1Api: importing it loads hundreds of models, half a second at start-up.
        self._coordination = kubernetes.client.CoordinationV1Api(api_client)
        self._workers = workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kubeapi")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._base = str(self._configuration.host).rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- the hot path: aiohttp on the event loop ---------------------------------------

    def _http(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        """The session of the running loop, created on first use."""
        if self._closed:
            raise RuntimeError("KubeApi is closed")
        loop = asyncio.get_running_loop()
        if self._session is not None and self._session_loop is not loop:
            if self._session_loop is not None and not self._session_loop.is_closed():
                raise RuntimeError("KubeApi is in use on another event loop")
            # Its loop is gone and took the connections with it.
            self._session.detach()
            self._session = None
        if self._session is None or self._in_flight is None:
            connector = aiohttp.TCPConnector(
                limit=self._workers, ssl=ssl_context(self._configuration)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
            )
            self._session_loop = loop
            self._in_flight = asyncio.Semaphore(self._workers)
        return self._session, self._in_flight

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        # Evaluated per request: this runs the configuration's refresh hook, which re-reads
        # a rotated ServiceAccount token (in-cluster) or an expired kubeconfig credential.
        # Both loaders store the token under "BearerToken", with its "Bearer " prefix.
        token = self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = str(token)
        if content_type is not None:
            headers["Content-Type"] = content_type
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        session, in_flight = self._http()
        url = self._base + path
        proxy = self._configuration.proxy or None
        server_hostname = self._configuration.tls_server_name or None
        async with in_flight:
            # The timeout starts once a slot is free: it bounds the API server, not the queue.
            for attempt in (1, 2):
                try:
                    async with session.request(
                        method,
                        url,
                        data=body,
                        headers=self._headers(content_type),
                        proxy=proxy,
                        server_hostname=server_hostname,
                        allow_redirects=False,
                    ) as resp:
                        payload = await resp.read()
                        status = resp.status
                        reason = resp.reason or ""
                    break
                except aiohttp.ClientConnectorError:
                    raise
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                    # A kept-alive connection the server had closed. Retrying once is safe:
                    # a merge patch is idempotent, and if the first one was applied the
                    # resourceVersion precondition turns the repeat into a 409.
                    if attempt == 2:
                        raise
        if 200 <= status < 300:
            result: dict[str, Any] = json.loads(payload)
            return result
        message, status_reason = _status_message(payload)
        raise _api_error(status, message, status_reason or reason)

    @staticmethod
    def _object_path(plural: str, namespace: str, name: str) -> str:
        return (
            f"/apis/{GROUP}/{VERSION}/namespaces/{_segment(namespace, 'namespace')}"
            f"/{_segment(plural, 'resource')}/{_segment(name, 'name')}"
        )

    async def patch_status(
        self,
        *,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        status_patch: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Merge-patch ``status``, refused (:class:`Conflict`) unless at ``resource_version``."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status_patch)}
        return await self._request(
            "PATCH",
            self._object_path(plural, namespace, name) + "/status",
            body=json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/merge-patch+json",
        )

    async def get(self, *, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return await self._request("GET", self._object_path(plural, namespace, name))

    # -- what schedules and retention write (B19, B20) -----------------------------------

    def _collection_path(self, plural: str, namespace: str) -> str:
        return (
            f"/apis/{GROUP}/{VERSION}/namespaces/{_segment(namespace, 'namespace')}"
            f"/{_segment(plural, 'resource')}"
        )

    async def create(
        self, *, plural: str, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Create an object; :class:`Conflict` when one of that name exists (409)."""
        return await self._request(
            "POST",
            self._collection_path(plural, namespace),
            body=json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    async def patch(
        self, *, plural: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of the object itself (not its status)."""
        return await self._request(
            "PATCH",
            self._object_path(plural, namespace, name),
            body=json.dumps(patch, separators=(",", ":")).encode(),
            content_type="application/merge-patch+json",
        )

    async def delete(
        self, *, plural: str, namespace: str, name: str, uid: str | None = None
    ) -> dict[str, Any]:
        """Delete an object (in the background); with ``uid``, only that very object.

        The uid precondition makes a late delete harmless: a new object that took the
        name meanwhile is refused with 409 (:class:`Conflict`), not deleted.
        """
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        return await self._request(
            "DELETE",
            self._object_path(plural, namespace, name),
            body=json.dumps(options, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    async def create_event(self, *, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a core/v1 Event in ``namespace``."""
        return await self._request(
            "POST",
            f"/api/v1/namespaces/{_segment(namespace, 'namespace')}/events",
            body=json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/json",
        )

    # -- Pods of the container executor (execution.container.PodClient) ---------------

    @staticmethod
    def _pods_path(namespace: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{_segment(namespace, 'namespace')}/pods"
        return path if name is None else f"{path}/{_segment(name, 'name')}"

    async def create_pod(
        self, *, namespace: str, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create a Pod: ``(pod, True)``; when one of that name exists, ``(it, False)``."""
        try:
            created = await self._request(
                "POST",
                self._pods_path(namespace),
                body=json.dumps(body, separators=(",", ":")).encode(),
                content_type="application/json",
            )
        except Conflict:
            name = str(body["metadata"]["name"])
            existing = await self.get_pod(namespace=namespace, name=name)
            if existing is None:
                raise
            return existing, False
        return created, True

    async def get_pod(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("GET", self._pods_path(namespace, name))
        except Gone:
            return None

    async def list_pods(self, *, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        query = urlencode({"labelSelector": label_selector})
        page = await self._request("GET", f"{self._pods_path(namespace)}?{query}")
        return [p for p in page.get("items") or [] if isinstance(p, dict)]

    async def delete_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a Pod (only while it has ``uid``, when given); a missing Pod is fine."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request(
                "DELETE",
                self._pods_path(namespace, name),
                body=json.dumps(options).encode(),
                content_type="application/json",
            )
        except Gone:
            return
        except Conflict:
            return  # another Pod of that name now: not ours to delete

    def watch_pod(
        self,
        *,
        namespace: str,
        name: str,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Watch events of one Pod (a field selector on its name and a label selector)."""
        query = {"fieldSelector": f"metadata.name={name}", "labelSelector": label_selector}
        return self.watch(self._pods_path(namespace), query, resource_version, timeout_seconds)

    async def watch(
        self, path: str, query: Mapping[str, str], resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` of each event of a watch of ``path`` from ``resource_version``.

        On a session of its own, outside the ``workers`` limit: it holds a connection for
        up to ``timeout_seconds``. An event is a line of any length (a run can be long).
        """
        params = {**query, "watch": "1", "timeoutSeconds": str(timeout_seconds)}
        if resource_version:
            params["resourceVersion"] = resource_version
        timeout = aiohttp.ClientTimeout(total=timeout_seconds + 30, sock_connect=10)
        async with self._watch_http().get(
            f"{self._base}{path}?{urlencode(params)}",
            headers=self._headers(None),
            proxy=self._configuration.proxy or None,
            server_hostname=self._configuration.tls_server_name or None,
            timeout=timeout,
        ) as resp:
            if resp.status != 200:
                message, reason = _status_message(await resp.read())
                raise _api_error(resp.status, message, reason or resp.reason or "")
            buffer = bytearray()
            async for chunk in resp.content.iter_any():
                buffer += chunk
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    line, start = buffer[start:end], end + 1
                    if line and not line.isspace():
                        event = json.loads(line)
                        yield str(event.get("type") or ""), dict(event.get("object") or {})
                del buffer[:start]

    def _watch_http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("KubeApi is closed")
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context(self._configuration)),
                headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
            )
        return self._watch_session

    # -- the rare calls: the official client in a thread pool ---------------------------

    async def _call(self, fn: Any, *args: Any, timeout_s: float | None = None) -> Any:
        """``fn(*args)`` of the official client in the thread pool; with ``timeout_s``, the
        request has that socket timeout and the caller waits no longer (a hung connection,
        say while etcd restarts, then raises ``TimeoutError`` instead of waiting forever)."""
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {} if timeout_s is None else {"_request_timeout": timeout_s}
        call = loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        try:
            if timeout_s is None:
                return await call
            return await asyncio.wait_for(call, timeout=timeout_s + 1)
        except ApiException as exc:
            message, reason = _status_message(exc.body)
            raise _api_error(
                int(exc.status or 0), message or str(exc.reason or ""), reason or exc.reason or ""
            ) from exc

    @staticmethod
    def collection_path(plural: str, namespace: str | None) -> str:
        """The path of a kind's objects in ``namespace``, or in every namespace."""
        scope = f"namespaces/{_segment(namespace, 'namespace')}/" if namespace else ""
        return f"/apis/{GROUP}/{VERSION}/{scope}{_segment(plural, 'resource')}"

    async def list_pages(
        self, *, plural: str, namespace: str | None, limit: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every object of a kind, in one namespace or all of them, ``limit`` at a time.

        Pages bound a listing's memory: a caller that keeps only what it needs of each
        object never holds more than one page of whole objects."""
        async for items, _ in self.list_versioned(plural=plural, namespace=namespace, limit=limit):
            yield items

    async def list_versioned(
        self, *, plural: str, namespace: str | None, limit: int = LIST_PAGE_SIZE
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        """:meth:`list_pages` with the listing's resourceVersion, to watch from."""
        base = self.collection_path(plural, namespace)
        token = ""
        while True:
            query = {"limit": str(limit)}
            if token:
                query["continue"] = token
            page = await self._request("GET", f"{base}?{urlencode(query)}")
            items: list[dict[str, Any]] = []
            for item in page.get("items") or []:
                # List items carry no kind; the caches and Events expect full objects.
                item.setdefault("apiVersion", f"{GROUP}/{VERSION}")
                item.setdefault("kind", _KINDS.get(plural, ""))
                items.append(item)
            meta = page.get("metadata") or {}
            token = str(meta.get("continue") or "")
            version = str(meta.get("resourceVersion") or "")
            del page
            yield items, version
            if not token:
                return

    async def read_secret_key(self, *, namespace: str, name: str, key: str) -> str | None:
        where = f"{_segment(namespace, 'namespace')}/secrets/{_segment(name, 'name')}"
        secret = await self._request("GET", f"/api/v1/namespaces/{where}")
        data = (secret.get("data") or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    # -- leases ---------------------------------------------------------------------

    # Each Lease call is bounded: a leader whose renewal hangs must find out and stand down
    # before its Lease expires and a standby takes over.

    async def read_lease(
        self, *, namespace: str, name: str, timeout_s: float = LEASE_CALL_TIMEOUT_S
    ) -> Any | None:
        try:
            return await self._call(
                self._coordination.read_namespaced_lease,
                name,
                namespace,
                timeout_s=timeout_s,
            )
        except Gone:
            return None

    async def create_lease(
        self, *, namespace: str, body: Any, timeout_s: float = LEASE_CALL_TIMEOUT_S
    ) -> Any:
        return await self._call(
            self._coordination.create_namespaced_lease,
            namespace,
            body,
            timeout_s=timeout_s,
        )

    async def replace_lease(
        self, *, namespace: str, name: str, body: Any, timeout_s: float = LEASE_CALL_TIMEOUT_S
    ) -> Any:
        return await self._call(
            self._coordination.replace_namespaced_lease,
            name,
            namespace,
            body,
            timeout_s=timeout_s,
        )

    # -- closing ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP session, the thread pool and the official client."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
        watches, self._watch_session = self._watch_session, None
        if watches is not None and not watches.closed:
            await watches.close()
        self.close()

    def close(self) -> None:
        """Close the thread pool and the official client, and the HTTP session if possible.

        From a coroutine prefer :meth:`aclose`, which waits until the connections are
        closed; here, on the session's running loop, closing is only scheduled.
        """
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        watches, self._watch_session = self._watch_session, None
        if watches is not None and not watches.closed:
            watches.detach()
        session, self._session = self._session, None
        loop, self._session_loop = self._session_loop, None
        if session is None or session.closed or loop is None or loop.is_closed():
            return
        if loop.is_running():
            task = loop.create_task(session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            loop.run_until_complete(session.close())
