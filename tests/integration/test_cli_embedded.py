"""``tandem-operator run`` without a kubeconfig: the embedded default behind ``make run``.

It must start the local control plane, install the CRDs, run the operator, apply the
examples and show the runs; Ctrl-C (SIGINT) must stop the operator and the control plane.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support import REPO, wait_for

from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.session import KubeSession
from tandem_operator.handlers.webhook import install_name


def test_run_without_kubeconfig_brings_everything_up_and_down(
    kube: KubeSession, tmp_path: Path
) -> None:
    cluster_dir = tmp_path / "embedded"
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1", HOME=os.environ["HOME"])
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tandem_operator.cli.main",
                "run",
                "--cluster-dir",
                str(cluster_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    try:
        kubeconfig = cluster_dir / "kubeconfig"
        wait_for(kubeconfig.exists, timeout=120, what="the embedded kubeconfig")

        def example_status() -> dict[str, object] | None:
            result = kube.kubectl(
                "get",
                "automationrun",
                "weekly-report",
                "-n",
                "default",
                "-o",
                "json",
                kubeconfig=kubeconfig,
                check=False,
            )
            if result.returncode != 0:
                return None
            status: dict[str, object] = json.loads(result.stdout).get("status") or {}
            return status if status.get("phase") else None

        status = wait_for(
            example_status,
            timeout=120,
            what="the example run to get a status",
            describe=lambda: log_path.read_text()[-2000:],
        )
        assert status["phase"] in ("Queued", "Running", "AwaitingApproval")
        wait_for(
            lambda: "AutomationRuns" in log_path.read_text(), timeout=30, what="the runs table"
        )
        table = log_path.read_text()
        assert "weekly-report" in table
        assert "nightly-digest-run-1" in table

        # Admission is on; once the example waits at its gate, the next two steps are
        # printed, and they work as printed.
        wait_for(
            lambda: "Next, in another terminal:" in log_path.read_text(),
            timeout=120,
            what="the next steps",
            describe=lambda: log_path.read_text()[-2000:],
        )
        lines = log_path.read_text().split("Next, in another terminal:\n", 1)[1].splitlines()
        export, approve = lines[0].strip(), lines[1].split("#")[0].strip()
        assert export.startswith(f"export KUBECONFIG={kubeconfig} PATH=")
        assert approve == "kubectl automationrun approve weekly-report -n default"
        shell = subprocess.run(
            ["bash", "-c", f"{export} && {approve}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**env, "PYTHONPATH": str(REPO / "operator")},
        )
        assert shell.returncode == 0, shell.stderr
        assert "approve recorded for gate review by " in shell.stdout
        assert (
            kube.kubectl(
                "get", "validatingwebhookconfiguration", "-o", "name", kubeconfig=kubeconfig
            ).stdout.strip()
            == f"validatingwebhookconfiguration.admissionregistration.k8s.io/{install_name('default')}"
        )
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-3000:]
    plane = ControlPlane.attach(cluster_dir)
    assert plane is None or not plane.running(), "the control plane outlived Ctrl-C"
