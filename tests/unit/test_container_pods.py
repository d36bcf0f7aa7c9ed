"""The container executor: the Pod it builds (C1, C2), how it reads a Pod's end (C3), and how
it follows, adopts and deletes Pods (C4, C5) against a fake Pod API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from tandem_operator.api.models import AutomationSpec, Container
from tandem_operator.execution.container import (
    ATTEMPT_ENV,
    LABEL_ATTEMPT,
    LABEL_NODE,
    LABEL_RUN,
    ContainerExecutor,
    pod_manifest,
    pod_name,
    pod_verdict,
)
from tandem_operator.execution.registry import (
    AgentEndpointKind,
    ContainerKind,
    Target,
    default_registry,
)
from tandem_operator.execution.types import (
    AttemptRequest,
    ExecutorConfigError,
    TransientExecutorError,
)

REQUEST = AttemptRequest(
    run_namespace="team-a",
    run_name="weekly",
    run_uid="uid-1",
    node_id="draft",
    attempt=2,
    objective="Draft it",
    inputs={"collect": {"status": "completed", "n": 3}},
    runtime_context={"tenant": "a"},
    agent={"agentId": "writer"},
)


def _container(**extra: Any) -> Container:
    return Container.model_validate({"image": "registry.example/agent:1", **extra})


# -- C1/C2: the Pod ---------------------------------------------------------------------------


def test_pod_name_is_run_node_attempt_and_shortened_with_a_hash_past_63() -> None:
    assert pod_name("weekly", "draft", 2) == "weekly-draft-2"
    long = pod_name("r" * 60, "node", 1)
    assert len(long) <= 63
    assert long != pod_name("r" * 60, "node", 2)
    assert long.startswith("r" * 40)
    assert not long.endswith("-")
    assert long[-1].isalnum()


def test_manifest_labels_owner_restart_policy_and_restricted_profile() -> None:
    pod = pod_manifest(request=REQUEST, container=_container())
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "weekly-draft-2"
    assert meta["namespace"] == "team-a"
    assert meta["labels"] == {LABEL_RUN: "weekly", LABEL_NODE: "draft", LABEL_ATTEMPT: "2"}
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "AutomationRun"
    assert owner["uid"] == "uid-1"
    assert owner["controller"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in spec
    assert spec["securityContext"]["runAsNonRoot"] is True
    (c,) = spec["containers"]
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_attempt_env_is_the_agent_endpoint_request_body() -> None:
    pod = pod_manifest(
        request=REQUEST,
        container=_container(env=[{"name": "MODEL", "value": "small"}]),
    )
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["MODEL"]["value"] == "small"
    body = json.loads(env[ATTEMPT_ENV]["value"])
    assert body == {
        "run": {"namespace": "team-a", "name": "weekly", "uid": "uid-1"},
        "node": "draft",
        "attempt": 2,
        "objective": "Draft it",
        "inputs": {"collect": {"status": "completed", "n": 3}},
        "runtimeContext": {"tenant": "a"},
        "agent": {"agentId": "writer"},
    }


def test_optional_fields_are_copied() -> None:
    pod = pod_manifest(
        request=REQUEST,
        container=_container(
            command=["python", "-m", "agent"],
            args=["--fast"],
            env=[{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
            resources={"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}},
            serviceAccountName="agent-sa",
            activeDeadlineSeconds=30,
            podAnnotations={"tandem.test/phase": "Failed"},
            podLabels={"team": "a"},
        ),
    )
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "agent"]
    assert c["args"] == ["--fast"]
    assert c["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "64Mi"}}
    assert {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in c["env"]
    assert spec["serviceAccountName"] == "agent-sa"
    assert spec["automountServiceAccountToken"] is True
    assert spec["activeDeadlineSeconds"] == 30
    assert pod["metadata"]["annotations"] == {"tandem.test/phase": "Failed"}
    assert pod["metadata"]["labels"]["team"] == "a"


def test_user_labels_cannot_replace_the_operators() -> None:
    pod = pod_manifest(request=REQUEST, container=_container(podLabels={LABEL_RUN: "other"}))
    assert pod["metadata"]["labels"][LABEL_RUN] == "weekly"


# -- C3: the verdict --------------------------------------------------------------------------


def _ended(
    *,
    phase: str = "Succeeded",
    exit_code: int = 0,
    reason: str = "Completed",
    message: str = "",
) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "agent",
                    "state": {
                        "terminated": {"exitCode": exit_code, "reason": reason, "message": message}
                    },
                }
            ],
        },
    }


def test_result_from_the_termination_message() -> None:
    message = json.dumps(
        {"status": "completed", "output": {"x": 1}, "promptTokens": 5, "completionTokens": 7}
    )
    verdict = pod_verdict(_ended(message=message))
    assert verdict.kind == "result"
    assert verdict.result is not None
    assert verdict.result.output == {"x": 1, "status": "completed"}
    assert (verdict.result.prompt_tokens, verdict.result.completion_tokens) == (5, 7)


@pytest.mark.parametrize(
    ("pod", "words"),
    [
        (_ended(phase="Failed", exit_code=3, reason="Error"), "exited with code 3 (Error)"),
        (_ended(phase="Failed", exit_code=137, reason="OOMKilled"), "OOMKilled"),
        (_ended(), "without a result"),
        (_ended(message="not json"), "not JSON"),
        (_ended(message='{"status": "great"}'), "unknown result status"),
        (_ended(message='{"status": "completed", "output": []}'), "not a JSON object"),
    ],
)
def test_ends_without_a_valid_result_fail_and_say_why(pod: dict[str, Any], words: str) -> None:
    verdict = pod_verdict(pod)
    assert verdict.kind == "failed"
    assert words in verdict.message


@pytest.mark.parametrize(
    "pod",
    [
        None,
        {"metadata": {}, "status": {"phase": "Failed", "reason": "Evicted"}},
        {"metadata": {}, "status": {"phase": "Unknown"}},
        {"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}},
    ],
)
def test_deleted_evicted_or_node_lost_is_lost(pod: dict[str, Any] | None) -> None:
    assert pod_verdict(pod).kind == "lost"


def test_image_pull_failure_waits_and_says_why() -> None:
    pod = {
        "metadata": {},
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "agent", "state": {"waiting": {"reason": "ErrImagePull", "message": "m"}}}
            ],
        },
    }
    verdict = pod_verdict(pod)
    assert verdict.kind == "waiting"
    assert "ErrImagePull" in verdict.message
    unscheduled = {
        "metadata": {},
        "status": {
            "phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}],
        },
    }
    assert pod_verdict(unscheduled).kind == "waiting"
    assert pod_verdict({"metadata": {}, "status": {"phase": "Running"}}).kind == "running"


# -- choosing the kind ------------------------------------------------------------------------


def _target(executor: Mapping[str, Any] | None, agent: Mapping[str, Any]) -> Target:
    node: dict[str, Any] = {"id": "n", "agentId": "a"}
    if executor is not None:
        node["executor"] = executor
    flow = AutomationSpec.model_validate({"agents": [{"agentId": "a", **agent}], "nodes": [node]})
    return Target(namespace="ns", node=flow.nodes[0], agent=flow.agents[0])


def test_container_kind_claims_node_and_agent_defaults() -> None:
    kinds = default_registry(ContainerKind(pods=FakePods()))
    image = {"image": "i"}
    assert kinds.kind_name(_target({"container": image}, {})) == "container"
    assert kinds.kind_name(_target(None, {"container": image})) == "container"
    # The node's own executor wins over the agent's default; the agent's endpoint over its
    # container.
    assert (
        kinds.kind_name(_target({"container": image}, {"endpointRef": {"name": "e"}}))
        == "container"
    )
    assert (
        kinds.kind_name(_target(None, {"endpointRef": {"name": "e"}, "container": image}))
        == AgentEndpointKind.name
    )
    assert default_registry().kind_name(_target({"container": image}, {})) == "none"


# -- following a Pod --------------------------------------------------------------------------


class FakePods:
    """A Pod API in memory: a test scripts the Pod's statuses as watch events."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.deleted: list[str] = []
        self.created = 0

    async def create_pod(
        self, *, namespace: str, body: Mapping[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        name = body["metadata"]["name"]
        if name in self.pods:
            return self.pods[name], False
        pod = json.loads(json.dumps(body))
        pod["metadata"].update(uid=f"pod-{name}", resourceVersion="1")
        pod["status"] = {"phase": "Pending"}
        self.pods[name] = pod
        self.created += 1
        return pod, True

    async def get_pod(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(name)

    async def delete_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None:
        self.pods.pop(name, None)
        self.deleted.append(name)

    async def watch_pod(
        self,
        *,
        namespace: str,
        name: str,
        label_selector: str,
        resource_version: str,
        timeout_seconds: int,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        assert label_selector == f"{LABEL_RUN}=weekly"
        while True:
            kind, status = await self.events.get()
            if kind == "DELETED":
                self.pods.pop(name, None)
                yield kind, {}
                continue
            pod = self.pods[name]
            pod["status"] = status
            yield kind, pod


class Activity:
    def __init__(self) -> None:
        self.active = 0
        self.reasons: list[str | None] = []
        self.detached = False

    def activity(self) -> None:
        self.active += 1

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        pass

    def waiting(self, reason: str | None) -> None:
        self.reasons.append(reason)


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_executor_creates_follows_and_cleans_up() -> None:
    async def scenario() -> None:
        pods = FakePods()
        executor = ContainerExecutor(container=_container(), pods=pods)
        activity = Activity()
        task = asyncio.create_task(executor.run(REQUEST, activity))
        await pods.events.put(("MODIFIED", {"phase": "Running"}))
        message = json.dumps({"status": "completed", "output": {"ok": True}})
        await pods.events.put(("MODIFIED", _ended(message=message)["status"]))
        result = await task
        assert result.status == "completed"
        assert result.output["ok"] is True
        assert pods.created == 1
        assert activity.active >= 2
        await asyncio.sleep(0.05)
        assert pods.deleted == ["weekly-draft-2"]

    _run(scenario())


def test_executor_adopts_an_existing_pod_of_the_attempt() -> None:
    async def scenario() -> None:
        pods = FakePods()
        events: list[str] = []
        await pods.create_pod(
            namespace="team-a", body=pod_manifest(request=REQUEST, container=_container())
        )
        message = json.dumps({"status": "needs_repair"})
        pods.pods["weekly-draft-2"]["status"] = _ended(message=message)["status"]
        executor = ContainerExecutor(container=_container(), pods=pods, on_pod=events.append)
        result = await executor.run(REQUEST, Activity())
        assert result.status == "needs_repair"
        assert pods.created == 1
        assert events[0] == "adopted"

    _run(scenario())


async def cancel_while_running(pods: FakePods, *, detached: bool = False) -> list[str]:
    """Start an attempt, cancel it while its Pod runs: the Pods deleted by then."""
    executor = ContainerExecutor(container=_container(), pods=pods)
    activity = Activity()
    activity.detached = detached
    task = asyncio.create_task(executor.run(REQUEST, activity))
    await pods.events.put(("MODIFIED", {"phase": "Running"}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return pods.deleted


def test_cancellation_deletes_the_pod_unless_detached() -> None:
    assert _run(cancel_while_running(FakePods())) == ["weekly-draft-2"]
    assert _run(cancel_while_running(FakePods(), detached=True)) == []


class GracefulPods(FakePods):
    """Deleting a Pod only marks it; it goes after a few reads (a kubelet's grace period)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads_while_terminating = 0

    async def delete_pod(self, *, namespace: str, name: str, uid: str | None = None) -> None:
        self.pods[name]["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        self.deleted.append(name)

    async def get_pod(self, *, namespace: str, name: str) -> dict[str, Any] | None:
        pod = self.pods.get(name)
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            self.reads_while_terminating += 1
            if self.reads_while_terminating == 3:
                del self.pods[name]  # its grace period is over
        return pod


def test_a_cancelled_attempt_ends_only_once_its_pod_is_gone() -> None:
    # A resumed attempt has the same number, so the same Pod name: the old Pod must be gone.
    pods = GracefulPods()
    assert _run(cancel_while_running(pods)) == ["weekly-draft-2"]
    assert pods.reads_while_terminating == 3
    assert pods.pods == {}


def test_a_deleted_pod_is_transient_and_a_failed_one_a_config_error() -> None:
    async def scenario(event: tuple[str, dict[str, Any]]) -> None:
        pods = FakePods()
        executor = ContainerExecutor(container=_container(), pods=pods)
        task = asyncio.create_task(executor.run(REQUEST, Activity()))
        await pods.events.put(event)
        await task

    with pytest.raises(TransientExecutorError, match="deleted"):
        _run(scenario(("DELETED", {})))
    with pytest.raises(ExecutorConfigError, match="OOMKilled"):
        _run(scenario(("MODIFIED", _ended(exit_code=137, reason="OOMKilled")["status"])))


def test_waiting_is_reported_and_is_no_activity() -> None:
    async def scenario() -> Activity:
        pods = FakePods()
        executor = ContainerExecutor(container=_container(), pods=pods)
        activity = Activity()
        task = asyncio.create_task(executor.run(REQUEST, activity))
        waiting = {"reason": "ImagePullBackOff", "message": "back-off"}
        await pods.events.put(
            (
                "MODIFIED",
                {
                    "phase": "Pending",
                    "containerStatuses": [{"name": "agent", "state": {"waiting": waiting}}],
                },
            )
        )
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return activity

    activity = _run(scenario())
    assert activity.active == 1  # the creation only
    assert activity.reasons[-1] is not None
    assert "ImagePullBackOff" in activity.reasons[-1]
