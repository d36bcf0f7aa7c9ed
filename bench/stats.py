"""Pure arithmetic of the benchmark: percentiles, ratios, /proc and /metrics parsing, goals.

Nothing here does I/O, so every number the report prints can be checked by a unit test
(``tests/unit/test_bench_stats.py``) from made-up inputs. The functions that read files
and sockets live in ``bench.probes`` and ``bench.kube`` and hand their raw text to these.

Conventions: durations are seconds in and milliseconds out (``summarize``), rates are per
second unless the name says otherwise, and a ratio whose denominator is missing or zero is
``None`` rather than infinity, so the JSON stays valid and the report says "n/a".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- samples


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as numpy's default, so p50 of ``[1, 2, 3, 4]`` is 2.5.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def summarize(seconds: Sequence[float]) -> dict[str, float | int]:
    """Latency samples in seconds → count and p50/p95/p99/mean/min/max in milliseconds."""
    if not seconds:
        return {"n": 0}
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def ratio(numerator: float | None, denominator: float | None, *, digits: int = 3) -> float | None:
    """``numerator / denominator`` rounded, or None when either is missing or the base is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def rate(count: float, seconds: float) -> float | None:
    """Events per second, None for an empty interval."""
    if seconds <= 0:
        return None
    return count / seconds


# --------------------------------------------------------------------------- /proc


def cpu_seconds(stat_text: str, *, clock_ticks: int) -> float:
    """utime + stime of a ``/proc/<pid>/stat`` line, in seconds.

    The command name (field 2) may contain spaces and parentheses, so fields are counted
    from the last ``)``: after it come state (field 3), and utime/stime are fields 14/15.
    """
    fields = stat_text.rpartition(")")[2].split()
    if len(fields) < 13:
        raise ValueError("not a /proc/<pid>/stat line")
    return (int(fields[11]) + int(fields[12])) / clock_ticks


def machine_busy_seconds(proc_stat_text: str, *, clock_ticks: int) -> float:
    """CPU seconds all cores spent not idle since boot, from the ``cpu`` line of /proc/stat.

    Busy is every column but ``idle`` and ``iowait``; ``guest`` time is already counted in
    ``user`` and is left out so it is not counted twice.
    """
    for line in proc_stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:]]
            busy = sum(values[:8]) - values[3] - values[4]
            return busy / clock_ticks
    raise ValueError("no aggregate cpu line in /proc/stat")


def rss_kib(status_text: str) -> int:
    """``VmRSS`` of a ``/proc/<pid>/status`` text, in KiB."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (is the process a zombie?)")


def cpu_share(cpu_s: float, wall_s: float) -> float | None:
    """Fraction of one core used: CPU seconds over wall seconds (1.0 = one full core)."""
    if wall_s <= 0:
        return None
    return cpu_s / wall_s


def bytes_per_item(*, rss_kib_loaded: int, rss_kib_idle: int, items: int) -> float | None:
    """Resident memory the items added, per item, in bytes (may be negative: noise)."""
    if items <= 0:
        return None
    return (rss_kib_loaded - rss_kib_idle) * 1024 / items


# --------------------------------------------------------------------------- /metrics

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_labels(text: str) -> dict[str, str]:
    """``a="x",b="y \\"q\\""`` → ``{"a": "x", "b": 'y "q"'}`` (Prometheus text format)."""
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            raise ValueError(f"bad label set at {text[pos:]!r}")
        value = match.group(2).replace("\\\\", "\\").replace('\\"', '"').replace("\\n", "\n")
        labels[match.group(1)] = value
        pos = match.end()
    return labels


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in a Prometheus text exposition."""
    found: list[tuple[dict[str, str], float]] = []
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group("name") != name:
            continue
        found.append((parse_labels(match.group("labels") or ""), float(match.group("value"))))
    return found


def counter_sum(
    text: str, name: str, labels: Mapping[str, str], *, group_by: str | None = None
) -> dict[str, float]:
    """Sum of the samples of ``name`` whose labels include ``labels``.

    Without ``group_by`` the result is ``{"total": sum}``; with it, one sum per value of that
    label (e.g. per HTTP ``code``) plus ``"total"``. As in Prometheus, an empty wanted value
    also matches a sample without that label (``subresource=""``: the resource itself).
    """
    sums: dict[str, float] = {"total": 0.0}
    for sample_labels, value in metric_samples(text, name):
        if any(sample_labels.get(k, "") != v for k, v in labels.items()):
            continue
        sums["total"] += value
        if group_by is not None:
            key = sample_labels.get(group_by, "")
            sums[key] = sums.get(key, 0.0) + value
    return sums


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """Per-key increase of a counter between two scrapes (keys of either side)."""
    keys = sorted(set(before) | set(after))
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0)) for k in keys}


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True, kw_only=True)
class Hotspot:
    function: str
    self_pct: float
    """Share of on-CPU samples whose innermost frame is this function."""
    total_pct: float
    """Share of on-CPU samples with this function anywhere on the stack."""

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "self_pct": self.self_pct, "total_pct": self.total_pct}


_LINE_SUFFIX = re.compile(r":\d+\)$")


def _frame_function(frame: str) -> str:
    """``reconcile (/x/handlers/reconciler.py:172)`` → ``reconcile (handlers/reconciler.py)``."""
    frame = _LINE_SUFFIX.sub(")", frame.strip())
    head, _, path = frame.partition(" (")
    if not path:
        return frame
    path = path.rstrip(")")
    for marker in ("/tandem_operator/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{head} ({path})"


def hotspots(collapsed: str, *, top: int = 15) -> tuple[int, list[Hotspot]]:
    """Sample count and the top functions by self time of a py-spy ``--format raw`` profile.

    Each line is ``frame;frame;...;innermost count``. Line numbers are dropped so that a
    function's samples add up across its lines.
    """
    self_counts: dict[str, int] = {}
    total_counts: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for function in set(frames):
            total_counts[function] = total_counts.get(function, 0) + count
    if samples == 0:
        return 0, []
    ranked = sorted(self_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return samples, [
        Hotspot(
            function=function,
            self_pct=round(100 * count / samples, 1),
            total_pct=round(100 * total_counts[function] / samples, 1),
        )
        for function, count in ranked
    ]


def inclusive_share(collapsed: str, needles: Iterable[str]) -> dict[str, float]:
    """Percent of samples whose stack contains a frame mentioning each needle."""
    wanted = list(needles)
    hits = dict.fromkeys(wanted, 0)
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        for needle in wanted:
            if needle in stack:
                hits[needle] += count
    return {n: round(100 * c / samples, 1) if samples else 0.0 for n, c in hits.items()}


# --------------------------------------------------------------------------- goals


@dataclass(frozen=True, kw_only=True)
class Goal:
    name: str
    target: str
    measured: float | None
    unit: str
    met: bool | None
    """None when the measurement is missing."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "measured": self.measured,
            "unit": self.unit,
            "met": self.met,
        }


def at_least(name: str, measured: float | None, minimum: float, *, unit: str) -> Goal:
    met = None if measured is None else measured >= minimum
    return Goal(name=name, target=f">= {minimum:g} {unit}", measured=measured, unit=unit, met=met)


def at_most(name: str, measured: float | None, maximum: float, *, unit: str) -> Goal:
    met = None if measured is None else measured <= maximum
    return Goal(name=name, target=f"<= {maximum:g} {unit}", measured=measured, unit=unit, met=met)


def exactly(name: str, measured: float | None, expected: float, *, unit: str) -> Goal:
    met = None if measured is None else math.isclose(measured, expected, abs_tol=1e-9)
    return Goal(name=name, target=f"= {expected:g} {unit}", measured=measured, unit=unit, met=met)


def _get(data: Mapping[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def cpu_ratio(results: Mapping[str, Any]) -> float | None:
    """Operator CPU ÷ kube-apiserver CPU over the throughput scenario (the same runs)."""
    operator = _get(results, "throughput", "cpu_seconds", "operator")
    apiserver = _get(results, "throughput", "cpu_seconds", "kube-apiserver")
    if not operator or not apiserver:
        return None
    return round(float(operator) / float(apiserver), 3)


def write_share(results: Mapping[str, Any]) -> float | None:
    """End-to-end throughput as a share of the API server's write capacity: runs/s ×
    status writes per run ÷ raw PATCH writes/s, all measured in the same run."""
    per_minute = _get(results, "throughput", "runs_per_minute")
    writes = _get(results, "throughput", "writes_per_run")
    raw = _get(results, "baseline", "patch", "writes_per_s")
    if not per_minute or not writes or not raw:
        return None
    return round(float(per_minute) / 60 * float(writes) / float(raw), 3)


POD_WRITES_PER_ATTEMPT = 2.0
"""What the container executor may add to an attempt's API writes: one Pod create and one
Pod delete (C1: one Pod per attempt; ``TANDEM_POD_KEEP_SECONDS=0`` deletes it as soon as
its result is read). The result reaches the run through the same outcome and status write
as a simulated node's, so the status writes per attempt should not change."""


def container_extra_writes(results: Mapping[str, Any]) -> float | None:
    """API writes per container attempt minus those per simulated attempt of the same flow,
    both measured in the container scenario."""
    container = _get(results, "containers", "container", "api_writes_per_attempt")
    simulated = _get(results, "containers", "simulated", "api_writes_per_attempt")
    if container is None or simulated is None:
        return None
    return round(float(container) - float(simulated), 3)


def evaluate_goals(results: Mapping[str, Any]) -> list[Goal]:
    """The project's performance goals checked against one results document."""
    transitions = _get(results, "throughput", "transitions_per_run")
    writes = _get(results, "throughput", "writes_per_run")
    writes_over = None if writes is None or transitions is None else writes - transitions
    return [
        at_most(
            "operator CPU per run / kube-apiserver CPU per run (throughput)",
            cpu_ratio(results),
            0.4,
            unit="x",
        ),
        at_least(
            "throughput in status writes / raw PATCH writes",
            write_share(results),
            0.5,
            unit="x",
        ),
        at_least(
            "restart recovery throughput / raw PATCH throughput",
            _get(results, "recovery", "ratio_to_raw_patch"),
            0.60,
            unit="x",
        ),
        at_most(
            "status writes per recovered run",
            _get(results, "recovery", "writes_per_recovered_run"),
            1.0,
            unit="writes",
        ),
        at_most(
            "create → first status p99 / raw round trip p99",
            _get(results, "latency", "create_to_status", "ratio_p99_to_raw"),
            1.5,
            unit="x",
        ),
        at_most(
            "gate decision → Running p99 / raw round trip p99",
            _get(results, "latency", "gate_to_running", "ratio_p99_to_raw"),
            1.5,
            unit="x",
        ),
        at_most(
            "status writes per run - lifecycle transitions per run",
            None if writes_over is None else round(writes_over, 3),
            1.0,
            unit="writes",
        ),
        at_most(
            "RSS per tracked run at rest",
            _get(results, "at_rest", "rss_bytes_per_run"),
            25 * 1024,
            unit="bytes",
        ),
        at_most(
            "operator CPU at rest",
            _get(results, "at_rest", "cpu_share_of_core"),
            0.05,
            unit="cores",
        ),
        at_least(
            "end-to-end throughput",
            _get(results, "throughput", "runs_per_minute"),
            1000,
            unit="runs/min",
        ),
        exactly(
            "Pods created per container attempt",
            _get(results, "containers", "container", "pods_created_per_attempt"),
            1.0,
            unit="pods",
        ),
        at_most(
            "API writes per container attempt - per simulated attempt",
            container_extra_writes(results),
            POD_WRITES_PER_ATTEMPT,
            unit="writes",
        ),
    ]
