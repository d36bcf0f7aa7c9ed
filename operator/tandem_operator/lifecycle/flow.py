"""Pure questions about a flow's graph: upstream, downstream, runnable nodes."""

from __future__ import annotations

from collections.abc import Iterable

from tandem_operator.api.models import AutomationSpec, Node


def nodes_by_id(flow: AutomationSpec) -> dict[str, Node]:
    return {node.id: node for node in flow.nodes}


def descendants(flow: AutomationSpec, roots: Iterable[str]) -> set[str]:
    """Every node reachable downstream of ``roots`` (the roots excluded unless reached)."""
    children: dict[str, list[str]] = {}
    for node in flow.nodes:
        for dep in node.depends_on:
            children.setdefault(dep, []).append(node.id)
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def find_cycle(flow: AutomationSpec) -> list[str] | None:
    """A dependency cycle as a list of node ids, or ``None`` when the flow is a DAG."""
    deps = {node.id: list(node.depends_on) for node in flow.nodes}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        path.append(node_id)
        for dep in deps.get(node_id, []):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep in deps and dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[node_id] = 2
        return None

    for node_id in deps:
        if node_id not in state:
            found = visit(node_id)
            if found:
                return found
    return None


def upstream(flow: AutomationSpec, node_id: str) -> set[str]:
    """Every node ``node_id`` depends on, directly or through other nodes."""
    deps = {node.id: list(node.depends_on) for node in flow.nodes}
    seen: set[str] = set()
    stack = list(deps.get(node_id, []))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(deps.get(current, []))
    return seen
