"""What tests get from the ``kube`` fixture: a kubeconfig, the built kubectl, and maybe a plane.

It lives in the package rather than in ``conftest.py`` so tests (and mypy) can import the
type. ``control_plane`` is None when the tests target an existing cluster
(``TANDEM_TEST_KUBECONFIG``); tests that restart processes must skip in that case.

kubectl is run as a subprocess on purpose: it is the same client a user would run, and its
errors are the real API errors. A failed call raises ``KubectlError``, whose message carries
kubectl's stderr so a failing assertion explains itself.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandem_operator.devcluster.controlplane import ControlPlane, render_kubeconfig
from tandem_operator.devcluster.tools import ToolPaths

__all__ = ["KubeSession", "KubectlError", "unique_namespace_name"]

_NAME_MAX = 63


class KubectlError(subprocess.CalledProcessError):
    """A kubectl call exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        stderr = self.stderr.strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}\nstderr: {stderr}"


@dataclass(frozen=True)
class KubeSession:
    """A cluster to test against."""

    kubeconfig: Path
    tools: ToolPaths
    control_plane: ControlPlane | None = None

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster (or another ``kubeconfig``)."""
        argv = [str(self.tools.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(
        self, *args: str, input: str | None = None, kubeconfig: Path | None = None
    ) -> Any:
        """``kubectl ... -o json`` parsed."""
        proc = self.kubectl(*args, "-o", "json", input=input, kubeconfig=kubeconfig)
        return json.loads(proc.stdout)

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """Write a kubeconfig for the same server that authenticates with only ``token``."""
        config = self.kubectl_json("config", "view", "--raw", "--minify", "--flatten")
        cluster = config["clusters"][0]["cluster"]
        if "certificate-authority-data" not in cluster:
            raise ValueError(f"{self.kubeconfig} has no certificate-authority-data to reuse")
        path.write_text(
            render_kubeconfig(
                server=cluster["server"],
                ca_pem=base64.b64decode(cluster["certificate-authority-data"]),
                token=token,
                user_name="token-user",
            )
        )
        path.chmod(0o600)
        return path


def unique_namespace_name(hint: str, *, prefix: str = "t") -> str:
    """``<prefix>-<hint>-<random>`` as a DNS label of at most 63 characters.

    Namespaces never finish terminating on a cluster without a controller-manager, so test
    namespaces are never reused; the hint (usually the test name) only helps a human.
    """
    suffix = secrets.token_hex(3)
    slug = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")
    slug = slug[: _NAME_MAX - len(prefix) - len(suffix) - 2].strip("-")
    return "-".join(part for part in (prefix, slug, suffix) if part)
