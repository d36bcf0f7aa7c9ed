"""The store: what the operator keeps of every watched object between events.

Runs are kept compact and read-only (``CachedRun``); the three other kinds as trimmed
objects. The store also keeps B9's admission index up to date as runs change phase, so
that a verdict never walks every run (``scheduling.admission.AdmissionQueue``).

What the operator keeps of each AutomationRun between events is compact and read-only.

A run arrives from the watch (or a LIST, or a PATCH response) as parsed JSON, about 18 KB
of Python objects for a run parked at a gate. The cache keeps instead the few facts that
the lifecycle tick, admission and the metrics read of *every* run on every pass, plus the
whole object as compact JSON bytes (about 3 KB), which only a reconcile of that one run
parses again. ``metadata.managedFields`` and kubectl's last-applied annotation are dropped:
nothing reads them, and they repeat the status and the spec.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tandem_operator.lifecycle.clock import parse_ms
from tandem_operator.scheduling.admission import AdmissionQueue, FlowFacts, Waiting, workspace_root
from tandem_operator.scheduling.runs import SCHEDULED_AT_ANNOTATION

RunKey = tuple[str, str]

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def resource_version(body: Mapping[str, Any]) -> int:
    meta = body.get("metadata")
    try:
        return int(meta.get("resourceVersion", "0")) if isinstance(meta, Mapping) else 0
    except (TypeError, ValueError):
        return 0


def object_key(body: Mapping[str, Any]) -> RunKey:
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return ("", "")
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` without the bookkeeping nothing here reads (a shallow copy)."""
    copy = dict(body)
    meta = copy.get("metadata")
    if isinstance(meta, Mapping):
        meta = {k: v for k, v in meta.items() if k != "managedFields"}
        annotations = meta.get("annotations")
        if isinstance(annotations, Mapping) and LAST_APPLIED in annotations:
            meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
        copy["metadata"] = meta
    return copy


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedRun:
    key: RunKey
    resource_version: int
    generation: int
    created: str
    """metadata.creationTimestamp (admission order)."""
    phase: str | None
    desired_state: str
    queue_reason: str | None
    retry_after_ms: int | None
    """status.scheduler.retryAfter"""
    own_workspace: str | None
    """workspace.root of the snapshot or the inline automation."""
    has_flow: bool
    """A snapshot or an inline automation; otherwise the flow is ``automation_ref``'s."""
    automation_ref: str | None
    uid: str
    api_version: str
    kind: str
    raw: bytes
    """The whole (trimmed) object, compact JSON."""
    owner: tuple[str, str] | None = None
    """(name, uid) of the controller ownerReference of kind Automation (schedules, B19)."""
    scheduled_at_ms: int | None = None
    """The due time a schedule created the run for (its scheduled-at annotation)."""
    finished_at_ms: int | None = None
    """status.finishedAt (history limits, time to live: B20)."""
    ttl_seconds: int | None = None
    """spec.ttlSecondsAfterFinished (B20b)."""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CachedRun:
        body = trimmed(body)
        meta = body.get("metadata") if isinstance(body.get("metadata"), Mapping) else {}
        assert isinstance(meta, Mapping)
        spec = body.get("spec") if isinstance(body.get("spec"), Mapping) else {}
        assert isinstance(spec, Mapping)
        status = body.get("status")
        status_map: Mapping[str, Any] = status if isinstance(status, Mapping) else {}
        scheduler = status_map.get("scheduler")
        scheduler_map: Mapping[str, Any] = scheduler if isinstance(scheduler, Mapping) else {}
        ref = spec.get("automationRef")
        try:
            generation = int(meta.get("generation") or 0)
        except (TypeError, ValueError):
            generation = 0
        retry = scheduler_map.get("retryAfter")
        annotations = meta.get("annotations")
        scheduled = (
            annotations.get(SCHEDULED_AT_ANNOTATION) if isinstance(annotations, Mapping) else None
        )
        finished = status_map.get("finishedAt")
        ttl = spec.get("ttlSecondsAfterFinished")
        return cls(
            key=object_key(body),
            resource_version=resource_version(body),
            generation=generation,
            created=str(meta.get("creationTimestamp", "")),
            phase=_text(status_map.get("phase")),
            desired_state=str(spec.get("desiredState") or "Running"),
            queue_reason=_text(scheduler_map.get("queueReason")),
            retry_after_ms=parse_ms(retry) if isinstance(retry, str) else None,
            own_workspace=workspace_root(body),
            has_flow=bool(status_map.get("automationSnapshot") or spec.get("automation")),
            automation_ref=_text(ref.get("name")) if isinstance(ref, Mapping) else None,
            uid=str(meta.get("uid", "")),
            api_version=str(body.get("apiVersion", "")),
            kind=str(body.get("kind", "")),
            raw=json.dumps(body, separators=(",", ":")).encode(),
            owner=_automation_owner(meta),
            scheduled_at_ms=parse_ms(scheduled) if isinstance(scheduled, str) else None,
            finished_at_ms=parse_ms(finished) if isinstance(finished, str) else None,
            ttl_seconds=ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None,
        )

    def body(self) -> dict[str, Any]:
        """The object as the API server last sent it (a fresh copy to read or change)."""
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    def reference(self) -> dict[str, Any]:
        """Just enough of the object to post an Event about it."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {"namespace": self.key[0], "name": self.key[1], "uid": self.uid},
        }

    def waiting(self) -> Waiting:
        """What admission keeps of this run."""
        return Waiting(
            key=self.key,
            created=self.created,
            desired_running=self.desired_state == "Running",
            retry_after_ms=self.retry_after_ms,
            own_workspace=self.own_workspace,
            automation_ref=self.automation_ref,
            has_flow=self.has_flow,
        )


def _automation_owner(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller") and ref.get("kind") == "Automation":
            return (str(ref.get("name", "")), str(ref.get("uid", "")))
    return None


TOMBSTONES = 4096
"""Deleted runs remembered, so a late answer about one does not bring it back."""


def _ignore(before: CachedRun | None, after: CachedRun | None) -> None:
    return None


KINDS = ("automations", "endpoints", "overrides", "runs")
"""The store's kinds, by the name the runtime uses for each."""


class Store:
    """Every watched object the operator knows, newest version only."""

    def __init__(self, *, capacity: int) -> None:
        self.runs: dict[RunKey, CachedRun] = {}
        self.automations: dict[RunKey, dict[str, Any]] = {}
        self.endpoints: dict[RunKey, dict[str, Any]] = {}
        self.overrides: dict[RunKey, dict[str, Any]] = {}
        self.first_generations: dict[RunKey, int] = {}
        """Each run's metadata.generation when this process first saw it: the spec a status
        without observedGeneration (written by hand) is taken to have seen (B3, B12)."""
        self.admission = AdmissionQueue(capacity=capacity, referenced=self.referenced)
        self.owned: dict[str, set[RunKey]] = {}
        """Runs by the uid of the Automation that controls them (ownerReference)."""
        self._tombstones: OrderedDict[RunKey, int] = OrderedDict()
        """resourceVersion at deletion of recently deleted runs (at most ``TOMBSTONES``)."""
        self.on_run_change: Callable[[CachedRun | None, CachedRun | None], None] = _ignore
        """Called with (before, after) whenever the stored run changes, whoever brought the
        new version (a watch event, a listing, the answer to the operator's own write);
        ``after`` is ``None`` for a deletion."""

    def referenced(self, namespace: str, name: str) -> FlowFacts:
        spec = (self.automations.get((namespace, name)) or {}).get("spec")
        return FlowFacts(exists=spec is not None, workspace=workspace_root({}, spec))

    def observe(self, kind: str, body: Mapping[str, Any], *, deleted: bool = False) -> bool:
        """Keep ``body`` if it is newer than what is stored; True when the store moved on.

        The same version again (the watch echoing the operator's own write, a listing
        after the leader's own) or an older one is nothing new.
        """
        key = object_key(body)
        if kind == "runs":
            return self._observe_run(key, body, deleted=deleted)
        store: dict[RunKey, dict[str, Any]] = getattr(self, kind)
        if deleted:
            return store.pop(key, None) is not None
        current = store.get(key)
        if current is None or resource_version(body) > resource_version(current):
            store[key] = trimmed(body)
            return True
        return False

    def _observe_run(self, key: RunKey, body: Mapping[str, Any], *, deleted: bool) -> bool:
        version = resource_version(body)
        if deleted:
            self.admission.update(key, phase=None, waiting=None)
            self.first_generations.pop(key, None)
            gone = self.runs.pop(key, None)
            if gone is not None:
                self._unindex(gone)
            # A write answered after the deletion event carries an older resourceVersion;
            # the tombstone keeps it from bringing the run back.
            last = max(version, gone.resource_version if gone is not None else 0)
            self._tombstones.pop(key, None)
            self._tombstones[key] = last
            while len(self._tombstones) > TOMBSTONES:
                self._tombstones.popitem(last=False)
            if gone is not None:
                self.on_run_change(gone, None)
            return gone is not None
        current = self.runs.get(key)
        if current is not None and version <= current.resource_version:
            return False
        if current is None and key in self._tombstones:
            if version <= self._tombstones[key]:
                return False
            del self._tombstones[key]
        run = CachedRun.of(body)
        if current is not None:
            self._unindex(current)
        self.runs[key] = run
        self.first_generations.setdefault(key, run.generation)
        if run.owner is not None:
            self.owned.setdefault(run.owner[1], set()).add(key)
        self.admission.update(key, phase=run.phase, waiting=run.waiting())
        self.on_run_change(current, run)
        return True

    def _unindex(self, run: CachedRun) -> None:
        if run.owner is None:
            return
        keys = self.owned.get(run.owner[1])
        if keys is not None:
            keys.discard(run.key)
            if not keys:
                del self.owned[run.owner[1]]

    def owned_by(self, uid: str) -> list[CachedRun]:
        """The runs an Automation controls (ownerReference with ``controller: true``)."""
        return [self.runs[k] for k in self.owned.get(uid, ()) if k in self.runs]

    def runs_in(self, namespace: str) -> list[RunKey]:
        return [k for k in self.runs if k[0] == namespace]
