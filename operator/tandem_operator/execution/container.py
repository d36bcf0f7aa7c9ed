"""The container executor: each attempt of a node runs in its own Pod (contract §7, C1–C5).

Three parts, two of them pure:

* :func:`pod_manifest` builds the attempt's Pod (C1, C2): named :func:`pod_name`, labelled
  with the run, the node and the attempt, owned by the run (so deleting the run deletes its
  Pods), ``restartPolicy: Never``, the restricted Pod Security profile, no API token unless
  the container names a ServiceAccount, and the §6 request body in ``TANDEM_ATTEMPT``.
* :func:`pod_verdict` reads a Pod's status and says where the attempt stands (C3): still
  going (and why it waits, when it waits), ended with a result, failed (non-zero exit,
  ``OOMKilled``, no or invalid result in the termination message) or lost (deleted, evicted,
  its node gone: a transient error, retried with back-off).
* :class:`ContainerExecutor` creates the Pod and follows it with a watch of that one Pod
  (a field selector on its name, in the run's namespace, with the run label), until the
  verdict is final. Creating is idempotent: when the Pod of this very attempt already
  exists, the executor follows that one instead (C5: after an operator restart the runtime
  starts the in-progress attempt again, and the executor adopts its Pod rather than run it
  twice). Cancellation (pause, cancel, rework, B5, B21) deletes the Pod and waits until it is
  gone (its grace period, at most :data:`STOP_WAIT_SECONDS`) before it propagates: the run
  is Paused only once nothing runs, and the attempt a resume starts again (an attempt the
  operator cancelled does not count, so it has the same number and the same Pod name) never
  meets the old Pod.
  A Pod that ended is deleted after ``keep_seconds`` (``TANDEM_POD_KEEP_SECONDS``), so
  ``kubectl logs`` can read it for a while.

Executor activity (B5): the Pod's creation or adoption, and every change of its status,
except while it waits Pending for a reason that will not go away by itself (an image that
cannot be pulled, a Pod no Node takes): then the executor is silent, reports why it waits
(``ExecutorActivity.waiting``), and B5 reaps the attempt past the node's timeout with that
reason in its verdict.

The executor talks to the API server through :class:`PodClient` (``runtime.kubeapi``
implements it); this module imports no Kubernetes client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tandem_operator.api.models import API_VERSION, Container
from tandem_operator.execution.http import MAX_OUTPUT_BYTES, encode_request
from tandem_operator.execution.types import (
    RESULT_STATUSES,
    AttemptRequest,
    AttemptResult,
    ExecutorActivity,
    ExecutorConfigError,
    TransientExecutorError,
)

log = logging.getLogger(__name__)

LABEL_RUN = "automation.tandem.dev/run"
LABEL_NODE = "automation.tandem.dev/node"
LABEL_ATTEMPT = "automation.tandem.dev/attempt"
ATTEMPT_ENV = "TANDEM_ATTEMPT"
CONTAINER_NAME = "agent"
MAX_NAME = 63
WATCH_SECONDS = 60
"""How long one watch request lasts before the executor reads the Pod and watches again."""
READ_RETRIES = 30
"""Seconds of failed reads of the Pod before the attempt is given up as a transient error."""
STOP_WAIT_SECONDS = 90.0
"""How long a cancelled attempt waits for its deleted Pod to go (a kubelet gives a Pod 30 s
by default; a Pod on a lost Node may never go, and then the wait gives up)."""

PodEvent = Literal["created", "adopted", "deleted"]


class PodClient(Protocol):
    """The Pod calls of the container executor (``runtime.kubeapi.KubeApi`` implements them)."""

    async def create_pod(
        self, *, namespace: str, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Create the Pod: the Pod and ``True``; when one of that name exists, it and ``False``
        (an idempotent create)."""
        ...

    async def get_pod(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod, or ``None`` when it does not exist."""
        ...

    async def delete_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete the Pod (only that ``uid`` when given); a missing Pod is not an error."""
        ...

    def watch_pod(
        self,
        *,
        namespace: str,
        name: str,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Watch events (``ADDED``, ``MODIFIED``, ``DELETED``, ``ERROR``) of one Pod."""
        ...


# -- names and manifests (pure) -----------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    """``text``, or its first characters and a hash of all of it, within ``limit``."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    head = text[: limit - len(digest) - 1].rstrip("-.")
    return f"{head}-{digest}"


def pod_name(run: str, node: str, attempt: int) -> str:
    """``<run>-<node>-<attempt>``, shortened with a hash suffix past 63 characters (C1)."""
    return _shorten(f"{run}-{node}-{attempt}", MAX_NAME)


def label_value(value: str) -> str:
    """A label value for ``value`` (run names may be longer than a label value may be)."""
    return _shorten(value, MAX_NAME)


def run_selector(run: str) -> str:
    """The label selector of every Pod of ``run``."""
    return f"{LABEL_RUN}={label_value(run)}"


def _env(container: Container, attempt_json: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [e.to_api() for e in container.env if e.name != ATTEMPT_ENV]
    env.append({"name": ATTEMPT_ENV, "value": attempt_json})
    return env


def pod_manifest(
    *, request: AttemptRequest, container: Container, name: str | None = None
) -> dict[str, Any]:
    """The Pod of one attempt (C1, C2); ``ExecutorConfigError`` when the request is not JSON."""
    attempt_json = encode_request(request).decode("utf-8")
    labels = {
        **container.pod_labels,
        LABEL_RUN: label_value(request.run_name),
        LABEL_NODE: request.node_id,
        LABEL_ATTEMPT: str(request.attempt),
    }
    spec_container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": container.image,
        "env": _env(container, attempt_json),
        "terminationMessagePolicy": "File",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if container.command is not None:
        spec_container["command"] = list(container.command)
    if container.args is not None:
        spec_container["args"] = list(container.args)
    if container.resources is not None:
        resources = container.resources.to_api()
        if resources:
            spec_container["resources"] = resources
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": container.service_account_name is not None,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [spec_container],
    }
    if container.service_account_name is not None:
        spec["serviceAccountName"] = container.service_account_name
    if container.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = container.active_deadline_seconds
    metadata: dict[str, Any] = {
        "name": name or pod_name(request.run_name, request.node_id, request.attempt),
        "namespace": request.run_namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": "AutomationRun",
                "name": request.run_name,
                "uid": request.run_uid,
                "controller": True,
                "blockOwnerDeletion": False,
            }
        ],
    }
    if container.pod_annotations:
        metadata["annotations"] = dict(container.pod_annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


# -- where a Pod stands (pure) -------------------------------------------------------------

VerdictKind = Literal["running", "waiting", "result", "failed", "lost"]

_STUCK_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)
"""Waiting reasons that do not go away by themselves: the attempt is silent (B5 reaps it)."""


@dataclass(frozen=True, kw_only=True)
class PodVerdict:
    """Where an attempt stands, read from its Pod."""

    kind: VerdictKind
    message: str = ""
    """Why it failed, was lost or waits; empty while it simply runs."""
    result: AttemptResult | None = None
    """The container's result (``kind == "result"``)."""

    @property
    def final(self) -> bool:
        return self.kind in ("result", "failed", "lost")


def _container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if isinstance(status, Mapping) and status.get("name") == CONTAINER_NAME:
            return status
    return statuses[0] if statuses and isinstance(statuses[0], Mapping) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def parse_termination_message(message: str) -> AttemptResult | str:
    """The C3 result in a termination message, or what is wrong with it."""
    if not message.strip():
        return "container ended without a result in its termination message"
    try:
        data = json.loads(message)
    except ValueError:
        return "container's termination message is not JSON"
    if not isinstance(data, dict):
        return "container's termination message is not a JSON object"
    status = data.get("status")
    if not isinstance(status, str) or status not in RESULT_STATUSES:
        allowed = ", ".join(sorted(RESULT_STATUSES))
        return f"container reported unknown result status {status!r} (expected one of {allowed})"
    output = data.get("output", {})
    if not isinstance(output, dict):
        return "container's result output is not a JSON object"
    if len(json.dumps(output, separators=(",", ":")).encode()) > MAX_OUTPUT_BYTES:
        return f"container's result output is over the {MAX_OUTPUT_BYTES}-byte limit"
    return AttemptResult(
        status=status,
        output={**output, "status": status},
        prompt_tokens=_count(data.get("promptTokens")),
        completion_tokens=_count(data.get("completionTokens")),
    )


def pod_verdict(pod: Mapping[str, Any] | None) -> PodVerdict:
    """Where the attempt of ``pod`` stands; ``None`` is a Pod that no longer exists."""
    if pod is None:
        return PodVerdict(kind="lost", message="Pod was deleted before it ended")
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    reason = str(status.get("reason") or "")
    cstatus = _container_status(pod)
    state = cstatus.get("state") or {}
    terminated = state.get("terminated")
    if isinstance(terminated, Mapping) and phase in ("Succeeded", "Failed", "Running"):
        exit_code = terminated.get("exitCode")
        term_reason = str(terminated.get("reason") or "")
        if term_reason == "OOMKilled":
            return PodVerdict(
                kind="failed",
                message=f"container was OOMKilled (exit code {exit_code})",
            )
        if exit_code not in (0, None):
            return PodVerdict(
                kind="failed",
                message=f"container exited with code {exit_code}"
                + (f" ({term_reason})" if term_reason else ""),
            )
        parsed = parse_termination_message(str(terminated.get("message") or ""))
        if isinstance(parsed, str):
            return PodVerdict(kind="failed", message=parsed)
        return PodVerdict(kind="result", result=parsed)
    if phase == "Failed":
        if reason == "DeadlineExceeded":
            return PodVerdict(
                kind="failed", message="Pod passed its activeDeadlineSeconds before it ended"
            )
        if reason in ("Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown"):
            return PodVerdict(kind="lost", message=f"Pod was stopped before it ended ({reason})")
        return PodVerdict(
            kind="lost", message=f"Pod failed before its container ended ({reason or 'Failed'})"
        )
    if phase == "Succeeded":
        return PodVerdict(kind="failed", message="Pod succeeded without a container status")
    if phase == "Unknown":
        return PodVerdict(kind="lost", message="Pod's node was lost")
    if meta.get("deletionTimestamp"):
        return PodVerdict(kind="lost", message="Pod was deleted before it ended")
    waiting = state.get("waiting")
    if phase == "Pending" and isinstance(waiting, Mapping):
        why = str(waiting.get("reason") or "")
        if why in _STUCK_WAITING:
            detail = str(waiting.get("message") or "")
            return PodVerdict(
                kind="waiting",
                message=f"Pod Pending: {why}" + (f": {detail}" if detail else ""),
            )
    if phase == "Pending":
        for condition in status.get("conditions") or []:
            if (
                isinstance(condition, Mapping)
                and condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
            ):
                why = condition.get("reason") or "Unschedulable"
                detail = condition.get("message") or ""
                return PodVerdict(
                    kind="waiting",
                    message=f"Pod Pending: {why}" + (f": {detail}" if detail else ""),
                )
    return PodVerdict(kind="running")


def _signature(pod: Mapping[str, Any]) -> str:
    """What counts as a change of the Pod's status (activity, B5)."""
    status = pod.get("status") or {}
    return json.dumps(
        [status.get("phase"), status.get("conditions"), status.get("containerStatuses")],
        sort_keys=True,
        default=str,
    )


# -- the executor ---------------------------------------------------------------------------


class ContainerExecutor:
    """Runs one attempt in one Pod and reads its result (see the module docstring)."""

    def __init__(
        self,
        *,
        container: Container,
        pods: PodClient,
        keep_seconds: float = 0,
        on_pod: Callable[[PodEvent], None] | None = None,
        janitor: set[asyncio.Task[None]] | None = None,
    ) -> None:
        self._container = container
        self._pods = pods
        self._keep_seconds = keep_seconds
        self._on_pod = on_pod or (lambda event: None)
        self._janitor = janitor if janitor is not None else set()

    async def run(self, request: AttemptRequest, activity: ExecutorActivity) -> AttemptResult:
        manifest = pod_manifest(request=request, container=self._container)
        namespace = request.run_namespace
        name = manifest["metadata"]["name"]
        pod = await self._create(namespace, manifest, request)
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        activity.activity()
        try:
            verdict = await self._follow(namespace, name, request, pod, activity)
        except asyncio.CancelledError:
            if getattr(activity, "detached", False):
                # Shutdown or lost leadership: the Pod runs on; the next leader adopts it.
                raise
            # Pause, cancel, rework, B5, B21: the Pod goes with the attempt.
            await asyncio.shield(self._delete(namespace, name, uid, until_gone=True))
            raise
        except BaseException:
            await asyncio.shield(self._delete(namespace, name, uid))
            raise
        self._clean_up_later(namespace, name, uid)
        if verdict.kind == "result" and verdict.result is not None:
            return verdict.result
        if verdict.kind == "lost":
            raise TransientExecutorError(f"Pod {name}: {verdict.message}")
        raise ExecutorConfigError(f"Pod {name}: {verdict.message}")

    async def _create(
        self, namespace: str, manifest: Mapping[str, Any], request: AttemptRequest
    ) -> dict[str, Any]:
        name = manifest["metadata"]["name"]
        pod, created_now = await self._pods.create_pod(namespace=namespace, body=manifest)
        meta = pod.get("metadata") or {}
        owners = [o.get("uid") for o in meta.get("ownerReferences") or []]
        ours = meta.get("labels", {}).get(LABEL_ATTEMPT) == str(request.attempt) and (
            request.run_uid in owners
        )
        if not ours:
            # A Pod of that name that is not this attempt's (an earlier run of that name
            # whose Pods the garbage collector has not removed yet): out of the way, retry.
            await self._delete(namespace, name, str(meta.get("uid") or "") or None)
            raise TransientExecutorError(f"Pod {name} exists and belongs to another run")
        if not created_now:
            self._on_pod("adopted")
            log.info(
                "Adopted Pod run=%s/%s node=%s attempt=%s pod=%s",
                namespace,
                request.run_name,
                request.node_id,
                request.attempt,
                name,
            )
        else:
            self._on_pod("created")
        if meta.get("deletionTimestamp"):
            raise TransientExecutorError(f"Pod {name} was deleted before it ended")
        return pod

    async def _follow(
        self,
        namespace: str,
        name: str,
        request: AttemptRequest,
        pod: dict[str, Any] | None,
        activity: ExecutorActivity,
    ) -> PodVerdict:
        seen = _signature(pod) if pod is not None else ""
        selector = run_selector(request.run_name)
        while True:
            verdict = pod_verdict(pod)
            self._report(verdict, activity)
            if verdict.final or pod is None:
                return verdict
            rv = str((pod.get("metadata") or {}).get("resourceVersion") or "")
            stream = self._pods.watch_pod(
                namespace=namespace,
                name=name,
                label_selector=selector,
                resource_version=rv,
                timeout_seconds=WATCH_SECONDS,
            )
            try:
                async for kind, obj in stream:
                    if kind == "ERROR":
                        break  # e.g. 410 Gone: read the Pod and watch again
                    pod = None if kind == "DELETED" else obj
                    if pod is None:
                        return pod_verdict(None)
                    signature = _signature(pod)
                    verdict = pod_verdict(pod)
                    if signature != seen:
                        seen = signature
                        if verdict.kind != "waiting":
                            activity.activity()
                    self._report(verdict, activity)
                    if verdict.final:
                        return verdict
            except (OSError, TimeoutError, ValueError) as exc:
                log.debug("Pod watch ended pod=%s/%s error=%s", namespace, name, exc)
                await asyncio.sleep(1)
            except Exception as exc:  # aiohttp errors: the watch is only a wake-up
                log.debug("Pod watch failed pod=%s/%s error=%r", namespace, name, exc)
                await asyncio.sleep(1)
            pod = await self._read(namespace, name)

    async def _read(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Pod, read again; API trouble is waited out a while, then a transient error."""
        for _ in range(READ_RETRIES):
            try:
                return await self._pods.get_pod(namespace=namespace, name=name)
            except Exception as exc:
                log.debug("Pod read failed pod=%s/%s error=%r", namespace, name, exc)
                await asyncio.sleep(1)
        raise TransientExecutorError(f"Pod {name} could not be read from the API server")

    @staticmethod
    def _report(verdict: PodVerdict, activity: ExecutorActivity) -> None:
        waiting = getattr(activity, "waiting", None)
        if waiting is not None:
            waiting(verdict.message if verdict.kind == "waiting" else None)

    async def _delete(
        self, namespace: str, name: str, uid: str | None, *, until_gone: bool = False
    ) -> None:
        try:
            await self._pods.delete_pod(namespace=namespace, name=name, uid=uid or None)
        except Exception as exc:  # the owner reference still removes it with the run
            log.warning("Could not delete Pod pod=%s/%s error=%s", namespace, name, exc)
            return
        self._on_pod("deleted")
        if until_gone:
            await self._gone(namespace, name, uid)

    async def _gone(self, namespace: str, name: str, uid: str | None) -> None:
        """Until the Pod (that ``uid``) no longer exists, for at most STOP_WAIT_SECONDS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT_SECONDS
        pause = 0.1
        while loop.time() < deadline:
            try:
                pod = await self._pods.get_pod(namespace=namespace, name=name)
            except Exception as exc:
                log.debug("Pod read failed pod=%s/%s error=%r", namespace, name, exc)
            else:
                if pod is None or (uid and (pod.get("metadata") or {}).get("uid") != uid):
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
        log.warning(
            "Pod still there after deletion pod=%s/%s waited_s=%s",
            namespace,
            name,
            STOP_WAIT_SECONDS,
        )

    def _clean_up_later(self, namespace: str, name: str, uid: str) -> None:
        async def clean_up() -> None:
            if self._keep_seconds > 0:
                await asyncio.sleep(self._keep_seconds)
            await self._delete(namespace, name, uid)

        task = asyncio.get_running_loop().create_task(clean_up(), name=f"delete pod {name}")
        self._janitor.add(task)
        task.add_done_callback(self._janitor.discard)


async def drain_janitor(janitor: set[asyncio.Task[None]]) -> None:
    """Cancel the pending deletions of ended attempts' Pods (shutdown)."""
    for task in list(janitor):
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*janitor, return_exceptions=True)
