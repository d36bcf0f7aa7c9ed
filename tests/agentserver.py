"""A real, scriptable agent endpoint for tests: aiohttp on 127.0.0.1, in a background thread.

The operator's :class:`~tandem_operator.execution.http.AgentEndpointExecutor` POSTs one
request per attempt and reads an NDJSON stream back.  This module serves that protocol for
real (sockets, chunked encoding, disconnects) so executor unit tests and the operator
integration tests (where the operator is another process) exercise the same code paths as
production, with no HTTP mocking.

Usage::

    with AgentServer() as server:             # or server.start() / server.stop()
        server.script(node="collect", steps=[Activity(count=3, delay=0.05),
                                             Usage(prompt_tokens=7, completion_tokens=2),
                                             Result(status="needs_repair")])
        server.script(objective="flaky", steps=[HttpStatus(503)], times=2)
        ... point the executor / the flow's agent endpoint at server.url ...
        assert server.max_in_flight <= 2
        assert server.disconnects[0].node == "collect"

Design:

* **Threaded, own loop.**  The server runs its own event loop in a daemon thread, so it
  serves equally well to code on the test's loop (``asyncio.run`` in a test) and to another
  process.  All shared state sits behind one :class:`threading.Lock`; the public
  properties return snapshots.
* **Scripts are rules matched in registration order.**  A rule matches on ``node``
  (exact), ``objective`` (substring) and ``attempt`` (exact); unset criteria match anything.
  ``times`` limits how many requests a rule answers, which makes "fail twice, then succeed"
  a two-line script.  Requests no rule matches get the default: one activity line, usage
  10/5, and ``completed`` with ``{"status": "completed", "summary": "<node> done"}``.
* **Steps are small frozen dataclasses** played in order: :class:`Activity`,
  :class:`Usage`, :class:`Result`, :class:`Raw` (arbitrary bytes: malformed or huge
  lines), :class:`Sleep`, :class:`Stall` (hold the connection open, silent, until the
  client goes away or the server stops), :class:`Drop` (abort the TCP connection
  mid-stream) and :class:`HttpStatus` (a plain non-streaming answer such as 500 or 401).
  The 200 NDJSON response is started lazily by the first step that writes, so
  ``[Sleep(1), HttpStatus(500)]`` is a slow 500 and ``[Stall()]`` stalls before headers.
* **Everything is recorded**: each request (parsed body, lower-cased headers, wall and
  monotonic receive time), each client disconnect that happens while a handler is still
  running (the handler is cancelled by aiohttp's ``handler_cancellation``), and the number
  of requests in flight with the maximum ever seen, for parallelism-limit checks.
* **Bearer auth** is optional (``token=`` or :meth:`AgentServer.require_token`); requests
  are recorded before the check so tests can inspect rejected ones too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "Activity",
    "AgentServer",
    "Drop",
    "HttpStatus",
    "Raw",
    "RecordedDisconnect",
    "RecordedRequest",
    "Result",
    "Sleep",
    "Stall",
    "Step",
    "Usage",
    "default_steps",
]


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Activity:
    """``count`` activity lines, each preceded by ``delay`` seconds of silence."""

    count: int = 1
    delay: float = 0.0


@dataclass(frozen=True)
class Usage:
    """One usage line (after ``delay`` seconds)."""

    prompt_tokens: int
    completion_tokens: int
    delay: float = 0.0


@dataclass(frozen=True)
class Result:
    """The result line.  ``output=None`` means ``{"status": status, "summary": "<node> done"}``.

    ``status`` is sent verbatim (any string), so unknown statuses can be tested.
    """

    status: str = "completed"
    output: Mapping[str, Any] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Raw:
    """Arbitrary bytes written to the stream as-is (no newline added)."""

    data: bytes
    delay: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """Silence for ``seconds`` (does not start the response)."""

    seconds: float


@dataclass(frozen=True)
class Stall:
    """Send nothing more and keep the connection open until the client leaves."""


@dataclass(frozen=True)
class Drop:
    """Abort the TCP connection (``delay`` seconds after the previous step)."""

    delay: float = 0.05


@dataclass(frozen=True)
class HttpStatus:
    """Answer with a plain HTTP status instead of a stream; must precede writing steps."""

    status: int = 500
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


Step = Activity | Usage | Result | Raw | Sleep | Stall | Drop | HttpStatus

_WRITING = (Activity, Usage, Result, Raw)


def default_steps() -> list[Step]:
    """What an unscripted request gets: quick ``completed`` with usage 10/5."""
    return [Activity(), Usage(prompt_tokens=10, completion_tokens=5), Result()]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RecordedRequest:
    """One POST as received (before auth checks)."""

    seq: int
    path: str
    body: Any
    """Parsed JSON body, or the raw text if it was not JSON."""
    headers: Mapping[str, str]
    """Header names lower-cased."""
    received_at: float
    """``time.time()`` on arrival."""
    monotonic: float
    """``time.monotonic()`` on arrival (same clock in every thread of this process)."""

    @property
    def node(self) -> str | None:
        value = self.body.get("node") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def attempt(self) -> int | None:
        value = self.body.get("attempt") if isinstance(self.body, dict) else None
        return value if isinstance(value, int) else None

    @property
    def objective(self) -> str:
        value = self.body.get("objective") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class RecordedDisconnect:
    """The client went away while the handler for request ``seq`` was still running."""

    seq: int
    node: str | None
    attempt: int | None
    step: str
    """Name of the step being played (e.g. ``"Stall"``), or ``"body"`` / ``"done"``."""
    at: float
    monotonic: float


@dataclass
class _Rule:
    steps: tuple[Step, ...]
    node: str | None
    objective: str | None
    attempt: int | None
    remaining: int | None

    def matches(self, request: RecordedRequest) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.node is not None and request.node != self.node:
            return False
        if self.objective is not None and self.objective not in request.objective:
            return False
        return self.attempt is None or request.attempt == self.attempt


class _Dropped(Exception):
    """Internal: the script aborted the connection on purpose."""


# --------------------------------------------------------------------------- server


class AgentServer:
    """A scriptable NDJSON agent endpoint on ``host`` (default 127.0.0.1), any free port."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._token = token
        self._rules: list[_Rule] = []
        self._requests: list[RecordedRequest] = []
        self._disconnects: list[RecordedDisconnect] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # ---- lifecycle

    def start(self) -> AgentServer:
        """Start serving; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("AgentServer already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name="agentserver", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("AgentServer did not start within 10s")
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError("AgentServer failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Stop serving: stalled handlers are released, open connections closed."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10)
        if thread.is_alive():
            raise RuntimeError("AgentServer thread did not stop within 10s")
        self._thread = None

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("AgentServer not started")
        return self._port

    @property
    def url(self) -> str:
        """The endpoint URL (any path is served; this one is conventional)."""
        return f"http://{self._host}:{self.port}/v1/attempts"

    # ---- scripting

    def script(
        self,
        *,
        steps: Sequence[Step],
        node: str | None = None,
        objective: str | None = None,
        attempt: int | None = None,
        times: int | None = None,
    ) -> None:
        """Add a rule: requests matching all given criteria play ``steps``.

        ``node`` must equal the request's node, ``objective`` must be a substring of its
        objective, ``attempt`` must equal its attempt.  Rules are tried in the order they
        were added; ``times`` caps how many requests a rule answers (None = unlimited).
        """
        steps = tuple(steps)
        seen_writer = False
        for index, step in enumerate(steps):
            if isinstance(step, _WRITING):
                seen_writer = True
            if isinstance(step, HttpStatus):
                if seen_writer:
                    raise ValueError("HttpStatus must come before any step that writes")
                if index != len(steps) - 1:
                    raise ValueError("HttpStatus ends the script; nothing may follow it")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._rules.append(
                _Rule(steps=steps, node=node, objective=objective, attempt=attempt, remaining=times)
            )

    def require_token(self, token: str | None) -> None:
        """Demand ``Authorization: Bearer <token>`` (None: no auth)."""
        with self._lock:
            self._token = token

    def clear_scripts(self) -> None:
        with self._lock:
            self._rules.clear()

    def clear_records(self) -> None:
        with self._lock:
            self._requests.clear()
            self._disconnects.clear()
            self._max_in_flight = self._in_flight

    def reset(self) -> None:
        """Forget scripts, records and the token requirement."""
        with self._lock:
            self._rules.clear()
            self._token = None
        self.clear_records()

    # ---- observations

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, node: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.node == node]

    @property
    def disconnects(self) -> list[RecordedDisconnect]:
        with self._lock:
            return list(self._disconnects)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> bool:
        """Poll ``predicate`` for up to ``within`` seconds (blocking); True once it holds."""
        deadline = time.monotonic() + within
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    async def wait_until_async(self, predicate: Callable[[], bool], within: float = 5.0) -> bool:
        """Like :meth:`wait_until` but yields to the caller's event loop while polling."""
        deadline = time.monotonic() + within
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)

    # ---- server internals (run on the server thread)

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    def _pick_steps(self, request: RecordedRequest) -> tuple[Step, ...]:
        with self._lock:
            for rule in self._rules:
                if rule.matches(request):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                    return rule.steps
        return tuple(default_steps())

    async def _handle(self, http_request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        step_name = "body"
        record: RecordedRequest | None = None
        try:
            raw = await http_request.read()
            text = raw.decode("utf-8", errors="replace")
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            with self._lock:
                record = RecordedRequest(
                    seq=len(self._requests),
                    path=http_request.path,
                    body=body,
                    headers={k.lower(): v for k, v in http_request.headers.items()},
                    received_at=time.time(),
                    monotonic=time.monotonic(),
                )
                self._requests.append(record)
                token = self._token
            if token is not None and record.headers.get("authorization") != f"Bearer {token}":
                return web.Response(
                    status=401,
                    text="missing or wrong bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if not isinstance(body, dict):
                return web.Response(status=400, text="body must be a JSON object")
            response: web.StreamResponse | None = None
            for step in self._pick_steps(record):
                step_name = type(step).__name__
                if isinstance(step, HttpStatus):
                    return web.Response(
                        status=step.status, text=step.body, headers=dict(step.headers)
                    )
                if isinstance(step, Sleep | Stall | Drop):
                    if isinstance(step, Sleep):
                        await self._pause(step.seconds)
                    elif isinstance(step, Stall):
                        assert self._stopping is not None
                        await self._stopping.wait()
                        raise _Dropped  # server stopping: just hang up
                    else:
                        await self._pause(step.delay)
                        raise _Dropped
                    continue
                if response is None:
                    response = web.StreamResponse(
                        status=200, headers={"Content-Type": "application/x-ndjson"}
                    )
                    await response.prepare(http_request)
                for data in self._lines(step, record):
                    await self._pause(step.delay)
                    await response.write(data)
            step_name = "done"
            if response is None:  # empty script: an empty 200 stream
                response = web.StreamResponse(
                    status=200, headers={"Content-Type": "application/x-ndjson"}
                )
                await response.prepare(http_request)
            await response.write_eof()
            return response
        except _Dropped:
            transport = http_request.transport
            if transport is not None:
                transport.abort()
            raise asyncio.CancelledError from None
        except (asyncio.CancelledError, ConnectionError):
            stopping = self._stopping is not None and self._stopping.is_set()
            # "done": the whole script reached the client, which may hang up before the
            # final chunk is written; that is a normal end, not a disconnect.
            if not stopping and step_name != "done":
                with self._lock:
                    self._disconnects.append(
                        RecordedDisconnect(
                            seq=record.seq if record else -1,
                            node=record.node if record else None,
                            attempt=record.attempt if record else None,
                            step=step_name,
                            at=time.time(),
                            monotonic=time.monotonic(),
                        )
                    )
            raise asyncio.CancelledError from None
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    @staticmethod
    def _lines(step: Step, record: RecordedRequest) -> list[bytes]:
        def line(obj: Mapping[str, Any]) -> bytes:
            return json.dumps(obj).encode("utf-8") + b"\n"

        if isinstance(step, Activity):
            return [line({"type": "activity"}) for _ in range(step.count)]
        if isinstance(step, Usage):
            return [
                line(
                    {
                        "type": "usage",
                        "promptTokens": step.prompt_tokens,
                        "completionTokens": step.completion_tokens,
                    }
                )
            ]
        if isinstance(step, Result):
            output = (
                dict(step.output)
                if step.output is not None
                else {"status": step.status, "summary": f"{record.node} done"}
            )
            return [line({"type": "result", "status": step.status, "output": output})]
        if isinstance(step, Raw):
            return [step.data]
        raise AssertionError(f"not a writing step: {step!r}")


def main() -> None:
    """Serve the default behaviour on a fixed port for manual poking: ``python agentserver.py``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token")
    args = parser.parse_args()
    with AgentServer(host=args.host, port=args.port, token=args.token) as server:
        print(f"agent server listening on {server.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
