"""``tandem-operator cluster up|down``: a long-lived local control plane for development.

``cluster up`` starts etcd and kube-apiserver detached (own session, no parent-death
signal), records them in ``<dir>/state.json`` and prints the kubeconfig path on stdout, so
``export KUBECONFIG=$(tandem-operator cluster up)`` works; progress goes to stderr. By
default it also starts fake Nodes that run Pods (kube-scheduler, kube-controller-manager
and kwok, see ``devcluster.nodes``); ``--no-nodes`` leaves the bare pair.

It is idempotent: when ``state.json`` names live processes and ``/readyz`` answers, they
are reused. When only one of them survived (or they hang), the leftovers are stopped and the
pair is started again in the same directory, so the etcd data and key material (hence
previously issued service account tokens) survive; the recorded ports are reused when they
are still free, so an exported kubeconfig keeps working.

``cluster down`` stops what ``state.json`` records and keeps the directory; nothing recorded
is not an error; it stops the node components too. Both take an exclusive ``flock`` on ``<dir>/.lock`` so two concurrent
invocations cannot start two pairs in one directory.

The argparse wiring lives here (``add_cluster_parsers``) so ``cli/main.py`` only has to call
it and then ``args.func(args)``, which returns the exit code.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tandem_operator.devcluster.controlplane import (
    ControlPlane,
    ControlPlaneError,
    Ports,
    find_free_ports,
    port_is_free,
)
from tandem_operator.devcluster.tools import ToolsError, ensure_binaries, ensure_node_binaries

__all__ = ["add_cluster_parsers", "cluster_down", "cluster_up", "default_cluster_dir"]

_REUSE_READY_TIMEOUT = 20.0


def default_cluster_dir() -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/tandem-operator/cluster``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "tandem-operator" / "cluster"


def cluster_up(dir: Path | None, *, nodes: bool = True) -> Path:
    """Start (or reuse) the control plane in ``dir``; print and return the kubeconfig path.

    ``nodes``: also run the fake Nodes (started on a reused plane when they are not running).
    """
    directory = (dir or default_cluster_dir()).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _progress_to_stderr(), _locked(directory):
        existing = _attach(directory)
        if existing is not None and existing.running():
            try:
                existing.wait_ready(timeout=_REUSE_READY_TIMEOUT)
            except ControlPlaneError as exc:
                _say(f"The recorded control plane is not ready, restarting it: {exc}")
            else:
                _say(f"Reusing the control plane in {directory} at {existing.server}")
                if nodes and not existing.nodes_running():
                    existing.start_nodes(ensure_node_binaries())
                print(existing.kubeconfig, flush=True)
                return existing.kubeconfig

        ports: Ports | None = None
        if existing is not None:
            existing.stop()  # whatever half of the pair survived
            # Keep each recorded port that is still free: the apiserver port is in the
            # kubeconfig people have exported.
            recorded = (
                existing.ports.etcd_client,
                existing.ports.etcd_peer,
                existing.ports.apiserver,
            )
            fresh = iter([p for p in find_free_ports(6) if p not in recorded])
            ports = Ports(*(port if port_is_free(port) else next(fresh) for port in recorded))

        tools = ensure_binaries()
        plane = ControlPlane(
            tools=tools,
            directory=directory,
            ports=ports,
            detached=True,
            nodes=ensure_node_binaries() if nodes else None,
        )
        plane.start()
        _say(f"Control plane running at {plane.server}; stop it with: tandem-operator cluster down")
        print(plane.kubeconfig, flush=True)
        return plane.kubeconfig


def cluster_down(dir: Path | None) -> None:
    """Stop the processes recorded in ``<dir>/state.json``; keep data and certificates."""
    directory = (dir or default_cluster_dir()).expanduser().resolve()
    if not directory.is_dir():
        _say(f"No control plane in {directory}")
        return
    with _progress_to_stderr(), _locked(directory):
        existing = _attach(directory)
        if existing is None or not (
            existing.etcd_pid or existing.apiserver_pid or existing.node_pids
        ):
            _say(f"No running control plane recorded in {directory}")
            return
        existing.stop()
        _say(f"Stopped the control plane in {directory}")


def add_cluster_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cluster up [--dir D]`` and ``cluster down [--dir D]``.

    Each leaf parser sets ``func``: call ``args.func(args)`` to get the exit code.
    """
    cluster = subparsers.add_parser(
        "cluster",
        help="run a local etcd + kube-apiserver for development",
        description=(
            "Run a local etcd + kube-apiserver, and fake Nodes that run Pods (kwok, "
            "kube-scheduler, kube-controller-manager) unless --no-nodes is given."
        ),
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="{up,down}", required=True)

    up = actions.add_parser(
        "up", help="start or reuse the control plane and print the kubeconfig path"
    )
    _add_dir_option(up)
    up.add_argument(
        "--nodes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run fake Nodes that run Pods: kwok, kube-scheduler, kube-controller-manager",
    )
    up.set_defaults(func=_run_up)

    down = actions.add_parser("down", help="stop the control plane (data is kept)")
    _add_dir_option(down)
    down.set_defaults(func=_run_down)


def _add_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"cluster directory (default: {default_cluster_dir()})",
    )


def _run_up(args: argparse.Namespace) -> int:
    try:
        cluster_up(args.dir, nodes=args.nodes)
    except (ControlPlaneError, ToolsError) as exc:
        print(f"Cluster up failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_down(args: argparse.Namespace) -> int:
    try:
        cluster_down(args.dir)
    except ControlPlaneError as exc:
        print(f"Cluster down failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _attach(directory: Path) -> ControlPlane | None:
    try:
        return ControlPlane.attach(directory)
    except ControlPlaneError as exc:
        _say(f"Ignoring {exc}")
        return None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _progress_to_stderr() -> Iterator[None]:
    """Show the control plane's INFO progress lines unless the caller configured logging."""
    logger = logging.getLogger("tandem_operator.devcluster")
    if logging.getLogger().hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
