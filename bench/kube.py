"""A minimal asyncio client of the API server: aiohttp and the kubeconfig's client certificate.

This is the benchmark's yardstick as well as its hands. It creates and patches
AutomationRuns, lists, watches, and scrapes ``/metrics``, with nothing in between: no
models, no thread pool, no retries, one ``json.dumps`` per request. What it achieves is
what the API server and etcd on this machine can do for a client, and the operator's
numbers are reported as ratios to it.

The kubeconfig written by ``tandem_operator.devcluster`` inlines the serving CA and the
admin client certificate (group ``system:masters``); ``ssl`` wants the key pair in files,
so they are written to a private temporary directory for the life of the client.

:class:`RunWatcher` follows one namespace's AutomationRuns over a watch stream and keeps,
per run, the first moment each phase was seen, so latency is measured where a user would
see it: on an independent watch, not inside the operator.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

RUNS = "/apis/automation.tandem.dev/v1alpha1/namespaces/{ns}/automationruns"

Json = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:300]}")
        self.status = status


def _ssl_context(kubeconfig: Path, directory: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    context_name = config["current-context"]
    ctx = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == ctx["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == ctx["user"])
    ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
    cert = directory / "client.crt"
    key = directory / "client.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.touch(mode=0o600)
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    context = ssl.create_default_context(cadata=ca)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    return str(cluster["server"]), context


class Kube:
    """An aiohttp session bound to one API server; use ``async with Kube(path) as kube``."""

    def __init__(self, kubeconfig: Path, *, connections: int = 32) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tandem-bench-")
        self.server, self._ssl = _ssl_context(kubeconfig, Path(self._tmp.name))
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl)
        self._session = aiohttp.ClientSession(
            base_url=self.server,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        self._tmp.cleanup()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use Kube as an async context manager")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> tuple[int, Any]:
        """One request; the JSON answer (or text) with its status. Raises unless in ``ok``."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self.session.request(
            method, path, data=data, headers=headers, params=params
        ) as response:
            text = await response.text()
            if response.status not in ok:
                raise ApiError(response.status, method, path, text)
            if response.content_type == "application/json":
                return response.status, json.loads(text)
            return response.status, text

    # -- conveniences ---------------------------------------------------------------

    async def create_namespace(self, name: str) -> None:
        await self.request(
            "POST",
            "/api/v1/namespaces",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )

    async def create_run(self, namespace: str, manifest: Mapping[str, Any]) -> Json:
        _, obj = await self.request("POST", RUNS.format(ns=namespace), body=manifest)
        result: Json = obj
        return result

    async def patch_run_status(
        self,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        *,
        resource_version: str | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        """JSON merge patch of ``status``, with a resourceVersion precondition if given."""
        body: Json = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request(
            "PATCH",
            f"{RUNS.format(ns=namespace)}/{name}/status",
            body=body,
            content_type="application/merge-patch+json",
            ok=ok,
        )

    async def patch_run_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> Json:
        _, obj = await self.request(
            "PATCH",
            f"{RUNS.format(ns=namespace)}/{name}",
            body={"spec": dict(spec)},
            content_type="application/merge-patch+json",
        )
        result: Json = obj
        return result

    async def delete_runs(self, namespace: str) -> None:
        """Delete every run of ``namespace``, however many there are.

        One delete-collection request of 10,000 runs outlasts the API server's request
        time limit (60 s): it answers 504, or cuts the list of deleted objects short. What
        it deleted by then stays deleted, so the request is sent again until none is left.
        """
        path = RUNS.format(ns=namespace)
        while True:
            try:
                await self.request("DELETE", path)
            except ApiError as exc:
                if exc.status not in (500, 504):
                    raise
            except aiohttp.ClientPayloadError:
                pass
            _, page = await self.request("GET", path, params={"limit": "1"})
            if not page.get("items"):
                return

    async def list_runs(self, namespace: str) -> Json:
        _, obj = await self.request("GET", RUNS.format(ns=namespace))
        result: Json = obj
        return result

    async def metrics(self) -> str:
        _, text = await self.request("GET", "/metrics")
        return str(text)

    async def version(self) -> Json:
        _, obj = await self.request("GET", "/version")
        result: Json = obj
        return result

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[tuple[str, Json]]:
        """(type, object) of every event after ``resource_version`` until the stream ends."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": "3600",
            "allowWatchBookmarks": "false",
        }
        async with self.session.get(path, params=params) as response:
            if response.status != 200:
                raise ApiError(response.status, "WATCH", path, await response.text())
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        yield str(event.get("type")), event.get("object") or {}


async def bounded(concurrency: int, jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run coroutine factories with at most ``concurrency`` in flight; results in order."""
    results: list[Any] = [None] * len(jobs)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(jobs)):
        queue.put_nowait(index)

    async def worker() -> None:
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results[index] = await jobs[index]()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


class RunWatcher:
    """First-seen times of every phase of every run in one namespace, from a watch stream."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.first_seen: dict[str, dict[str, float]] = {}
        """run name → phase (``"<none>"`` before any status) → time.monotonic() first seen"""
        self.history: dict[str, list[tuple[float, str]]] = {}
        """run name → (time.monotonic(), phase) at every change of phase"""
        self.status_seen: dict[str, float] = {}
        """run name → time.monotonic() its first non-empty status was seen"""
        self.phases: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self.objects: dict[str, Json] = {}
        self.events = 0
        self._name_waiters: dict[str, list[tuple[Callable[[], bool], asyncio.Future[None]]]] = {}
        self._count_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.keep_objects = True

    async def start(self) -> None:
        listing = await self.kube.list_runs(self.namespace)
        for item in listing.get("items", []):
            self._apply("ADDED", item, time.monotonic())
        rv = str(listing["metadata"]["resourceVersion"])
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._follow(rv, ready))
        await ready

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _follow(self, rv: str, ready: asyncio.Future[None]) -> None:
        path = RUNS.format(ns=self.namespace)
        while True:
            try:
                stream = self.kube.watch(path, rv)
                if not ready.done():
                    ready.set_result(None)
                async for kind, obj in stream:
                    now = time.monotonic()
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code", 0)), "WATCH", path, str(obj))
                    rv = str(obj.get("metadata", {}).get("resourceVersion", rv))
                    self._apply(kind, obj, now)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, ApiError, TimeoutError):
                await asyncio.sleep(0.2)

    def _apply(self, kind: str, obj: Json, now: float) -> None:
        self.events += 1
        name = str(obj.get("metadata", {}).get("name", ""))
        status = obj.get("status") or {}
        phase = str(status.get("phase") or "<none>")
        if kind == "DELETED":
            old = self.phases.pop(name, None)
            if old is not None:
                self.counts[old] -= 1
            self.objects.pop(name, None)
        else:
            old = self.phases.get(name)
            if old != phase:
                if old is not None:
                    self.counts[old] -= 1
                self.counts[phase] += 1
                self.phases[name] = phase
                self.history.setdefault(name, []).append((now, phase))
            self.first_seen.setdefault(name, {}).setdefault(phase, now)
            if status:
                self.status_seen.setdefault(name, now)
            if self.keep_objects:
                self.objects[name] = obj
        for predicate, future in self._name_waiters.get(name, []):
            if not future.done() and predicate():
                future.set_result(None)
        for predicate, future in self._count_waiters:
            if not future.done() and predicate():
                future.set_result(None)

    async def wait_run(self, name: str, predicate: Callable[[], bool], *, within: float) -> None:
        """Until ``predicate()`` holds, re-checked on every event of run ``name``."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._name_waiters.setdefault(name, []).append(entry)
        try:
            await asyncio.wait_for(future, within)
        finally:
            self._name_waiters[name].remove(entry)
            if not self._name_waiters[name]:
                del self._name_waiters[name]

    def seen_at(self, name: str, phases: tuple[str, ...], *, after: float) -> float | None:
        """When run ``name`` first entered one of ``phases`` at or after ``after``."""
        for moment, phase in self.history.get(name, []):
            if moment >= after and phase in phases:
                return moment
        return None

    async def wait_phase(self, name: str, *phases: str, after: float = 0.0, within: float) -> float:
        """Until run ``name`` enters one of ``phases`` (at or after ``after``); returns when."""
        await self.wait_run(
            name, lambda: self.seen_at(name, phases, after=after) is not None, within=within
        )
        moment = self.seen_at(name, phases, after=after)
        assert moment is not None
        return moment

    async def wait_counts(self, predicate: Callable[[], bool], *, within: float) -> None:
        """Until ``predicate()`` (usually over ``self.counts``) holds, checked per event."""
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._count_waiters.append(entry)
        try:
            await asyncio.wait_for(future, within)
        finally:
            self._count_waiters.remove(entry)
