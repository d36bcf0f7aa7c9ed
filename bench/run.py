"""``python -m bench.run`` (``make bench``): every measurement in one run, one report.

Environment:

- ``BENCH_SCALE``: ``quick`` (default, a few minutes) or ``full`` (under 30 minutes);
  the sizes are in ``bench.scenarios.SCALES``.
- ``BENCH_PROFILE``: ``auto`` (default: profile the scenarios that miss a goal when
  py-spy is installed), ``1`` (profile them all), ``0`` (never).
- ``BENCH_RESULTS``: output directory (default ``bench/results``).

The run starts its own etcd + kube-apiserver in a temporary directory (``devcluster``),
installs the CRDs, measures, and stops everything again; the last scenario
(``bench.containers``) adds kwok, kube-scheduler and kube-controller-manager for its own
duration. Results land in
``<results>/<date>-<scale>.json`` and ``.md``, plus PNG plots when matplotlib is installed
(``pip install -e '.[bench]'``). Operator logs stay in a temporary directory printed at
the end, for post-mortems.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import containers, scenarios, workload
from bench.kube import Kube
from bench.procs import REPO, py_spy
from bench.report import render_markdown, write_plots
from bench.stats import evaluate_goals, hotspots, inclusive_share
from tandem_operator.cli.main import install_crds
from tandem_operator.devcluster.controlplane import ControlPlane
from tandem_operator.devcluster.tools import ensure_binaries

RESULTS = Path(__file__).resolve().parent / "results"

INCLUSIVE_SITES = (
    "_slots",
    "model_validate",
    "decide (",
    "merge_patch",
    "patch_status",
    "kubernetes/client",
    "_emit",
    "kopf/",
    "<frozen importlib._bootstrap>",
)
"""Call sites whose inclusive share each profile reports (substrings of py-spy frames)."""

PROFILED_GOALS = {
    "recovery": ("restart recovery throughput", "status writes per recovered run"),
    "latency": ("create → first status", "gate decision → Running"),
    "at_rest": ("RSS per tracked run", "operator CPU at rest"),
    "throughput": ("end-to-end throughput", "status writes per run"),
}


def source_fingerprint() -> dict[str, Any]:
    """The commit and a digest of the operator's source, to tie results to the code.

    Taken at the start and the end of a run: operator processes are started from the
    working tree throughout, so a file that changed means later scenarios ran newer code.
    """
    digest = hashlib.sha256()
    files: dict[str, str] = {}
    root = REPO / "operator" / "tandem_operator"
    for path in sorted(root.rglob("*.py")):
        name = str(path.relative_to(root))
        data = path.read_bytes()
        files[name] = hashlib.sha256(data).hexdigest()[:12]
        digest.update(name.encode())
        digest.update(data)
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "operator"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": head or None,
        "operator_dirty": bool(dirty),
        "operator_sha256": digest.hexdigest()[:16],
        "files": files,
    }


def _etcd_version(etcd: Path) -> str:
    out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.split(":")[-1].strip() or "?"


async def _measure(
    *, kube: Kube, plane: ControlPlane, scale: scenarios.Scale, workdir: Path, profile: str
) -> dict[str, Any]:
    bench = scenarios.Bench.on(
        kube, plane, workdir, templates=workload.raw_templates(now_s=time.time())
    )
    version = await kube.version()
    results: dict[str, Any] = {
        "schema": 1,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "scale": scale.name,
        "sizes": {k: v for k, v in vars(scale).items() if k != "name"},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "kube_apiserver": version.get("gitVersion"),
            "etcd": _etcd_version(plane.tools.etcd),
        },
    }
    results["source"] = {"start": source_fingerprint()}
    durations: dict[str, float] = {}
    started = time.monotonic()

    async def timed(name: str, coro: Any) -> Any:
        bench.say(f"Scenario {name} started")
        t0 = time.monotonic()
        value = await coro
        durations[name] = round(time.monotonic() - t0, 1)
        bench.say(f"Scenario {name} done seconds={durations[name]}")
        return value

    # The PATCH baseline brackets recovery (before and after, averaged) and the round
    # trips are interleaved with the operator's samples, so that load from other work on
    # the machine weighs on the yardstick and the operator alike.
    patch_before = await timed("raw_patch_before", scenarios.raw_patch(bench, scale))
    recovery = await timed(
        "recovery",
        scenarios.recovery(bench, scale, raw_writes_per_s=patch_before["writes_per_s"]),
    )
    patch_after = await timed("raw_patch_after", scenarios.raw_patch(bench, scale))
    raw_per_s = round((patch_before["writes_per_s"] + patch_after["writes_per_s"]) / 2, 1)
    scenarios.rebase_recovery(recovery, raw_per_s)
    rtt, lat = await timed("latency", scenarios.latency(bench, scale))
    results["baseline"] = {
        "patch": {
            **patch_before,
            "writes_per_s": raw_per_s,
            "before": patch_before,
            "after": patch_after,
        },
        "round_trip": rtt,
    }
    results["recovery"] = recovery
    results["latency"] = lat
    results["at_rest"] = await timed("at_rest", scenarios.at_rest(bench, scale))
    results["throughput"] = await timed("throughput", scenarios.throughput(bench, scale))
    results["churn"] = await timed("churn", scenarios.churn(bench, scale))
    # Last, and on its own: it starts kwok, kube-scheduler and kube-controller-manager next
    # to the API server (and stops them), which none of the scenarios above expects. A
    # failure here (e.g. node binaries missing) is recorded instead of losing the whole run.
    try:
        results["containers"] = await timed(
            "container_throughput",
            containers.container_throughput(bench, scale, plane=plane),
        )
    except Exception as exc:
        bench.say(f"Scenario container_throughput failed: {exc!r}")
        results["containers"] = {"error": repr(exc)[:2000]}
    goals = evaluate_goals(results)
    if profile != "0" and py_spy() is not None:
        missed = {g.name for g in goals if g.met is False}
        profiles: dict[str, Any] = {}
        # Profiles at most at the quick sizes: they are for finding hotspots, and a full
        # scale would double a run that is meant to stay under half an hour.
        small = scenarios.SCALES["quick"] if scale.name == "full" else scale
        for scenario, goal_names in PROFILED_GOALS.items():
            if profile != "1" and not any(m.startswith(goal_names) for m in missed):
                continue
            out = workdir / f"profile-{scenario}.txt"
            if scenario == "recovery":
                coro: Any = scenarios.recovery(bench, small, raw_writes_per_s=None, profile=out)
            elif scenario == "latency":
                coro = _second(scenarios.latency(bench, small, profile=out))
            elif scenario == "at_rest":
                coro = scenarios.at_rest(bench, small, profile=out)
            else:
                coro = scenarios.throughput(bench, small, profile=out)
            stacks = (await timed(f"profile_{scenario}", coro))["stacks"]
            samples, top = hotspots(stacks)
            profiles[scenario] = {
                "scale": small.name,
                "samples": samples,
                "top": [h.to_json() for h in top],
                "inclusive": inclusive_share(stacks, INCLUSIVE_SITES),
            }
        results["profiles"] = profiles
    results["source"]["end"] = source_fingerprint()
    before, after = results["source"]["start"]["files"], results["source"]["end"]["files"]
    changed = sorted(f for f in set(before) | set(after) if before.get(f) != after.get(f))
    results["source"]["changed_during_run"] = changed
    durations["total"] = round(time.monotonic() - started, 1)
    results["durations_s"] = durations
    results["goals"] = [g.to_json() for g in goals]
    return results


async def _second(coro: Any) -> Any:
    return (await coro)[1]


def main() -> int:
    scale_name = os.environ.get("BENCH_SCALE", "quick").strip() or "quick"
    if scale_name not in scenarios.SCALES:
        print(f"BENCH_SCALE={scale_name!r} is not one of {sorted(scenarios.SCALES)}")
        return 2
    profile = os.environ.get("BENCH_PROFILE", "auto").strip() or "auto"
    out_dir = Path(os.environ.get("BENCH_RESULTS", str(RESULTS)))
    out_dir.mkdir(parents=True, exist_ok=True)
    scale = scenarios.SCALES[scale_name]
    workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    wall = time.monotonic()
    print(f"Benchmark scale={scale.name} workdir={workdir}", flush=True)
    plane = ControlPlane(tools=ensure_binaries(), directory=workdir / "controlplane")
    plane.start()
    try:
        install_crds(plane.kubeconfig)

        async def go() -> dict[str, Any]:
            async with Kube(plane.kubeconfig) as kube:
                return await _measure(
                    kube=kube, plane=plane, scale=scale, workdir=workdir, profile=profile
                )

        results = asyncio.run(go())
    finally:
        plane.stop()
        shutil.rmtree(plane.etcd_data_dir, ignore_errors=True)
    results["durations_s"]["wall_including_control_plane"] = round(time.monotonic() - wall, 1)
    goals = evaluate_goals(results)
    stem = f"{results['date']}-{scale.name}"
    plots = write_plots(results, out_dir, stem=stem)
    (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(render_markdown(results, goals, plots=plots))
    print(f"Wrote {out_dir / stem}.json and .md, plots={plots or 'none (no matplotlib)'}")
    for goal in goals:
        print(f"Goal {goal.name}: measured={goal.measured} target={goal.target} met={goal.met}")
    print(f"Operator logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
