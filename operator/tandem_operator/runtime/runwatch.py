"""The operator's own list and watch of AutomationRuns, in place of kopf's.

Runs are the one kind with thousands of objects and an event for every write, and kopf's
handling of one event (its per-object worker, cause detection, handler invocation with a
logger and a kwargs set) cost more CPU than the operator's own reconcile of it. Here an
event is a parsed line handed to the controller.

Per watched scope (one namespace, or all of them):

1. **list** every run in pages (``limit``/``continue``), each handed on as it comes, each
   page reported (a new leader reconciles the runs that hold a workspace as their page is
   listed); runs the store still holds in that scope but the listing lacks were deleted
   while nobody watched, and are handed on as deleted;
2. **watch** from the listing's resourceVersion, with bookmarks so that the version stays
   fresh in a quiet namespace; each stream ends after ``WATCH_SECONDS`` and the next one
   starts where it ended;
3. on **410 Gone** (the version is older than the API server keeps), list again; on any
   other error, wait ``RETRY_SECONDS`` and watch again from the last version (list again
   if that fails too).

:attr:`RunWatch.listed` is set once every scope has been listed: from then on the store
holds every run there is, which is what a new leader waits for before it admits (B9).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tandem_operator.runtime.kubeapi import ApiError, KubeApi
from tandem_operator.runtime.ports import RunSource
from tandem_operator.runtime.store import RunKey, object_key

log = logging.getLogger(__name__)

PLURAL = "automationruns"
WATCH_SECONDS = 300
RETRY_SECONDS = 1.0


class _Relist(Exception):
    """The watch cannot go on from its version: list again."""


class RunWatch:
    """Lists and watches the runs of ``namespaces`` (``None``: every namespace)."""

    def __init__(
        self,
        api: RunSource,
        *,
        namespaces: list[str] | None,
        on_event: Callable[[Mapping[str, Any], bool], None],
        on_page: Callable[[list[dict[str, Any]]], None],
        known: Callable[[str | None], Iterable[RunKey]],
    ) -> None:
        self.api = api
        self.scopes: list[str | None] = list(namespaces) if namespaces else [None]
        self.on_event = on_event
        """``(object, deleted)`` for each run listed and each watch event."""
        self.on_page = on_page
        """Each page of a listing, after its runs went to ``on_event``."""
        self.known = known
        """The runs the store holds in a scope (``None``: all): what a listing may lack."""
        self.listed = asyncio.Event()
        self._pending = set(self.scopes)
        self._versions: dict[str | None, str] = {}
        """Per scope, the resourceVersion to watch from: the newest event's or bookmark's."""

    async def run(self) -> None:
        await asyncio.gather(*(self._scope(scope) for scope in self.scopes))

    async def _scope(self, namespace: str | None) -> None:
        while True:
            try:
                if not self._versions.get(namespace):
                    self._versions[namespace] = await self._list(namespace)
                await self._watch(namespace, self._versions[namespace])
            except asyncio.CancelledError:
                raise
            except _Relist:
                self._versions[namespace] = ""
            except Exception as exc:
                log.warning(
                    "Watch of runs failed, retrying namespace=%s error=%s", namespace or "*", exc
                )
                await asyncio.sleep(RETRY_SECONDS)

    async def _list(self, namespace: str | None) -> str:
        seen: set[RunKey] = set()
        version = ""
        async for page, page_version in self.api.list_versioned(plural=PLURAL, namespace=namespace):
            # Every page of a listing is one snapshot: the first page's version is its own.
            version = version or page_version
            for item in page:
                seen.add(object_key(item))
                self._hand_on(item, deleted=False)
            self.on_page(page)
        for key in [k for k in self.known(namespace) if k not in seen]:
            self._hand_on({"metadata": {"namespace": key[0], "name": key[1]}}, deleted=True)
        self._pending.discard(namespace)
        if not self._pending:
            self.listed.set()
        return version

    def _hand_on(self, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """One run to the controller; a run it cannot take is logged and skipped, so that
        one malformed object neither stops the watch nor is handed on again and again."""
        try:
            self.on_event(obj, deleted)
        except Exception:
            namespace, name = object_key(obj)
            log.exception("Run event not handled namespace=%s name=%s", namespace, name)

    async def _watch(self, namespace: str | None, version: str) -> None:
        """One watch stream from ``version``; a stream that breaks resumes where it was."""
        path = KubeApi.collection_path(PLURAL, namespace)
        query = {"allowWatchBookmarks": "true"}
        try:
            async for kind, obj in self.api.watch(path, query, version, WATCH_SECONDS):
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Relist
                    raise ApiError(int(obj.get("code") or 0), str(obj.get("message") or ""))
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._hand_on(obj, deleted=kind == "DELETED")
                meta = obj.get("metadata") or {}
                if meta.get("resourceVersion"):
                    self._versions[namespace] = str(meta["resourceVersion"])
        except ApiError as exc:
            if exc.status == 410:
                raise _Relist from exc
            raise
