"""The API as users meet it: the four kinds, the examples, and bad input refused at apply."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Cluster

from tandem_operator.devcluster.session import KubeSession

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def test_api_resources_list_the_four_kinds(crds: KubeSession) -> None:
    out = crds.kubectl("api-resources", "--api-group=automation.tandem.dev", "-o", "wide").stdout
    rows = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert set(rows) == {"automationruns", "automations", "agentquotaoverrides", "agentendpoints"}
    assert "arun,aruns" in rows["automationruns"]
    assert " auto " in rows["automations"]
    assert " aqo " in rows["agentquotaoverrides"]
    assert " aep " in rows["agentendpoints"]
    for line in rows.values():
        assert "tandem" in line  # the category


def test_category_lists_every_kind(cluster: Cluster) -> None:
    for path in EXAMPLES:
        cluster.kubectl("apply", "-f", str(path))
    kinds = {
        item["kind"] for item in json.loads(cluster.kubectl("get", "tandem", "-o", "json"))["items"]
    }
    assert kinds == {"AutomationRun", "Automation", "AgentQuotaOverride", "AgentEndpoint"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_each_example_applies(cluster: Cluster, path: Path) -> None:
    out = cluster.apply(path.read_text())
    assert "created" in out or "configured" in out


def _base_run() -> dict[str, Any]:
    docs = list(
        yaml.safe_load_all((REPO / "examples" / "automationrun-simulated.yaml").read_text())
    )
    run: dict[str, Any] = docs[0]
    return run


def _mutate(path: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    run = _base_run()
    target: Any = run
    parts = path.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if delete:
        del target[last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return run


def _both_refs() -> dict[str, Any]:
    run = _base_run()
    run["spec"]["automationRef"] = {"name": "nightly-digest"}
    return run


def _duplicate_id() -> dict[str, Any]:
    run = _base_run()
    run["spec"]["automation"]["nodes"][1]["id"] = "collect"
    run["spec"]["automation"]["nodes"][1]["dependsOn"] = []
    return run


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("duplicate node id", _duplicate_id(), "nodes[].id must be unique"),
    (
        "unknown dependsOn",
        _mutate("spec.automation.nodes.1.dependsOn", ["nope"]),
        "dependsOn must name nodes of the same flow",
    ),
    ("maxAttempts 11", _mutate("spec.automation.nodes.0.maxAttempts", 11), "maxAttempts"),
    ("maxAttempts 0", _mutate("spec.automation.nodes.0.maxAttempts", 0), "maxAttempts"),
    (
        "both automationRef and automation",
        _both_refs(),
        "exactly one of automationRef or automation",
    ),
    (
        "neither automationRef nor automation",
        _mutate("spec.automation", None, delete=True),
        "exactly one of automationRef or automation",
    ),
    (
        "maxParallelNodes 17",
        _mutate("spec.automation.execution.maxParallelNodes", 17),
        "maxParallelNodes",
    ),
    ("bad profile", _mutate("spec.automation.execution.profile", "Reckless"), "profile"),
    ("bad desiredState", _mutate("spec.desiredState", "Sleeping"), "desiredState"),
    ("bad node kind", _mutate("spec.automation.nodes.0.kind", "Script"), "kind"),
    ("node id not DNS-1123", _mutate("spec.automation.nodes.0.id", "Collect_Data"), "id"),
    (
        "cost not decimal",
        _mutate("spec.automation.execution.maxTotalCostUsd", "lots"),
        "maxTotalCostUsd",
    ),
    (
        "approval on a Task",
        _mutate("spec.automation.nodes.0.approval", {"title": "x"}),
        "approval is only allowed on nodes of kind Approval",
    ),
    (
        "rework target outside the flow",
        _mutate("spec.automation.nodes.2.approval.reworkTargets", ["ghost"]),
        "reworkTargets must name nodes of the same flow",
    ),
    (
        "executor with both kinds",
        _mutate("spec.automation.nodes.0.executor", {"simulate": {}, "endpointRef": {"name": "e"}}),
        "exactly one of endpointRef, simulate or container",
    ),
    (
        "container without an image",
        _mutate("spec.automation.nodes.0.executor", {"container": {"command": ["agent"]}}),
        "image",
    ),
    (
        "container env name invalid",
        _mutate(
            "spec.automation.nodes.0.executor",
            {"container": {"image": "i", "env": [{"name": "1 bad", "value": "x"}]}},
        ),
        "env[0].name",
    ),
    (
        "container label of the operator's",
        _mutate(
            "spec.automation.nodes.0.executor",
            {"container": {"image": "i", "podLabels": {"automation.tandem.dev/run": "x"}}},
        ),
        "podLabels keys",
    ),
    (
        "unknown agent",
        _mutate("spec.automation.nodes.0.agentId", "stranger"),
        "agentId must name an agent",
    ),
    ("bad trigger", _mutate("spec.triggerType", "cron"), "triggerType"),
    (
        "bad simulate outcome",
        _mutate("spec.automation.nodes.0.executor.simulate.outcome", "exploded"),
        "outcome",
    ),
]


@pytest.mark.parametrize(("case", "manifest", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_run_is_rejected_at_apply(
    cluster: Cluster, case: str, manifest: dict[str, Any], message: str
) -> None:
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = "bad"
    result = cluster.apply_result(manifest)
    assert result.returncode != 0, f"{case}: accepted"
    assert message in result.stderr, result.stderr
    missing = cluster.kubectl("get", "automationrun", "bad", "--ignore-not-found", "-o", "name")
    assert missing.strip() == ""


def test_gate_decisions_are_append_only(cluster: Cluster) -> None:
    run = _base_run()
    run["spec"]["desiredState"] = "Paused"
    run["spec"]["gateDecisions"] = [{"gate": "review", "decision": "approve", "requestId": "a"}]
    cluster.apply(run)
    result = cluster.kube.kubectl(
        "-n",
        cluster.namespace,
        "patch",
        "automationrun",
        run["metadata"]["name"],
        "--type=merge",
        "-p",
        json.dumps({"spec": {"gateDecisions": []}}),
        check=False,
    )
    assert result.returncode != 0
    assert "gateDecisions is append-only" in result.stderr
