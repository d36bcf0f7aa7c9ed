"""The CRDs are generated from the API models; these tests hold the generator to its rules.

- Drift: the committed ``crds/*.yaml`` are exactly what the generator renders.
- Structural schemas: no ``$ref``, ``anyOf``, ``title``; every node typed; unknown fields
  preserved only on the free-form paths listed here (a new one must be added on purpose).
- What ``kubectl`` users see: printer columns, short names, the ``tandem`` category, the
  status subresource, the CEL rules that reject bad input at admission, and a description
  on every field (``kubectl explain``).
- The field tables in ``docs/api.md`` are generated from the same models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from tandem_operator.api import crdgen
from tandem_operator.api.models import GROUP, VERSION, FreeForm

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
REGENERATE = "PYTHONPATH=operator python3 -m tandem_operator.api.crdgen crds"
API_DOCS = REPO / "docs" / "api.md"

CRDS: dict[str, dict[str, Any]] = {m["spec"]["names"]["kind"]: m for m in crdgen.all_crds()}

# The only places where the API accepts arbitrary keys (FreeForm in models.py).
FREE_FORM_PATHS: dict[str, set[str]] = {
    "AutomationRun": {
        ".spec.automation.nodes[].executor.simulate.output",
        ".spec.runtimeContext",
        ".status.checkpoint.nodeOutputs.*",
        ".status.checkpoint.nodeAttemptVerdicts.*[]",
        ".status.checkpoint.awaitingGate.metadata",
        ".status.checkpoint.gateHistory[].metadata",
        ".status.checkpoint.lifecycleHistory[].metadata",
        ".status.automationSnapshot",
    },
    "Automation": {
        ".spec.nodes[].executor.simulate.output",
        ".spec.schedule.runTemplate.runtimeContext",
    },
    "AgentQuotaOverride": set(),
    "AgentEndpoint": set(),
}


def root_schema(kind: str) -> dict[str, Any]:
    version = CRDS[kind]["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``.a.b``, ``[]`` for items, ``.*`` for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def at(kind: str, path: str) -> dict[str, Any]:
    for candidate, node in walk(root_schema(kind)):
        if candidate == path:
            return node
    raise AssertionError(f"{kind} has no schema at {path}")


# ------------------------------------------------------------------------------ drift


def test_committed_crds_match_the_models() -> None:
    rendered = crdgen.rendered_files()
    committed = {p.name: p.read_text() for p in sorted(CRD_DIR.glob("*.yaml"))}
    assert set(committed) == set(rendered), (
        f"crds/ holds {sorted(committed)}, the models give {sorted(rendered)}; run `{REGENERATE}`"
    )
    stale = sorted(name for name, text in rendered.items() if committed[name] != text)
    assert not stale, (
        f"crds/ is out of date with api/models.py ({', '.join(stale)}); run `{REGENERATE}`"
    )


def test_no_schema_keyword_hides_in_an_unwalked_place() -> None:
    # walk() follows properties, items and additionalProperties; a schema anywhere else
    # (anyOf branches, $defs) would escape the checks below, so none may exist.
    text = "".join(crdgen.rendered_files().values())
    for keyword in ("$ref", "$defs", "anyOf:", "oneOf:", "allOf:"):
        assert keyword not in text


def test_rendered_files_parse_back_to_the_manifests() -> None:
    for name, text in crdgen.rendered_files().items():
        assert text.startswith(crdgen.HEADER)
        manifest = yaml.safe_load(text)
        assert name == f"{manifest['metadata']['name']}.yaml"
        assert manifest == CRDS[manifest["spec"]["names"]["kind"]]
        assert "&id" not in text, "YAML anchors make CRDs hard to read"


def test_committed_api_docs_match_the_models() -> None:
    committed = API_DOCS.read_text()
    assert crdgen.render_docs(committed) == committed, (
        "docs/api.md field tables are out of date with api/models.py; run "
        "`PYTHONPATH=operator python3 -m tandem_operator.api.crdgen docs`"
    )


def test_api_docs_have_every_field_table() -> None:
    text = API_DOCS.read_text()
    for name in crdgen.FIELD_TABLES:
        assert f"<!-- fields: {name} -->" in text, name


def test_the_docs_generator_rewrites_only_marked_tables(tmp_path: Path) -> None:
    page = tmp_path / "api.md"
    page.write_text(
        "# Title\n\nprose\n<!-- fields: Automation.spec.schedule -->\nSTALE\n<!-- end fields -->\ntail\n"
    )
    assert crdgen.main(["docs", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Title\n\nprose\n<!-- fields: Automation.spec.schedule -->\n| field |")
    assert "STALE" not in text
    assert "| `concurrencyPolicy` | `Allow` \\| `Forbid` \\| `Replace` | `Forbid` |" in text
    assert text.endswith("<!-- end fields -->\ntail\n")


def test_an_unknown_docs_table_is_an_error() -> None:
    with pytest.raises(crdgen.SchemaError, match="unknown field table 'Nope'"):
        crdgen.render_docs("<!-- fields: Nope -->\n<!-- end fields -->\n")


def test_the_generator_writes_every_file(tmp_path: Path) -> None:
    assert crdgen.main([str(tmp_path / "out")]) == 0
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == crdgen.rendered_files()


# ------------------------------------------------------------------------------ structural


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schemas_are_structural(kind: str) -> None:
    schema = root_schema(kind)
    forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "examples", "const"}
    for path, node in walk(schema):
        assert not forbidden & set(node), f"{kind}{path} has {sorted(forbidden & set(node))}"
        assert "type" in node, f"{kind}{path} has no type"
        assert node.get("additionalProperties") is not True, f"{kind}{path} is an open object"
        if node["type"] == "object" and not node.get(crdgen.PRESERVE) and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, (
                f"{kind}{path} is an object without a schema"
            )


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_unknown_fields_are_preserved_only_on_free_form_paths(kind: str) -> None:
    preserved = {
        path for path, node in walk(root_schema(kind)) if node.get(crdgen.PRESERVE) is True
    }
    assert preserved == FREE_FORM_PATHS[kind]
    for path in preserved:
        assert at(kind, path)["type"] == "object"


def test_spec_keeps_defaults_and_status_drops_them() -> None:
    assert at("AutomationRun", ".spec.desiredState")["default"] == "Running"
    assert at("AutomationRun", ".spec.triggerType")["default"] == "manual"
    assert at("AutomationRun", ".spec.automation.nodes[].maxAttempts")["default"] == 3
    assert at("AutomationRun", ".spec.automation.nodes[].kind")["default"] == "Task"
    assert at("AutomationRun", ".spec.automation.execution.maxParallelNodes")["default"] == 1
    assert at("Automation", ".spec.execution.profile")["default"] == "Strict"
    assert at("AgentQuotaOverride", ".spec.approved")["default"] is False
    status_defaults = [
        path for path, node in walk(at("AutomationRun", ".status")) if "default" in node
    ]
    assert status_defaults == []


def test_value_constraints_reach_the_schema() -> None:
    node = at("AutomationRun", ".spec.automation.nodes[]")
    assert node["required"] == ["id"]
    assert node["properties"]["id"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
    assert node["properties"]["maxAttempts"]["minimum"] == 1
    assert node["properties"]["maxAttempts"]["maximum"] == 10
    assert node["properties"]["kind"]["enum"] == ["Task", "Approval"]
    parallel = at("Automation", ".spec.execution.maxParallelNodes")
    assert (parallel["minimum"], parallel["maximum"]) == (1, 16)
    assert at("AutomationRun", ".spec.desiredState")["enum"] == ["Running", "Paused", "Cancelled"]
    assert at("AutomationRun", ".status.phase")["enum"] == [
        "Queued",
        "Running",
        "Pausing",
        "Paused",
        "AwaitingApproval",
        "Completed",
        "Blocked",
        "Failed",
        "Cancelled",
    ]
    assert at("AgentEndpoint", ".spec.url")["pattern"] == "^https?://"
    assert at("Automation", ".spec.execution.maxTotalCostUsd")["pattern"] == r"^[0-9]+(\.[0-9]+)?$"


# ------------------------------------------------------------------------------ what users see

NAMES = {
    "AutomationRun": ("automationruns", ["arun", "aruns"]),
    "Automation": ("automations", ["auto"]),
    "AgentQuotaOverride": ("agentquotaoverrides", ["aqo"]),
    "AgentEndpoint": ("agentendpoints", ["aep"]),
}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_names_category_scope_and_status_subresource(kind: str) -> None:
    manifest = CRDS[kind]
    plural, short = NAMES[kind]
    assert manifest["apiVersion"] == "apiextensions.k8s.io/v1"
    assert manifest["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = manifest["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
        "shortNames": short,
        "categories": ["tandem"],
    }
    [version] = spec["versions"]
    assert version["name"] == VERSION
    assert version["served"] is True
    assert version["storage"] is True
    assert version["subresources"] == {"status": {}}
    assert version["schema"]["openAPIV3Schema"]["required"] == ["spec"]


COLUMNS = {
    "AutomationRun": ["Phase", "Nodes", "Detail", "Stop", "Age"],
    "Automation": [
        "Schedule",
        "Suspend",
        "Active",
        "Last Schedule",
        "Next Schedule",
        "Creator",
        "Description",
        "Age",
    ],
    "AgentQuotaOverride": ["Agent", "Approved", "Expires", "Age"],
    "AgentEndpoint": ["URL", "Age"],
}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_printer_columns_point_at_real_fields(kind: str) -> None:
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == COLUMNS[kind]
    for column in columns:
        path = column["jsonPath"]
        if path == ".metadata.creationTimestamp":
            assert column["type"] == "date"
            continue
        field = at(kind, path)
        if column["type"] == "date":
            assert field["type"] == "string", f"{kind} column {column['name']}"
            continue
        wanted = {"string": "string", "boolean": "boolean", "integer": "integer"}[field["type"]]
        assert column["type"] == wanted, f"{kind} column {column['name']}"


def test_the_run_columns_show_phase_progress_and_detail() -> None:
    columns = {
        c["name"]: c
        for c in CRDS["AutomationRun"]["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Nodes"]["jsonPath"] == ".status.progress"
    assert columns["Detail"]["jsonPath"] == ".status.detail"
    assert columns["Stop"]["jsonPath"] == ".status.stopKind"
    assert columns["Stop"]["priority"] == 1


def rules(kind: str, path: str) -> list[str]:
    return [v["rule"] for v in at(kind, path).get("x-kubernetes-validations", [])]


def test_cel_rules_guard_the_run_spec() -> None:
    assert rules("AutomationRun", ".spec") == [
        "has(self.automationRef) != has(self.automation)",
        # A manifest without the list (a GitOps revert) must not drop recorded decisions.
        "!has(oldSelf.gateDecisions) || size(oldSelf.gateDecisions) == 0 "
        "|| has(self.gateDecisions)",
    ]
    assert rules("AutomationRun", ".spec.gateDecisions") == [
        "size(self) >= size(oldSelf) && oldSelf.all(i, self.exists(j, j == i))"
    ]
    for kind, prefix in (("AutomationRun", ".spec.automation"), ("Automation", ".spec")):
        flow_rules = rules(kind, prefix)
        assert len(flow_rules) == 4
        assert any("exists_one(m, m.id == n.id)" in r for r in flow_rules)
        assert any("n.dependsOn.all(d" in r for r in flow_rules)
        assert any("reworkTargets.all(t" in r for r in flow_rules)
        assert any("self.agents.exists(a, a.agentId == n.agentId)" in r for r in flow_rules)
        assert rules(kind, f"{prefix}.nodes[]") == [
            "self.kind == 'Approval' || !has(self.approval)"
        ]
        assert rules(kind, f"{prefix}.nodes[].executor") == [
            "(has(self.endpointRef) ? 1 : 0) + (has(self.simulate) ? 1 : 0)"
            " + (has(self.container) ? 1 : 0) == 1"
        ]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_has_a_description(kind: str) -> None:
    # What `kubectl explain <kind>.<path>` prints; a field without one explains nothing.
    missing = [
        f"{kind}{path}.{name}"
        for path, node in walk(root_schema(kind))
        for name, sub in node.get("properties", {}).items()
        if not str(sub.get("description", "")).strip()
        # The API server allows nothing but `type` on the top-level metadata.
        and not (path == "" and name == "metadata")
    ]
    assert missing == []
    assert root_schema(kind)["description"].startswith(f"{kind}: ")


def test_descriptions_carry_what_the_schema_says() -> None:
    attempts = at("AutomationRun", ".spec.automation.nodes[].maxAttempts")["description"]
    assert attempts.endswith("From 1 to 10. Default: 3.")
    policy = at("Automation", ".spec.schedule.concurrencyPolicy")["description"]
    assert "Forbid skips the due time" in policy
    assert policy.endswith("One of: Allow, Forbid, Replace. Default: Forbid.")
    approval = at("AutomationRun", ".spec.automation.nodes[].approval")["description"]
    assert approval == "The approval gate's settings; only on nodes of kind Approval."
    assert "\n" not in at("Automation", ".spec.schedule.cron")["description"]
    # Status drops defaults, so its descriptions do not claim one.
    assert "Default" not in at("Automation", ".status.activeRunCount")["description"]


def test_schedule_schema() -> None:
    schedule = at("Automation", ".spec.schedule")
    assert schedule["required"] == ["cron"]
    props = schedule["properties"]
    assert props["concurrencyPolicy"]["enum"] == ["Allow", "Forbid", "Replace"]
    assert props["concurrencyPolicy"]["default"] == "Forbid"
    assert props["timeZone"]["default"] == "UTC"
    assert props["suspend"]["default"] is False
    assert props["successfulRunsHistoryLimit"]["default"] == 3
    assert props["failedRunsHistoryLimit"]["default"] == 1
    assert (
        props["successfulRunsHistoryLimit"]["minimum"],
        props["failedRunsHistoryLimit"]["minimum"],
    ) == (0, 0)
    assert props["startingDeadlineSeconds"]["minimum"] == 1
    assert "pattern" in props["cron"]
    assert "pattern" in props["timeZone"]
    ttl = at("AutomationRun", ".spec.ttlSecondsAfterFinished")
    assert (ttl["type"], ttl["minimum"]) == ("integer", 0)
    assert "default" not in ttl
    # The schedule belongs to the Automation kind, not to a run's inline flow.
    assert "schedule" not in at("AutomationRun", ".spec.automation")["properties"]
    status = at("Automation", ".status")["properties"]
    assert {
        "lastScheduleTime",
        "nextScheduleTime",
        "activeRuns",
        "lastRunName",
        "conditions",
        "observedGeneration",
    } <= set(status)
    assert status["activeRuns"]["items"]["type"] == "string"


@pytest.mark.parametrize(
    ("cron", "valid"),
    [
        ("0 2 * * *", True),
        ("*/15 9-17 * * MON-FRI", True),
        ("0  2 * * *", True),
        ("@hourly", True),
        ("@daily", True),
        ("@weekly", True),
        ("@monthly", True),
        ("@every 30s", True),
        ("@every 5m", True),
        ("@every 2h", True),
        ("@every 0s", False),
        ("@every 5d", False),
        ("@every 1h30m", False),
        ("@yearly", False),
        ("0 2 * *", False),
        ("0 0 2 * * *", False),
        ("", False),
        ("0 2 * * * ; rm", False),
    ],
)
def test_the_cron_pattern(cron: str, valid: bool) -> None:
    pattern = at("Automation", ".spec.schedule.cron")["pattern"]
    assert (re.fullmatch(pattern, cron) is not None) is valid


@pytest.mark.parametrize(
    ("zone", "valid"),
    [
        ("UTC", True),
        ("Europe/Berlin", True),
        ("America/Argentina/Buenos_Aires", True),
        ("Etc/GMT+5", True),
        ("", False),
        ("/etc/passwd", False),
        ("Europe/../UTC", False),
        ("Europe Berlin", False),
    ],
)
def test_the_time_zone_pattern(zone: str, valid: bool) -> None:
    pattern = at("Automation", ".spec.schedule.timeZone")["pattern"]
    assert (re.fullmatch(pattern, zone) is not None) is valid


def test_every_cel_rule_has_a_message() -> None:
    for kind in CRDS:
        for path, node in walk(root_schema(kind)):
            for validation in node.get("x-kubernetes-validations", []):
                assert validation.get("message"), f"{kind}{path}: {validation['rule']}"


# ------------------------------------------------------------------------------ generator errors


class OpenObject(BaseModel):
    loose: dict[str, Any]


class Marked(BaseModel):
    loose: FreeForm


class Union(BaseModel):
    either: int | str


def test_an_open_object_without_free_form_is_an_error() -> None:
    with pytest.raises(crdgen.SchemaError, match=r"\$\.loose: open object without FreeForm"):
        crdgen.model_schema(OpenObject, keep_defaults=True)


def test_a_free_form_object_preserves_unknown_fields() -> None:
    schema = crdgen.model_schema(Marked, keep_defaults=True)
    assert schema["properties"]["loose"] == {
        "type": "object",
        crdgen.PRESERVE: True,
    }


def test_a_real_union_is_an_error() -> None:
    with pytest.raises(crdgen.SchemaError, match="anyOf with 2 non-null options"):
        crdgen.model_schema(Union, keep_defaults=True)
