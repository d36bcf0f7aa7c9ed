"""Unit tests for the fake Nodes of the local control plane: flags, Nodes, Stages, binaries."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem_operator.cli.cluster import add_cluster_parsers
from tandem_operator.devcluster import tools as tools_mod
from tandem_operator.devcluster.controlplane import (
    NODE_COMPONENTS,
    ControlPlaneState,
    Ports,
    ProcessRecord,
)
from tandem_operator.devcluster.nodes import (
    CONTROLLERS,
    KWOK_NODE_ANNOTATION,
    POD_DELAY,
    POD_EXIT_CODE,
    POD_PHASE,
    POD_REASON,
    POD_TERMINATION_MESSAGE,
    STAGES_FILE,
    NodePool,
    controller_manager_flags,
    fake_node,
    kwok_flags,
    scheduler_flags,
)
from tandem_operator.devcluster.pki import Pki
from tandem_operator.devcluster.tools import (
    BINARY_NAMES,
    NODE_BINARY_NAMES,
    NodeToolPaths,
    ToolPaths,
    default_kwok_dir,
    kwok_stamp,
    kwok_version,
)

REPO = tools_mod.repo_root()


def _flag_map(flags: list[str]) -> dict[str, str]:
    result = {}
    for flag in flags:
        assert flag.startswith("--"), flag
        key, _, value = flag[2:].partition("=")
        assert key not in result, f"duplicate flag {key}"
        result[key] = value
    return result


# ------------------------------------------------------------------------------ flags


def test_kwok_manages_only_the_annotated_nodes_with_the_project_stages(tmp_path: Path) -> None:
    flags = _flag_map(kwok_flags(kubeconfig=tmp_path / "kc"))
    assert flags["kubeconfig"] == str(tmp_path / "kc")
    assert flags["config"] == str(STAGES_FILE)
    assert STAGES_FILE.is_file()
    assert flags["manage-all-nodes"] == "false"
    assert flags["manage-nodes-with-annotation-selector"] == f"{KWOK_NODE_ANNOTATION}=fake"
    assert int(flags["node-lease-duration-seconds"]) > 0
    assert "server-address" not in flags  # no kubelet API to serve: no logs/exec


def test_scheduler_serves_health_on_loopback_without_leader_election(tmp_path: Path) -> None:
    flags = _flag_map(scheduler_flags(kubeconfig=tmp_path / "kc", secure_port=4321))
    assert flags == {
        "kubeconfig": str(tmp_path / "kc"),
        "leader-elect": "false",
        "bind-address": "127.0.0.1",
        "secure-port": "4321",
    }


def test_controller_manager_runs_only_what_pods_of_a_run_rely_on(tmp_path: Path) -> None:
    pki = Pki(cert_dir=tmp_path)
    flags = _flag_map(
        controller_manager_flags(kubeconfig=tmp_path / "kc", secure_port=1234, pki=pki)
    )
    assert flags["leader-elect"] == "false"
    assert (flags["bind-address"], flags["secure-port"]) == ("127.0.0.1", "1234")
    controllers = flags["controllers"].split(",")
    assert controllers == list(CONTROLLERS)
    assert {
        "serviceaccount-controller",
        "garbage-collector-controller",
        "namespace-controller",
    } <= set(controllers)
    # Nothing that makes Pods of its own or judges Node health, and no wildcard.
    assert "*" not in controllers
    for name in ("deployment", "replicaset", "job", "daemonset", "node-lifecycle"):
        assert f"{name}-controller" not in controllers
    assert flags["use-service-account-credentials"] == "true"
    assert flags["root-ca-file"] == str(pki.serving_ca_cert)
    assert flags["service-account-private-key-file"] == str(pki.service_account_key)


# ------------------------------------------------------------------------------ nodes


def test_node_pool_names_and_manifests() -> None:
    pool = NodePool(count=3, name_prefix="n", capacity={"cpu": "8", "pods": "20"})
    assert pool.names() == ["n-0", "n-1", "n-2"]
    manifests = pool.manifests()
    assert [m["metadata"]["name"] for m in manifests] == pool.names()
    assert all(m["status"]["capacity"] == {"cpu": "8", "pods": "20"} for m in manifests)
    assert NodePool().count == 2
    with pytest.raises(ValueError, match="at least one"):
        NodePool(count=0)


def test_fake_node_is_managed_by_kwok_and_takes_any_pod() -> None:
    capacity = {"cpu": "32", "memory": "128Gi", "pods": "110"}
    node = fake_node("kwok-node-0", capacity=capacity)
    assert node["kind"] == "Node"
    assert node["metadata"]["annotations"][KWOK_NODE_ANNOTATION] == "fake"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "kwok-node-0"
    assert node["metadata"]["labels"]["kubernetes.io/os"] == "linux"
    assert "taints" not in node["spec"]
    assert node["status"]["allocatable"] == node["status"]["capacity"] == capacity
    node["status"]["capacity"]["cpu"] = "1"
    assert capacity["cpu"] == "32", "the manifest must not share the caller's dict"


# ------------------------------------------------------------------------------ stages


def _stages() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(STAGES_FILE.read_text()) if d]
    assert all(d["apiVersion"] == "kwok.x-k8s.io/v1alpha1" for d in docs)
    assert all(d["kind"] == "Stage" for d in docs)
    return docs


def _selector(stage: dict[str, Any]) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {
        e["key"]: (e["operator"], tuple(e.get("values") or ()))
        for e in stage["spec"]["selector"]["matchExpressions"]
    }


FATE = (
    f'.metadata.annotations["{POD_PHASE}"] '
    '// (if .spec.restartPolicy == "Always" then "Running" else "Succeeded" end)'
)


def test_stages_cover_nodes_and_every_pod_fate() -> None:
    stages = {s["metadata"]["name"]: s for s in _stages()}
    kinds = {name: s["spec"]["resourceRef"]["kind"] for name, s in stages.items()}
    assert kinds == {
        "node-initialize": "Node",
        "tandem-pod-pending": "Pod",
        "tandem-pod-start": "Pod",
        "tandem-pod-end": "Pod",
        "tandem-pod-delete": "Pod",
    }
    assert stages["tandem-pod-delete"]["spec"]["next"] == {"delete": True}
    assert _selector(stages["tandem-pod-delete"]) == {".metadata.deletionTimestamp": ("Exists", ())}


def test_pod_stages_are_mutually_exclusive() -> None:
    """kwok picks at random among matching Stages: at most one may match any Pod."""
    pod_stages = {
        s["metadata"]["name"]: _selector(s)
        for s in _stages()
        if s["spec"]["resourceRef"]["kind"] == "Pod"
        and s["metadata"]["name"] != "tandem-pod-delete"
    }
    for selector in pod_stages.values():
        assert selector[".metadata.deletionTimestamp"] == ("DoesNotExist", ())
    phase = {name: sel[".status.phase"] for name, sel in pod_stages.items()}
    fate = {name: sel[FATE] for name, sel in pod_stages.items()}
    assert phase == {
        "tandem-pod-pending": ("In", ("Pending",)),
        "tandem-pod-start": ("In", ("Pending",)),
        "tandem-pod-end": ("In", ("Running",)),
    }
    # Among Pending Pods the fate splits them; the pending Stage also fires only once.
    assert fate["tandem-pod-pending"] == ("In", ("Pending",))
    assert fate["tandem-pod-start"] == ("NotIn", ("Pending",))
    assert pod_stages["tandem-pod-pending"][".status.containerStatuses"] == ("DoesNotExist", ())
    # Running Pods end only when their fate is to end.
    assert fate["tandem-pod-end"] == ("In", ("Succeeded", "Failed"))


def test_stage_templates_read_the_documented_annotations() -> None:
    text = STAGES_FILE.read_text()
    for annotation in (POD_PHASE, POD_DELAY, POD_EXIT_CODE, POD_REASON, POD_TERMINATION_MESSAGE):
        assert annotation in text
    end = next(s for s in _stages() if s["metadata"]["name"] == "tandem-pod-end")
    assert end["spec"]["delay"]["durationFrom"] == {
        "expressionFrom": f'.metadata.annotations["{POD_DELAY}"]'
    }
    template = end["spec"]["next"]["statusTemplate"]
    # The container leaves "running": a strategic merge patch would otherwise keep it.
    assert "running: null" in template
    assert "message: {{ . | Quote }}" in template


# ------------------------------------------------------------------------------ state


def test_state_with_node_components_round_trips(tmp_path: Path) -> None:
    state = ControlPlaneState(
        directory=tmp_path,
        tools=ToolPaths.in_dir(tmp_path / "bin"),
        ports=Ports(1, 2, 3),
        etcd=ProcessRecord(pid=10, start_time=99),
        apiserver=ProcessRecord(pid=11, start_time=100),
        node_tools=NodeToolPaths.in_dirs(tmp_path / "bin", tmp_path / "kwok"),
        nodes={"kwok": ProcessRecord(pid=12, start_time=101)},
    )
    assert ControlPlaneState.from_json(state.to_json()) == state
    assert set(NODE_COMPONENTS) == {"kwok", "kube-scheduler", "kube-controller-manager"}


def test_state_written_before_nodes_existed_still_loads(tmp_path: Path) -> None:
    old = json.dumps(
        {
            "version": 1,
            "directory": str(tmp_path),
            "tools": {k: f"/b/{k}" for k in ("etcd", "kube_apiserver", "kubectl", "helm")},
            "ports": {"etcd_client": 1, "etcd_peer": 2, "apiserver": 3},
            "processes": {"etcd": None, "kube-apiserver": None},
        }
    )
    state = ControlPlaneState.from_json(old)
    assert (state.node_tools, state.nodes) == (None, {})


# ------------------------------------------------------------------------------ binaries


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_kwok_version_and_cache_layout_match_the_build_script(tmp_path: Path) -> None:
    version = kwok_version()
    assert re.fullmatch(r"v\d+\.\d+\.\d+", version)
    assert default_kwok_dir(version=version, env={"XDG_CACHE_HOME": str(tmp_path)}) == (
        tmp_path / "tandem-operator" / "bin" / f"kwok-{version}"
    )
    script = (REPO / "hack" / "build-kwok.sh").read_text()
    assert "tandem-operator/bin/kwok-$version" in script
    module = REPO / "hack" / "kwok"
    expected = subprocess.run(
        ["sh", "-c", "cat go.mod go.sum | sha256sum"],
        cwd=module,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert kwok_stamp() == expected
    digest = hashlib.sha256((module / "go.mod").read_bytes() + (module / "go.sum").read_bytes())
    assert kwok_stamp() == digest.hexdigest()


def test_kwok_version_reads_single_line_requires(tmp_path: Path) -> None:
    gomod = tmp_path / "go.mod"
    gomod.write_text("module x\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kwok v0.9.1\n")
    assert kwok_version(gomod) == "v0.9.1"
    gomod.write_text("module x\n")
    with pytest.raises(tools_mod.ToolsError):
        kwok_version(gomod)


def test_build_script_knows_every_binary() -> None:
    script = (REPO / "hack" / "build-tools.sh").read_text()
    listed = re.search(r"^all=\(([^)]*)\)", script, re.M)
    assert listed is not None
    assert listed.group(1).split() == [*BINARY_NAMES, *NODE_BINARY_NAMES]


def test_generated_tools_module_builds_the_scheduler_and_controller_manager() -> None:
    generator = (REPO / "hack" / "gen_tools_gomod.py").read_text()
    gomod = (REPO / "hack" / "tools" / "go.mod").read_text()
    for pkg in (
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
    ):
        assert f'"{pkg}"' in generator
        assert f"\t{pkg}\n" in gomod


def test_ensure_node_binaries_prefers_a_complete_tools_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in NODE_BINARY_NAMES:
        _executable(tmp_path / "bin" / name)
    monkeypatch.setenv("TANDEM_TOOLS_DIR", str(tmp_path / "bin"))
    assert tools_mod.ensure_node_binaries() == NodeToolPaths.in_dirs(tmp_path / "bin")


def test_ensure_node_binaries_rebuilds_kwok_when_its_pin_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TANDEM_TOOLS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bin_dir = tools_mod.default_bin_dir(versions=tools_mod.pinned_versions())
    kwok_dir = default_kwok_dir(version=kwok_version())
    for path in (bin_dir / "kube-scheduler", bin_dir / "kube-controller-manager"):
        _executable(path)
    kwok = _executable(kwok_dir / "kwok")
    calls: list[tuple[str, ...]] = []

    def fake_build(script: Path, names: tuple[str, ...]) -> Path:
        calls.append(names)
        return bin_dir

    monkeypatch.setattr(tools_mod, "_run_build_script", fake_build)
    monkeypatch.setattr(tools_mod.shutil, "which", lambda _: "/usr/bin/go")

    (kwok_dir / "kwok.sha256").write_text(kwok_stamp() + "\n")
    expected = NodeToolPaths.in_dirs(bin_dir, kwok_dir)
    assert tools_mod.ensure_node_binaries() == expected
    assert calls == []

    (kwok_dir / "kwok.sha256").write_text("stale\n")
    assert tools_mod.ensure_node_binaries() == expected
    assert calls == [NODE_BINARY_NAMES]
    assert kwok.exists()


# ------------------------------------------------------------------------------ cli


def test_cluster_up_starts_nodes_unless_told_not_to() -> None:
    parser = argparse.ArgumentParser(prog="tandem-operator")
    add_cluster_parsers(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["cluster", "up"]).nodes is True
    assert parser.parse_args(["cluster", "up", "--no-nodes"]).nodes is False
