"""The kubectl plugin's view of container attempts: which Pod an attempt had, how it ended
(``describe``), and which Pod ``logs`` reads."""

from __future__ import annotations

from typing import Any

import pytest

from tandem_operator.cli.logs import LogsError, container_nodes, logs_target, render_pods
from tandem_operator.cli.plugin import build_parser
from tandem_operator.cli.render import render_describe

IMAGE = {"image": "registry.example/agent:1"}


def _run(**checkpoint: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "digest", "namespace": "team-a"},
        "spec": {
            "automation": {
                "agents": [
                    {"agentId": "boxed", "container": IMAGE},
                    {"agentId": "remote", "endpointRef": {"name": "e"}, "container": IMAGE},
                ],
                "nodes": [
                    {"id": "fetch", "agentId": "boxed"},
                    {"id": "draft", "agentId": "remote"},
                    {"id": "check", "agentId": "remote", "executor": {"container": IMAGE}},
                    {"id": "fake", "executor": {"simulate": {}}},
                ],
            }
        },
        "status": {"phase": "Running", "checkpoint": checkpoint},
    }


def test_container_nodes_are_the_nodes_the_container_executor_runs() -> None:
    assert container_nodes(_run()) == ["fetch", "check"]


def test_describe_lists_each_container_attempt_with_its_pod_and_end() -> None:
    run = _run(
        nodeAttempts={"fetch": 2, "check": 1},
        nodeAttemptVerdicts={
            "fetch": [
                {
                    "attempt": 1,
                    "status": "failed",
                    "error": "Pod digest-fetch-1: container was OOMKilled (exit code 137)",
                }
            ],
        },
    )
    lines = render_pods(run)
    assert lines[0] == "Pods:"
    assert (
        "  fetch attempt 1  digest-fetch-1  failed: Pod digest-fetch-1: container was "
        "OOMKilled (exit code 137)" in lines
    )
    assert "  fetch attempt 2  digest-fetch-2  running" in lines
    assert "  check attempt 1  digest-check-1  running" in lines
    assert "Pods:" in render_describe(run, now_ms=0)


def test_logs_reads_the_latest_or_the_asked_attempt() -> None:
    run = _run(nodeAttempts={"fetch": 2})
    assert logs_target(run, "fetch", None) == ("digest-fetch-2", 2)
    assert logs_target(run, "fetch", 1) == ("digest-fetch-1", 1)
    with pytest.raises(LogsError, match="no attempt yet"):
        logs_target(run, "check", None)


def test_logs_command_parses() -> None:
    args = build_parser().parse_args(["logs", "digest", "fetch", "--attempt", "2", "-f"])
    assert (args.name, args.node, args.attempt, args.follow) == ("digest", "fetch", 2, True)
