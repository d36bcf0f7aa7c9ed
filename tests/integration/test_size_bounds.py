"""A 100-node run whose agents return large outputs stays far below the object size limit.

The unit tests (``tests/unit/test_status_size.py``) drive the engine through 10,000
lifecycle records; this test checks the same bound where it matters, on the status the API
server stores. 95 nodes run on the real NDJSON agent server, which answers every attempt
with a 20 KB output; 5 are simulated with a 3 KB output (a simulated output is written in
the spec, so the flow itself grows with it: the spec and its snapshot in status would not
stay small if every node carried a large one). With 100 nodes each output may keep 1 KiB,
so every one of them is stored as a marker that keeps its status and says it was cut.
Downstream nodes receive what status holds: the marker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from support import Cluster, OperatorProcess, simulated_run

from agentserver import Activity, AgentServer, Result, Usage

STATUS_LIMIT = 256 * 1024
AGENT_OUTPUT = "r" * 20_000
SIMULATED_OUTPUT = "s" * 3_000
SIMULATED = {f"n{i:03d}" for i in (7, 30, 51, 77, 99)}


def _flow() -> list[dict[str, Any]]:
    """16 chains side by side: node i depends on node i - 16."""
    nodes = []
    for i in range(100):
        node_id = f"n{i:03d}"
        node: dict[str, Any] = {
            "id": node_id,
            "agentId": "researcher",
            "objective": f"Write part {i} of the annual report",
            "dependsOn": [f"n{i - 16:03d}"] if i >= 16 else [],
        }
        if node_id in SIMULATED:
            node["executor"] = {
                "simulate": {"outcome": "completed", "output": {"blob": SIMULATED_OUTPUT}}
            }
        nodes.append(node)
    return nodes


def test_hundred_nodes_with_large_outputs_keep_status_small(
    cluster: Cluster, operators: Callable[..., OperatorProcess], agent: AgentServer
) -> None:
    agent.script(
        steps=[
            Activity(),
            Usage(prompt_tokens=10, completion_tokens=5),
            Result(output={"status": "completed", "report": AGENT_OUTPUT}),
        ]
    )
    operators()
    cluster.apply(
        simulated_run(
            "annual-report",
            _flow(),
            agents=[{"agentId": "researcher", "endpointRef": {"name": "engine"}}],
            execution={"maxParallelNodes": 16},
        )
    )
    status = cluster.wait_phase("annual-report", "Completed", "Failed", timeout=240)
    assert status["phase"] == "Completed", status.get("detail")

    size = len(json.dumps(status))
    print(f"status of a completed 100-node run: {size} bytes")
    assert size < STATUS_LIMIT, f"status is {size} bytes"
    cp = status["checkpoint"]
    assert len(cp["completedNodes"]) == 100
    for node_id, output in cp["nodeOutputs"].items():
        expected = len(SIMULATED_OUTPUT) if node_id in SIMULATED else len(AGENT_OUTPUT)
        assert output["status"] == "completed", node_id
        assert output["truncated"] is True, node_id
        assert output["original_bytes"] > expected, node_id
        assert "report" not in output
        assert "blob" not in output
        assert len(json.dumps(output)) <= 1024
    # Nothing was lost on the way: one attempt and one verdict per node, all usage counted.
    assert set(cp["nodeAttempts"].values()) == {1}
    assert all(len(v) == 1 for v in cp["nodeAttemptVerdicts"].values())
    assert status["usage"]["totalTokens"] == 15 * (100 - len(SIMULATED))
    assert len(agent.requests) == 100 - len(SIMULATED)
    # A downstream agent is handed the stored (cut) output of its upstream node.
    (request,) = agent.requests_for("n016")
    upstream = request.body["inputs"]["n000"]
    assert upstream["truncated"] is True
    assert upstream["original_bytes"] > len(AGENT_OUTPUT)
    # And the whole object, spec and metadata included, is as small.
    stored = cluster.kubectl("get", "automationrun", "annual-report", "-o", "json")
    print(f"whole object: {len(stored)} bytes")
    assert len(stored) < STATUS_LIMIT + 64 * 1024
