"""The operator's list and watch of runs (``runtime.runwatch``) against the real API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from support import Cluster, sim, simulated_run
from test_kubeapi import configuration

from tandem_operator.runtime import runwatch
from tandem_operator.runtime.kubeapi import KubeApi
from tandem_operator.runtime.store import RunKey


class Recorder:
    """What a RunWatch hands on: ``(name, deleted)`` in order, and the size of each page."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.last: dict[str, Mapping[str, Any]] = {}
        self.pages: list[int] = []
        self._changed = asyncio.Event()

    def on_event(self, body: Mapping[str, Any], deleted: bool) -> None:
        self.seen.append((body["metadata"]["name"], deleted))
        self.last[body["metadata"]["name"]] = body
        self._changed.set()

    async def until(self, *expected: tuple[str, bool], since: int, within: float = 30) -> None:
        """Wait until each of ``expected`` was handed on after the first ``since``."""

        async def wait() -> None:
            while not set(expected) <= set(self.seen[since:]):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), within)


def _watch(api: KubeApi, namespace: str, recorder: Recorder) -> runwatch.RunWatch:
    def known(scope: str | None) -> list[RunKey]:
        assert scope == namespace
        # The store still holds a run that was deleted while nobody watched.
        return [(namespace, "ghost"), (namespace, "a")]

    return runwatch.RunWatch(
        api,
        namespaces=[namespace],
        on_event=recorder.on_event,
        on_page=lambda page: recorder.pages.append(len(page)),
        known=known,
    )


def test_runs_are_listed_then_watched_and_runs_gone_meanwhile_are_deleted(
    cluster: Cluster, tmp_path: Path
) -> None:
    for name in ("a", "b", "c"):
        cluster.apply(simulated_run(name, [sim("x")]))
    recorder = Recorder()

    async def body() -> list[tuple[str, bool]]:
        api = KubeApi(configuration=configuration(cluster.kube.kubeconfig))
        watch = _watch(api, cluster.namespace, recorder)
        task = asyncio.create_task(watch.run())
        try:
            await asyncio.wait_for(watch.listed.wait(), 30)
            listed = list(recorder.seen)
            assert sorted(listed) == [("a", False), ("b", False), ("c", False), ("ghost", True)]
            assert recorder.pages == [3]
            await asyncio.to_thread(cluster.apply, simulated_run("d", [sim("x")]))
            await asyncio.to_thread(cluster.kubectl, "delete", "automationrun", "a", "--wait=false")
            # An event of 200 KB, read from the stream in several chunks, comes whole.
            big = "x" * 200_000
            patch = tmp_path / "big.json"
            patch.write_text(json.dumps({"metadata": {"annotations": {"big": big}}}))
            await asyncio.to_thread(
                cluster.kubectl,
                "patch",
                "automationrun",
                "b",
                "--type=merge",
                f"--patch-file={patch}",
            )
            await recorder.until(("d", False), ("a", True), ("b", False), since=len(listed))
            annotations = recorder.last["b"]["metadata"].get("annotations") or {}
            assert annotations.get("big") == big
            return recorder.seen[len(listed) :]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await api.aclose()

    after = asyncio.run(body())
    assert ("d", False) in after
    assert ("a", True) in after
    assert after.count(("b", False)) >= 1
    assert ("c", True) not in after


def test_a_watch_from_a_version_the_server_no_longer_keeps_lists_again(
    cluster: Cluster,
) -> None:
    cluster.apply(simulated_run("a", [sim("x")]))

    async def body() -> None:
        api = KubeApi(configuration=configuration(cluster.kube.kubeconfig))
        try:
            watch = _watch(api, cluster.namespace, Recorder())
            with pytest.raises(runwatch._Relist):
                await asyncio.wait_for(watch._watch(cluster.namespace, "1"), 30)
        finally:
            await api.aclose()

    asyncio.run(body())
