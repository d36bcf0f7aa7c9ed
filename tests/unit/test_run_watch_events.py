"""What the run watch hands on, from a listing and a watch served in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from tandem_operator.runtime import runwatch


def _run(name: str, version: int) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(version)}}


class Api:
    """One listing, then one watch stream; a second watch waits until cancelled."""

    def __init__(self, listing: list[dict[str, Any]], events: list[tuple[str, Any]]) -> None:
        self.listing = listing
        self.events = events
        self.watched_from: list[str] = []
        self.drained = asyncio.Event()

    async def list_versioned(
        self, *, plural: str, namespace: str | None
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
        yield self.listing, "10"

    async def watch(
        self, path: str, query: Mapping[str, str], resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(resource_version)
        if len(self.watched_from) > 1:
            self.drained.set()
            await asyncio.Event().wait()
        for kind, obj in self.events:
            yield kind, obj


def test_a_run_the_controller_cannot_take_is_skipped_and_the_watch_goes_on() -> None:
    handed: list[tuple[str, bool]] = []

    def on_event(body: Mapping[str, Any], deleted: bool) -> None:
        name = body["metadata"]["name"]
        if name == "poison":
            raise ValueError("malformed")
        handed.append((name, deleted))

    api = Api(
        [_run("a", 5), _run("poison", 6)],
        [("MODIFIED", _run("poison", 11)), ("ADDED", _run("b", 12)), ("DELETED", _run("a", 13))],
    )
    watch = runwatch.RunWatch(
        api,
        namespaces=["ns"],
        on_event=on_event,
        on_page=lambda page: None,
        known=lambda scope: [("ns", "a"), ("ns", "gone")],
    )

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await asyncio.wait_for(api.drained.wait(), 5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert watch.listed.is_set()
    assert handed == [("a", False), ("gone", True), ("b", False), ("a", True)]
    # The stream ended normally; the next one starts after the last event, not again
    # from the listing (which would hand the poisoned run on once more).
    assert api.watched_from == ["10", "13"]
