"""The results document as Markdown, and optional PNG plots.

``render_markdown`` is pure (a results dict in, text out) so that a unit test can render a
made-up document. Plots need matplotlib (the ``bench`` optional dependency group); without
it ``write_plots`` writes nothing and says so, and the Markdown lists no images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.stats import Goal

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _source_line(r: Mapping[str, Any]) -> str:
    start = _get(r, "source", "start") or {}
    line = (
        f"Operator source: commit {start.get('commit', '?')}"
        f"{' with local changes' if start.get('operator_dirty') else ''}, "
        f"digest {start.get('operator_sha256', '?')}."
    )
    changed = _get(r, "source", "changed_during_run")
    if changed:
        names = ", ".join(changed) if isinstance(changed, list) else "some files"
        line += (
            f" **Operator source changed during the run ({names}): later scenarios ran the "
            "newer code.**"
        )
    return line


def _load_line(cpu: Mapping[str, Any] | None) -> str:
    """What else the machine did meanwhile (see ``bench.procs.CpuMeter``)."""
    if not cpu:
        return "- Machine: n/a."
    return (
        f"- Machine meanwhile: {_fmt(cpu.get('machine_busy'))} CPU-s busy in "
        f"{_fmt(cpu.get('wall'))} s on all cores, of which {_fmt(cpu.get('other'))} CPU-s "
        f"by processes outside the benchmark; load average {_fmt(cpu.get('load_avg_1m'))}."
    )


def _goal_row(goal: Goal) -> str:
    verdict = {True: "met", False: "**not met**", None: "not measured"}[goal.met]
    measured = _fmt(goal.measured, 3) if goal.measured is not None else "n/a"
    return f"| {goal.name} | {goal.target} | {measured} | {verdict} |"


def _latency_row(label: str, data: Mapping[str, Any] | None) -> str:
    if not data:
        return f"| {label} | n/a | n/a | n/a | n/a |"
    return (
        f"| {label} | {_fmt(data.get('p50_ms'), 1)} | {_fmt(data.get('p95_ms'), 1)} | "
        f"{_fmt(data.get('p99_ms'), 1)} | {_fmt(data.get('n'))} |"
    )


def _containers_section(c: Mapping[str, Any]) -> list[str]:
    """Scenario 6: the throughput flow with container nodes against the same flow simulated."""
    lines = ["", "## 6. Container nodes on kwok", ""]
    if c.get("error"):
        return [*lines, f"Not measured: the scenario failed ({c['error']})."]
    if not c:
        return [*lines, "Not measured."]
    sim = c.get("simulated") or {}
    box = c.get("container") or {}
    ratios = c.get("ratio") or {}

    def row(label: str, key: str, digits: int = 2, ratio_key: str | None = None) -> str:
        cell = f"{_fmt(ratios.get(ratio_key), 3)}×" if ratio_key else ""
        return f"| {label} | {_fmt(sim.get(key), digits)} | {_fmt(box.get(key), digits)} | {cell} |"

    def p50(batch: Mapping[str, Any]) -> str:
        return _fmt(_get(batch, "create_to_done", "p50_ms"), 0)

    def reads(batch: Mapping[str, Any]) -> str:
        per = batch.get("pod_reads_per_attempt") or {}
        return ", ".join(f"{k} {_fmt(v, 2)}" for k, v in per.items()) or "n/a"

    return [
        *lines,
        f"- {_fmt(c.get('runs'))} runs of {_fmt(c.get('nodes_per_run'))} Task nodes per "
        f"batch, TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS={_fmt(c.get('max_concurrent_runs'))}; "
        f"container nodes run one Pod per attempt on {_fmt(c.get('fake_nodes'))} kwok Nodes "
        f"(Pods end {c.get('pod_delay', '?')} after they start; node components ready in "
        f"{_fmt(c.get('nodes_ready_s'), 1)} s). Completed / failed: simulated "
        f"{_fmt(sim.get('completed'))} / {_fmt(sim.get('failed'))}, container "
        f"{_fmt(box.get('completed'))} / {_fmt(box.get('failed'))}.",
        "",
        "| per batch | simulated | container | container ÷ simulated |",
        "|---|---|---|---|",
        row("runs/min", "runs_per_minute", 1, "runs_per_minute"),
        f"| create → Completed p50 ms | {p50(sim)} | {p50(box)} | "
        f"{_fmt(ratios.get('create_to_done_p50'), 3)}× |",
        row("operator CPU ms per run", "operator_cpu_ms_per_run", 2, "operator_cpu_per_run"),
        row("attempts per run", "attempts_per_run", 3),
        row("status writes per run", "status_writes_per_run", 3),
        row("API writes per attempt (status + Pods)", "api_writes_per_attempt", 3),
        row("Pods created per attempt", "pods_created_per_attempt", 3),
        row("scheduler + kwok writes per attempt", "cluster_writes_per_attempt", 3),
        row("Events posted per run", "events_posted_per_run", 3),
        row(
            "kwok + scheduler + controller-manager CPU ms per run",
            "node_components_cpu_ms_per_run",
            2,
        ),
        "",
        f"- API writes per container attempt − per simulated attempt: "
        f"**{_fmt(ratios.get('extra_api_writes_per_attempt'), 3)}** (of which status writes "
        f"{_fmt(ratios.get('extra_status_writes_per_attempt'), 3)}); the container batch's "
        f"operator writes {box.get('api_writes', {})}, Pods left after the batch "
        f"{_fmt(box.get('pods_left'))}.",
        f"- Pod reads per container attempt (all clients): {reads(box)}.",
        _load_line(box.get("cpu_seconds")),
    ]


def render_markdown(
    results: Mapping[str, Any], goals: Sequence[Goal], *, plots: Sequence[str] = ()
) -> str:
    """A report of one run: goals first, then each measurement with its inputs."""
    r = results
    raw_patch = _get(r, "baseline", "patch") or {}
    raw_rtt = _get(r, "baseline", "round_trip") or {}
    rec = r.get("recovery") or {}
    lat = r.get("latency") or {}
    rest = r.get("at_rest") or {}
    tp = r.get("throughput") or {}
    machine = r.get("machine") or {}
    lines = [
        f"# Benchmark results {r.get('date', '')} (scale `{r.get('scale', '')}`)",
        "",
        f"Machine: {machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}, "
        f"kube-apiserver {machine.get('kube_apiserver', '?')} with etcd "
        f"{machine.get('etcd', '?')} on loopback, all on the same cores. "
        f"Total wall time {_fmt(_get(r, 'durations_s', 'total'), 0)} s. "
        "Ratios compare the operator with a minimal aiohttp client against the same API "
        "server in the same run; see docs/benchmarks.md for what each number means.",
        "",
        _source_line(r),
        "",
        "## Goals",
        "",
        "| goal | target | measured | verdict |",
        "|---|---|---|---|",
        *(_goal_row(g) for g in goals),
        "",
        "## 1. Raw baseline (minimal client)",
        "",
        f"- Status merge PATCH, {_fmt(raw_patch.get('concurrency'))} in flight, "
        f"{_fmt(raw_patch.get('objects'))} runs, {_fmt(raw_patch.get('seconds'), 1)} s: "
        f"**{_fmt(raw_patch.get('writes_per_s'), 1)} writes/s** "
        f"(per-request p50 {_fmt(_get(raw_patch, 'latency', 'p50_ms'), 1)} ms, "
        f"p99 {_fmt(_get(raw_patch, 'latency', 'p99_ms'), 1)} ms; "
        f"{_fmt(raw_patch.get('conflicts'))} conflicts); mean of a window before recovery "
        f"({_fmt(_get(raw_patch, 'before', 'writes_per_s'), 1)}/s) and one after "
        f"({_fmt(_get(raw_patch, 'after', 'writes_per_s'), 1)}/s).",
        "- Round trip (write → watch → status patch → watch), ms:",
        "",
        "| path | p50 | p95 | p99 | n |",
        "|---|---|---|---|---|",
        _latency_row("create → status", raw_rtt.get("create_to_status")),
        _latency_row("spec patch → status", raw_rtt.get("spec_patch_to_status")),
        "",
        "## 2. Restart recovery",
        "",
        f"- {_fmt(rec.get('runs'))} orphaned runs ({rec.get('by_kind', {})}); "
        f"{_fmt(rec.get('recovered_runs'))} need a write (Running → Failed, Pausing → Paused).",
        f"- Operator start → leader {_fmt(rec.get('leader_after_s'))} s, → first settled "
        f"{_fmt(rec.get('first_settled_after_s'))} s, → all settled "
        f"**{_fmt(rec.get('all_settled_after_s'))} s**.",
        f"- {_fmt(rec.get('recovered_per_s'), 1)} recovered runs/s from process start = "
        f"**{_fmt(rec.get('ratio_to_raw_patch'), 3)}× raw PATCH**; "
        f"{_fmt(rec.get('recovered_per_s_drain'), 1)}/s between first and last settled = "
        f"{_fmt(rec.get('ratio_to_raw_patch_drain'), 3)}× raw.",
        f"- Status PATCHes counted by the API server: {rec.get('status_patches', {})} → "
        f"**{_fmt(rec.get('writes_per_recovered_run'), 3)} per recovered run**; "
        f"Paused/AwaitingApproval runs rewritten: {_fmt(rec.get('untouched_runs_rewritten'))} "
        f"of {_fmt(rec.get('untouched_runs'))}; Events posted "
        f"{_fmt(rec.get('events_posted'))}.",
        f"- Operator CPU {_fmt(_get(rec, 'cpu_seconds', 'operator'))} s "
        f"({_fmt(rec.get('operator_cpu_ms_per_recovered_run'))} ms per recovered run); "
        f"kube-apiserver {_fmt(_get(rec, 'cpu_seconds', 'kube-apiserver'))} s, "
        f"etcd {_fmt(_get(rec, 'cpu_seconds', 'etcd'))} s.",
        _load_line(rec.get("cpu_seconds")),
        "",
        "## 3. Reaction latency",
        "",
        "| path | p50 ms | p95 ms | p99 ms | n | p50 / raw | p99 / raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, key in (
        ("create → first status", "create_to_status"),
        ("gate approve → Running", "gate_to_running"),
    ):
        d = lat.get(key) or {}
        lines.append(
            f"| {label} | {_fmt(d.get('p50_ms'), 1)} | {_fmt(d.get('p95_ms'), 1)} | "
            f"{_fmt(d.get('p99_ms'), 1)} | {_fmt(d.get('n'))} | "
            f"{_fmt(d.get('ratio_p50_to_raw'))}× | **{_fmt(d.get('ratio_p99_to_raw'))}×** |"
        )
    lines += [
        "",
        f"Status PATCHes per gated run: {_fmt(lat.get('status_patches_per_run'))} "
        f"(the raw client needs 2: one per reaction).",
        "",
        _load_line(lat.get("cpu_seconds")),
        "",
        "## 4. Timers at rest",
        "",
        f"- {_fmt(rest.get('runs'))} runs ({rest.get('by_kind', {})}), lifecycle timer every "
        f"{_fmt(rest.get('timer_interval_s'))} s, measured over "
        f"{_fmt(rest.get('window_s'), 0)} s after the initial pass "
        f"({_fmt(rest.get('loaded_after_s'), 1)} s after start).",
        f"- Operator CPU: **{_fmt(rest.get('cpu_share_of_core'), 4)} of a core** "
        f"(idle operator with no runs: {_fmt(_get(rest, 'idle', 'cpu_share_of_core'), 4)}; "
        f"busiest second {_fmt(rest.get('cpu_share_peak_1s'), 3)}).",
        f"- RSS: idle {_fmt(_get(rest, 'idle', 'rss_kib'))} KiB, loaded "
        f"{_fmt(rest.get('rss_kib_window_end'))} KiB → "
        f"**{_fmt(rest.get('rss_bytes_per_run'), 0)} bytes per run**.",
        f"- Status PATCHes during the whole scenario: {rest.get('status_patches', {})} "
        "(B3: parked runs are not written).",
        _load_line(rest.get("cpu_seconds_all")),
        "",
        "## 5. Throughput",
        "",
        f"- {_fmt(tp.get('runs'))} runs of {_fmt(tp.get('nodes_per_run'))} simulated nodes "
        f"(`afterSeconds: 0`), TANDEM_SCHEDULER_MAX_CONCURRENT_RUNS="
        f"{_fmt(tp.get('max_concurrent_runs'))}: completed {_fmt(tp.get('completed'))}, "
        f"failed {_fmt(tp.get('failed'))} in {_fmt(tp.get('elapsed_s'), 1)} s → "
        f"**{_fmt(tp.get('runs_per_minute'), 1)} runs/min**.",
        f"- Status PATCHes per run **{_fmt(tp.get('writes_per_run'), 3)}** vs lifecycle "
        f"transitions per run {_fmt(tp.get('transitions_per_run'), 3)}; Events posted per run "
        f"{_fmt(tp.get('events_posted_per_run'), 3)}; conflict re-reads (GET) per run "
        f"{_fmt(tp.get('run_gets_per_run'), 3)}.",
        f"- Create → Completed per run: p50 {_fmt(_get(tp, 'create_to_done', 'p50_ms'), 0)} ms, "
        f"p99 {_fmt(_get(tp, 'create_to_done', 'p99_ms'), 0)} ms. Operator CPU "
        f"{_fmt(tp.get('operator_cpu_ms_per_run'))} ms per run; kube-apiserver "
        f"{_fmt(_get(tp, 'cpu_seconds', 'kube-apiserver'))} s, etcd "
        f"{_fmt(_get(tp, 'cpu_seconds', 'etcd'))} s, operator "
        f"{_fmt(_get(tp, 'cpu_seconds', 'operator'))} s of {_fmt(_get(tp, 'cpu_seconds', 'wall'))}"
        " s wall.",
        _load_line(tp.get("cpu_seconds")),
        *_containers_section(r.get("containers") or {}),
    ]
    profiles = r.get("profiles") or {}
    if profiles:
        lines += ["", "## Profiles (py-spy, on-CPU samples of the operator)", ""]
        for scenario, prof in profiles.items():
            lines += [
                f"### {scenario} ({_fmt(prof.get('samples'))} samples"
                f"{', scale ' + prof['scale'] if prof.get('scale') else ''})",
                "",
                "| function | self % | total % |",
                "|---|---|---|",
                *(
                    f"| `{h['function']}` | {h['self_pct']} | {h['total_pct']} |"
                    for h in prof.get("top", [])
                ),
                "",
                "Inclusive share of selected call sites: "
                + ", ".join(f"`{k}` {v}%" for k, v in (prof.get("inclusive") or {}).items()),
                "",
            ]
    if plots:
        lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def write_plots(results: Mapping[str, Any], directory: Path, *, stem: str) -> list[str]:
    """PNG files next to the report; their names, or nothing when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []

    def save(fig: Figure, name: str) -> None:
        path = directory / f"{stem}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path.name)

    raw = _get(results, "baseline", "round_trip", "samples") or {}
    lat = _get(results, "latency", "samples") or {}
    if raw and lat:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        pairs = (
            ("create → first status", raw.get("create_s"), lat.get("create_s")),
            ("gate approve → Running", raw.get("spec_patch_s"), lat.get("gate_s")),
        )
        for ax, (title, base, op) in zip(axes, pairs, strict=True):
            for label, values in (("raw client", base), ("operator", op)):
                if values:
                    ms = sorted(v * 1000 for v in values)
                    ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=label)
            ax.set_title(title)
            ax.set_xlabel("ms")
            ax.set_ylabel("fraction of samples")
            ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
        save(fig, "latency")
    for key, path, title, ylabel in (
        ("recovery", "settled_over_time", "Restart recovery", "runs settled"),
        ("throughput", "completed_over_time", "Throughput", "runs completed"),
        ("at_rest", "cpu_share_per_second", "At rest: operator CPU", "share of one core"),
    ):
        series = _get(results, key, "series", path)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p[0] for p in series], [p[1] for p in series])
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        save(fig, key.replace("_", "-"))
    batches = [
        (label, series)
        for label, key in (("simulated", "simulated"), ("container", "container"))
        if (series := _get(results, "containers", key, "series", "completed_over_time"))
    ]
    if batches:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, series in batches:
            ax.plot([p[0] for p in series], [p[1] for p in series], label=label)
        ax.set_title("Container nodes on kwok vs simulated")
        ax.set_xlabel("seconds")
        ax.set_ylabel("runs completed")
        ax.grid(True, alpha=0.3)
        ax.legend()
        save(fig, "containers")
    return written
