"""kind-config.yaml is a valid kind v1alpha4 Cluster on a Kubernetes release the operator supports."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[2] / "kind-config.yaml"


def test_kind_config_is_a_v1alpha4_cluster() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    assert set(roles) <= {"control-plane", "worker"}


def test_kind_nodes_run_kubernetes_1_34_or_newer() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    for node in config["nodes"]:
        tag = node["image"].rsplit(":v", 1)[1]
        major, minor = (int(part) for part in tag.split(".")[:2])
        assert (major, minor) >= (1, 34), node["image"]


def test_kind_port_mappings_are_well_formed() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    for node in config["nodes"]:
        for mapping in node.get("extraPortMappings", []):
            assert 30000 <= mapping["containerPort"] <= 32767
            assert mapping["protocol"] in ("TCP", "UDP", "SCTP")
