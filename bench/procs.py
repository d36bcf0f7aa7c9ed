"""Processes the benchmark starts and reads: the operator subprocess, /proc, py-spy.

The operator runs as in production and in the integration tests, as ``python -m
tandem_operator.cli.main run --namespace NS --lease-namespace NS --metrics-port 0`` with
``KUBECONFIG`` pointing at the benchmark's control plane, so its CPU time and resident
memory can be read from ``/proc/<pid>`` without instrumenting it. The same goes for
kube-apiserver and etcd, whose pids the control plane handle knows.

The profiler is py-spy (``pip install py-spy``), attached to the operator's pid in
``record --format raw --nonblocking`` mode: it samples the interpreter's stacks from
outside, without pausing the process, and writes collapsed stacks on SIGINT.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.stats import cpu_seconds, machine_busy_seconds, rss_kib

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, SIGTERM the child when the benchmark dies, so no operator outlives it."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def proc_cpu_seconds(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), clock_ticks=CLOCK_TICKS)


def machine_busy() -> float:
    return machine_busy_seconds(Path("/proc/stat").read_text(), clock_ticks=CLOCK_TICKS)


def proc_rss_kib(pid: int) -> int:
    return rss_kib(Path(f"/proc/{pid}/status").read_text())


@dataclass
class CpuMeter:
    """CPU seconds of several processes between ``start()`` and ``read()``.

    Besides the named processes (the benchmark itself is always one of them, ``bench``),
    it reports ``machine_busy``, the CPU seconds all cores spent busy, and ``other``, the
    part of that no measured process used: anything else running on the machine at the
    same time, which a 2-core box shared with other work has plenty of. The report shows
    it so that a slow number can be told apart from a crowded machine.
    """

    pids: Mapping[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0
    _busy: float = 0.0

    def start(self) -> CpuMeter:
        self.pids = {**self.pids, "bench": os.getpid()}
        self._start = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}
        self._busy = machine_busy()
        self._wall = time.monotonic()
        return self

    def read(self) -> dict[str, float]:
        """CPU seconds used by each process since ``start()``, and ``wall`` seconds."""
        out = {
            name: round(proc_cpu_seconds(pid) - self._start[name], 3)
            for name, pid in self.pids.items()
        }
        busy = machine_busy() - self._busy
        measured = sum(out.values())
        out["machine_busy"] = round(busy, 3)
        out["other"] = round(max(0.0, busy - measured), 3)
        out["wall"] = round(time.monotonic() - self._wall, 3)
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
        return out


@dataclass
class OperatorProcess:
    """One ``tandem-operator run`` subprocess watching one namespace."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    """time.monotonic() just before the process was spawned"""

    def start(self) -> OperatorProcess:
        env = {
            **os.environ,
            **self.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(REPO / "operator"),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tandem_operator.cli.main",
                    "run",
                    "--namespace",
                    self.namespace,
                    "--lease-namespace",
                    self.namespace,
                    # No Prometheus endpoint: nothing scrapes it here, and a fixed port
                    # could collide with another operator on a shared machine.
                    "--metrics-port",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent(),
            )
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the operator was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_leader(self, *, timeout: float = 60) -> float:
        """Block until the operator logs that it leads; returns seconds since spawn."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "leader=True" in self.log():
                return time.monotonic() - self.started_at
            if not self.alive():
                raise RuntimeError(f"operator exited early:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"operator did not become leader in {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, *, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


@dataclass
class Profiler:
    """``py-spy record`` attached to one pid until ``stop()``."""

    pid: int
    output: Path
    rate: int = 100
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Profiler:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(self.output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return self

    def stop(self) -> str:
        """Stop sampling; the collapsed stacks (empty when nothing was written)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output.read_text() if self.output.exists() else ""
