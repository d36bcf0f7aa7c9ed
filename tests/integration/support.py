"""Helpers for integration tests: the operator as a process, kubectl-only cluster access.

Tests drive the operator the way users do: manifests through ``kubectl``, status read
back with ``kubectl``, the operator started as its own process (``tandem-operator run``)
that can be stopped, SIGKILLed and started again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tandem_operator.devcluster.session import KubeSession
from tandem_operator.handlers.webhook import install_name

REPO = Path(__file__).resolve().parents[2]

FAST_SETTINGS = {
    "TANDEM_LIFECYCLE_TIMER_INTERVAL_SECONDS": "1",
    "TANDEM_CLAIM_LEASE_SECONDS": "4",
    "TANDEM_SHUTDOWN_GRACE_SECONDS": "3",
}


@dataclass
class OperatorProcess:
    """One ``tandem-operator run`` process watching one namespace."""

    kube: KubeSession
    namespace: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    also_watch: tuple[str, ...] = ()
    """More namespaces to watch besides ``namespace`` (which also holds the Lease)."""
    lease_namespace: str | None = None
    """Where the leader Lease lives; ``namespace`` unless set."""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            **FAST_SETTINGS,
            **self.env,
            "KUBECONFIG": str(self.kube.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONUNBUFFERED": "1",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tandem_operator.cli.main",
                "run",
                "--namespace",
                self.namespace,
                *(arg for ns in self.also_watch for arg in ("--namespace", ns)),
                "--lease-namespace",
                self.lease_namespace or self.namespace,
                *self.extra_args(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        return self

    def extra_args(self) -> list[str]:
        """Command-line options for this process; metrics off unless a test asks for them."""
        args = self.env.get("TANDEM_EXTRA_ARGS", "").split()
        if not any(a.startswith("--metrics-port") for a in args):
            args.append("--metrics-port=0")
        return args

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30) -> int | None:
        """Graceful shutdown (SIGTERM), as a Deployment rollout does it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup, no Lease release, as in a node crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """kubectl-only helpers bound to one test namespace."""

    def __init__(self, kube: KubeSession, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.kube.kubectl("-n", self.namespace, *args, input=input, check=check).stdout

    def apply(self, *manifests: Mapping[str, Any] | str) -> str:
        docs = [m if isinstance(m, str) else yaml.safe_dump(dict(m)) for m in manifests]
        return self.kubectl("apply", "-f", "-", input="\n---\n".join(docs))

    def apply_result(self, manifest: Mapping[str, Any] | str) -> subprocess.CompletedProcess[str]:
        doc = manifest if isinstance(manifest, str) else yaml.safe_dump(dict(manifest))
        return self.kube.kubectl("-n", self.namespace, "apply", "-f", "-", input=doc, check=False)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, "-o", "json"))
        return out

    def run(self, name: str) -> dict[str, Any]:
        return self.get("automationrun", name)

    def status(self, name: str) -> dict[str, Any]:
        return self.run(name).get("status") or {}

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def patch_spec(self, name: str, patch: Mapping[str, Any]) -> None:
        self.kubectl(
            "patch", "automationrun", name, "--type=merge", "-p", json.dumps({"spec": patch})
        )

    def patch_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Write status by hand, as a test of restarts does while the operator is down."""
        self.kubectl(
            "patch",
            "automationrun",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
        )

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "events", "-o", "json"))[
            "items"
        ]
        if name is not None:
            items = [e for e in items if e.get("involvedObject", {}).get("name") == name]
        return items

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            lambda: (s := self.status(name)).get("phase") in phases and s,
            timeout=timeout,
            what=f"run {name} to reach {phases}",
            describe=lambda: f"phase={self.phase(name)}",
        )


def admission_registered(kube: KubeSession, namespace: str, port: int | None = None) -> bool:
    """Both webhook configurations of the install in ``namespace`` exist (at ``port``)."""
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        result = kube.kubectl("get", kind, install_name(namespace), "-o", "json", check=False)
        if result.returncode != 0:
            return False
        hooks = json.loads(result.stdout).get("webhooks") or []
        urls = [h.get("clientConfig", {}).get("url") or "" for h in hooks]
        if not hooks or (port is not None and not all(f":{port}/" in u for u in urls)):
            return False
    return True


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
    describe: Callable[[], str] | None = None,
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f" ({describe()})" if describe else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


def ts(offset_seconds: float = 0.0) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, ``offset_seconds`` from now."""
    moment = datetime.fromtimestamp(time.time() + offset_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def paused_by_hand(**output: Any) -> dict[str, Any]:
    """A Paused status as a person writes it for a flow ``a -> b``: ``a`` completed with
    ``output``, ``b`` still to run, no observedGeneration."""
    return {
        "phase": "Paused",
        "pauseReason": "by hand",
        "createdAt": ts(-60),
        "startedAt": ts(-50),
        "checkpoint": {
            "completedNodes": ["a"],
            "pendingNodes": ["b"],
            "nodeAttempts": {"a": 1},
            "nodeOutputs": {"a": {"status": "completed", **output}},
        },
    }


def simulated_run(
    name: str,
    nodes: list[dict[str, Any]],
    *,
    workspace: str | None = None,
    execution: Mapping[str, Any] | None = None,
    agents: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An AutomationRun manifest with an inline flow."""
    automation: dict[str, Any] = {
        "creatorId": "tester",
        "agents": agents if agents is not None else [{"agentId": "agent"}],
        "nodes": nodes,
    }
    if workspace:
        automation["workspace"] = {"root": workspace}
    if execution:
        automation["execution"] = dict(execution)
    return {
        "apiVersion": "automation.tandem.dev/v1alpha1",
        "kind": "AutomationRun",
        "metadata": {"name": name},
        "spec": {"automation": automation, **spec},
    }


def sim(
    node_id: str, *, outcome: str = "completed", after: float = 0, **extra: Any
) -> dict[str, Any]:
    """A simulated Task node."""
    node: dict[str, Any] = {
        "id": node_id,
        "agentId": "agent",
        "executor": {"simulate": {"outcome": outcome, "afterSeconds": after}},
    }
    node.update(extra)
    return node
