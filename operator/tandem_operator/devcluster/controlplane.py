"""A real etcd + kube-apiserver pair on loopback, for tests and ``tandem-operator cluster up``.

By default there is no kubelet, scheduler or controller-manager: the operator only talks to
the API, so the API server is what has to be real (admission, RBAC, TokenRequest, watches,
conflict handling), and nothing is mocked. Consequences worth knowing: namespaces never
finish terminating, pods never run, and service account token Secrets are never populated
(TokenRequest works because the apiserver signs tokens itself).

``start_nodes`` (or ``ControlPlane(nodes=...)``) adds fake Nodes that run Pods: kwok,
kube-scheduler and kube-controller-manager against the same apiserver (see ``nodes``), with
their own client certificates, kubeconfigs under ``kubeconfigs/`` and logs beside the
others; they are stopped before the apiserver.

Design choices:

* Everything lives in one directory: ``etcd/`` (data), ``certs/`` (see ``pki``),
  ``etcd.log``, ``kube-apiserver.log``, ``kubeconfig`` and ``state.json``. A directory is a
  cluster; restarting either process keeps its ports and data.
* Ports are picked by binding port 0 on 127.0.0.1. That leaves a window in which another
  process can take the port, so a fresh start retries with new ports when a process dies
  reporting "address already in use". Ports that were asked for explicitly are never
  changed.
* The admin identity is a client certificate in ``system:masters`` and the kubeconfig pins
  the serving CA, so TLS is verified end to end (no insecure-skip-tls-verify).
* Readiness means an authenticated ``GET /readyz`` answers ``ok`` *and* the ``default``
  namespace exists: ``/readyz`` only says the system-namespaces controller was started, not
  that it has created ``default`` yet, and the first ``kubectl apply`` into it would race.
* etcd runs with ``--unsafe-no-fsync`` (the data is disposable; writes get much faster) and
  kube-apiserver with ``--endpoint-reconciler-type=none`` (the ``kubernetes`` Service may
  not point at a loopback address; without this the apiserver logs an error every 10s),
  and ``--enable-aggregator-routing`` (Services of webhooks resolve to their endpoints).
* ``stop_*``/``restart_*`` take ``graceful``: SIGTERM (etcd then waits several seconds for
  the apiserver's open watch streams) or SIGKILL straight away, the crash chaos tests want.
* Two lifetimes. Attached (the pytest fixture): each child is in its own session, so a
  Ctrl-C at the terminal reaches pytest first and the fixture tears down in order, and on
  Linux ``PR_SET_PDEATHSIG`` kills the child when the starting thread dies (a SIGKILLed
  pytest leaves nothing behind). The death signal is tied to the starting *thread*, so it is
  only armed when starting from the main thread; a restart issued from a worker thread
  (``asyncio.to_thread``) must not be killed when that worker retires. Detached
  (``cluster up``): own session, no death signal, and ``state.json`` records pid, process
  start time and ports so a later CLI invocation can find, health-check and stop them.
  The start time guards against signalling an unrelated process that reused a pid.
* Readiness checks use ``urllib`` with proxies disabled: a developer's ``HTTPS_PROXY`` must
  not intercept requests to 127.0.0.1.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from tandem_operator.devcluster.nodes import (
    CONTROLLER_MANAGER_USER,
    KWOK_GROUP,
    KWOK_USER,
    SCHEDULER_USER,
    NodePool,
    controller_manager_flags,
    kwok_flags,
    scheduler_flags,
)
from tandem_operator.devcluster.pki import (
    ADMIN_USER,
    ClientCredentials,
    Pki,
    ensure_pki,
    issue_client_cert,
)
from tandem_operator.devcluster.tools import NodeToolPaths, ToolPaths

__all__ = [
    "CLUSTER_NAME",
    "LOOPBACK",
    "NODE_COMPONENTS",
    "SERVICE_ACCOUNT_ISSUER",
    "SERVICE_CLUSTER_IP_RANGE",
    "STATE_VERSION",
    "ControlPlane",
    "ControlPlaneError",
    "ControlPlaneState",
    "Ports",
    "ProcessRecord",
    "apiserver_flags",
    "etcd_flags",
    "find_free_ports",
    "pid_alive",
    "port_is_free",
    "render_kubeconfig",
    "tail_text",
]

log = logging.getLogger(__name__)

CLUSTER_NAME = "tandem-local"
LOOPBACK = "127.0.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
STATE_VERSION = 1
ETCD_MEMBER_NAME = "tandem"

NODE_COMPONENTS = ("kube-controller-manager", "kube-scheduler", "kwok")
"""The processes ``start_nodes`` runs, in start order (stopped in reverse)."""

_POLL_INTERVAL = 0.2
_NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_PORT_ATTEMPTS = 3
_PORT_IN_USE = "address already in use"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Ports:
    """Loopback ports of one control plane."""

    etcd_client: int
    etcd_peer: int
    apiserver: int


@dataclass(frozen=True)
class ProcessRecord:
    """A started process as recorded in ``state.json``."""

    pid: int
    start_time: int | None  # clock ticks since boot from /proc/<pid>/stat, None off Linux


@dataclass(frozen=True)
class ControlPlaneState:
    """Contents of ``<dir>/state.json``; processes are None once stopped."""

    directory: Path
    tools: ToolPaths
    ports: Ports
    etcd: ProcessRecord | None
    apiserver: ProcessRecord | None
    node_tools: NodeToolPaths | None = None
    nodes: dict[str, ProcessRecord] = field(default_factory=dict)
    """Running node components by name (``NODE_COMPONENTS``); absent when stopped."""

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "directory": str(self.directory),
            "kubeconfig": str(self.directory / "kubeconfig"),
            "tools": {k: str(v) for k, v in asdict(self.tools).items()},
            "ports": asdict(self.ports),
            "processes": {
                "etcd": None if self.etcd is None else asdict(self.etcd),
                "kube-apiserver": None if self.apiserver is None else asdict(self.apiserver),
                **{name: asdict(record) for name, record in sorted(self.nodes.items())},
            },
        }
        if self.node_tools is not None:
            data["nodeTools"] = {k: str(v) for k, v in asdict(self.node_tools).items()}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ControlPlaneState:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"Unsupported state.json version {data.get('version')!r}")
        procs = data["processes"]
        return cls(
            directory=Path(data["directory"]),
            tools=ToolPaths(**{k: Path(v) for k, v in data["tools"].items()}),
            ports=Ports(**data["ports"]),
            etcd=None if procs["etcd"] is None else ProcessRecord(**procs["etcd"]),
            apiserver=(
                None
                if procs["kube-apiserver"] is None
                else ProcessRecord(**procs["kube-apiserver"])
            ),
            node_tools=(
                NodeToolPaths(**{k: Path(v) for k, v in data["nodeTools"].items()})
                if data.get("nodeTools")
                else None
            ),
            nodes={
                name: ProcessRecord(**procs[name])
                for name in NODE_COMPONENTS
                if procs.get(name) is not None
            },
        )


def find_free_ports(count: int, *, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct ports that were free a moment ago (all held open while picking)."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def port_is_free(port: int, *, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same as the Go listeners: a port in TIME_WAIT from our own previous run is reusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def etcd_flags(*, data_dir: Path, ports: Ports, name: str = ETCD_MEMBER_NAME) -> list[str]:
    """Flags of a single-member etcd on loopback (without the binary)."""
    client = f"http://{LOOPBACK}:{ports.etcd_client}"
    peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
    return [
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        # Set explicitly: the default peer port 2380 would collide between two clusters.
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={name}={peer}",
        "--initial-cluster-state=new",
        # Throwaway data: skipping fsync makes every write several times faster.
        "--unsafe-no-fsync",
    ]


def apiserver_flags(*, etcd_url: str, secure_port: int, pki: Pki) -> list[str]:
    """Flags of a kube-apiserver serving on loopback (without the binary)."""
    return [
        f"--etcd-servers={etcd_url}",
        f"--bind-address={LOOPBACK}",
        f"--advertise-address={LOOPBACK}",
        f"--secure-port={secure_port}",
        f"--cert-dir={pki.cert_dir}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.client_ca_cert}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_pub}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        # No controller-manager: the ServiceAccount admission plugin would wait for token
        # controllers that never run and reject pods.
        "--disable-admission-plugins=ServiceAccount",
        "--allow-privileged=true",
        # The "kubernetes" Service cannot point at a loopback address (Endpoints validation
        # rejects 127.0.0.0/8) and nothing runs in-cluster to use it, so do not reconcile it.
        "--endpoint-reconciler-type=none",
        # Webhooks behind a Service are called at an endpoint address, not the ClusterIP
        # (no kube-proxy routes it here): a Helm-installed admission webhook is reachable
        # through endpoints that point at this machine.
        "--enable-aggregator-routing=true",
    ]


def render_kubeconfig(
    *,
    server: str,
    ca_pem: bytes,
    credentials: ClientCredentials | None = None,
    token: str | None = None,
    cluster_name: str = CLUSTER_NAME,
    user_name: str = ADMIN_USER,
) -> str:
    """A self-contained kubeconfig (data inlined) with exactly one of credentials or token."""
    if (credentials is None) == (token is None):
        raise ValueError("Pass exactly one of credentials or token")
    user: dict[str, str]
    if credentials is not None:
        user = {
            "client-certificate-data": _b64(credentials.cert_pem),
            "client-key-data": _b64(credentials.key_pem),
        }
    else:
        assert token is not None
        user = {"token": token}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {"name": cluster_name, "context": {"cluster": cluster_name, "user": user_name}}
        ],
        "current-context": cluster_name,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def tail_text(text: str, *, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    if Path("/proc").is_dir():
        current = _proc_start_time(pid)
        return current is not None and (start_time is None or current == start_time)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _proc_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after the last
    # ')' start at field 3 (state); starttime is field 22.
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, *, lines: int = 40) -> str:
    size = _file_size(path)
    return tail_text(_read_from(path, max(0, size - 64 * 1024)), lines=lines)


# --------------------------------------------------------------------------- processes


_libc_prctl: Callable[..., int] | None = None
_PR_SET_PDEATHSIG = 1


def _death_signal_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that ties the child to the calling thread's life (Linux, main thread)."""
    global _libc_prctl
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    if _libc_prctl is None:
        # Resolved in the parent: loading libraries between fork and exec is not safe.
        _libc_prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    prctl = _libc_prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


@dataclass
class _Process:
    name: str
    record: ProcessRecord
    log_path: Path
    log_offset: int  # log size before launch, so errors show only this run's output
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.record.pid, self.record.start_time)

    def exit_description(self) -> str:
        code = None if self.popen is None else self.popen.poll()
        if code is None:
            return "exit status unknown"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def output(self) -> str:
        return _read_from(self.log_path, self.log_offset)

    def stop(self, *, timeout: float, graceful: bool = True) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; waits until the process is gone.

        ``graceful=False`` sends SIGKILL straight away, like a crash or an OOM kill.
        """
        if not self.alive():
            self._reap()
            return
        if graceful:
            log.info("Stopping %s (pid %d)", self.name, self.record.pid)
            self._signal(signal.SIGTERM)
            if self._wait(timeout):
                return
            log.warning("Process %s did not stop within %.0fs, killing it", self.name, timeout)
        else:
            log.info("Killing %s (pid %d)", self.name, self.record.pid)
        self._signal(signal.SIGKILL)
        if not self._wait(10.0):
            raise ControlPlaneError(f"{self.name} (pid {self.record.pid}) survived SIGKILL")

    def _signal(self, sig: signal.Signals) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.record.pid, sig)

    def _wait(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return not self.alive()

    def _reap(self) -> None:
        if self.popen is not None:
            self.popen.poll()


def _spawn(
    *,
    name: str,
    argv: list[str],
    log_path: Path,
    cwd: Path,
    detached: bool,
    env: dict[str, str] | None = None,
) -> _Process:
    offset = _file_size(log_path)
    with log_path.open("ab") as log_file:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log_file.write(f"\n==> {stamp} starting: {shlex.join(argv)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
            preexec_fn=None if detached else _death_signal_preexec(),
        )
    record = ProcessRecord(pid=popen.pid, start_time=_proc_start_time(popen.pid))
    log.info("Started %s (pid %d), log %s", name, popen.pid, log_path)
    return _Process(name=name, record=record, log_path=log_path, log_offset=offset, popen=popen)


# --------------------------------------------------------------------------- control plane


class ControlPlane:
    """etcd and kube-apiserver as subprocesses serving on 127.0.0.1.

    Use as a context manager or call ``start()``/``stop()``. ``detached=True`` makes the
    processes outlive this Python process (``cluster up``); ``ControlPlane.attach`` rebuilds
    a handle from ``state.json`` later. With ``nodes`` (see ``tools.ensure_node_binaries``)
    ``start()`` also runs ``start_nodes()``, which can be called later on a running plane too.
    """

    def __init__(
        self,
        *,
        tools: ToolPaths,
        directory: Path | None = None,
        ports: Ports | None = None,
        detached: bool = False,
        ready_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        nodes: NodeToolPaths | None = None,
        node_pool: NodePool | None = None,
    ) -> None:
        self._owns_directory = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="tandem-controlplane-"))
        self.directory = directory.resolve()
        self.tools = tools
        self.detached = detached
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self._pinned_ports = ports is not None
        self._ports = ports
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._pki: Pki | None = None
        self.node_tools = nodes
        self.node_pool = node_pool or NodePool()
        self._nodes: dict[str, _Process] = {}
        self._node_ports: dict[str, int] = {}

    # ----------------------------------------------------------------- layout

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def etcd_log(self) -> Path:
        return self.directory / "etcd.log"

    @property
    def apiserver_log(self) -> Path:
        return self.directory / "kube-apiserver.log"

    def component_log(self, name: str) -> Path:
        """Log file of a node component (``NODE_COMPONENTS``), beside the apiserver's."""
        return self.directory / f"{name}.log"

    @property
    def kubeconfig_dir(self) -> Path:
        """Kubeconfigs of the node components, one identity each."""
        return self.directory / "kubeconfigs"

    @property
    def cert_dir(self) -> Path:
        return self.directory / "certs"

    @property
    def etcd_data_dir(self) -> Path:
        return self.directory / "etcd"

    @property
    def ports(self) -> Ports:
        if self._ports is None:
            raise ControlPlaneError("The control plane has no ports yet; call start() first")
        return self._ports

    @property
    def server(self) -> str:
        """HTTPS URL of the API server."""
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.etcd_client}"

    @property
    def pki(self) -> Pki:
        """Key material; ``issue_client_cert(cp.pki, ...)`` mints other identities."""
        if self._pki is None:
            self._pki = ensure_pki(self.cert_dir)
        return self._pki

    @property
    def apiserver_pid(self) -> int | None:
        return None if self._apiserver is None else self._apiserver.record.pid

    @property
    def etcd_pid(self) -> int | None:
        return None if self._etcd is None else self._etcd.record.pid

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @classmethod
    def attach(cls, directory: Path) -> ControlPlane | None:
        """A handle on the processes recorded in ``<directory>/state.json`` (maybe dead)."""
        directory = directory.resolve()
        try:
            state = ControlPlaneState.from_json((directory / "state.json").read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"Unreadable {directory / 'state.json'}: {exc}") from exc
        plane = cls(tools=state.tools, directory=directory, ports=state.ports, detached=True)
        if state.etcd is not None:
            plane._etcd = _Process("etcd", state.etcd, plane.etcd_log, _file_size(plane.etcd_log))
        if state.apiserver is not None:
            plane._apiserver = _Process(
                "kube-apiserver",
                state.apiserver,
                plane.apiserver_log,
                _file_size(plane.apiserver_log),
            )
        plane.node_tools = state.node_tools
        for name, record in state.nodes.items():
            log_path = plane.component_log(name)
            plane._nodes[name] = _Process(name, record, log_path, _file_size(log_path))
        return plane

    def running(self) -> bool:
        """Whether both processes are alive (says nothing about readiness)."""
        return (
            self._etcd is not None
            and self._etcd.alive()
            and self._apiserver is not None
            and self._apiserver.alive()
        )

    def start(self) -> None:
        """Start etcd and kube-apiserver and wait until the API is ready."""
        if self.running():
            raise ControlPlaneError(f"The control plane in {self.directory} is already running")
        started = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.etcd_data_dir.mkdir(mode=0o700, exist_ok=True)
        pki = self.pki
        if self._ports is None:
            self._ports = Ports(*find_free_ports(3))
        log.info("Starting the control plane in %s", self.directory)
        try:
            self._with_port_retries("etcd", self.start_etcd, self._repick_etcd_ports)
            self.kubeconfig.write_text(
                render_kubeconfig(
                    server=self.server,
                    ca_pem=pki.serving_ca_cert.read_bytes(),
                    credentials=pki.admin_credentials(),
                )
            )
            self.kubeconfig.chmod(0o600)
            self._with_port_retries(
                "kube-apiserver", self.start_apiserver, self._repick_apiserver_port
            )
            if self.node_tools is not None:
                self.start_nodes()
        except BaseException:
            self._stop_processes()
            raise
        log.info("Control plane ready in %.1fs at %s", time.monotonic() - started, self.server)

    def stop(self) -> None:
        """Stop the node components, kube-apiserver, then etcd; remove a temporary directory."""
        self._stop_processes()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def start_etcd(self) -> None:
        """Start etcd on the existing ports and data directory; wait until it is healthy."""
        if self._etcd is not None and self._etcd.alive():
            raise ControlPlaneError("etcd is already running")
        argv = [str(self.tools.etcd), *etcd_flags(data_dir=self.etcd_data_dir, ports=self.ports)]
        self._etcd = _spawn(
            name="etcd",
            argv=argv,
            log_path=self.etcd_log,
            cwd=self.directory,
            detached=self.detached,
        )
        self._write_state()
        self._wait_etcd_healthy(timeout=30.0)

    def stop_etcd(self, *, graceful: bool = True) -> None:
        """Stop etcd; ``graceful=False`` is SIGKILL (a graceful stop waits for open watches)."""
        if self._etcd is not None:
            self._etcd.stop(timeout=self.stop_timeout, graceful=graceful)
            self._write_state()

    def start_apiserver(self) -> None:
        """Start kube-apiserver on the existing port; wait until it is ready."""
        if self._apiserver is not None and self._apiserver.alive():
            raise ControlPlaneError("kube-apiserver is already running")
        argv = [
            str(self.tools.kube_apiserver),
            *apiserver_flags(
                etcd_url=self.etcd_url, secure_port=self.ports.apiserver, pki=self.pki
            ),
        ]
        self._apiserver = _spawn(
            name="kube-apiserver",
            argv=argv,
            log_path=self.apiserver_log,
            cwd=self.directory,
            detached=self.detached,
        )
        self._write_state()
        self.wait_ready()

    def stop_apiserver(self, *, graceful: bool = True) -> None:
        """Stop kube-apiserver; ``graceful=False`` is SIGKILL (connections just drop)."""
        if self._apiserver is not None:
            self._apiserver.stop(timeout=self.stop_timeout, graceful=graceful)
            self._write_state()

    def restart_apiserver(self, *, downtime: float = 0.0, graceful: bool = True) -> None:
        """Stop kube-apiserver, stay down ``downtime`` seconds, start it again and wait."""
        self.stop_apiserver(graceful=graceful)
        time.sleep(downtime)
        self.start_apiserver()

    def restart_etcd(self, *, downtime: float = 0.0, graceful: bool = True) -> None:
        """Stop etcd, stay down ``downtime`` seconds, start it again; wait for the API too."""
        self.stop_etcd(graceful=graceful)
        time.sleep(downtime)
        self.start_etcd()
        if self._apiserver is not None and self._apiserver.alive():
            self.wait_ready()

    # ----------------------------------------------------------------- nodes

    def nodes_running(self) -> bool:
        """Whether kwok, kube-scheduler and kube-controller-manager are all alive."""
        return all(name in self._nodes and self._nodes[name].alive() for name in NODE_COMPONENTS)

    @property
    def node_pids(self) -> dict[str, int]:
        """Pids of the node components started or attached to, by name."""
        return {name: proc.record.pid for name, proc in self._nodes.items()}

    def start_nodes(
        self,
        tools: NodeToolPaths | None = None,
        *,
        pool: NodePool | None = None,
        timeout: float | None = None,
    ) -> None:
        """Start kube-controller-manager, kube-scheduler and kwok; create the fake Nodes.

        Needs a ready apiserver. Returns when the scheduler and the controller-manager answer
        ``/healthz`` and every Node of ``pool`` (default ``self.node_pool``) is Ready, so a Pod
        created afterwards is scheduled and run. Components still running are left alone,
        so calling it again restarts only the ones that died.
        """
        if tools is not None:
            self.node_tools = tools
        if pool is not None:
            self.node_pool = pool
        if self.node_tools is None:
            raise ControlPlaneError(
                "No node binaries: pass tools=ensure_node_binaries() to start_nodes()"
            )
        if self._apiserver is None or not self._apiserver.alive():
            raise ControlPlaneError("Start the apiserver before the node components")
        node_tools = self.node_tools
        timeout = self.ready_timeout if timeout is None else timeout
        started = time.monotonic()
        kubeconfigs = self._write_component_kubeconfigs()
        pki = self.pki
        workdir = self.directory / "kwok"
        workdir.mkdir(exist_ok=True)

        def argv(name: str, port: int) -> tuple[list[str], dict[str, str] | None]:
            if name == "kube-controller-manager":
                flags = controller_manager_flags(
                    kubeconfig=kubeconfigs[name], secure_port=port, pki=pki
                )
                return [str(node_tools.kube_controller_manager), *flags], None
            if name == "kube-scheduler":
                flags = scheduler_flags(kubeconfig=kubeconfigs[name], secure_port=port)
                return [str(node_tools.kube_scheduler), *flags], None
            # KWOK_WORKDIR: never read a developer's ~/.kwok/kwok.yaml.
            return [str(node_tools.kwok), *kwok_flags(kubeconfig=kubeconfigs[name])], {
                "KWOK_WORKDIR": str(workdir)
            }

        try:
            for name in NODE_COMPONENTS:
                current = self._nodes.get(name)
                if current is not None and current.alive():
                    continue
                for attempt in range(1, _PORT_ATTEMPTS + 1):
                    port = 0 if name == "kwok" else find_free_ports(1)[0]
                    args, env = argv(name, port)
                    self._nodes[name] = _spawn(
                        name=name,
                        argv=args,
                        log_path=self.component_log(name),
                        cwd=self.directory,
                        detached=self.detached,
                        env=env,
                    )
                    self._node_ports[name] = port
                    self._write_state()
                    try:
                        self._wait_component_healthy(name, deadline=started + timeout)
                        break
                    except ControlPlaneError as exc:
                        if attempt == _PORT_ATTEMPTS or _PORT_IN_USE not in str(exc):
                            raise
                        log.warning("Process %s lost its port, retrying with a new one", name)
            for manifest in self.node_pool.manifests():
                status, body = self._request("POST", "/api/v1/nodes", manifest, timeout=10.0)
                if status not in (201, 409):
                    raise ControlPlaneError(
                        f"Creating Node {manifest['metadata']['name']} failed: {status} {body}"
                    )
            self._wait_nodes_ready(deadline=started + timeout)
        except BaseException:
            self.stop_nodes()
            raise
        log.info(
            "Nodes %s ready in %.1fs",
            ", ".join(self.node_pool.names()),
            time.monotonic() - started,
        )

    def stop_nodes(self, *, graceful: bool = True) -> None:
        """Stop kwok, kube-scheduler and kube-controller-manager; Nodes and Pods stay."""
        errors = []
        for name in reversed(NODE_COMPONENTS):
            proc = self._nodes.get(name)
            if proc is None:
                continue
            try:
                proc.stop(timeout=self.stop_timeout, graceful=graceful)
            except ControlPlaneError as exc:
                errors.append(str(exc))
        if self.state_file.parent.is_dir() and self._ports is not None:
            self._write_state()
        if errors:
            raise ControlPlaneError("; ".join(errors))

    def _write_component_kubeconfigs(self) -> dict[str, Path]:
        identities = {
            "kube-controller-manager": (CONTROLLER_MANAGER_USER, ()),
            "kube-scheduler": (SCHEDULER_USER, ()),
            "kwok": (KWOK_USER, (KWOK_GROUP,)),
        }
        self.kubeconfig_dir.mkdir(mode=0o700, exist_ok=True)
        ca_pem = self.pki.serving_ca_cert.read_bytes()
        paths = {}
        for name, (user, groups) in identities.items():
            path = self.kubeconfig_dir / name
            path.touch(mode=0o600)
            path.write_text(
                render_kubeconfig(
                    server=self.server,
                    ca_pem=ca_pem,
                    credentials=issue_client_cert(self.pki, user=user, groups=groups),
                    user_name=user,
                )
            )
            paths[name] = path
        return paths

    def _wait_component_healthy(self, name: str, *, deadline: float) -> None:
        """Until the process answers ``/healthz`` (kwok serves nothing: only alive)."""
        proc = self._nodes[name]
        port = self._node_ports.get(name, 0)
        # The components serve a self-signed certificate; this only asks whether they are up.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        while True:
            if not proc.alive():
                raise ControlPlaneError(
                    f"{name} exited ({proc.exit_description()}) while starting; last lines of "
                    f"{proc.log_path}:\n{tail_text(proc.output())}"
                )
            if port == 0:
                return
            status, body = _http_get(opener, f"https://{LOOPBACK}:{port}/healthz", timeout=2.0)
            if status == 200 and body.strip() == "ok":
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{name} did not answer /healthz on port {port} in time ({status}: "
                    f"{tail_text(body, lines=5)}); last lines of {proc.log_path}:\n"
                    f"{_log_tail(proc.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _wait_nodes_ready(self, *, deadline: float) -> None:
        """Until kwok reports every Node Ready; then lift the not-ready taint.

        The apiserver's TaintNodesByCondition admission gives every new Node the
        ``node.kubernetes.io/not-ready:NoSchedule`` taint, which the node-lifecycle
        controller lifts once the Node is Ready. That controller is not run (it would also
        evict Pods whenever kwok is stopped), so this does its one job here.
        """
        pending = set(self.node_pool.names())
        while pending:
            for name in sorted(pending):
                status, body = self._get(f"/api/v1/nodes/{name}", timeout=5.0)
                if status != 200:
                    continue
                node = json.loads(body)
                if not _node_ready(node):
                    continue
                taints = (node.get("spec") or {}).get("taints") or []
                kept = [t for t in taints if t.get("key") != _NOT_READY_TAINT]
                if kept != taints:
                    status, body = self._request(
                        "PATCH",
                        f"/api/v1/nodes/{name}",
                        {
                            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
                            "spec": {"taints": kept or None},
                        },
                        timeout=5.0,
                        content_type="application/merge-patch+json",
                    )
                    if status != 200:
                        continue  # a conflict with kwok's status update: read it again
                pending.discard(name)
            if not pending:
                return
            kwok = self._nodes["kwok"]
            if not kwok.alive():
                raise ControlPlaneError(
                    f"kwok exited ({kwok.exit_description()}); last lines of "
                    f"{kwok.log_path}:\n{tail_text(kwok.output())}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"Nodes {', '.join(sorted(pending))} were not Ready in time; last lines of "
                    f"{kwok.log_path}:\n{_log_tail(kwok.log_path)}"
                )
            time.sleep(_POLL_INTERVAL)

    # ----------------------------------------------------------------- readiness

    def is_ready(self) -> bool:
        """One authenticated ``GET /readyz``; True when it answers ``ok``."""
        status, body = self._get("/readyz", timeout=5.0)
        return status == 200 and body.strip() == "ok"

    def wait_ready(self, *, timeout: float | None = None) -> None:
        """Wait for ``/readyz`` and the ``default`` namespace; raise with the log tail if not."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        for path in ("/readyz", "/api/v1/namespaces/default"):
            while True:
                if self._apiserver is not None and not self._apiserver.alive():
                    raise ControlPlaneError(
                        f"kube-apiserver exited ({self._apiserver.exit_description()}) while "
                        f"starting; last lines of "
                        f"{self.apiserver_log}:\n{tail_text(self._apiserver.output())}"
                    )
                status, body = self._get(path, timeout=5.0)
                if status == 200:
                    break
                last = f"{path} -> {status or 'connection failed'}: {tail_text(body, lines=20)}"
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"kube-apiserver at {self.server} was not ready after {timeout:.0f}s "
                        f"({last}); last lines of {self.apiserver_log}:\n"
                        f"{_log_tail(self.apiserver_log)}"
                    )
                time.sleep(_POLL_INTERVAL)

    def _wait_etcd_healthy(self, *, timeout: float) -> None:
        assert self._etcd is not None
        deadline = time.monotonic() + timeout
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if not self._etcd.alive():
                raise ControlPlaneError(
                    f"etcd exited ({self._etcd.exit_description()}) while starting; "
                    f"last lines of {self.etcd_log}:\n"
                    f"{tail_text(self._etcd.output())}"
                )
            status, body = _http_get(opener, f"{self.etcd_url}/health", timeout=2.0)
            if status == 200 and '"health":"true"' in body.replace(" ", ""):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"etcd at {self.etcd_url} was not healthy after {timeout:.0f}s; last lines "
                    f"of {self.etcd_log}:\n{_log_tail(self.etcd_log)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _get(self, path: str, *, timeout: float) -> tuple[int, str]:
        return self._request("GET", path, None, timeout=timeout)

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        timeout: float,
        content_type: str = "application/json",
    ) -> tuple[int, str]:
        """One request as the admin (``body`` sent as JSON unless None)."""
        pki = self.pki
        context = ssl.create_default_context(cafile=str(pki.serving_ca_cert))
        context.load_cert_chain(certfile=str(pki.admin_cert), keyfile=str(pki.admin_key))
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        if body is None:
            return _http_get(opener, f"{self.server}{path}", timeout=timeout)
        request = urllib.request.Request(
            f"{self.server}{path}",
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": content_type},
        )
        return _http_get(opener, request, timeout=timeout)

    # ----------------------------------------------------------------- internals

    def _with_port_retries(
        self, name: str, start: Callable[[], None], repick: Callable[[], None]
    ) -> None:
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                start()
                return
            except ControlPlaneError as exc:
                if self._pinned_ports or attempt == _PORT_ATTEMPTS or _PORT_IN_USE not in str(exc):
                    raise
                log.warning(
                    "Process %s lost its port to another process, retrying with a new one", name
                )
                repick()

    def _repick_etcd_ports(self) -> None:
        client, peer = find_free_ports(2)
        self._ports = replace(self.ports, etcd_client=client, etcd_peer=peer)

    def _repick_apiserver_port(self) -> None:
        self._ports = replace(self.ports, apiserver=find_free_ports(1)[0])
        self.kubeconfig.write_text(
            render_kubeconfig(
                server=self.server,
                ca_pem=self.pki.serving_ca_cert.read_bytes(),
                credentials=self.pki.admin_credentials(),
            )
        )

    def _stop_processes(self) -> None:
        errors = []
        for proc in (
            *(self._nodes.get(n) for n in reversed(NODE_COMPONENTS)),
            self._apiserver,
            self._etcd,
        ):
            if proc is None:
                continue
            try:
                proc.stop(timeout=self.stop_timeout)
            except ControlPlaneError as exc:
                errors.append(str(exc))
        if self.state_file.parent.is_dir() and self._ports is not None:
            self._write_state()
        if errors:
            raise ControlPlaneError("; ".join(errors))

    def _write_state(self) -> None:
        def record(proc: _Process | None) -> ProcessRecord | None:
            return proc.record if proc is not None and proc.alive() else None

        state = ControlPlaneState(
            directory=self.directory,
            tools=self.tools,
            ports=self.ports,
            etcd=record(self._etcd),
            apiserver=record(self._apiserver),
            node_tools=self.node_tools,
            nodes={
                name: rec for name, proc in self._nodes.items() if (rec := record(proc)) is not None
            },
        )
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.state_file)


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _http_get(
    opener: urllib.request.OpenerDirector, url: str | urllib.request.Request, *, timeout: float
) -> tuple[int, str]:
    """Status and body of a GET; status 0 when the connection itself failed."""
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as exc:  # URLError, refused, reset, timeout
        return 0, str(exc)
