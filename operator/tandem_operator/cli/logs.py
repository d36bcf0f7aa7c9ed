"""Container attempts in the kubectl plugin: ``logs RUN NODE [--attempt N] [-f]`` and the Pods
section of ``describe``.

A container attempt's Pod is named ``<run>-<node>-<attempt>`` (``execution.container``), so
the plugin finds it from the run alone: ``logs`` reads that Pod's log (``pods/log``, the
container ``agent``), following it with ``-f``; ``describe`` lists each container
attempt's Pod with how it ended, from ``status.checkpoint.nodeAttemptVerdicts``. Ended
attempts' Pods are deleted by the operator (after ``TANDEM_POD_KEEP_SECONDS``), so the log
of an old attempt may be gone; the verdict stays.

Rendering is pure (run objects in, lines out); :func:`stream_logs` does the I/O through
the plugin's pykube client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import requests

from tandem_operator.execution.container import CONTAINER_NAME, pod_name

Run = Mapping[str, Any]


def _flow(run: Run, automation: Mapping[str, Any] | None) -> Mapping[str, Any]:
    status = run.get("status") or {}
    flow: Mapping[str, Any] = (
        status.get("automationSnapshot")
        or (run.get("spec") or {}).get("automation")
        or automation
        or {}
    )
    return flow


def container_nodes(run: Run, automation: Mapping[str, Any] | None = None) -> list[str]:
    """Ids of the nodes the container executor runs (their own or their agent's container)."""
    flow = _flow(run, automation)
    agents = {a.get("agentId"): a for a in flow.get("agents") or [] if isinstance(a, Mapping)}
    found = []
    for node in flow.get("nodes") or []:
        if not isinstance(node, Mapping) or not node.get("id"):
            continue
        executor = node.get("executor") or {}
        agent = agents.get(node.get("agentId")) or {}
        if executor.get("container") or (
            not executor and not agent.get("endpointRef") and agent.get("container")
        ):
            found.append(str(node["id"]))
    return found


def render_pods(run: Run, automation: Mapping[str, Any] | None = None) -> list[str]:
    """``describe``'s Pods section: each container attempt, its Pod and how it ended."""
    nodes = container_nodes(run, automation)
    if not nodes:
        return []
    name = str((run.get("metadata") or {}).get("name", ""))
    cp = (run.get("status") or {}).get("checkpoint") or {}
    verdicts = cp.get("nodeAttemptVerdicts") or {}
    attempts = cp.get("nodeAttempts") or {}
    outputs = cp.get("nodeOutputs") or {}
    lines = ["Pods:"]
    for node in nodes:
        ended = {int(v.get("attempt", 0)) for v in verdicts.get(node) or []}
        for verdict in verdicts.get(node) or []:
            attempt = int(verdict.get("attempt", 0))
            why = f": {verdict['error']}" if verdict.get("error") else ""
            lines.append(
                f"  {node} attempt {attempt}  {pod_name(name, node, attempt)}  "
                f"{verdict.get('status', '-')}{why}"
            )
        current = int(attempts.get(node) or 0)
        if current and current not in ended and node not in outputs:
            lines.append(f"  {node} attempt {current}  {pod_name(name, node, current)}  running")
    if len(lines) == 1:
        lines.append("  (none yet)")
    return lines


def attempt_of(run: Run, node: str, attempt: int | None) -> int:
    """The attempt whose log is asked for: ``attempt``, else the node's latest."""
    if attempt is not None:
        return attempt
    cp = (run.get("status") or {}).get("checkpoint") or {}
    latest = int((cp.get("nodeAttempts") or {}).get(node) or 0)
    if latest == 0:
        verdicts = (cp.get("nodeAttemptVerdicts") or {}).get(node) or []
        latest = max((int(v.get("attempt", 0)) for v in verdicts), default=0)
    return latest


def stream_logs(
    api: Any,
    *,
    namespace: str,
    pod: str,
    follow: bool,
    out: TextIO = sys.stdout,
) -> None:
    """Copy the Pod's log to ``out`` (until the container ends, with ``follow``)."""
    params = {"container": CONTAINER_NAME}
    if follow:
        params["follow"] = "true"
    try:
        response = api.get(
            version="v1",
            namespace=namespace,
            url=f"pods/{pod}/log",
            params=params,
            stream=True,
        )
    except requests.RequestException as exc:
        raise LogsError(f"cannot reach the API server: {exc}") from exc
    if response.status_code == 404:
        raise LogsError(
            f'Pod "{pod}" not found in namespace "{namespace}": the attempt has not started, '
            "or its Pod was deleted after it ended (TANDEM_POD_KEEP_SECONDS keeps them a while)"
        )
    if not response.ok:
        raise LogsError(f"cannot read the log of Pod {pod}: HTTP {response.status_code}")
    for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
        out.write(chunk if isinstance(chunk, str) else chunk.decode(errors="replace"))
        out.flush()


class LogsError(Exception):
    """A problem reading an attempt's log; the plugin prints it as an error."""


def add_logs_command(
    command: Callable[..., argparse.ArgumentParser],
    func: Callable[..., int],
) -> None:
    """Register ``logs`` with the plugin's ``command`` helper."""
    p = command("logs", func, "print the log of a container attempt's Pod")
    p.add_argument("name")
    p.add_argument("node")
    p.add_argument("--attempt", type=int, default=None, help="the attempt (default: latest)")
    p.add_argument("-f", "--follow", action="store_true", help="stream until the Pod ends")


def logs_target(run: Run, node: str, attempt: int | None) -> tuple[str, int]:
    """The Pod name and attempt for ``logs``; ``LogsError`` when the node has none."""
    name = str((run.get("metadata") or {}).get("name", ""))
    chosen = attempt_of(run, node, attempt)
    if chosen < 1:
        raise LogsError(f"node `{node}` of {name} has no attempt yet")
    return pod_name(name, node, chosen), chosen


__all__: Sequence[str] = (
    "LogsError",
    "add_logs_command",
    "attempt_of",
    "container_nodes",
    "logs_target",
    "render_pods",
    "stream_logs",
)
