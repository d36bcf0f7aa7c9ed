"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. The
translation is mechanical and strict:

- ``$ref`` is inlined (structural schemas have no references);
- ``anyOf: [X, {type: null}]`` (an optional field) becomes ``X`` with ``nullable: true``;
- ``title`` and ``examples`` are dropped;
- ``x-kubernetes-preserve-unknown-fields`` appears only where a model says ``FreeForm``;
  any other open object is an error, so nothing becomes schemaless by accident;
- defaults are kept in ``spec`` (the API server applies them, and users see them) and
  dropped in ``status``, which only the operator writes;
- descriptions (the models' field docstrings) are kept, whitespace folded, and each gets
  the facts ``kubectl explain`` would otherwise not show: default, allowed values, range,
  length and pattern, read from the schema so they cannot drift from it.

The field tables of ``docs/api.md`` come from the same schemas: each table sits between
``<!-- fields: NAME -->`` and ``<!-- end fields -->`` and is rewritten whole.

``python -m tandem_operator.api.crdgen [DIR]`` writes ``crds/``;
``python -m tandem_operator.api.crdgen docs [FILE]`` rewrites the tables in ``docs/api.md``.
Tests fail when the committed files differ from what this module generates.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tandem_operator.api.models import (
    GROUP,
    VERSION,
    AgentEndpointSpec,
    AgentQuotaOverrideSpec,
    AutomationResourceSpec,
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    AutomationStatus,
    ObservedStatus,
    Schedule,
)

CATEGORY = "tandem"
PRESERVE = "x-kubernetes-preserve-unknown-fields"
_DROPPED = frozenset({"title", "examples"})


class SchemaError(ValueError):
    """The models produced a schema that cannot be made structural."""


@dataclass(frozen=True, kw_only=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    summary: str
    columns: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="AutomationRun",
        summary="one run of a flow; spec is the intent, status the checkpoint.",
        plural="automationruns",
        short_names=("arun", "aruns"),
        spec=AutomationRunSpec,
        status=AutomationRunStatus,
        columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Nodes",
                "type": "string",
                "jsonPath": ".status.progress",
                "description": "Completed nodes / all nodes",
            },
            {"name": "Detail", "type": "string", "jsonPath": ".status.detail"},
            {
                "name": "Stop",
                "type": "string",
                "jsonPath": ".status.stopKind",
                "priority": 1,
            },
            _age(),
        ),
    ),
    Kind(
        kind="Automation",
        summary="a reusable flow that runs reference, optionally started on a schedule.",
        plural="automations",
        short_names=("auto",),
        spec=AutomationResourceSpec,
        status=AutomationStatus,
        columns=(
            {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule.cron"},
            {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.schedule.suspend"},
            {
                "name": "Active",
                "type": "integer",
                "jsonPath": ".status.activeRunCount",
                "description": "Runs of the schedule that are not terminal",
            },
            {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
            {"name": "Next Schedule", "type": "string", "jsonPath": ".status.nextScheduleTime"},
            {"name": "Creator", "type": "string", "jsonPath": ".spec.creatorId", "priority": 1},
            {
                "name": "Description",
                "type": "string",
                "jsonPath": ".spec.description",
                "priority": 1,
            },
            _age(),
        ),
    ),
    Kind(
        kind="AgentQuotaOverride",
        summary="approval for an agent or a creator to exceed budgets.",
        plural="agentquotaoverrides",
        short_names=("aqo",),
        spec=AgentQuotaOverrideSpec,
        status=ObservedStatus,
        columns=(
            {"name": "Agent", "type": "string", "jsonPath": ".spec.agentId"},
            {"name": "Approved", "type": "boolean", "jsonPath": ".spec.approved"},
            {"name": "Expires", "type": "string", "jsonPath": ".spec.expiresAt"},
            _age(),
        ),
    ),
    Kind(
        kind="AgentEndpoint",
        summary="an HTTP agent engine that executes nodes (set up by admins).",
        plural="agentendpoints",
        short_names=("aep",),
        spec=AgentEndpointSpec,
        status=ObservedStatus,
        columns=(
            {"name": "URL", "type": "string", "jsonPath": ".spec.url"},
            _age(),
        ),
    ),
)


def structural(
    node: Any, defs: dict[str, Any], *, keep_defaults: bool, path: str = "$"
) -> dict[str, Any]:
    """Turn one pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    if not isinstance(node, dict):
        raise SchemaError(f"{path}: expected a schema object, got {node!r}")
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        name = ref.rsplit("/", 1)[-1]
        node = {**defs[name], **node}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        options = [o for o in any_of if o != {"type": "null"}]
        if len(options) != 1:
            raise SchemaError(f"{path}: anyOf with {len(options)} non-null options")
        inner = structural(options[0], defs, keep_defaults=keep_defaults, path=path)
        node = {**inner, **node, "nullable": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED or (key == "default" and (not keep_defaults or value is None)):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {
                name: structural(sub, defs, keep_defaults=keep_defaults, path=f"{path}.{name}")
                for name, sub in value.items()
            }
        elif key == "items":
            out[key] = structural(value, defs, keep_defaults=keep_defaults, path=f"{path}[]")
        elif key == "additionalProperties":
            if value is True or value == {}:
                if not node.get(PRESERVE):
                    raise SchemaError(f"{path}: open object without FreeForm")
                continue
            if value is not False:
                out[key] = structural(value, defs, keep_defaults=keep_defaults, path=f"{path}.*")
        else:
            out[key] = value
    if out.get(PRESERVE):
        out["type"] = "object"
    if "type" not in out:
        raise SchemaError(f"{path}: no type")
    return out


def model_schema(
    model: type[BaseModel], *, keep_defaults: bool, annotate: bool = False
) -> dict[str, Any]:
    """The structural schema of a model; ``annotate`` adds the schema's facts to descriptions."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = structural(raw, defs, keep_defaults=keep_defaults)
    _fold_descriptions(schema, annotate=annotate)
    return schema


def _fold_descriptions(node: dict[str, Any], *, annotate: bool) -> None:
    text = node.get("description")
    if isinstance(text, str):
        folded = " ".join(text.split())
        facts = constraint_facts(node) if annotate else []
        node["description"] = " ".join([folded, *facts])
    for sub in node.get("properties", {}).values():
        _fold_descriptions(sub, annotate=annotate)
    if isinstance(node.get("items"), dict):
        _fold_descriptions(node["items"], annotate=annotate)
    if isinstance(node.get("additionalProperties"), dict):
        _fold_descriptions(node["additionalProperties"], annotate=annotate)


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def constraint_facts(node: dict[str, Any]) -> list[str]:
    """Sentences on what the schema itself says of a field, for ``kubectl explain``."""
    facts = []
    if "enum" in node:
        facts.append("One of: " + ", ".join(_value(v) for v in node["enum"]) + ".")
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        facts.append(f"From {_value(low)} to {_value(high)}.")
    elif low is not None:
        facts.append(f"At least {_value(low)}.")
    elif high is not None:
        facts.append(f"At most {_value(high)}.")
    if node.get("minLength", 0) > 1:
        facts.append(f"At least {node['minLength']} characters.")
    if "maxLength" in node:
        facts.append(f"At most {node['maxLength']} characters.")
    if node.get("minItems", 0) > 0:
        facts.append(f"At least {node['minItems']} items.")
    if "maxItems" in node:
        facts.append(f"At most {node['maxItems']} items.")
    if "maxProperties" in node:
        facts.append(f"At most {node['maxProperties']} entries.")
    if "pattern" in node:
        facts.append(f"Pattern: {node['pattern']}")
    if "default" in node and node["default"] not in ([], {}):
        facts.append(f"Default: {_value(node['default'])}.")
    return facts


# What ``kubectl explain`` says of the fields every object has (as for built-in kinds).
_API_VERSION = (
    "APIVersion defines the versioned schema of this representation of an object; "
    f"{GROUP}/{VERSION} for every kind of this API."
)
_KIND = "Kind is a string value representing the REST resource this object represents."


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a plain manifest."""
    spec = model_schema(kind.spec, keep_defaults=True, annotate=True)
    status = model_schema(kind.status, keep_defaults=False, annotate=True)
    spec["description"] = f"Spec of the {kind.kind}. {spec.get('description', '')}".strip()
    status["description"] = (
        f"Status of the {kind.kind}, written by the operator. {status.get('description', '')}"
    ).strip()
    schema = {
        "type": "object",
        "description": f"{kind.kind}: {kind.summary}",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": _API_VERSION},
            "kind": {"type": "string", "description": _KIND},
            # The API server refuses anything but `type` here; kubectl explains metadata
            # from ObjectMeta's own schema.
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name, "labels": {"app.kubernetes.io/part-of": "tandem"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {"openAPIV3Schema": schema},
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]


HEADER = "# Generated by `python -m tandem_operator.api.crdgen` from the API models. DO NOT EDIT.\n"


class _Dumper(yaml.SafeDumper):
    """Writes repeated sub-schemas out in full: CRDs with YAML anchors read badly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(manifest: dict[str, Any]) -> str:
    return HEADER + yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=100)


def rendered_files() -> dict[str, str]:
    """File name → content of every CRD file in ``crds/``."""
    return {f"{m['metadata']['name']}.yaml": render(m) for m in all_crds()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


# ------------------------------------------------------------------ docs/api.md field tables


@dataclass(frozen=True, kw_only=True)
class FieldTable:
    """One generated table: the fields of a model, with the paths not to descend into."""

    model: type[BaseModel]
    keep_defaults: bool
    stop: frozenset[str] = frozenset()
    """Paths shown as one row without their sub-fields (documented in another table)."""


FIELD_TABLES: dict[str, FieldTable] = {
    "AutomationRun.spec": FieldTable(
        model=AutomationRunSpec, keep_defaults=True, stop=frozenset({"automation"})
    ),
    "flow": FieldTable(model=AutomationSpec, keep_defaults=True),
    "AutomationRun.status": FieldTable(model=AutomationRunStatus, keep_defaults=False),
    "Automation.spec.schedule": FieldTable(model=Schedule, keep_defaults=True),
    "Automation.status": FieldTable(model=AutomationStatus, keep_defaults=False),
    "AgentEndpoint.spec": FieldTable(model=AgentEndpointSpec, keep_defaults=True),
    "AgentQuotaOverride.spec": FieldTable(model=AgentQuotaOverrideSpec, keep_defaults=True),
}

_TABLE = re.compile(
    r"(<!-- fields: (?P<name>[\w.]+) -->\n)(?P<body>.*?)(<!-- end fields -->)", re.S
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type(node: dict[str, Any]) -> str:
    """The type column: the JSON type with its allowed values, range and length."""
    if "enum" in node:
        return " | ".join(f"`{_value(v)}`" for v in node["enum"])
    kind = node.get("type")
    if node.get(PRESERVE):
        return "object (free-form)"
    if kind == "string":
        out = "string"
        if "pattern" in node:
            out += f" matching `{node['pattern']}`"
        if "maxLength" in node:
            out += f" (≤ {node['maxLength']})"
        return out
    if kind in ("integer", "number"):
        out = "int" if kind == "integer" else "number"
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and high is not None:
            return f"{out} {_value(low)}–{_value(high)}"
        if low is not None:
            return f"{out} ≥ {_value(low)}"
        return out
    if kind == "boolean":
        return "bool"
    if kind == "array":
        items = node.get("items", {})
        inner = "objects" if items.get("type") == "object" else _type(items)
        bound = f" (≤ {node['maxItems']})" if "maxItems" in node else ""
        if node.get("minItems"):
            bound = f", {node['minItems']}–{node.get('maxItems', '')}"
        return f"list of {inner}{bound}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        values = node["additionalProperties"]
        inner = "object" if values.get("type") == "object" else _type(values)
        return f"map of {inner}"
    return "object"


def _rows(
    node: dict[str, Any], *, prefix: str, stop: frozenset[str]
) -> Iterator[tuple[str, dict[str, Any], bool]]:
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        yield path, sub, name in required
        if path in stop:
            continue
        target = sub["items"] if sub.get("type") == "array" and "items" in sub else sub
        suffix = "[]." if target is not sub else "."
        if "properties" in target:
            yield from _rows(target, prefix=f"{path}{suffix}", stop=stop)


def field_table(name: str) -> str:
    """The markdown table of one entry of :data:`FIELD_TABLES`."""
    table = FIELD_TABLES[name]
    schema = model_schema(table.model, keep_defaults=table.keep_defaults)
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for path, node, required in _rows(schema, prefix="", stop=table.stop):
        if required:
            default = "required"
        elif "default" in node:
            default = f"`{_value(node['default'])}`"
        else:
            default = ""
        description = node.get("description", "")
        lines.append(
            f"| `{path}` | {_cell(_type(node))} | {_cell(default)} | {_cell(description)} |"
        )
    return "\n".join(lines) + "\n"


def render_docs(text: str) -> str:
    """``text`` with every marked field table rewritten from the models."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in FIELD_TABLES:
            raise SchemaError(f"docs name an unknown field table {name!r}")
        return match.group(1) + field_table(name) + match.group(4)

    return _TABLE.sub(replace, text)


DOCS = Path("docs/api.md")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "docs":
        path = Path(args[1]) if len(args) > 1 else DOCS
        path.write_text(render_docs(path.read_text()))
        print(path)
        return 0
    target = Path(args[0]) if args else Path("crds")
    for path in write(target):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
