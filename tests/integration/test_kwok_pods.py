"""Pods really run on the local control plane's fake Nodes, and their fate is scriptable.

kube-scheduler binds each Pod to a kwok Node and kwok plays its kubelet with the project's
Stages (``devcluster/kwok-stages.yaml``), so a test decides through a Pod's annotations how
its container ends: phase, exit code, reason, termination message, or never starting.
Everything is observed through the real API server; transitions are read from a watch that
starts before the Pod exists, so none is missed however fast kwok moves.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import wait_for

from tandem_operator.devcluster.nodes import (
    POD_DELAY,
    POD_EXIT_CODE,
    POD_PHASE,
    POD_REASON,
    POD_TERMINATION_MESSAGE,
    NodePool,
)
from tandem_operator.devcluster.session import KubeSession

TIMEOUT = 60.0

Pod = dict[str, Any]


def pod_manifest(
    name: str, annotations: dict[str, str] | None = None, *, restart_policy: str = "Never"
) -> Pod:
    """One container, no service account token: what the container executor creates."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "restartPolicy": restart_policy,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": "registry.example.com/agents/test:1"}],
        },
    }


class PodWatch:
    """Every change to the Pods of a namespace from now on, via ``kubectl get --raw``."""

    def __init__(self, kube: KubeSession, namespace: str) -> None:
        listing = kube.kubectl_json("get", "pods", "-n", namespace)
        version = listing["metadata"]["resourceVersion"]
        self._proc = subprocess.Popen(
            [
                str(kube.tools.kubectl),
                f"--kubeconfig={kube.kubeconfig}",
                "get",
                "--raw",
                f"/api/v1/namespaces/{namespace}/pods?watch=1&resourceVersion={version}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.seen: dict[str, list[Pod]] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self._events.put(json.loads(line))
        self._events.put(None)

    def until(self, name: str, done: Callable[[Pod], bool], *, timeout: float = TIMEOUT) -> Pod:
        """Read events until Pod ``name`` satisfies ``done``; return that version of it."""
        for pod in reversed(self.seen.get(name, [])):
            if done(pod):
                return pod
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self._events.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise AssertionError(
                    f"Pod {name} did not get there in {timeout}s; it went through "
                    f"{self.phases(name)}, last status: {self.last_status(name)}"
                ) from None
            if event is None:
                raise AssertionError(f"The watch ended: {self._stderr()}")
            pod = event["object"]
            if pod.get("kind") != "Pod":
                raise AssertionError(f"The watch failed: {event}")
            pod["_event"] = event["type"]
            self.seen.setdefault(pod["metadata"]["name"], []).append(pod)
            if pod["metadata"]["name"] == name and done(pod):
                return pod

    def phases(self, name: str) -> list[str]:
        """The Pod's phases in order, each once (repeated updates in one phase collapse)."""
        phases: list[str] = []
        for pod in self.seen.get(name, []):
            phase = (pod.get("status") or {}).get("phase", "")
            if not phases or phases[-1] != phase:
                phases.append(phase)
        return phases

    def last_status(self, name: str) -> Any:
        pods = self.seen.get(name)
        return pods[-1].get("status") if pods else None

    def _stderr(self) -> str:
        self._proc.kill()
        _, err = self._proc.communicate()
        return err

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


def phase_is(*phases: str) -> Callable[[Pod], bool]:
    return lambda pod: (pod.get("status") or {}).get("phase") in phases


def deleted(pod: Pod) -> bool:
    return pod.get("_event") == "DELETED"


def container(pod: Pod) -> dict[str, Any]:
    statuses = pod["status"]["containerStatuses"]
    assert [s["name"] for s in statuses] == ["agent"]
    result: dict[str, Any] = statuses[0]
    return result


@pytest.fixture
def pods(kwok_nodes: KubeSession, namespace: str) -> Iterator[PodWatch]:
    watch = PodWatch(kwok_nodes, namespace)
    try:
        yield watch
    finally:
        watch.close()


def create(kube: KubeSession, namespace: str, *manifests: Pod) -> None:
    kube.kubectl(
        "-n",
        namespace,
        "create",
        "-f",
        "-",
        input="\n".join(json.dumps(m) for m in manifests),
    )


# ------------------------------------------------------------------------------ fates


def test_a_pod_without_annotations_is_scheduled_runs_and_succeeds(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    create(kwok_nodes, namespace, pod_manifest("plain"))
    done = pods.until("plain", phase_is("Succeeded", "Failed"))

    assert pods.phases("plain") == ["Pending", "Running", "Succeeded"]
    assert done["spec"]["nodeName"] in NodePool().names()
    state = container(done)["state"]
    assert set(state) == {"terminated"}
    assert state["terminated"]["exitCode"] == 0
    assert state["terminated"]["reason"] == "Completed"
    assert "message" not in state["terminated"]
    running = next(p for p in pods.seen["plain"] if phase_is("Running")(p))
    assert set(container(running)["state"]) == {"running"}
    assert container(running)["ready"] is True
    # The scheduler said so, as it does in any cluster.
    assert {"type": "PodScheduled", "status": "True"}.items() <= next(
        c for c in done["status"]["conditions"] if c["type"] == "PodScheduled"
    ).items()


def test_an_oom_killed_pod_fails_with_exit_code_137(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    create(
        kwok_nodes,
        namespace,
        pod_manifest(
            "oom",
            {POD_PHASE: "Failed", POD_EXIT_CODE: "137", POD_REASON: "OOMKilled", POD_DELAY: "0s"},
        ),
    )
    done = pods.until("oom", phase_is("Succeeded", "Failed"))

    assert pods.phases("oom") == ["Pending", "Running", "Failed"]
    terminated = container(done)["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (137, "OOMKilled")
    assert set(container(done)["state"]) == {"terminated"}


def test_a_failed_pod_defaults_to_exit_code_1_and_reason_error(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    create(kwok_nodes, namespace, pod_manifest("fails", {POD_PHASE: "Failed", POD_DELAY: "0s"}))
    terminated = container(pods.until("fails", phase_is("Failed")))["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (1, "Error")


def test_the_termination_message_arrives_verbatim(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    result = {
        "status": "completed",
        "output": {"answer": 'line one\nline "two" <b>&</b> ünïcödé \\ {{ .x }}', "n": [1, 2.5]},
        "promptTokens": 120,
        "completionTokens": 34,
    }
    message = json.dumps(result, ensure_ascii=False)
    create(
        kwok_nodes,
        namespace,
        pod_manifest("result", {POD_TERMINATION_MESSAGE: message, POD_DELAY: "100ms"}),
    )
    done = pods.until("result", phase_is("Succeeded", "Failed"))

    assert done["status"]["phase"] == "Succeeded"
    terminated = container(done)["state"]["terminated"]
    assert terminated["message"] == message
    assert json.loads(terminated["message"]) == result


def test_the_delay_annotation_sets_how_long_the_container_runs(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    create(kwok_nodes, namespace, pod_manifest("slow", {POD_DELAY: "3s"}))
    done = pods.until("slow", phase_is("Succeeded"))
    terminated = container(done)["state"]["terminated"]
    started = _timestamp(terminated["startedAt"])
    finished = _timestamp(terminated["finishedAt"])
    # Timestamps have a resolution of one second.
    assert finished - started >= 2


@pytest.mark.parametrize("reason", [None, "ImagePullBackOff"])
def test_a_pod_told_to_stay_pending_never_starts(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch, reason: str | None
) -> None:
    annotations = {POD_PHASE: "Pending"} | ({POD_REASON: reason} if reason else {})
    create(kwok_nodes, namespace, pod_manifest("stuck", annotations))
    stuck = pods.until("stuck", lambda pod: "containerStatuses" in pod.get("status", {}))

    waiting = container(stuck)["state"]["waiting"]
    assert waiting["reason"] == (reason or "ErrImagePull")
    assert "registry.example.com/agents/test:1" in waiting["message"]
    assert stuck["spec"]["nodeName"] in NodePool().names()
    # A Pod created after it runs to the end on the same kwok, and meanwhile the stuck one
    # has not moved: kwok has acted on it and left it Pending.
    create(kwok_nodes, namespace, pod_manifest("later", {POD_DELAY: "0s"}))
    pods.until("later", phase_is("Succeeded"))
    assert pods.phases("stuck") == ["Pending"]
    now = kwok_nodes.kubectl_json("-n", namespace, "get", "pod", "stuck")
    assert now["status"]["phase"] == "Pending"
    assert container(now)["state"] == {"waiting": waiting}


def test_running_pods_run_until_deleted_and_deleted_pods_disappear(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    create(
        kwok_nodes,
        namespace,
        pod_manifest("forever", {POD_PHASE: "Running"}),
        # No annotations and restartPolicy Always (a Deployment's Pod): keeps running too.
        pod_manifest("service", restart_policy="Always"),
    )
    pods.until("forever", phase_is("Running"))
    pods.until("service", phase_is("Running"))
    create(kwok_nodes, namespace, pod_manifest("later", {POD_DELAY: "0s"}))
    pods.until("later", phase_is("Succeeded"))
    assert pods.phases("forever") == ["Pending", "Running"]
    assert pods.phases("service") == ["Pending", "Running"]

    # Default grace period (30s): kwok removes the Pod at once, like a kubelet whose
    # container stopped on SIGTERM.
    kwok_nodes.kubectl("-n", namespace, "delete", "pod", "forever", "service", "--wait=false")
    pods.until("forever", deleted)
    pods.until("service", deleted)
    left = kwok_nodes.kubectl_json("-n", namespace, "get", "pods")
    assert [p["metadata"]["name"] for p in left["items"]] == ["later"]


# --------------------------------------------------------------- kube-controller-manager


def test_new_namespaces_get_a_default_service_account(
    kwok_nodes: KubeSession, namespace: str
) -> None:
    wait_for(
        lambda: (
            kwok_nodes.kubectl(
                "-n", namespace, "get", "serviceaccount", "default", check=False
            ).returncode
            == 0
        ),
        timeout=TIMEOUT,
        what="the default ServiceAccount",
    )


def test_pods_owned_by_a_deleted_object_are_garbage_collected(
    kwok_nodes: KubeSession, namespace: str, pods: PodWatch
) -> None:
    owner = kwok_nodes.kubectl_json(
        "-n", namespace, "create", "configmap", "owner", "--from-literal=k=v"
    )
    child = pod_manifest("owned", {POD_PHASE: "Running"})
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "owner",
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
    ]
    create(kwok_nodes, namespace, child)
    pods.until("owned", phase_is("Running"))

    kwok_nodes.kubectl("-n", namespace, "delete", "configmap", "owner")
    pods.until("owned", deleted)


def _timestamp(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
