"""Only the churn scenario: ``python -m bench.churn`` (``BENCH_SCALE`` as for ``make bench``).

Starts its own control plane, prints the scenario's result as JSON and exits non-zero when
the operator's RSS after the measured batch is more than 10% above the RSS after the
warm-up, or when a run was left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.kube import Kube
from tandem_operator.cli.main import install_crds
from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.tools import ensure_binaries

RSS_GROWTH_LIMIT = 0.10


def main() -> int:
    scale = scenarios.SCALES[os.environ.get("BENCH_SCALE", "quick").strip() or "quick"]
    workdir = Path(tempfile.mkdtemp(prefix="tandem-churn-"))
    plane = ControlPlane(tools=ensure_binaries(), directory=workdir / "controlplane")
    plane.start()
    try:
        install_crds(plane.kubeconfig)
        time.sleep(5)  # new CRDs answer 429 while their storage initialises

        async def go() -> dict[str, Any]:
            async with Kube(plane.kubeconfig) as kube:
                bench = scenarios.Bench(
                    kube=kube,
                    kubeconfig=plane.kubeconfig,
                    workdir=workdir,
                    control_plane_pids={},
                )
                return await scenarios.churn(bench, scale)

        result = asyncio.run(go())
    finally:
        plane.stop()
        shutil.rmtree(plane.etcd_data_dir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    print(f"Operator logs in {workdir}")
    return 0 if result["rss_growth"] <= RSS_GROWTH_LIMIT and not result["left_behind"] else 1


if __name__ == "__main__":
    sys.exit(main())
