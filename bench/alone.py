"""One scenario on a control plane of its own (``python -m bench.churn``, ``bench.containers``).

``BENCH_SCALE`` as for ``make bench``. The control plane lives in a temporary directory,
which keeps the operators' logs after the control plane has stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.kube import Kube
from tandem_operator.cli.main import install_crds
from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.tools import ensure_binaries

Scenario = Callable[[scenarios.Bench, scenarios.Scale, ControlPlane], Awaitable[dict[str, Any]]]


def run_alone(prefix: str, scenario: Scenario) -> tuple[dict[str, Any], Path]:
    """Start a control plane, install the CRDs, run ``scenario``, stop everything again.

    Returns the scenario's result and the directory the operators' logs are in.
    """
    scale = scenarios.SCALES[os.environ.get("BENCH_SCALE", "quick").strip() or "quick"]
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    plane = ControlPlane(tools=ensure_binaries(), directory=workdir / "controlplane")
    plane.start()
    try:
        install_crds(plane.kubeconfig)
        time.sleep(5)  # new CRDs answer 429 while their storage initialises

        async def go() -> dict[str, Any]:
            async with Kube(plane.kubeconfig) as kube:
                return await scenario(scenarios.Bench.on(kube, plane, workdir), scale, plane)

        result = asyncio.run(go())
    finally:
        plane.stop()
        shutil.rmtree(plane.etcd_data_dir, ignore_errors=True)
    return result, workdir
