"""``tandem-operator``: run the operator, manage the local control plane, install CRDs.

Subcommands:

- ``run [--namespace NS ... | --all-namespaces]``: the operator. With ``$KUBECONFIG`` set
  (or ``--kubeconfig``) it runs against that cluster; in a pod without either it uses the
  pod's service account. Otherwise it is the embedded default: it starts the local control
  plane, installs the CRDs, runs the operator, applies ``examples/`` and prints the runs as
  they change; Ctrl-C stops everything. Prometheus metrics are served at ``/metrics`` on
  ``--metrics-port`` (default 9090; 0 turns them off). The admission webhook is on
  (``--no-webhook`` turns it off): outside a cluster it listens on loopback on a free port
  (or ``--webhook-port``) and, once it answers, this command registers it by URL with this
  install's own configurations (``handlers.webhook.configurations``); in a pod it only
  serves, and the Helm chart registers it through a Service (``--webhook-registration``).
- ``cluster up|down [--dir D] [--no-nodes]``: the local kube-apiserver + etcd, and fake
  Nodes that run Pods unless ``--no-nodes`` (see ``devcluster``).
- ``crds install``: server-side apply of the generated CRDs, then wait until Established.
- ``crds print``: the generated CRDs as YAML.

This is the edge of the package: it may import every layer below it. Its client is
pykube-ng (thin, synchronous, fine for a CLI); the operator's own status writes go over
aiohttp in ``runtime.kubeapi``, configured by the official client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pykube

from tandem_operator.api.settings import Settings, SettingsError
from tandem_operator.cli.cluster import add_cluster_parsers, cluster_down, cluster_up

log = logging.getLogger("tandem_operator")

REPO_ROOT = Path(__file__).resolve().parents[3]
FIELD_MANAGER = "tandem-operator"
_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def _client(kubeconfig: Path | None) -> pykube.HTTPClient:
    if kubeconfig is not None:
        return pykube.HTTPClient(pykube.KubeConfig.from_file(str(kubeconfig)))
    return pykube.HTTPClient(pykube.KubeConfig.from_env())


def install_crds(kubeconfig: Path | None, *, timeout: float = 60) -> list[str]:
    """Server-side apply every CRD and wait until the API server serves them."""
    from tandem_operator.api.crdgen import all_crds  # the operator itself never needs it

    api = _client(kubeconfig)
    names = []
    for manifest in all_crds():
        name = manifest["metadata"]["name"]
        response = api.patch(
            version="apiextensions.k8s.io/v1",
            url=f"customresourcedefinitions/{name}",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            data=json.dumps(manifest),
        )
        api.raise_for_status(response)
        names.append(name)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            response = api.get(
                version="apiextensions.k8s.io/v1", url=f"customresourcedefinitions/{name}"
            )
            api.raise_for_status(response)
            conditions = (response.json().get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not established after {timeout}s: {sorted(pending)}")
        if pending:
            time.sleep(0.2)
    return names


def _load_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"tandem-operator: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _cmd_crds_install(args: argparse.Namespace) -> int:
    for name in install_crds(args.kubeconfig):
        print(f"customresourcedefinition/{name} applied")
    return 0


def _cmd_crds_print(args: argparse.Namespace) -> int:
    from tandem_operator.api.crdgen import all_crds, render

    print("---\n".join(render(m) for m in all_crds()), end="")
    return 0


def _runs_table(api: pykube.HTTPClient) -> str:
    response = api.get(version="automation.tandem.dev/v1alpha1", url="automationruns")
    api.raise_for_status(response)
    rows = [("NAMESPACE", "NAME", "PHASE", "NODES", "DETAIL")]
    for item in response.json().get("items", []):
        status = item.get("status") or {}
        rows.append(
            (
                item["metadata"]["namespace"],
                item["metadata"]["name"],
                status.get("phase", "-"),
                status.get("progress", "-"),
                (status.get("detail") or "")[:70],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    )


def next_steps(*, kubeconfig: Path, kubectl: Path, namespace: str, run: str) -> str:
    """The two things a newcomer does next on the local cluster: use kubectl, approve.

    ``PATH`` gets the built kubectl's directory and this Python's scripts directory, where
    the ``kubectl-automationrun`` plugin is installed next to ``tandem-operator``.
    """
    scripts = Path(sys.executable).parent
    return (
        "\nNext, in another terminal:\n"
        f"  export KUBECONFIG={kubeconfig} PATH={kubectl.parent}:{scripts}:$PATH\n"
        f"  kubectl automationrun approve {run} -n {namespace}"
        f"   # describe {run} shows who may approve\n"
    )


def _waiting_run(api: pykube.HTTPClient) -> tuple[str, str] | None:
    response = api.get(version="automation.tandem.dev/v1alpha1", url="automationruns")
    api.raise_for_status(response)
    for item in response.json().get("items", []):
        if (item.get("status") or {}).get("phase") == "AwaitingApproval":
            return item["metadata"]["namespace"], item["metadata"]["name"]
    return None


async def _show_runs(kubeconfig: Path, stop: asyncio.Event, *, kubectl: Path) -> None:
    api = _client(kubeconfig)
    last = ""
    hinted = False
    while not stop.is_set():
        try:
            table = await asyncio.to_thread(_runs_table, api)
        except Exception as exc:
            table = f"(could not list runs: {exc})"
        if table != last:
            print(f"\n{time.strftime('%H:%M:%S')} AutomationRuns\n{table}", flush=True)
            last = table
            if not hinted:
                with contextlib.suppress(Exception):
                    waiting = await asyncio.to_thread(_waiting_run, api)
                    if waiting is not None:
                        namespace, run = waiting
                        hint = next_steps(
                            kubeconfig=kubeconfig, kubectl=kubectl, namespace=namespace, run=run
                        )
                        print(hint, flush=True)
                        hinted = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=2)


def apply_examples(kubeconfig: Path, kubectl: Path, directory: Path) -> None:
    files = sorted(directory.glob("*.yaml"))
    if not files:
        print(f"No examples found in {directory}", file=sys.stderr)
        return
    for path in files:
        result = subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), "apply", "-f", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        out = (result.stdout + result.stderr).strip()
        print(out, flush=True)


class AdmissionRegistrationError(RuntimeError):
    """The webhook configurations could not be applied; the message says what to do."""


def apply_admission(kubeconfig: Path | None, manifests: list[dict[str, Any]]) -> None:
    """Server-side apply the webhook configurations (cluster-scoped, one pair per install)."""
    api = _client(kubeconfig)
    for manifest in manifests:
        plural = manifest["kind"].lower() + "s"
        response = api.patch(
            version="admissionregistration.k8s.io/v1",
            url=f"{plural}/{manifest['metadata']['name']}",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            headers={"Content-Type": "application/apply-patch+yaml"},
            data=json.dumps(manifest),
        )
        if response.status_code == 403:
            raise AdmissionRegistrationError(
                f"not allowed to register the admission webhook ({plural} "
                f"{manifest['metadata']['name']}): grant create and patch on "
                "mutatingwebhookconfigurations and validatingwebhookconfigurations, or "
                "register it otherwise and pass --webhook-registration=none (the Helm chart "
                "does), or run without it (--no-webhook)"
            )
        api.raise_for_status(response)


def _free_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        port: int = sock.getsockname()[1]
        return port


async def _listening(addr: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(addr, port)
    except OSError:
        return False
    writer.close()
    return True


async def _register_admission(
    *,
    kubeconfig: Path | None,
    registration: Any,
    addr: str,
    port: int,
    stop: asyncio.Event,
    registered: asyncio.Event,
) -> None:
    """Once the webhook answers, register this install's configurations by URL.

    The configurations stay when the operator stops: decisions then fail closed until an
    operator of this install is back (the next start registers its own URL and CA). Every
    ``ADMISSION_RECHECK_SECONDS`` the registration is read back: when another process of
    the same install registered itself and has gone since (its port no longer answers),
    this one registers itself again, so a running process always serves its install.
    """
    from tandem_operator.handlers.webhook import configurations

    while not stop.is_set():
        if not await _listening(addr, port):
            await asyncio.sleep(0.2)
            continue
        await asyncio.to_thread(apply_admission, kubeconfig, configurations(registration))
        log.info("Admission webhook registered name=%s url=%s", registration.name, registration.url)
        registered.set()
        break
    # One client for every check: its connection stays open, so a check is one GET and
    # not a kubeconfig parse and a TLS handshake every few seconds of an idle operator.
    api: pykube.HTTPClient | None = None
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ADMISSION_RECHECK_SECONDS)
        if stop.is_set():
            break
        try:
            api = api or _client(kubeconfig)
            url = await asyncio.to_thread(_registered_url, api, registration.name)
            if url is not None and url.startswith(registration.url + "/"):
                continue
            if url is not None and await _url_answers(url):
                continue
            await asyncio.to_thread(apply_admission, kubeconfig, configurations(registration))
            log.info(
                "Admission webhook registered again name=%s url=%s replaced=%s",
                registration.name,
                registration.url,
                url,
            )
        except Exception:
            log.exception("Admission webhook registration not checked name=%s", registration.name)


ADMISSION_RECHECK_SECONDS = 5.0


def _registered_url(api: pykube.HTTPClient, name: str) -> str | None:
    """The URL the install's validating configuration calls; ``None`` when it has none."""
    response = api.get(
        version="admissionregistration.k8s.io/v1", url=f"validatingwebhookconfigurations/{name}"
    )
    if response.status_code == 404:
        return None
    api.raise_for_status(response)
    hooks = response.json().get("webhooks") or []
    url = ((hooks[0] if hooks else {}).get("clientConfig") or {}).get("url")
    return str(url) if url else None


async def _url_answers(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        return False
    return await _listening(parts.hostname, parts.port or 443)


def _in_cluster() -> bool:
    """Running in a pod: the service account's credentials are mounted, no kubeconfig needed."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and _SA_TOKEN.is_file()


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _load_settings()
    kubeconfig: Path | None = args.kubeconfig or (
        Path(os.environ["KUBECONFIG"]) if os.environ.get("KUBECONFIG") else None
    )
    embedded = kubeconfig is None and not _in_cluster()
    if embedded:
        print("No kubeconfig given: starting the local control plane", file=sys.stderr)
        kubeconfig = cluster_up(args.cluster_dir, nodes=args.nodes)
        os.environ["KUBECONFIG"] = str(kubeconfig)
        for name in install_crds(kubeconfig):
            print(f"customresourcedefinition/{name} applied", flush=True)
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)
    namespaces = None if args.all_namespaces else (args.namespace or None)
    # Outside a Pod the Lease lives with what is watched, so operators for different
    # namespaces never share one; its name is scoped to them too (runtime.leader).
    lease_namespace = (
        args.lease_namespace
        or os.environ.get("POD_NAMESPACE")
        or (namespaces[0] if namespaces else "default")
    )
    webhook_options, registration = _webhook_options(
        args, namespaces=namespaces, lease_namespace=lease_namespace
    )
    try:
        asyncio.run(
            _serve(
                settings=settings,
                namespaces=namespaces,
                lease_namespace=lease_namespace,
                lease=args.lease_name or os.environ.get("TANDEM_LEASE_NAME") or None,
                liveness=args.liveness,
                embedded=embedded,
                kubeconfig=kubeconfig,
                examples=args.examples,
                webhook_options=webhook_options,
                registration=registration,
                metrics_port=args.metrics_port,
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded and not args.keep_cluster:
            print("Stopping the local control plane", file=sys.stderr)
            cluster_down(args.cluster_dir)
    return 0


def _webhook_options(
    args: argparse.Namespace, *, namespaces: list[str] | None, lease_namespace: str
) -> tuple[Any, Any]:
    """The webhook server's options and, when this command registers it, its Registration."""
    if not args.webhook:
        return None, None
    from tandem_operator.handlers.operator import WebhookOptions
    from tandem_operator.handlers.webhook import Registration, ensure_certificate, install_name

    host = args.webhook_host or args.webhook_addr
    port = args.webhook_port or _free_port(args.webhook_addr)
    cert_dir = args.webhook_cert_dir or Path(tempfile.mkdtemp(prefix="tandem-webhook-"))
    cert, _ = ensure_certificate(cert_dir, host=host)
    options = WebhookOptions(addr=args.webhook_addr, port=port, host=host, cert_dir=cert_dir)
    mode = args.webhook_registration or ("none" if _in_cluster() else "url")
    if mode == "none":
        return options, None
    registration = Registration(
        name=install_name(lease_namespace),
        namespaces=namespaces,
        ca_bundle=cert.read_bytes(),
        url=f"https://{host}:{port}",
    )
    return options, registration


async def _serve(
    *,
    settings: Settings,
    namespaces: list[str] | None,
    lease_namespace: str,
    lease: str | None,
    liveness: str | None,
    embedded: bool,
    kubeconfig: Path | None,
    examples: Path,
    webhook_options: Any = None,
    registration: Any = None,
    metrics_port: int = 0,
) -> None:
    from tandem_operator.handlers.operator import run_operator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(
            run_operator(
                settings=settings,
                namespaces=namespaces,
                lease_namespace=lease_namespace,
                lease=lease,
                liveness_endpoint=liveness,
                stop_flag=stop,
                webhook_options=webhook_options,
                metrics_port=metrics_port,
            )
        )
    ]
    registered = asyncio.Event()
    if registration is not None:
        tasks.append(
            asyncio.create_task(
                _register_admission(
                    kubeconfig=kubeconfig,
                    registration=registration,
                    addr=webhook_options.addr,
                    port=webhook_options.port,
                    stop=stop,
                    registered=registered,
                )
            )
        )
    else:
        registered.set()
    if embedded and kubeconfig is not None:
        from tandem_operator.devcluster.tools import ensure_binaries

        kubectl = ensure_binaries().kubectl
        await asyncio.sleep(1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(registered.wait(), timeout=60)
        await asyncio.to_thread(apply_examples, kubeconfig, kubectl, examples)
        tasks.append(asyncio.create_task(_show_runs(kubeconfig, stop, kubectl=kubectl)))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None:
            raise exc


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0..65535: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem-operator", description="Runs AutomationRuns on Kubernetes."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="run the operator (embedded local cluster without a kubeconfig)"
    )
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", "-n", action="append", help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (default)"
    )
    run.add_argument("--kubeconfig", type=Path, help="kubeconfig to use (default: $KUBECONFIG)")
    run.add_argument(
        "--lease-namespace",
        help="namespace of the leader Lease (default: $POD_NAMESPACE, else the first "
        "--namespace, else default)",
    )
    run.add_argument(
        "--lease-name",
        help="name of the leader Lease (default: $TANDEM_LEASE_NAME, else tandem-operator "
        "when watching every namespace, else tandem-operator-<digest of the namespaces>); "
        "operators with the same Lease take turns, others act side by side",
    )
    run.add_argument(
        "--no-webhook",
        dest="webhook",
        action="store_false",
        help="no admission webhook (decisions are then not checked or stamped)",
    )
    run.add_argument(
        "--webhook-port",
        type=_port,
        default=0,
        help="port of the admission webhook (default 0: a free port)",
    )
    run.add_argument(
        "--webhook-registration",
        choices=["url", "none"],
        default=None,
        help="url: register this install's webhook configurations by URL (default outside "
        "a cluster); none: only serve (default in a pod, where the chart registers them)",
    )
    run.add_argument("--webhook-addr", default="127.0.0.1", help="address the webhook listens on")
    run.add_argument(
        "--webhook-host", default=None, help="host the API server calls (default: addr)"
    )
    run.add_argument(
        "--webhook-cert-dir", type=Path, default=None, help="where to write its TLS certificate"
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=9090,
        help="serve Prometheus metrics at /metrics on this port; 0 disables (default: 9090)",
    )
    run.add_argument(
        "--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    run.add_argument(
        "--cluster-dir", type=Path, default=None, help="embedded mode: control plane directory"
    )
    run.add_argument(
        "--examples",
        type=Path,
        default=REPO_ROOT / "examples",
        help="embedded mode: manifests to apply",
    )
    run.add_argument(
        "--nodes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="embedded mode: also run fake Nodes that run Pods (kwok, kube-scheduler, "
        "kube-controller-manager)",
    )
    run.add_argument(
        "--keep-cluster",
        action="store_true",
        help="embedded mode: leave the control plane running on exit",
    )
    run.set_defaults(func=_cmd_run)

    add_cluster_parsers(sub)

    crds = sub.add_parser("crds", help="the CustomResourceDefinitions")
    crds_sub = crds.add_subparsers(dest="crds_command", required=True)
    install = crds_sub.add_parser("install", help="apply the CRDs and wait until established")
    install.add_argument("--kubeconfig", type=Path, default=None)
    install.set_defaults(func=_cmd_crds_install)
    printer = crds_sub.add_parser("print", help="print the generated CRDs")
    printer.set_defaults(func=_cmd_crds_print)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if not args.verbose:
        # kopf reports every handler call at INFO; the operator logs its own transitions.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
