"""Graph helpers of a flow: lookup by id, descendants, and cycle detection.

``find_cycle`` is checked against a brute-force reachability oracle with hypothesis: a flow
has a cycle exactly when some node can reach itself, and a reported cycle must be a real
closed path along ``dependsOn`` edges.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tandem_operator.api.models import AutomationSpec
from tandem_operator.lifecycle.flow import descendants, find_cycle, nodes_by_id


def flow(edges: dict[str, list[str]]) -> AutomationSpec:
    """A flow whose node ``id`` depends on ``edges[id]``."""
    return AutomationSpec.model_validate(
        {"nodes": [{"id": node_id, "dependsOn": deps} for node_id, deps in edges.items()]}
    )


DIAMOND = flow(
    {"collect": [], "left": ["collect"], "right": ["collect"], "merge": ["left", "right"]}
)


def assert_is_cycle(spec: AutomationSpec, cycle: list[str]) -> None:
    """A cycle is a closed walk along dependsOn edges: each node depends on the next."""
    deps = {n.id: set(n.depends_on) for n in spec.nodes}
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    for node_id, dep in itertools.pairwise(cycle):
        assert dep in deps[node_id], f"{node_id} does not depend on {dep} in {cycle}"


def test_nodes_by_id_keeps_the_nodes() -> None:
    nodes = nodes_by_id(DIAMOND)
    assert list(nodes) == ["collect", "left", "right", "merge"]
    assert nodes["merge"].depends_on == ["left", "right"]


def test_descendants_are_everything_downstream() -> None:
    assert descendants(DIAMOND, {"collect"}) == {"left", "right", "merge"}
    assert descendants(DIAMOND, ["left"]) == {"merge"}
    assert descendants(DIAMOND, {"merge"}) == set()
    assert descendants(DIAMOND, set()) == set()


def test_descendants_exclude_the_roots_unless_reached_from_another_root() -> None:
    assert descendants(DIAMOND, {"left", "collect"}) == {"left", "right", "merge"}
    assert descendants(DIAMOND, {"left", "right"}) == {"merge"}


def test_descendants_of_an_unknown_node_are_empty() -> None:
    assert descendants(DIAMOND, {"ghost"}) == set()


def test_a_dag_has_no_cycle() -> None:
    assert find_cycle(DIAMOND) is None
    assert find_cycle(flow({"only": []})) is None


def test_a_self_dependency_is_a_cycle() -> None:
    assert find_cycle(flow({"a": [], "loop": ["loop"]})) == ["loop", "loop"]


def test_a_two_node_cycle_is_reported_as_a_closed_path() -> None:
    spec = flow({"a": ["b"], "b": ["a"]})
    cycle = find_cycle(spec)
    assert cycle is not None
    assert set(cycle) == {"a", "b"}
    assert_is_cycle(spec, cycle)


def test_a_cycle_behind_a_dag_prefix_is_found_without_the_prefix() -> None:
    spec = flow({"start": ["x"], "x": ["y"], "y": ["z"], "z": ["x"], "free": []})
    cycle = find_cycle(spec)
    assert cycle is not None
    assert set(cycle) == {"x", "y", "z"}
    assert_is_cycle(spec, cycle)


def test_dependencies_outside_the_flow_are_not_cycles() -> None:
    assert find_cycle(flow({"a": ["missing"], "b": ["a"]})) is None


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    names = [f"n{i}" for i in range(draw(st.integers(min_value=1, max_value=8)))]
    return {name: sorted(draw(st.sets(st.sampled_from(names), max_size=3))) for name in names}


def reaches_itself(edges: dict[str, list[str]]) -> bool:
    for start in edges:
        stack, seen = list(edges[start]), set()
        while stack:
            node = stack.pop()
            if node == start:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, []))
    return False


@settings(max_examples=200, deadline=None)
@given(edges=graphs())
def test_find_cycle_agrees_with_reachability(edges: dict[str, list[str]]) -> None:
    spec = flow(edges)
    cycle = find_cycle(spec)
    assert (cycle is not None) == reaches_itself(edges)
    if cycle is not None:
        assert_is_cycle(spec, cycle)
        # The reported walk visits each node once before closing.
        assert len(set(cycle[:-1])) == len(cycle) - 1


@settings(max_examples=200, deadline=None)
@given(edges=graphs())
def test_descendants_are_closed_under_dependency(edges: dict[str, list[str]]) -> None:
    spec = flow(edges)
    for root in edges:
        below = descendants(spec, {root})
        for node_id, deps in edges.items():
            # A node depending on the root or on a descendant is itself a descendant.
            if root in deps or set(deps) & below:
                assert node_id in below
        # And nothing else: every descendant depends on the root or on another descendant.
        for node_id in below:
            assert set(edges[node_id]) & (below | {root})
