"""Generate the CustomResourceDefinitions from the pydantic models.

Pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. The
translation is mechanical and strict:

- ``$ref`` is inlined (structural schemas have no references);
- ``anyOf: [X, {type: null}]`` (an optional field) becomes ``X`` with ``nullable: true``;
- ``title`` and ``examples`` are dropped;
- ``x-kubernetes-preserve-unknown-fields`` appears only where a model says ``FreeForm``;
  any other open object is an error, so nothing becomes schemaless by accident;
- defaults are kept in ``spec`` (the API server applies them, and users see them) and
  dropped in ``status``, which only the operator writes.

``python -m tandem_operator.api.crdgen [DIR]`` writes ``crds/``; a test fails when the
committed files differ from what this module generates.
"""

from __future__ import annotations

import sys
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
    AutomationRunSpec,
    AutomationRunStatus,
    AutomationSpec,
    ObservedStatus,
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
    columns: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _age() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


KINDS: tuple[Kind, ...] = (
    Kind(
        kind="AutomationRun",
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
        plural="automations",
        short_names=("auto",),
        spec=AutomationSpec,
        status=ObservedStatus,
        columns=(
            {"name": "Creator", "type": "string", "jsonPath": ".spec.creatorId"},
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


def model_schema(model: type[BaseModel], *, keep_defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return structural(raw, defs, keep_defaults=keep_defaults)


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a plain manifest."""
    schema = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": model_schema(kind.spec, keep_defaults=True),
            "status": model_schema(kind.status, keep_defaults=False),
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


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path("crds")
    for path in write(target):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
