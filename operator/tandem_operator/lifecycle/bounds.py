"""Size bounds: a run's status stays far below etcd's object limit however long it lives.

A run of up to 100 nodes stays under 256 KiB (etcd refuses objects over 1.5 MiB, and every
write is sent to every watcher): node outputs share ``OUTPUTS_BUDGET_BYTES`` (a cut output
becomes a marker with ``truncated`` and ``original_bytes``), verdicts keep the newest
``MAX_VERDICTS`` per node, the lifecycle history keeps the newest records within a count and
``HISTORY_BUDGET_BYTES`` while ``counters.lifecycleRecords`` counts them all, and reasons
copied from the spec are clipped to ``MAX_REASON_CHARS``. The automation snapshot is the
flow as written, so its size is the user's: the CRD's length limits keep it reasonable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tandem_operator.api.models import LifecycleRecord
from tandem_operator.lifecycle.retry import MAX_TRANSIENT_RETRIES

MAX_OUTPUT_BYTES = 16 * 1024
"""Largest node output kept in status, whatever the size of the flow."""


MIN_OUTPUT_BYTES = 1024
"""Smallest per-node output cap: even a 100-node flow keeps small outputs whole."""


OUTPUTS_BUDGET_BYTES = 100 * 1024
"""What all node outputs of one run may take together; the per-node cap is this divided by
the number of nodes (see :func:`output_limit`)."""


MAX_VERDICTS = MAX_TRANSIENT_RETRIES + 1
"""Verdicts kept per node in ``nodeAttemptVerdicts`` (newest last): the latest attempt's
whole story, its transient errors in a row (which the back-off counts) and its verdict."""


MAX_VERDICT_ERROR_CHARS = 256
"""An executor error quoted in a verdict is cut to this length."""


HISTORY_BUDGET_BYTES = 48 * 1024
"""``lifecycleHistory`` keeps the newest records that fit in this many bytes (and at most
``TANDEM_LIFECYCLE_HISTORY_LIMIT`` of them); ``counters.lifecycleRecords`` counts them all."""


MAX_USAGE_TOKENS = 2**53 - 1
"""A run's token totals stop growing here (outcomes count at most ``MAX_TOKEN_COUNT`` each):
the largest integer every JSON reader keeps exact, far below the API server's 64-bit
limit, so a status write is never refused for its usage."""


MAX_REASON_CHARS = 1024
"""A reason copied into a lifecycle record or a gateHistory entry is cut to this length."""


def output_limit(node_count: int) -> int:
    """Per-node cap on a stored output: the run's output budget shared by its nodes.

    ``OUTPUTS_BUDGET_BYTES // node_count`` within [``MIN_OUTPUT_BYTES``,
    ``MAX_OUTPUT_BYTES``]: a 3-node flow keeps outputs up to 16 KiB each, a 100-node flow
    1 KiB each, so a run's outputs stay near 100 KiB and its status far below etcd's limit.
    """
    share = OUTPUTS_BUDGET_BYTES // max(1, node_count)
    return max(MIN_OUTPUT_BYTES, min(MAX_OUTPUT_BYTES, share))


def cap_output(output: Mapping[str, Any], *, limit: int = MAX_OUTPUT_BYTES) -> dict[str, Any]:
    """An output over ``limit`` bytes (compact JSON) is replaced by a marker.

    The marker keeps what the lifecycle reads (``status``, ``blocker_category``) and a
    validated ``artifact`` reference when it fits, and says what was dropped:
    ``truncated: true`` and ``original_bytes``.
    """
    data = dict(output)
    encoded = _encoded_size(data)
    if encoded <= limit:
        return data
    kept: dict[str, Any] = {k: data[k] for k in ("status", "blocker_category") if k in data}
    kept["truncated"] = True
    kept["original_bytes"] = encoded
    artifact = data.get("artifact")
    if artifact is not None and _encoded_size({**kept, "artifact": artifact}) <= limit:
        kept["artifact"] = artifact
    return kept


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: max(0, limit - 3)] + "..."


def _encoded_size(value: Any) -> int:
    return len(json.dumps(value, default=str, separators=(",", ":")))


def _record_size(record: LifecycleRecord) -> int:
    """The bytes a lifecycle record takes in status, near enough for a budget."""
    size = 64 + len(record.event) + len(record.recorded_at) + len(record.reason or "")
    if record.stop_kind:
        size += 12 + len(record.stop_kind)
    if record.metadata:
        # repr is close to the JSON length and much cheaper than json.dumps.
        size += 12 + len(repr(record.metadata))
    return size


def trim_history(history: list[LifecycleRecord], *, limit: int) -> None:
    """Keep the newest ``limit`` records that fit in ``HISTORY_BUDGET_BYTES`` (at least one)."""
    if len(history) > limit:
        del history[:-limit]
    total = 0
    for index in range(len(history) - 1, -1, -1):
        total += _record_size(history[index])
        if total > HISTORY_BUDGET_BYTES and index < len(history) - 1:
            del history[: index + 1]
            return
