"""Executors against a real HTTP agent server on 127.0.0.1 (no HTTP mocks), plus simulation.

Each test gets its own :class:`tests.agentserver.AgentServer` (a thread with its own loop)
and drives the executor with ``asyncio.run`` on the test's thread, so both sides of every
exchange run real sockets.  Timing assertions are only the generous upper bounds that prove
a timeout or a cancellation actually ended the wait.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

# tests/ holds the shared agent server; it is not a package, so make it importable here
# whatever pytest's import mode (prepend mode with tests/conftest.py already does this).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agentserver import (
    Activity,
    AgentServer,
    Drop,
    HttpStatus,
    Raw,
    Result,
    Sleep,
    Stall,
    Usage,
)
from tandem_operator.execution.http import (
    MAX_LINE_BYTES,
    MAX_OUTPUT_BYTES,
    AgentEndpointExecutor,
)
from tandem_operator.execution.simulate import SimulateExecutor
from tandem_operator.execution.types import (
    AttemptRequest,
    AttemptResult,
    ExecutorConfigError,
    TransientExecutorError,
    backoff_seconds,
)

T = TypeVar("T")

GENEROUS = 10.0  # seconds; upper bound proving something ended, never a speed claim


class Recorder:
    """An ExecutorActivity that remembers every callback."""

    def __init__(self) -> None:
        self.activities = 0
        self.usages: list[tuple[int, int]] = []

    def activity(self) -> None:
        self.activities += 1

    def usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.usages.append((prompt_tokens, completion_tokens))


def make_request(node: str = "collect", *, attempt: int = 1, **overrides: Any) -> AttemptRequest:
    fields: dict[str, Any] = {
        "run_namespace": "team-a",
        "run_name": "nightly-report",
        "run_uid": "0b6f3c1e-uid",
        "node_id": node,
        "attempt": attempt,
        "objective": f"do the {node} step",
        "inputs": {"fetch": {"status": "completed", "rows": [1, 2, 3]}},
        "runtime_context": {"locale": "en"},
        "agent": {"agentId": "writer", "displayName": "Writer"},
    }
    fields.update(overrides)
    return AttemptRequest(**fields)


@pytest.fixture
def server() -> Iterator[AgentServer]:
    with AgentServer() as srv:
        yield srv


def with_executor(
    url: str,
    body: Callable[[AgentEndpointExecutor], Awaitable[T]],
    *,
    token: str | None = None,
    timeout: float = 5.0,
) -> T:
    """Run ``body`` with a fresh session and executor on a fresh event loop."""

    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            executor = AgentEndpointExecutor(
                url=url, token=token, timeout_seconds=timeout, session=session
            )
            return await body(executor)

    return asyncio.run(main())


def run_once(
    server: AgentServer,
    request: AttemptRequest,
    recorder: Recorder | None = None,
    *,
    token: str | None = None,
    timeout: float = 5.0,
) -> AttemptResult:
    rec = recorder if recorder is not None else Recorder()
    return with_executor(server.url, lambda ex: ex.run(request, rec), token=token, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- HTTP: results


def test_completed_sums_usage_and_reports_every_line(server: AgentServer) -> None:
    server.script(
        node="collect",
        steps=[
            Activity(count=2, delay=0.01),
            Usage(prompt_tokens=3, completion_tokens=1),
            Usage(prompt_tokens=4, completion_tokens=2),
            Result(status="completed", output={"summary": "ok", "rows": [1, 2]}),
        ],
    )
    recorder = Recorder()
    result = run_once(server, make_request("collect"), recorder)

    assert result.status == "completed"
    assert result.output == {"summary": "ok", "rows": [1, 2], "status": "completed"}
    assert (result.prompt_tokens, result.completion_tokens) == (7, 3)
    assert recorder.usages == [(3, 1), (4, 2)]
    assert recorder.activities == 5  # 2 activity + 2 usage + 1 result lines


@pytest.mark.parametrize("status", ["needs_repair", "failed", "blocked"])
def test_agent_reported_outcomes_are_results_not_errors(server: AgentServer, status: str) -> None:
    server.script(
        node="review",
        steps=[Usage(prompt_tokens=2, completion_tokens=2), Result(status=status, output={})],
    )
    result = run_once(server, make_request("review"))
    assert result.status == status
    assert result.output == {"status": status}
    assert (result.prompt_tokens, result.completion_tokens) == (2, 2)


def test_output_status_is_forced_to_the_result_status(server: AgentServer) -> None:
    server.script(node="n", steps=[Result(status="failed", output={"status": "completed"})])
    result = run_once(server, make_request("n"))
    assert result.output["status"] == "failed"


def test_unscripted_node_gets_default_completed(server: AgentServer) -> None:
    recorder = Recorder()
    result = run_once(server, make_request("summarize"), recorder)
    assert result.status == "completed"
    assert result.output == {"status": "completed", "summary": "summarize done"}
    assert (result.prompt_tokens, result.completion_tokens) == (10, 5)
    assert recorder.usages == [(10, 5)]


def test_request_body_and_headers(server: AgentServer) -> None:
    request = make_request(
        "collect",
        attempt=3,
        inputs=types.MappingProxyType({"fetch": {"status": "completed", "n": 1}}),
    )
    run_once(server, request)

    [received] = server.requests
    assert received.body == {
        "run": {"namespace": "team-a", "name": "nightly-report", "uid": "0b6f3c1e-uid"},
        "node": "collect",
        "attempt": 3,
        "objective": "do the collect step",
        "inputs": {"fetch": {"status": "completed", "n": 1}},
        "runtimeContext": {"locale": "en"},
        "agent": {"agentId": "writer", "displayName": "Writer"},
    }
    assert received.headers["content-type"] == "application/json"
    assert "authorization" not in received.headers


def test_unknown_event_types_and_blank_lines_count_as_activity(server: AgentServer) -> None:
    server.script(
        node="n",
        steps=[
            Activity(count=4),
            Raw(b"\n"),
            Raw(b'{"type": "progress", "percent": 50}\n'),
            Result(status="completed", output={"k": "v"}),
        ],
    )
    recorder = Recorder()
    result = run_once(server, make_request("n"), recorder)
    assert result.output == {"k": "v", "status": "completed"}
    assert recorder.activities == 7
    assert recorder.usages == []


def test_final_result_line_without_newline_is_accepted(server: AgentServer) -> None:
    server.script(node="n", steps=[Raw(b'{"type":"result","status":"completed","output":{"a":1}}')])
    result = run_once(server, make_request("n"))
    assert result.output == {"a": 1, "status": "completed"}


def test_lines_split_across_chunks_are_reassembled(server: AgentServer) -> None:
    server.script(
        node="n",
        steps=[
            Raw(b'{"type":"usa'),
            Raw(b'ge","promptTokens":5,', delay=0.05),
            Raw(b'"completionTokens":6}\n{"type":"result","status":"comp', delay=0.05),
            Raw(b'leted","output":{}}\n', delay=0.05),
        ],
    )
    recorder = Recorder()
    result = run_once(server, make_request("n"), recorder)
    assert (result.status, result.prompt_tokens, result.completion_tokens) == ("completed", 5, 6)
    assert recorder.activities == 2


def test_result_ends_the_attempt_even_if_the_stream_stays_open(server: AgentServer) -> None:
    server.script(node="n", steps=[Result(status="completed"), Stall()])
    started = time.monotonic()
    result = run_once(server, make_request("n"), timeout=GENEROUS)
    assert result.status == "completed"
    assert time.monotonic() - started < GENEROUS
    # The half-read response was not pooled: the server saw the connection go.
    assert server.wait_until(lambda: len(server.disconnects) == 1)
    assert server.disconnects[0].step == "Stall"


# --------------------------------------------------------------------------- HTTP: errors


def test_dropped_stream_is_transient(server: AgentServer) -> None:
    server.script(node="n", steps=[Activity(count=2), Drop()])
    recorder = Recorder()
    with pytest.raises(TransientExecutorError, match="stream broken"):
        run_once(server, make_request("n"), recorder)
    assert recorder.activities == 2


def test_drop_before_headers_is_transient(server: AgentServer) -> None:
    server.script(node="n", steps=[Drop()])
    with pytest.raises(TransientExecutorError):
        run_once(server, make_request("n"))


def test_stream_ending_without_result_is_transient(server: AgentServer) -> None:
    server.script(node="n", steps=[Activity(count=3), Usage(prompt_tokens=1, completion_tokens=1)])
    with pytest.raises(TransientExecutorError, match="without a result"):
        run_once(server, make_request("n"))


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_429_are_transient(server: AgentServer, status: int) -> None:
    server.script(node="n", steps=[HttpStatus(status, body="try later")])
    with pytest.raises(TransientExecutorError, match=f"HTTP {status}.*try later"):
        run_once(server, make_request("n"))


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_config_errors(server: AgentServer, status: int) -> None:
    server.script(node="n", steps=[HttpStatus(status)])
    with pytest.raises(ExecutorConfigError, match=f"HTTP {status}"):
        run_once(server, make_request("n"))


def test_redirects_are_refused_and_token_not_replayed(server: AgentServer) -> None:
    server.script(
        node="n", steps=[HttpStatus(307, headers={"Location": server.url + "/elsewhere"})]
    )
    with pytest.raises(ExecutorConfigError, match="HTTP 307"):
        run_once(server, make_request("n"), token="s3cret")
    assert len(server.requests) == 1


def test_bearer_token_is_sent_and_required(server: AgentServer) -> None:
    server.require_token("s3cret")

    result = run_once(server, make_request("a"), token="s3cret")
    assert result.status == "completed"
    assert server.requests[-1].headers["authorization"] == "Bearer s3cret"

    with pytest.raises(ExecutorConfigError, match="HTTP 401"):
        run_once(server, make_request("b"), token=None)
    assert "authorization" not in server.requests[-1].headers

    with pytest.raises(ExecutorConfigError, match="HTTP 401"):
        run_once(server, make_request("c"), token="wrong")
    assert len(server.requests) == 3


def test_idle_timeout_after_activity_is_transient_and_disconnects(server: AgentServer) -> None:
    server.script(node="n", steps=[Activity(), Stall()])
    recorder = Recorder()
    started = time.monotonic()
    with pytest.raises(TransientExecutorError, match=r"no data for 0\.3s"):
        run_once(server, make_request("n"), recorder, timeout=0.3)
    assert time.monotonic() - started < GENEROUS
    assert recorder.activities == 1
    assert server.wait_until(lambda: len(server.disconnects) == 1)


def test_idle_timeout_before_headers_is_transient(server: AgentServer) -> None:
    server.script(node="n", steps=[Stall()])
    with pytest.raises(TransientExecutorError, match="no data"):
        run_once(server, make_request("n"), timeout=0.3)


def test_idle_timeout_is_between_lines_not_total(server: AgentServer) -> None:
    # Twelve lines 0.1 s apart: ~1.2 s in total, but never near 1 s without a line.
    server.script(node="n", steps=[Activity(count=11, delay=0.1), Result(delay=0.1)])
    recorder = Recorder()
    result = run_once(server, make_request("n"), recorder, timeout=1.0)
    assert result.status == "completed"
    assert recorder.activities == 12


def test_trickling_bytes_without_a_line_hits_the_idle_timeout(server: AgentServer) -> None:
    # Bytes keep arriving (so a per-read socket timeout alone would never fire), but no
    # line completes within the 0.4 s idle window.
    server.script(
        node="n",
        steps=[Raw(b'{"type":'), *[Raw(b" ", delay=0.1) for _ in range(20)], Stall()],
    )
    with pytest.raises(TransientExecutorError, match=r"no data for 0\.4s"):
        run_once(server, make_request("n"), timeout=0.4)


def test_connection_refused_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/attempts"
    with pytest.raises(TransientExecutorError, match=re.escape("agent endpoint http://127.0.0.1:")):
        with_executor(url, lambda ex: ex.run(make_request(), Recorder()))


@pytest.mark.parametrize(
    "line",
    [
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b'{"kind": "activity"}\n',
        b'{"type": "usage", "promptTokens": -1, "completionTokens": 0}\n',
        b'{"type": "usage", "promptTokens": "ten", "completionTokens": 0}\n',
        b'{"type": "usage", "promptTokens": NaN, "completionTokens": 0}\n',
        # Past any real count and past the API server's 64-bit integers (a run's status
        # holding the sum could never be written).
        b'{"type": "usage", "promptTokens": 1000000000000000000000000000000, '
        b'"completionTokens": 0}\n',
        b'{"type": "usage", "promptTokens": 0, "completionTokens": 1000000000001}\n',
        b"\xff\xfe\n",
    ],
)
def test_malformed_lines_are_transient(server: AgentServer, line: bytes) -> None:
    server.script(node="n", steps=[Activity(), Raw(line), Result()])
    with pytest.raises(TransientExecutorError, match="malformed"):
        run_once(server, make_request("n"))


def test_unknown_result_status_is_config_error(server: AgentServer) -> None:
    server.script(node="n", steps=[Result(status="done", output={})])
    with pytest.raises(ExecutorConfigError, match="unknown result status 'done'"):
        run_once(server, make_request("n"))


def test_non_object_output_is_config_error(server: AgentServer) -> None:
    server.script(node="n", steps=[Raw(b'{"type":"result","status":"completed","output":[1]}\n')])
    with pytest.raises(ExecutorConfigError, match="must be a JSON object"):
        run_once(server, make_request("n"))


def test_line_over_one_mib_is_config_error(server: AgentServer) -> None:
    padding = b"x" * MAX_LINE_BYTES
    server.script(
        node="n", steps=[Raw(b'{"type":"activity","pad":"' + padding + b'"}\n'), Result()]
    )
    with pytest.raises(ExecutorConfigError, match="longer than 1048576 bytes"):
        run_once(server, make_request("n"))


def test_unterminated_line_over_one_mib_is_rejected_without_waiting_for_eof(
    server: AgentServer,
) -> None:
    server.script(node="n", steps=[Raw(b"y" * (MAX_LINE_BYTES + 10)), Stall()])
    with pytest.raises(ExecutorConfigError, match="longer than"):
        run_once(server, make_request("n"), timeout=GENEROUS)


def test_line_just_under_the_limit_is_fine(server: AgentServer) -> None:
    prefix, suffix = b'{"type":"activity","pad":"', b'"}'
    pad = b"z" * (MAX_LINE_BYTES - len(prefix) - len(suffix))
    server.script(node="n", steps=[Raw(prefix + pad + suffix + b"\n"), Result()])
    assert run_once(server, make_request("n")).status == "completed"


def test_oversized_output_is_config_error(server: AgentServer) -> None:
    big = "o" * (MAX_OUTPUT_BYTES + 1)
    server.script(node="n", steps=[Result(status="completed", output={"text": big})])
    with pytest.raises(ExecutorConfigError, match="over the 262144-byte limit"):
        run_once(server, make_request("n"))


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/x", "/relative/path"])
def test_bad_url_is_config_error(url: str) -> None:
    with pytest.raises(ExecutorConfigError, match="URL"):
        with_executor(url, lambda ex: ex.run(make_request(), Recorder()))


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_timeout_is_config_error(server: AgentServer, timeout: float) -> None:
    with pytest.raises(ExecutorConfigError, match="timeout"):
        run_once(server, make_request(), timeout=timeout)
    assert server.requests == []


def test_unencodable_request_is_config_error_and_sends_nothing(server: AgentServer) -> None:
    request = make_request(inputs={"fetch": {"when": object()}})
    with pytest.raises(ExecutorConfigError, match="not JSON-encodable"):
        run_once(server, request)
    assert server.requests == []


def test_error_messages_do_not_leak_url_credentials() -> None:
    url = f"http://user:pw@127.0.0.1:{free_port()}/v1/attempts?key=secret"
    with pytest.raises(TransientExecutorError) as info:
        with_executor(url, lambda ex: ex.run(make_request(), Recorder()))
    assert "pw" not in str(info.value)
    assert "secret" not in str(info.value)


# --------------------------------------------------------------------------- HTTP: cancellation


@pytest.mark.parametrize(
    ("steps", "expect_activity"),
    [([Activity(), Stall()], 1), ([Stall()], 0)],
    ids=["mid-stream", "before-headers"],
)
def test_cancellation_closes_the_connection(
    server: AgentServer, steps: list[Any], expect_activity: int
) -> None:
    server.script(node="n", steps=steps)
    recorder = Recorder()

    async def body(executor: AgentEndpointExecutor) -> float:
        task = asyncio.create_task(executor.run(make_request("n"), recorder))
        assert await server.wait_until_async(lambda: server.in_flight == 1)
        assert await server.wait_until_async(lambda: recorder.activities == expect_activity)
        task.cancel()
        cancelled_at = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Still inside the session: the disconnect is the executor's doing, not teardown's.
        assert await server.wait_until_async(lambda: len(server.disconnects) == 1)
        return cancelled_at

    cancelled_at = with_executor(server.url, body, timeout=GENEROUS)
    [disconnect] = server.disconnects
    assert (disconnect.node, disconnect.attempt, disconnect.step) == ("n", 1, "Stall")
    assert disconnect.monotonic - cancelled_at < GENEROUS
    assert server.wait_until(lambda: server.in_flight == 0)


def test_executor_leaves_the_shared_session_open(server: AgentServer) -> None:
    async def main() -> bool:
        async with aiohttp.ClientSession() as session:
            executor = AgentEndpointExecutor(
                url=server.url, token=None, timeout_seconds=5.0, session=session
            )
            await executor.run(make_request("a"), Recorder())
            server.script(node="b", steps=[HttpStatus(500)])
            with pytest.raises(TransientExecutorError):
                await executor.run(make_request("b"), Recorder())
            await executor.run(make_request("c"), Recorder())
            return session.closed

    assert asyncio.run(main()) is False
    assert [r.node for r in server.requests] == ["a", "b", "c"]


# --------------------------------------------------------------------------- agent server


def test_server_scripts_by_objective_and_times(server: AgentServer) -> None:
    server.script(objective="flaky", steps=[HttpStatus(503)], times=2)

    async def body(executor: AgentEndpointExecutor) -> list[str]:
        outcomes: list[str] = []
        for _ in range(3):
            try:
                result = await executor.run(make_request("x", objective="a flaky step"), Recorder())
                outcomes.append(result.status)
            except TransientExecutorError:
                outcomes.append("transient")
        return outcomes

    assert with_executor(server.url, body) == ["transient", "transient", "completed"]


def test_server_scripts_by_attempt(server: AgentServer) -> None:
    server.script(node="n", attempt=1, steps=[Result(status="needs_repair")])
    assert run_once(server, make_request("n", attempt=1)).status == "needs_repair"
    assert run_once(server, make_request("n", attempt=2)).status == "completed"


def test_server_counts_concurrent_requests(server: AgentServer) -> None:
    server.script(node="slow", steps=[Sleep(0.3), Activity(), Result()])

    async def body(executor: AgentEndpointExecutor) -> list[AttemptResult]:
        return list(
            await asyncio.gather(
                *(executor.run(make_request("slow"), Recorder()) for _ in range(3))
            )
        )

    results = with_executor(server.url, body)
    assert [r.status for r in results] == ["completed"] * 3
    assert server.max_in_flight == 3
    assert server.in_flight == 0


def test_server_rejects_invalid_scripts(server: AgentServer) -> None:
    with pytest.raises(ValueError, match="before any step"):
        server.script(node="n", steps=[Activity(), HttpStatus(500)])
    with pytest.raises(ValueError, match="nothing may follow"):
        server.script(node="n", steps=[HttpStatus(500), Activity()])


# --------------------------------------------------------------------------- simulate


def simulate(outcome: str, **overrides: Any) -> SimulateExecutor:
    params: dict[str, Any] = {
        "outcome": outcome,
        "after_seconds": 0.0,
        "output": {"summary": "simulated"},
        "prompt_tokens": 12,
        "completion_tokens": 4,
    }
    params.update(overrides)
    return SimulateExecutor(**params)


@pytest.mark.parametrize("outcome", ["completed", "needs_repair", "failed", "blocked"])
def test_simulate_outcomes(outcome: str) -> None:
    recorder = Recorder()
    result = asyncio.run(simulate(outcome).run(make_request(), recorder))
    assert result == AttemptResult(
        status=outcome,
        output={"summary": "simulated", "status": outcome},
        prompt_tokens=12,
        completion_tokens=4,
    )
    assert recorder.activities == 1
    assert recorder.usages == [(12, 4)]


def test_simulate_output_is_isolated_from_caller_and_between_results() -> None:
    source: dict[str, Any] = {"items": [1]}
    executor = simulate("completed", output=source)
    source["items"].append(2)
    first = asyncio.run(executor.run(make_request(), Recorder()))
    first.output["items"].append(3)
    second = asyncio.run(executor.run(make_request(), Recorder()))
    assert second.output == {"items": [1], "status": "completed"}


def test_simulate_sleep_is_cancellable_before_usage() -> None:
    recorder = Recorder()

    async def main() -> None:
        task = asyncio.create_task(
            simulate("completed", after_seconds=3600).run(make_request(), recorder)
        )
        await asyncio.sleep(0.05)
        assert recorder.activities == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert recorder.usages == []


def test_simulate_sleeps_after_seconds() -> None:
    started = time.monotonic()
    asyncio.run(simulate("completed", after_seconds=0.2).run(make_request(), Recorder()))
    assert time.monotonic() - started >= 0.2


def test_simulate_stall_reports_nothing_and_only_ends_by_cancellation() -> None:
    recorder = Recorder()

    async def main() -> None:
        task = asyncio.create_task(simulate("stall").run(make_request(), recorder))
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert recorder.activities == 0
    assert recorder.usages == []


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"outcome": "succeeded"}, "unknown outcome 'succeeded'"),
        ({"after_seconds": -1.0}, "afterSeconds"),
        ({"after_seconds": float("nan")}, "afterSeconds"),
        ({"prompt_tokens": -5}, "token counts"),
        ({"completion_tokens": 10**13}, "token counts"),
    ],
)
def test_simulate_bad_config_is_config_error(overrides: dict[str, Any], match: str) -> None:
    recorder = Recorder()
    executor = simulate(overrides.pop("outcome", "completed"), **overrides)
    with pytest.raises(ExecutorConfigError, match=match):
        asyncio.run(executor.run(make_request(), recorder))
    assert recorder.activities == 0


# --------------------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    ("failures", "seconds"), [(1, 2.0), (2, 5.0), (3, 8.0), (4, 8.0), (10, 8.0), (10**9, 8.0)]
)
def test_backoff_values(failures: int, seconds: float) -> None:
    assert backoff_seconds(failures) == seconds


def test_backoff_rejects_zero() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        backoff_seconds(0)


@given(st.integers(min_value=1, max_value=10_000))
def test_backoff_is_bounded_and_non_decreasing(failures: int) -> None:
    delay = backoff_seconds(failures)
    assert 2.0 <= delay <= 8.0
    assert backoff_seconds(failures + 1) >= delay
