"""The Helm chart, rendered with the project's own helm and read back as manifests.

No cluster: ``helm template`` and ``helm lint`` only. What the operator does with the
rendered objects is proven against a real API server in
``tests/integration/test_helm_chart.py``; these tests pin down the rest: the CRDs are the
generated ones, the pod runs under the restricted profile, every RBAC rule is exactly the
expected one (no wildcards), every setting the operator reads is wired to a value and
round-trips through ``Settings.from_env``, and a misspelt value fails the render.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from tandem_operator.api import settings as settings_module
from tandem_operator.api.crdgen import rendered_files
from tandem_operator.api.settings import Settings
from tandem_operator.devcluster.tools import ToolsError, ensure_binaries
from tandem_operator.handlers.webhook import Registration, configurations

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tandem-operator"
RELEASE = "tandem"
NAMESPACE = "tandem-system"
FULLNAME = "tandem-tandem-operator"  # the release name does not contain the chart name
GROUP = "automation.tandem.dev"
KINDS = ["automationruns", "automations", "agentquotaoverrides", "agentendpoints"]
WEBHOOK_CONFIG = f"{FULLNAME}.{NAMESPACE}.{GROUP}"
WEBHOOK_ARGS = [
    "--webhook-addr=0.0.0.0",
    "--webhook-port=9443",
    "--webhook-cert-dir=/etc/tandem-operator/webhook",
    "--webhook-registration=none",
]

POD_RULE = {
    "apiGroups": [""],
    "resources": ["pods"],
    "verbs": ["create", "get", "list", "watch", "delete"],
}
OPERATOR_RULES = [
    {"apiGroups": [GROUP], "resources": KINDS, "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["automationruns/status"], "verbs": ["patch"]},
    # Schedules create runs, cancel replaced ones (spec.desiredState) and delete finished
    # ones (history limits, time to live); they write the Automation's status.
    {
        "apiGroups": [GROUP],
        "resources": ["automationruns"],
        "verbs": ["create", "patch", "delete"],
    },
    {"apiGroups": [GROUP], "resources": ["automations/status"], "verbs": ["patch"]},
    {"apiGroups": [GROUP], "resources": ["automations/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    POD_RULE,
]
LEADER_RULES = [
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [FULLNAME],
        "verbs": ["get", "update"],
    },
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]
CRD_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "verbs": ["list", "watch"],
}
NAMESPACE_RULE = {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return ensure_binaries().helm
    except ToolsError as exc:
        pytest.skip(f"helm is not available: {exc}")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False
    )


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart as parsed manifests; fails the test on a render error."""
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str, namespace: str | None = None) -> Any:
    found = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace") == namespace
    ]
    assert len(found) == 1, f"{kind}/{name} in {namespace}: found {len(found)}"
    return found[0]


def kinds(docs: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    return {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(docs, "Deployment", FULLNAME, NAMESPACE)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def plain_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


# -- the chart as a whole ---------------------------------------------------------------


def test_chart_crds_are_the_generated_crds() -> None:
    expected = rendered_files()
    actual = {p.name: p.read_text() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert sorted(actual) == sorted(expected), "run `make crds` to copy the generated CRDs"
    for name, text in expected.items():
        assert actual[name] == text, f"charts/tandem-operator/crds/{name} drifted: `make crds`"


def test_helm_lint_is_clean(helm: Path) -> None:
    for extra in ([], ["--set", "watchNamespaces={team-a,team-b}"]):
        proc = run_helm(helm, "lint", "--strict", str(CHART), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


def test_default_render_has_one_of_each_resource(helm: Path) -> None:
    assert kinds(render(helm)) == {
        ("ServiceAccount", FULLNAME, NAMESPACE),
        ("Deployment", FULLNAME, NAMESPACE),
        ("Service", f"{FULLNAME}-metrics", NAMESPACE),
        ("ClusterRole", FULLNAME, None),
        ("ClusterRoleBinding", FULLNAME, None),
        ("ClusterRole", f"{FULLNAME}-discovery", None),
        ("ClusterRoleBinding", f"{FULLNAME}-discovery", None),
        ("Role", f"{FULLNAME}-leader-election", NAMESPACE),
        ("RoleBinding", f"{FULLNAME}-leader-election", NAMESPACE),
        ("ClusterRole", f"{FULLNAME}-view", None),
        ("ClusterRole", f"{FULLNAME}-edit", None),
        ("Secret", f"{FULLNAME}-webhook-tls", NAMESPACE),
        ("Service", f"{FULLNAME}-webhook", NAMESPACE),
        ("MutatingWebhookConfiguration", WEBHOOK_CONFIG, None),
        ("ValidatingWebhookConfiguration", WEBHOOK_CONFIG, None),
    }


# -- the pod ----------------------------------------------------------------------------


def test_pod_runs_under_the_restricted_profile(helm: Path) -> None:
    docs = render(helm)
    pod = find(docs, "Deployment", FULLNAME, NAMESPACE)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod
    assert "hostPID" not in pod
    security = container(docs)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in security
    # A read-only root needs a writable scratch directory.
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_cluster_mode_runs_the_operator_for_all_namespaces(helm: Path) -> None:
    docs = render(helm)
    main = container(docs)
    assert main["command"] == ["tandem-operator"]
    assert main["args"] == [
        "run",
        "--all-namespaces",
        f"--lease-namespace={NAMESPACE}",
        f"--lease-name={FULLNAME}",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
        *WEBHOOK_ARGS,
    ]
    env = {e["name"]: e for e in main["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_probes_hit_the_liveness_endpoint_the_operator_serves(helm: Path) -> None:
    main = container(render(helm, "--set", "healthPort=8181", "--set", "logLevel=debug"))
    assert main["args"][:2] == ["--verbose", "run"]
    assert "--liveness=http://0.0.0.0:8181/healthz" in main["args"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"health": 8181, "metrics": 9090, "webhook": 9443}
    for probe in (main["livenessProbe"], main["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "health"}


def test_termination_grace_outlasts_the_shutdown_grace(helm: Path) -> None:
    docs = render(helm, "--set", "shutdownGraceSeconds=45")
    pod = find(docs, "Deployment", FULLNAME, NAMESPACE)["spec"]["template"]["spec"]
    assert plain_env(docs)["TANDEM_SHUTDOWN_GRACE_SECONDS"] == "45"
    assert pod["terminationGracePeriodSeconds"] == 55


def test_resources_and_image(helm: Path) -> None:
    main = container(render(helm))
    assert main["image"] == "tandem-operator:0.1.0"  # appVersion when image.tag is empty
    assert main["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert main["resources"]["limits"] == {"memory": "256Mi"}
    digest = "sha256:" + "ab" * 32
    pinned = container(
        render(helm, "--set", "image.repository=reg.example/t", "--set", f"image.digest={digest}")
    )
    assert pinned["image"] == f"reg.example/t@{digest}"


# -- settings ---------------------------------------------------------------------------


def _operator_env_names() -> set[str]:
    source = Path(settings_module.__file__).read_text()
    return set(re.findall(r'"(TANDEM_[A-Z0-9_]+)"', source))


def test_every_setting_the_operator_reads_is_a_value(helm: Path) -> None:
    names = _operator_env_names()
    assert "TANDEM_STALE_RUNNING_MS" in names  # the scan itself works
    rendered = set(
        plain_env(
            render(
                helm,
                "--set",
                "settings.disableStaleAutoResume=true",
                "--set",
                "settings.disableContainerExecutor=true",
            )
        )
    )
    assert names - rendered == set()


def test_default_values_are_the_operators_defaults(helm: Path) -> None:
    env = plain_env(render(helm))
    assert "TANDEM_DISABLE_STALE_AUTO_RESUME" not in env  # any value would turn it off
    assert Settings.from_env(env) == Settings()


def test_values_reach_the_operator_settings(helm: Path) -> None:
    values = {
        "settings.approvalGateStaleAfterMs": "3600000",
        "settings.staleAutoResumeWindowMs": "600000",
        "settings.staleAutoResumeMaxAttempts": "5",
        "settings.disableStaleAutoResume": "true",
        "settings.staleRunningMs": "300000",
        "settings.schedulerMaxConcurrentRuns": "16",
        "settings.restartRecovery": "requeue",
        "settings.lifecycleTimerIntervalSeconds": "10",
        "settings.lifecycleHistoryLimit": "500",
        "leaseSeconds": "30",
        "shutdownGraceSeconds": "60",
        "settings.finishedRunTtlSeconds": "604800",
        "settings.disableContainerExecutor": "true",
        "settings.podKeepSeconds": "600",
    }
    args = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    args += ["--set-string", "settings.tokenCostPer1kUsd=0.002"]
    parsed = Settings.from_env(plain_env(render(helm, *args)))
    assert parsed == Settings(
        approval_gate_stale_after_ms=3_600_000,
        stale_auto_resume_window_ms=600_000,
        stale_auto_resume_max_attempts=5,
        stale_auto_resume_disabled=True,
        stale_running_ms=300_000,
        scheduler_max_concurrent_runs=16,
        restart_recovery="requeue",
        token_cost_per_1k_usd=parsed.token_cost_per_1k_usd,
        lifecycle_timer_interval_seconds=10,
        lifecycle_history_limit=500,
        claim_lease_seconds=30,
        shutdown_grace_seconds=60,
        finished_run_ttl_seconds=604_800,
        container_executor_disabled=True,
        pod_keep_seconds=600,
    )
    assert str(parsed.token_cost_per_1k_usd) == "0.002"


def test_large_values_are_not_rendered_in_exponent_notation(helm: Path) -> None:
    env = plain_env(render(helm, "-f", str(CHART / "values.yaml")))
    assert env["TANDEM_APPROVAL_GATE_STALE_AFTER_MS"] == "86400000"


# -- RBAC -------------------------------------------------------------------------------


def _all_rules(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            yield from doc["rules"]


@pytest.mark.parametrize("extra", [[], ["--set", "watchNamespaces={team-a}"]])
def test_no_rule_uses_a_wildcard(helm: Path, extra: list[str]) -> None:
    rules = list(_all_rules(render(helm, *extra)))
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule


def test_operator_never_updates_or_deletes_in_bulk(helm: Path) -> None:
    """Runs and attempts' Pods are created and deleted one by one; nothing is replaced or
    collected."""
    for rule in find(render(helm), "ClusterRole", FULLNAME)["rules"]:
        assert "update" not in rule["verbs"] or rule["resources"] in (
            ["leases"],
            ["automations/finalizers"],
        ), rule
        assert "deletecollection" not in rule["verbs"], rule
        if "delete" in rule["verbs"]:
            assert rule["resources"] in (["automationruns"], ["pods"]), rule


def test_cluster_mode_rbac_is_exact(helm: Path) -> None:
    docs = render(helm)
    assert find(docs, "ClusterRole", FULLNAME)["rules"] == OPERATOR_RULES
    assert find(docs, "ClusterRole", f"{FULLNAME}-discovery")["rules"] == [CRD_RULE]
    leader = find(docs, "Role", f"{FULLNAME}-leader-election", NAMESPACE)
    assert leader["rules"] == LEADER_RULES
    subject = [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    for kind, name, namespace in (
        ("ClusterRoleBinding", FULLNAME, None),
        ("ClusterRoleBinding", f"{FULLNAME}-discovery", None),
        ("RoleBinding", f"{FULLNAME}-leader-election", NAMESPACE),
    ):
        binding = find(docs, kind, name, namespace)
        assert binding["subjects"] == subject
        assert binding["roleRef"]["name"] == name
    assert not [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == FULLNAME]


def test_namespaced_mode_grants_nothing_outside_the_watched_namespaces(helm: Path) -> None:
    docs = render(helm, "--set", "watchNamespaces={team-a,team-b}")
    assert ("ClusterRole", FULLNAME, None) not in kinds(docs)
    assert ("ClusterRoleBinding", FULLNAME, None) not in kinds(docs)
    for namespace in ("team-a", "team-b"):
        assert find(docs, "Role", FULLNAME, namespace)["rules"] == OPERATOR_RULES
        binding = find(docs, "RoleBinding", FULLNAME, namespace)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
        ]
    discovery = find(docs, "ClusterRole", f"{FULLNAME}-discovery")
    assert discovery["rules"] == [CRD_RULE, NAMESPACE_RULE]
    # The Lease stays in the release namespace whatever is watched.
    assert find(docs, "Role", f"{FULLNAME}-leader-election", NAMESPACE)["rules"] == LEADER_RULES
    assert container(docs)["args"] == [
        "run",
        "--namespace=team-a",
        "--namespace=team-b",
        f"--lease-namespace={NAMESPACE}",
        f"--lease-name={FULLNAME}",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
        *WEBHOOK_ARGS,
    ]


def test_aggregated_user_roles(helm: Path) -> None:
    docs = render(helm)
    view = find(docs, "ClusterRole", f"{FULLNAME}-view")
    assert view["rules"] == [
        {"apiGroups": [GROUP], "resources": KINDS, "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
    ]
    assert {k: v for k, v in view["metadata"]["labels"].items() if k.startswith("rbac.")} == {
        "rbac.authorization.k8s.io/aggregate-to-view": "true",
        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
    }
    edit = find(docs, "ClusterRole", f"{FULLNAME}-edit")
    assert edit["rules"] == [
        {
            "apiGroups": [GROUP],
            "resources": ["automationruns", "automations"],
            "verbs": ["create", "update", "patch", "delete"],
        }
    ]
    assert {k: v for k, v in edit["metadata"]["labels"].items() if k.startswith("rbac.")} == {
        "rbac.authorization.k8s.io/aggregate-to-edit": "true",
        "rbac.authorization.k8s.io/aggregate-to-admin": "true",
    }
    off = render(helm, "--set", "rbac.aggregateToDefaultRoles=false")
    assert {n for k, n, _ in kinds(off) if k == "ClusterRole"} == {
        FULLNAME,
        f"{FULLNAME}-discovery",
    }


def test_no_pod_permissions_when_the_container_executor_is_off(helm: Path) -> None:
    docs = render(helm, "--set", "settings.disableContainerExecutor=true")
    assert find(docs, "ClusterRole", FULLNAME)["rules"] == OPERATOR_RULES[:-1]
    assert plain_env(docs)["TANDEM_DISABLE_CONTAINER_EXECUTOR"] == "true"
    assert "TANDEM_DISABLE_CONTAINER_EXECUTOR" not in plain_env(render(helm))


def test_rbac_can_be_left_to_the_cluster_admin(helm: Path) -> None:
    docs = render(helm, "--set", "rbac.create=false")
    assert not [d for d in docs if d["apiVersion"].startswith("rbac.authorization.k8s.io")]
    assert ("ServiceAccount", FULLNAME, NAMESPACE) in kinds(docs)


# -- optional resources -----------------------------------------------------------------


def test_service_monitor_and_pdb_are_opt_in(helm: Path) -> None:
    docs = render(
        helm,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "serviceMonitor.labels.release=prom",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "replicaCount=2",
    )
    monitor = find(docs, "ServiceMonitor", FULLNAME, NAMESPACE)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    service = find(docs, "Service", f"{FULLNAME}-metrics", NAMESPACE)
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    pdb = find(docs, "PodDisruptionBudget", FULLNAME, NAMESPACE)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert find(docs, "Deployment", FULLNAME, NAMESPACE)["spec"]["replicas"] == 2

    pinned = render(
        helm,
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "podDisruptionBudget.minAvailable=1",
    )
    pdb = find(pinned, "PodDisruptionBudget", FULLNAME, NAMESPACE)
    assert pdb["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in pdb["spec"]


def test_metrics_service_as_a_node_port(helm: Path) -> None:
    docs = render(
        helm, "--set", "metrics.service.type=NodePort", "--set", "metrics.service.nodePort=30090"
    )
    service = find(docs, "Service", f"{FULLNAME}-metrics", NAMESPACE)
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"][0]["nodePort"] == 30090
    off = render(helm, "--set", "metrics.enabled=false")
    assert ("Service", f"{FULLNAME}-metrics", NAMESPACE) not in kinds(off)
    assert [p["name"] for p in container(off)["ports"]] == ["health", "webhook"]
    assert "--metrics-port=0" in container(off)["args"]


def test_service_monitor_without_metrics_fails(helm: Path) -> None:
    proc = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "metrics.enabled=false",
    )
    assert proc.returncode != 0
    assert "serviceMonitor.enabled needs metrics.enabled" in proc.stderr


# -- values and their schema ------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("bogus=1", "additional properties 'bogus' not allowed"),
        ("image.tagg=1.0", "additional properties 'tagg' not allowed"),
        ("settings.staleRunningMS=1000", "additional properties 'staleRunningMS' not allowed"),
        ("securityContext.capabilities.dropp={ALL}", "additional properties 'dropp' not allowed"),
        ("settings.restartRecovery=retry", "value must be one of 'fail', 'requeue'"),
        ("leaseSeconds=0", "minimum"),
        ("logLevel=trace", "value must be one of 'info', 'debug'"),
    ],
)
def test_schema_rejects_a_wrong_value(helm: Path, setting: str, complaint: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert proc.returncode != 0
    assert complaint in proc.stderr


# Objects whose content is another Kubernetes type, validated by the API server; ``global``
# is what parent charts share with their subcharts.
PASSTHROUGH = {
    "global",
    "affinity.nodeAffinity",
    "affinity.podAffinity",
    "affinity.podAntiAffinity",
}


def _objects(node: Any, path: str, schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if not isinstance(node, dict):
        return
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        yield from _objects(schema["definitions"][name], path, schema)
    if node.get("type") == "object" or "properties" in node:
        yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from _objects(child, f"{path}.{key}".lstrip("."), schema)
    if isinstance(node.get("items"), dict):
        yield from _objects(node["items"], f"{path}[]", schema)
    for choice in node.get("oneOf", []):
        yield from _objects(choice, path, schema)


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    seen = 0
    for path, node in _objects(schema, "", schema):
        seen += 1
        if path in PASSTHROUGH:
            continue
        extra = node.get("additionalProperties")
        if extra is False:
            continue
        # A map (labels, annotations, quantities) may have any keys, but typed values.
        assert isinstance(extra, dict), path
        assert "type" in extra, path
        assert "properties" not in node, path
    assert seen > 30


_KEY = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):")
# Values whose content is a Kubernetes type (the defaults are examples of that type): only
# the top key is the chart's own.
_K8S_TYPED = {"podSecurityContext", "securityContext", "resources", "affinity"}


def _own(path: str) -> bool:
    return "." not in path or path.split(".")[0] not in _K8S_TYPED


def _value_paths(lines: list[str]) -> Iterator[tuple[str, int]]:
    """Dotted path and line index of every key in values.yaml, by indentation."""
    stack: list[tuple[int, str]] = []
    for index, line in enumerate(lines):
        match = _KEY.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        yield ".".join([name for _, name in stack] + [match.group(2)]), index
        stack.append((indent, match.group(2)))


def _schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, child in (node.get("properties") or {}).items():
        paths.add(prefix + key)
        if "$ref" not in child and child.get("additionalProperties") is False:
            paths |= _schema_paths(child, f"{prefix}{key}.")
    return paths


def test_values_and_schema_list_the_same_keys() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    in_values = {path for path, _ in _value_paths(lines) if _own(path)}
    in_schema = {path for path in _schema_paths(schema) if _own(path)} - {"global"}
    assert "settings.staleRunningMs" in in_values
    assert in_values == in_schema


def test_every_value_is_documented_with_an_example() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    paths = [(path, index) for path, index in _value_paths(lines) if _own(path)]
    groups = {path for path, _ in paths if any(p.startswith(f"{path}.") for p, _ in paths)}
    undocumented = []
    for path, index in paths:
        comments = []
        above = index - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            comments.append(lines[above])
            above -= 1
        # A group (image, settings, ...) says what it holds; every other key has an example.
        if not comments or (path not in groups and not any("Example" in c for c in comments)):
            undocumented.append(path)
    assert groups >= {"image", "settings", "metrics.service"}
    assert undocumented == []


# -- admission ---------------------------------------------------------------------------


def _without_client_config(config: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in hook.items() if k != "clientConfig"} for hook in config["webhooks"]]


@pytest.mark.parametrize("namespaces", [[], ["team-b", "team-a"]])
def test_webhook_configurations_are_the_operators_own(helm: Path, namespaces: list[str]) -> None:
    """The chart's webhooks are what ``handlers.webhook.configurations`` builds, by Service."""
    extra = ["--set", f"watchNamespaces={{{','.join(namespaces)}}}"] if namespaces else []
    docs = render(helm, *extra)
    secret = find(docs, "Secret", f"{FULLNAME}-webhook-tls", NAMESPACE)
    assert secret["type"] == "kubernetes.io/tls"
    ca = base64.b64decode(secret["data"]["ca.crt"])
    service = {"namespace": NAMESPACE, "name": f"{FULLNAME}-webhook", "port": 443}
    expected = configurations(
        Registration(
            name=WEBHOOK_CONFIG, namespaces=namespaces or None, ca_bundle=ca, service=service
        )
    )
    for want in expected:
        got = find(docs, want["kind"], WEBHOOK_CONFIG)
        assert _without_client_config(got) == _without_client_config(want)
        for hook, wanted in zip(got["webhooks"], want["webhooks"], strict=True):
            assert hook["clientConfig"] == wanted["clientConfig"]
    (decisions,) = find(docs, "MutatingWebhookConfiguration", WEBHOOK_CONFIG)["webhooks"]
    assert (decisions["failurePolicy"], decisions["reinvocationPolicy"]) == ("Fail", "IfNeeded")
    hooks = find(docs, "ValidatingWebhookConfiguration", WEBHOOK_CONFIG)["webhooks"]
    assert [h["failurePolicy"] for h in hooks] == ["Ignore", "Ignore"]


def test_webhook_certificate_serves_the_service_and_restarts_pods_when_it_changes(
    helm: Path,
) -> None:
    docs = render(helm)
    secret = find(docs, "Secret", f"{FULLNAME}-webhook-tls", NAMESPACE)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    assert cert.issuer == ca.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{FULLNAME}-webhook.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)
    pod = find(docs, "Deployment", FULLNAME, NAMESPACE)["spec"]["template"]
    checksum = hashlib.sha256(secret["data"]["tls.crt"].encode()).hexdigest()
    assert pod["metadata"]["annotations"]["checksum/webhook-tls"] == checksum
    main = container(docs)
    assert "--webhook-registration=none" in main["args"]
    assert "--webhook-port=9443" in main["args"]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in main["ports"]
    mount = next(m for m in main["volumeMounts"] if m["name"] == "webhook-tls")
    assert mount["readOnly"] is True
    assert "--webhook-cert-dir=" + mount["mountPath"] in main["args"]
    service = find(docs, "Service", f"{FULLNAME}-webhook", NAMESPACE)
    assert service["spec"]["ports"] == [
        {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}
    ]


def test_webhook_can_be_turned_off(helm: Path) -> None:
    docs = render(helm, "--set", "webhook.enabled=false")
    assert not [d for d in docs if "Webhook" in d["kind"] or "webhook" in d["metadata"]["name"]]
    assert "--no-webhook" in container(docs)["args"]
