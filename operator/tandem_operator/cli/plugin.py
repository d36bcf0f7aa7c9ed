"""``kubectl automationrun``: read and steer AutomationRuns from the command line.

Installed as the console script ``kubectl-automationrun``; kubectl finds any executable
named ``kubectl-<name>`` on ``PATH`` and runs it for ``kubectl <name>``. Commands:

- ``list [-A] [-o json]``: name, phase, nodes done, detail, age.
- ``describe NAME``: phase and detail, stop kind and reason, the node tree (following
  ``dependsOn``) with each node's state and attempts, the gate that waits with its title,
  instructions and decisions, who may decide it (``approvers``), how many approvals it
  needs and who approved so far (B18), who decided earlier gates, usage and the latest
  lifecycle records.
- ``approve|rework|cancel-gate NAME [--gate G] [--reason R]``: append a decision to
  ``spec.gateDecisions`` (B11) with a fresh ``requestId``. The admission webhook records
  who wrote it (``decidedBy``) and refuses users the gate's ``approvers`` do not list; the
  plugin prints the name recorded, or the webhook's refusal.
- ``pause NAME [--reason R]``, ``resume NAME``, ``cancel NAME``: ``spec.desiredState``
  (B12, B13).
- ``recover NAME``: a new ``spec.recover.requestId`` (B14).
- ``history NAME [-o json]``: the lifecycle records of the run.
- ``start AUTOMATION [--name N]``: a run of the Automation now, as ``kubectl create job
  --from=cronjob/...`` does for a CronJob: ``automationRef``, ``triggerType: manual``, the
  schedule's runTemplate labels, annotations and runtimeContext, the label
  ``automation.tandem.dev/automation`` and an ownerReference to the Automation (so it counts
  for the schedule's concurrency policy and history limits like the runs it starts).
- ``logs NAME NODE [--attempt N] [-f]``: the log of a container attempt's Pod
  (``cli.logs``, which also adds the Pods section of ``describe``).

Everything the plugin writes is user intent in ``spec`` (``cli.writes``); the operator
turns it into status. Each write is checked against what the user saw: gate decisions go as a JSON patch
whose ``test`` op pins ``metadata.resourceVersion`` and whose ``add`` op appends to the
list, spec changes as a merge patch carrying ``metadata.resourceVersion``. When the run
changed in between, the plugin reads it again, checks again (is the gate still awaiting?)
and retries a few times, so a decision is never recorded for a gate that has moved on.

This module parses the arguments and runs the commands that only read. Rendering
(``cli.render``) is pure: functions from raw run objects (and the time) to text, unit-tested
with hand-built objects; only :class:`RunClient` (``cli.client``) and the commands do I/O.
Errors are :class:`PluginError`: message on stderr, exit code 1. The client is pykube-ng,
like the rest of the command line; the kubeconfig is ``--kubeconfig``, else ``$KUBECONFIG``, else
``~/.kube/config`` (or the pod's service account), and the namespace is ``-n``, else the
current context's.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from tandem_operator.cli import logs
from tandem_operator.cli.client import PluginError, RunClient
from tandem_operator.cli.render import (
    checkpoint_of,
    flow_nodes,
    render_describe,
    render_history,
    render_list,
)
from tandem_operator.cli.writes import GATE_COMMANDS, cmd_control, cmd_gate, cmd_start
from tandem_operator.runtime.ports import wall_ms


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _cmd_list(client: RunClient, args: argparse.Namespace) -> int:
    runs = client.list_runs(all_namespaces=args.all_namespaces)
    if args.output == "json":
        _print_json({"apiVersion": "v1", "kind": "List", "items": runs})
        return 0
    if not runs:
        where = "" if args.all_namespaces else f' in namespace "{client.namespace}"'
        print(f"No AutomationRuns found{where}.", file=sys.stderr)
        return 0
    print(render_list(runs, now_ms=wall_ms(), with_namespace=args.all_namespaces))
    return 0


def _cmd_describe(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    automation = None
    ref = (run.get("spec") or {}).get("automationRef") or {}
    if not flow_nodes(run) and ref.get("name"):
        automation = client.automation(ref["name"])
    print(render_describe(run, now_ms=wall_ms(), automation=automation))
    return 0


def _cmd_logs(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    try:
        pod, _ = logs.logs_target(run, args.node, args.attempt)
        logs.stream_logs(client.api, namespace=client.namespace, pod=pod, follow=args.follow)
    except logs.LogsError as exc:
        raise PluginError(str(exc)) from None
    return 0


def _cmd_history(client: RunClient, args: argparse.Namespace) -> int:
    run = client.get(args.name)
    if args.output == "json":
        _print_json(checkpoint_of(run).get("lifecycleHistory") or [])
        return 0
    print(render_history(run, now_ms=wall_ms()))
    return 0


def _connection_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--kubeconfig", type=Path, default=default, help="kubeconfig file (default: $KUBECONFIG)"
    )
    parser.add_argument(
        "-n", "--namespace", default=default, help="namespace (default: the context's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl automationrun", description="List, inspect and steer AutomationRuns."
    )
    _connection_options(parser, default=None)
    # The options are accepted after the command too (kubectl style); SUPPRESS keeps the
    # subcommand's defaults from overwriting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, func: Callable[[RunClient, argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[common])
        p.set_defaults(func=func)
        return p

    listing = command("list", _cmd_list, "list runs: name, phase, nodes, detail, age")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    command(
        "describe", _cmd_describe, "show a run: nodes, the awaiting gate, history"
    ).add_argument("name")
    hist = command("history", _cmd_history, "show a run's lifecycle records")
    hist.add_argument("name")
    hist.add_argument("-o", "--output", choices=["table", "json"], default="table")
    for name, decision in GATE_COMMANDS.items():
        gate = command(name, cmd_gate, f"decide {decision} for the gate the run awaits")
        gate.add_argument("name")
        gate.add_argument(
            "--gate", default=None, help="the gate's node id (default: the awaiting one)"
        )
        gate.add_argument("--reason", default=None, help="recorded in the gate history")
    pause = command("pause", cmd_control, "pause a run (spec.desiredState: Paused)")
    pause.add_argument("name")
    pause.add_argument("--reason", default=None, help="spec.pauseReason")
    command("resume", cmd_control, "resume a paused run (spec.desiredState: Running)").add_argument(
        "name"
    )
    command("cancel", cmd_control, "cancel a run (spec.desiredState: Cancelled)").add_argument(
        "name"
    )
    command("recover", cmd_control, "recover a Failed, Paused or Blocked run").add_argument("name")
    start = command("start", cmd_start, "start a run of an Automation now (triggerType manual)")
    start.add_argument("automation")
    start.add_argument(
        "--name", default=None, help="the run's name (default: <automation>-manual-<random>)"
    )
    logs.add_logs_command(command, _cmd_logs)
    return parser


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = RunClient.connect(kubeconfig=args.kubeconfig, namespace=args.namespace)
        result: int = args.func(client, args)
    except PluginError as exc:
        _fail(str(exc))
    return result


if __name__ == "__main__":
    sys.exit(main())
