"""Locate (and if needed build) the binaries of the local control plane.

The project does not download release tarballs: ``hack/build-tools.sh`` builds etcd,
kube-apiserver, kubectl and helm (``ensure_binaries``), and kube-scheduler,
kube-controller-manager and kwok for the fake Nodes (``ensure_node_binaries``), from the Go
modules pinned in ``hack/tools`` and ``hack/kwok`` into a cache outside the repository, and
prints the directory as its last line on stdout. kwok has its own directory,
``kwok-<version>``, with a stamp of ``hack/kwok``'s go.mod and go.sum beside the binary
(``hack/build-kwok.sh``). This module is the Python side of that contract:

* ``TANDEM_TOOLS_DIR`` wins when it already holds all four binaries (CI images, people with
  their own builds). When it is set but incomplete, the script builds into it, because the
  script honours the same variable.
* Otherwise, when the cache directory for the pinned versions (the script's layout, with
  the tag computed from ``hack/tools/versions.env``; a unit test pins the two together)
  already holds all four, it is used directly: no subprocess, no output, no Go needed.
* Otherwise the script is run with its stderr passed through, so the several-minute first
  build shows progress instead of looking hung; only its stdout is captured.
* Runs are serialised with an ``flock`` next to the cache, so parallel test workers or two
  terminals do not race on the script's ``*.tmp`` outputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BINARY_NAMES",
    "NODE_BINARY_NAMES",
    "NodeToolPaths",
    "ToolPaths",
    "ToolsError",
    "cache_root",
    "default_kwok_dir",
    "ensure_binaries",
    "ensure_node_binaries",
    "kwok_stamp",
    "kwok_version",
    "pinned_versions",
    "repo_root",
]

BINARY_NAMES = ("etcd", "kube-apiserver", "kubectl", "helm")
NODE_BINARY_NAMES = ("kube-scheduler", "kube-controller-manager", "kwok")


class ToolsError(RuntimeError):
    """The control-plane binaries are missing and could not be built."""


@dataclass(frozen=True)
class ToolPaths:
    """Absolute paths of the four binaries the local cluster needs."""

    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    helm: Path

    @classmethod
    def in_dir(cls, directory: Path) -> ToolPaths:
        """Paths of the binaries inside ``directory`` (existence is not checked)."""
        directory = directory.resolve()
        return cls(
            etcd=directory / "etcd",
            kube_apiserver=directory / "kube-apiserver",
            kubectl=directory / "kubectl",
            helm=directory / "helm",
        )

    def missing(self) -> list[Path]:
        """Binaries that are absent or not executable."""
        return [p for p in self.all() if not (p.is_file() and os.access(p, os.X_OK))]

    def all(self) -> tuple[Path, Path, Path, Path]:
        return (self.etcd, self.kube_apiserver, self.kubectl, self.helm)


@dataclass(frozen=True)
class NodeToolPaths:
    """Absolute paths of the binaries that give the local cluster Nodes that run Pods."""

    kube_scheduler: Path
    kube_controller_manager: Path
    kwok: Path

    @classmethod
    def in_dirs(cls, bin_dir: Path, kwok_dir: Path | None = None) -> NodeToolPaths:
        """kube-scheduler and kube-controller-manager in ``bin_dir``, kwok in ``kwok_dir``."""
        bin_dir = bin_dir.resolve()
        return cls(
            kube_scheduler=bin_dir / "kube-scheduler",
            kube_controller_manager=bin_dir / "kube-controller-manager",
            kwok=(kwok_dir or bin_dir).resolve() / "kwok",
        )

    def missing(self) -> list[Path]:
        """Binaries that are absent or not executable."""
        return [p for p in self.all() if not (p.is_file() and os.access(p, os.X_OK))]

    def all(self) -> tuple[Path, Path, Path]:
        return (self.kube_scheduler, self.kube_controller_manager, self.kwok)


def repo_root() -> Path:
    """The repository checkout this package was imported from."""
    # operator/tandem_operator/devcluster/tools.py -> parents[3] is the repository root.
    return Path(__file__).resolve().parents[3]


def pinned_versions(versions_env: Path | None = None) -> dict[str, str]:
    """``KEY=VALUE`` pairs of ``hack/tools/versions.env`` (comments and blanks skipped)."""
    path = versions_env or repo_root() / "hack" / "tools" / "versions.env"
    result: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        result[key.strip()] = value.strip().strip("'\"")
    return result


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/tandem-operator``, as used by ``build-tools.sh``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tandem-operator"


def default_bin_dir(*, versions: Mapping[str, str], env: Mapping[str, str] | None = None) -> Path:
    """Directory ``build-tools.sh`` uses when ``TANDEM_TOOLS_DIR`` is not set."""
    tag = (
        f"k8s-{versions['KUBERNETES_VERSION']}"
        f"_etcd-{versions['ETCD_VERSION']}"
        f"_helm-{versions['HELM_VERSION']}"
        f"_r{versions['BUILD_REVISION']}"
    )
    return cache_root(env) / "bin" / tag


def kwok_version(gomod: Path | None = None) -> str:
    """The ``sigs.k8s.io/kwok`` version ``hack/kwok/go.mod`` requires."""
    path = gomod or repo_root() / "hack" / "kwok" / "go.mod"
    for raw in path.read_text().splitlines():
        fields = raw.split()
        if fields[:1] == ["require"]:
            fields = fields[1:]
        if len(fields) >= 2 and fields[0] == "sigs.k8s.io/kwok":
            return fields[1]
    raise ToolsError(f"{path} does not require sigs.k8s.io/kwok")


def kwok_stamp(module_dir: Path | None = None) -> str:
    """SHA-256 of ``hack/kwok``'s go.mod and go.sum, as ``hack/build-kwok.sh`` records it."""
    directory = module_dir or repo_root() / "hack" / "kwok"
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((directory / name).read_bytes())
    return digest.hexdigest()


def default_kwok_dir(*, version: str, env: Mapping[str, str] | None = None) -> Path:
    """Directory ``build-kwok.sh`` uses when ``TANDEM_TOOLS_DIR`` is not set."""
    return cache_root(env) / "bin" / f"kwok-{version}"


def ensure_binaries() -> ToolPaths:
    """Return the binaries, building them with ``hack/build-tools.sh`` when needed."""
    override = os.environ.get("TANDEM_TOOLS_DIR")
    if override:
        tools = ToolPaths.in_dir(Path(override))
        if not tools.missing():
            return tools

    script = repo_root() / "hack" / "build-tools.sh"
    if not script.is_file():
        raise ToolsError(
            f"Cannot find {script}; set TANDEM_TOOLS_DIR to a directory holding "
            f"{', '.join(BINARY_NAMES)}"
        )

    if not override:
        cached = ToolPaths.in_dir(default_bin_dir(versions=pinned_versions()))
        if not cached.missing():
            return cached

    if shutil.which("go") is None:
        raise ToolsError(
            "The Go toolchain (go >= 1.24) is required to build etcd, kube-apiserver, kubectl "
            "and helm; install Go or set TANDEM_TOOLS_DIR to a directory holding prebuilt ones"
        )

    with _build_lock():
        bin_dir = _run_build_script(script, BINARY_NAMES)
    tools = ToolPaths.in_dir(bin_dir)
    missing = tools.missing()
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ToolsError(f"{script} finished but these binaries are missing: {names}")
    return tools


def ensure_node_binaries() -> NodeToolPaths:
    """kube-scheduler, kube-controller-manager and kwok, built when missing or out of date.

    Same rules as ``ensure_binaries``; kwok also counts as missing when the stamp beside it
    does not match ``hack/kwok``'s go.mod and go.sum (a bumped pin), as in the script.
    """
    override = os.environ.get("TANDEM_TOOLS_DIR")
    script = repo_root() / "hack" / "build-tools.sh"
    if override:
        tools = NodeToolPaths.in_dirs(Path(override))
        if not tools.missing():
            return tools
    if not script.is_file():
        raise ToolsError(
            f"Cannot find {script}; set TANDEM_TOOLS_DIR to a directory holding "
            f"{', '.join(NODE_BINARY_NAMES)}"
        )
    kwok_dir = Path(override) if override else default_kwok_dir(version=kwok_version())
    if not override:
        cached = NodeToolPaths.in_dirs(default_bin_dir(versions=pinned_versions()), kwok_dir)
        if not cached.missing() and _kwok_stamp_matches(cached.kwok):
            return cached

    if shutil.which("go") is None:
        raise ToolsError(
            "The Go toolchain is required to build kube-scheduler, kube-controller-manager "
            "and kwok; install Go or set TANDEM_TOOLS_DIR to a directory holding prebuilt ones"
        )
    with _build_lock():
        bin_dir = _run_build_script(script, NODE_BINARY_NAMES)
    tools = NodeToolPaths.in_dirs(bin_dir, kwok_dir)
    missing = tools.missing()
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise ToolsError(f"{script} finished but these binaries are missing: {names}")
    return tools


def _kwok_stamp_matches(kwok: Path) -> bool:
    try:
        recorded = kwok.with_name("kwok.sha256").read_text().strip()
    except OSError:
        return False
    return recorded == kwok_stamp()


def _run_build_script(script: Path, names: tuple[str, ...]) -> Path:
    print(
        f"Building the missing binaries among {', '.join(names)} with hack/build-tools.sh",
        file=sys.stderr,
        flush=True,
    )
    proc = subprocess.run(
        ["bash", str(script), *names],
        stdout=subprocess.PIPE,
        stderr=None,  # inherited: the build progress goes straight to the user's terminal
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise ToolsError(
            f"{script} failed with exit code {proc.returncode}; its output is above on stderr"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise ToolsError(f"{script} printed no binary directory on stdout")
    return Path(lines[-1].strip())


@contextmanager
def _build_lock() -> Iterator[None]:
    lock_dir = cache_root()
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / "build-tools.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
