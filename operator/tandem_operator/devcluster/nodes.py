"""Fake Nodes that run Pods: kwok, kube-scheduler and kube-controller-manager (pure parts).

The local control plane has no kubelet. ``ControlPlane.start_nodes`` adds what a Pod needs
to go from created to ended, all talking to the same kube-apiserver:

* **kube-scheduler** binds Pods to Nodes, as in any cluster.
* **kwok** (``sigs.k8s.io/kwok``) plays the kubelet of every Node annotated
  ``kwok.x-k8s.io/node: fake``: it keeps those Nodes Ready (Lease heartbeats) and moves
  their Pods through phases with the Stages in ``kwok-stages.yaml``, where a Pod's
  ``tandem.test/*`` annotations decide its fate (see ``POD_*`` below and that file).
  The Nodes themselves are created by ``start_nodes`` (``fake_node``); nothing runs in
  containers.
* **kube-controller-manager**, restricted to ``CONTROLLERS``: new namespaces get their
  ``default`` ServiceAccount and ``kube-root-ca.crt``, ownerReferences are
  garbage-collected (deleting a run deletes its Pods), deleted namespaces are emptied and
  go away, and Pods left on a deleted Node are removed. Controllers that would create Pods
  of their own (Deployments, Jobs, ...) or judge Node health are not run.

Identities: the scheduler and the controller-manager get client certificates for
``system:kube-scheduler`` and ``system:kube-controller-manager``, the users the RBAC
bootstrap policy grants their permissions to (the controller-manager runs each controller
under its own ServiceAccount, ``--use-service-account-credentials``, as kubeadm sets it
up). kwok serves every fake Node at once, which no ``system:node:<name>`` identity may, so
it gets an identity in ``system:masters``.

The apiserver keeps ``--disable-admission-plugins=ServiceAccount`` (see
``controlplane.apiserver_flags``) so the control plane behaves the same with or without
Nodes: Pods get no service account token volume injected, and a Pod naming a missing
ServiceAccount is not refused.

Neither component uses leader election: there is one of each, and an elected leader exits
when it cannot renew its Lease, which a test restarting the apiserver would trigger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem_operator.devcluster.pki import Pki

__all__ = [
    "CONTROLLERS",
    "CONTROLLER_MANAGER_USER",
    "KWOK_GROUP",
    "KWOK_NODE_ANNOTATION",
    "KWOK_USER",
    "POD_DELAY",
    "POD_EXIT_CODE",
    "POD_PHASE",
    "POD_REASON",
    "POD_TERMINATION_MESSAGE",
    "SCHEDULER_USER",
    "STAGES_FILE",
    "NodePool",
    "controller_manager_flags",
    "fake_node",
    "kwok_flags",
    "scheduler_flags",
]

STAGES_FILE = Path(__file__).resolve().with_name("kwok-stages.yaml")
"""kwok's ``--config``: the Node and Pod Stages."""

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
"""Nodes annotated ``kwok.x-k8s.io/node=fake`` are managed by kwok (kwokctl's convention)."""

# Pod annotations read by the Stages in kwok-stages.yaml.
POD_PHASE = "tandem.test/phase"
"""``Succeeded`` | ``Failed`` | ``Running`` (until deleted) | ``Pending`` (never starts)."""
POD_DELAY = "tandem.test/delay"
"""How long the container runs before it ends: a Go duration (``500ms``, ``3s``); 1s."""
POD_EXIT_CODE = "tandem.test/exit-code"
"""The container's exit code; default 0, or 1 for ``Failed``."""
POD_REASON = "tandem.test/reason"
"""Terminated reason (``Completed``/``Error`` by default, e.g. ``OOMKilled``), or, for
``Pending``, the waiting reason (default ``ErrImagePull``)."""
POD_TERMINATION_MESSAGE = "tandem.test/termination-message"
"""Copied verbatim into ``status.containerStatuses[].state.terminated.message``."""

SCHEDULER_USER = "system:kube-scheduler"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
KWOK_USER = "tandem-kwok"
KWOK_GROUP = "system:masters"

CONTROLLERS = (
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "pod-garbage-collector-controller",
)
"""kube-controller-manager's ``--controllers``: what a run's Pods rely on, nothing that
creates Pods or taints Nodes."""

_NODE_LEASE_SECONDS = 40
_POD_CIDR = "10.244.0.0/16"


@dataclass(frozen=True)
class NodePool:
    """The fake Nodes ``start_nodes`` creates: ``count`` Nodes of the same size."""

    count: int = 2
    name_prefix: str = "kwok-node"
    capacity: dict[str, str] = field(
        default_factory=lambda: {"cpu": "32", "memory": "128Gi", "pods": "110"}
    )

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"A node pool needs at least one node, not {self.count}")

    def names(self) -> list[str]:
        return [f"{self.name_prefix}-{index}" for index in range(self.count)]

    def manifests(self) -> list[dict[str, Any]]:
        return [fake_node(name, capacity=self.capacity) for name in self.names()]


def fake_node(name: str, *, capacity: dict[str, str]) -> dict[str, Any]:
    """A Node object kwok manages; no taints, so any Pod may be scheduled on it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {"allocatable": dict(capacity), "capacity": dict(capacity)},
    }


def kwok_flags(*, kubeconfig: Path, stages: Path = STAGES_FILE) -> list[str]:
    """Flags of kwok managing the annotated fake Nodes (without the binary)."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
        f"--node-lease-duration-seconds={_NODE_LEASE_SECONDS}",
        f"--cidr={_POD_CIDR}",
    ]


def scheduler_flags(*, kubeconfig: Path, secure_port: int) -> list[str]:
    """Flags of kube-scheduler; it serves ``/healthz`` on loopback only."""
    return [
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
    ]


def controller_manager_flags(*, kubeconfig: Path, secure_port: int, pki: Pki) -> list[str]:
    """Flags of kube-controller-manager running ``CONTROLLERS``."""
    return [
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={secure_port}",
        f"--controllers={','.join(CONTROLLERS)}",
        "--use-service-account-credentials=true",
        # Published as kube-root-ca.crt and put into token Secrets: what in-cluster clients
        # verify the apiserver with, so the serving CA.
        f"--root-ca-file={pki.serving_ca_cert}",
        f"--service-account-private-key-file={pki.service_account_key}",
    ]
