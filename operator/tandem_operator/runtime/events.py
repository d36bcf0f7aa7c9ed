"""Kubernetes Events, posted by the operator's own client as ``tandem-operator``.

Every transition emits an Event (the contract's §5); ``kubectl describe`` shows them with
``From: tandem-operator``. Posting is best effort and off the reconcile path: Events go
into a bounded queue that one task drains, so a slow or failing Event write never delays
a status write, and an Event that cannot be posted is logged and dropped (the lifecycle
record in status is the durable account; the Event is its notification).

Messages are cut to the API server's limit, which counts bytes (1 KiB), on a character
boundary, so a long reason in any script still posts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from tandem_operator.lifecycle.clock import format_ms
from tandem_operator.lifecycle.contract import Event
from tandem_operator.runtime.ports import wall_ms

log = logging.getLogger(__name__)

COMPONENT = "tandem-operator"
"""``source.component`` and ``reportingComponent`` of every Event the operator posts."""
MAX_MESSAGE_BYTES = 1024
QUEUE_LIMIT = 10_000
FLUSH_SECONDS = 5.0


def cut_to_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, never inside a character."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode(errors="ignore")


class EventWriter(Protocol):
    async def create_event(self, *, namespace: str, body: Mapping[str, Any]) -> Any: ...


def event_body(
    regarding: Mapping[str, Any], event: Event, *, instance: str, now: str
) -> dict[str, Any] | None:
    """The core/v1 Event for ``event`` about the object ``regarding``; None if unnamed."""
    meta = regarding.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not namespace or not name:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": regarding.get("apiVersion"),
            "kind": regarding.get("kind"),
            "name": name,
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": cut_to_bytes(event.message, MAX_MESSAGE_BYTES),
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": cut_to_bytes(instance, 128),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    """An :class:`~tandem_operator.runtime.ports.EventSink` that posts through the API."""

    def __init__(self, api: EventWriter, *, instance: str) -> None:
        self._api = api
        self._instance = instance
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def __call__(self, regarding: Mapping[str, Any], event: Event) -> None:
        now = _seconds(format_ms(wall_ms()))
        body = event_body(regarding, event, instance=self._instance, now=now)
        if body is None:
            return
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            log.warning("Event dropped, queue full reason=%s", event.reason)
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="events")

    async def _drain(self) -> None:
        while not self._queue.empty():
            body = self._queue.get_nowait()
            try:
                await self._api.create_event(namespace=body["metadata"]["namespace"], body=body)
            except Exception as exc:
                log.warning(
                    "Event not posted reason=%s object=%s/%s error=%s",
                    body["reason"],
                    body["involvedObject"]["namespace"],
                    body["involvedObject"]["name"],
                    exc,
                )

    async def flush(self) -> None:
        """Wait (at most ``FLUSH_SECONDS``) until the queued Events are posted."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), FLUSH_SECONDS)


def _seconds(timestamp: str) -> str:
    """core/v1 Event timestamps are whole seconds (``metav1.Time``)."""
    return timestamp[:19] + "Z"
