"""Every object of this API in examples/ parses as its kind's spec, so `kubectl apply` of the
examples (tests/integration) fails only for reasons a cluster adds, never for a typo here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tandem_operator.api.crdgen import KINDS
from tandem_operator.api.models import API_VERSION, AutomationResourceSpec
from tandem_operator.scheduling.cron import schedule_problem

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
SPECS = {kind.kind: kind.spec for kind in KINDS}


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{i}", doc)
        for path in EXAMPLES
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc and doc.get("apiVersion") == API_VERSION
    ]


@pytest.mark.parametrize(
    ("where", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_each_example_is_a_valid_object(where: str, doc: dict[str, Any]) -> None:
    spec = SPECS[doc["kind"]].model_validate(doc["spec"])
    if isinstance(spec, AutomationResourceSpec) and spec.schedule is not None:
        assert schedule_problem(spec.schedule) is None, where


def test_there_is_a_scheduled_example() -> None:
    kinds = [doc["spec"].get("schedule") for _, doc in documents() if doc["kind"] == "Automation"]
    assert any(kinds)
