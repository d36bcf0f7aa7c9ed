"""Run an attempt by POSTing it to an agent endpoint and reading an NDJSON event stream.

Wire protocol (one HTTP request per attempt)::

    POST <url>
    Authorization: Bearer <token>          (only when a token is configured)
    Content-Type: application/json
    {"run": {"namespace": ..., "name": ..., "uid": ...}, "node": ..., "attempt": n,
     "objective": ..., "inputs": {...}, "runtimeContext": {...}, "agent": {...}}

    200, body = newline-delimited JSON objects, each with a string "type":
    {"type": "activity"}
    {"type": "usage", "promptTokens": n, "completionTokens": n}
    {"type": "result", "status": "completed|needs_repair|failed|blocked", "output": {...}}

Every received line, whatever its type (blank keep-alive lines and unknown types included,
so agents can add event types without breaking older operators), counts as activity.
Usage lines are increments; they are forwarded to the callback and summed into the result.
The first ``result`` line ends the attempt; the connection is then released.

Error mapping (see :mod:`tandem_operator.execution.types` for what the caller does):

* :class:`TransientExecutorError` - connection refused/reset, the stream ends or breaks
  before a result, no bytes/lines for ``timeout_seconds`` (connect, headers, or between
  lines), HTTP 5xx or 429, a line that is not a JSON object with a string ``type`` or a
  usage line with bad counts.
* :class:`ExecutorConfigError` - other non-2xx statuses (401, 404, 3xx: redirects are not
  followed, so a token is never replayed to another host), an unknown result status, a
  result whose output is not an object, a line over :data:`MAX_LINE_BYTES`, an output over
  :data:`MAX_OUTPUT_BYTES`, an invalid URL/timeout or a request that is not JSON-encodable.

Idle timeout: ``timeout_seconds`` bounds connecting and each gap between complete lines (an
``asyncio.timeout`` per line on top of aiohttp's per-read ``sock_read``, so an agent
trickling bytes without ever finishing a line is caught too).  There is deliberately no
total timeout: long agent runs are fine as long as they keep talking.

Memory is bounded: lines are split by hand from ``readany()`` chunks instead of
``StreamReader.readline()`` so a line is rejected as soon as it grows past the limit, and
the result output is re-measured after parsing.

Cancellation: any exception leaving the read loop, :class:`asyncio.CancelledError`
included, closes the response's connection outright instead of returning it to the pool,
so the agent sees the disconnect immediately and can stop work.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
from yarl import URL

from tandem_operator.execution.types import (
    MAX_TOKEN_COUNT,
    RESULT_STATUSES,
    AttemptRequest,
    AttemptResult,
    ExecutorActivity,
    ExecutorConfigError,
    TransientExecutorError,
)

__all__ = ["MAX_ERROR_BODY_BYTES", "MAX_LINE_BYTES", "MAX_OUTPUT_BYTES", "AgentEndpointExecutor"]

MAX_LINE_BYTES: Final[int] = 1024 * 1024
"""Longest accepted NDJSON line (excluding the newline)."""

MAX_OUTPUT_BYTES: Final[int] = 256 * 1024
"""Largest accepted result output, measured as compact JSON.  Outputs are stored on the run
and fed to downstream nodes, so they must stay well under the API server's object limit."""

MAX_ERROR_BODY_BYTES: Final[int] = 2048
"""How much of a non-2xx response body is quoted in the error message."""

_NDJSON: Final[str] = "application/x-ndjson"


class _LineReader:
    """Splits a byte stream into lines, refusing to buffer a line longer than ``max_line``."""

    def __init__(self, content: aiohttp.StreamReader, *, max_line: int) -> None:
        self._content = content
        self._max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already known to hold no newline
        self._eof = False

    async def readline(self) -> bytes | None:
        """The next line without its newline; a final unterminated line counts; None at EOF."""
        while True:
            newline = self._buf.find(b"\n", self._scanned)
            if newline >= 0:
                if newline > self._max_line:
                    raise _line_too_long(self._max_line)
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                self._scanned = 0
                return line
            if len(self._buf) > self._max_line:
                raise _line_too_long(self._max_line)
            self._scanned = len(self._buf)
            if self._eof:
                if not self._buf:
                    return None
                line = bytes(self._buf)
                self._buf.clear()
                self._scanned = 0
                return line
            chunk = await self._content.readany()
            if chunk:
                self._buf += chunk
            else:
                self._eof = True


def _line_too_long(limit: int) -> ExecutorConfigError:
    return ExecutorConfigError(f"agent sent an NDJSON line longer than {limit} bytes")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not valid JSON")


def _json_default(value: object) -> Any:
    # Request fields are Mappings (possibly read-only views); json only knows dict.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _token_count(event: Mapping[str, Any], key: str) -> int:
    value = event.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_COUNT:
        raise TransientExecutorError(
            f"malformed usage line: {key} must be an integer from 0 to {MAX_TOKEN_COUNT}, "
            f"got {_shown(value)}"
        )
    return value


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class AgentEndpointExecutor:
    """Executor that delegates an attempt to an HTTP agent endpoint (see module docstring).

    The ``session`` is owned by the caller and shared between attempts; this class never
    closes it.  The ``token``, if any, is sent only to ``url`` (redirects are refused).
    """

    def __init__(
        self,
        *,
        url: str,
        token: str | None,
        timeout_seconds: float,
        session: aiohttp.ClientSession,
    ) -> None:
        self._url = url
        self._token = token
        self._timeout_seconds = timeout_seconds
        self._session = session

    async def run(self, request: AttemptRequest, activity: ExecutorActivity) -> AttemptResult:
        """POST the attempt and follow the event stream until its result line."""
        url = self._checked_url()
        timeout = self._checked_timeout()
        body = self._encode(request)
        headers = {"Content-Type": "application/json", "Accept": _NDJSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        where = self._display_url(url)
        try:
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout,
                    sock_connect=timeout,
                    sock_read=timeout,
                ),
                allow_redirects=False,
            ) as response:
                try:
                    return await self._consume(
                        response, activity, idle_seconds=timeout, where=where
                    )
                except BaseException:
                    # Never hand a half-read stream back to the pool: close the socket so
                    # the agent notices at once (this is also the cancellation path).
                    response.close()
                    raise
        except (TransientExecutorError, ExecutorConfigError):
            raise
        except TimeoutError as exc:
            raise TransientExecutorError(
                f"agent endpoint {where}: no data for {timeout:g}s"
            ) from exc
        except aiohttp.InvalidURL as exc:
            raise ExecutorConfigError(f"agent endpoint URL is invalid: {exc}") from exc
        except aiohttp.ClientPayloadError as exc:
            raise TransientExecutorError(
                f"agent endpoint {where}: stream broken before a result ({exc})"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            raise TransientExecutorError(f"agent endpoint {where}: {detail}") from exc

    async def _consume(
        self,
        response: aiohttp.ClientResponse,
        activity: ExecutorActivity,
        *,
        idle_seconds: float,
        where: str,
    ) -> AttemptResult:
        if not 200 <= response.status < 300:
            await _raise_for_status(response, idle_seconds=idle_seconds, where=where)
        reader = _LineReader(response.content, max_line=MAX_LINE_BYTES)
        prompt_tokens = 0
        completion_tokens = 0
        while True:
            async with asyncio.timeout(idle_seconds):
                line = await reader.readline()
            if line is None:
                raise TransientExecutorError(
                    f"agent endpoint {where}: stream ended without a result line"
                )
            activity.activity()
            event = _parse_line(line)
            if event is None:
                continue
            kind = event["type"]
            if kind == "usage":
                prompt = _token_count(event, "promptTokens")
                completion = _token_count(event, "completionTokens")
                prompt_tokens += prompt
                completion_tokens += completion
                activity.usage(prompt, completion)
            elif kind == "result":
                status, output = _parse_result(event)
                return AttemptResult(
                    status=status,
                    output=output,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
            # "activity" and unknown types: liveness only, already reported.

    def _checked_url(self) -> URL:
        try:
            url = URL(self._url)
        except (TypeError, ValueError) as exc:
            raise ExecutorConfigError(
                f"agent endpoint URL {self._url!r} is invalid: {exc}"
            ) from exc
        if url.scheme not in ("http", "https") or not url.host:
            shown = self._display_url(url)
            raise ExecutorConfigError(
                f"agent endpoint URL must be an absolute http(s) URL, got {shown!r}"
            )
        return url

    def _checked_timeout(self) -> float:
        timeout = self._timeout_seconds
        if isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
            raise ExecutorConfigError(f"agent endpoint timeout must be > 0 seconds, got {timeout}")
        return float(timeout)

    @staticmethod
    def _display_url(url: URL) -> str:
        # Error messages end up in the run's status: keep credentials and query out of them.
        try:
            return str(url.with_user(None).with_query(None).with_fragment(None))
        except (TypeError, ValueError):
            return "<invalid url>"

    @staticmethod
    def _encode(request: AttemptRequest) -> bytes:
        return encode_request(request)


def encode_request(request: AttemptRequest) -> bytes:
    """The §6 request body of ``request`` as compact JSON (the container executor's
    ``TANDEM_ATTEMPT`` too); ``ExecutorConfigError`` when it cannot be encoded."""
    body = {
        "run": {
            "namespace": request.run_namespace,
            "name": request.run_name,
            "uid": request.run_uid,
        },
        "node": request.node_id,
        "attempt": request.attempt,
        "objective": request.objective,
        "inputs": request.inputs,
        "runtimeContext": request.runtime_context,
        "agent": request.agent,
    }
    try:
        text = json.dumps(body, default=_json_default, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ExecutorConfigError(f"attempt request is not JSON-encodable: {exc}") from exc
    return text.encode("utf-8")


async def _raise_for_status(
    response: aiohttp.ClientResponse, *, idle_seconds: float, where: str
) -> None:
    """Turn a non-2xx answer into the right exception, quoting the start of its body."""
    try:
        async with asyncio.timeout(idle_seconds):
            raw = await response.content.read(MAX_ERROR_BODY_BYTES)
    except (TimeoutError, aiohttp.ClientError, OSError):
        raw = b""
    snippet = " ".join(raw.decode("utf-8", errors="replace").split())
    message = f"agent endpoint {where} answered HTTP {response.status}"
    if response.reason:
        message += f" {response.reason}"
    if snippet:
        message += f": {snippet}"
    if response.status == 429 or response.status >= 500:
        raise TransientExecutorError(message)
    raise ExecutorConfigError(message)


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """Decode one NDJSON line; None for a blank keep-alive line."""
    text = line.strip()
    if not text:
        return None
    try:
        event = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TransientExecutorError(f"malformed NDJSON line from agent: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise TransientExecutorError(
            "malformed NDJSON line from agent: expected an object with a string 'type'"
        )
    return event


def _parse_result(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    status = event.get("status")
    if not isinstance(status, str) or status not in RESULT_STATUSES:
        allowed = ", ".join(sorted(RESULT_STATUSES))
        raise ExecutorConfigError(
            f"agent reported unknown result status {status!r} (expected one of {allowed})"
        )
    output = event.get("output", {})
    if not isinstance(output, dict):
        raise ExecutorConfigError(
            f"agent result output must be a JSON object, got {type(output).__name__}"
        )
    size = len(json.dumps(output, separators=(",", ":")).encode("utf-8"))
    if size > MAX_OUTPUT_BYTES:
        raise ExecutorConfigError(
            f"agent result output is {size} bytes, over the {MAX_OUTPUT_BYTES}-byte limit"
        )
    return status, {**output, "status": status}
