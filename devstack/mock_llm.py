"""An OpenAI-compatible chat completions server that streams scripted answers at a chosen pace.

Stdlib only, so tests and the local stack start it in milliseconds; a ``#mock ...`` line in the
last user message scripts its behaviour (devstack.mock_directive).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .mock_directive import Directive, DirectiveError
from .mock_http import POLL_SECONDS, ClientGone, Server, ServerStopping, StreamingHandler
from .mock_openai import MODELS, UNAUTHORIZED, Answer, Refusal, answer_for, error_body

__all__ = ["Directive", "DirectiveError", "MockLLM", "RecordedRequest"]

T = TypeVar("T")


@dataclass
class RecordedRequest:
    """One chat completions request as the server saw it. Times are ``time.monotonic()`` values.

    For streamed requests ``tokens_sent`` and ``token_times`` count content deltas written to the
    socket (``reasoning_sent`` the reasoning deltas before them); for non-streamed ones, tokens
    generated before the single response was written.
    Each field changes just after the bytes leave, so a client may see them first: use
    ``MockLLM.wait_for`` rather than reading a record the moment a response ends.
    """

    body: dict[str, Any]
    headers: dict[str, str]
    started_at: float
    status: int = 200
    tokens_sent: int = 0
    reasoning_sent: int = 0
    completed: bool = False  # the whole answer went out: finish_reason (and [DONE] when streamed)
    client_closed: bool = False  # the client went away before the answer was complete
    first_token_at: float | None = None
    finished_at: float | None = None
    token_times: list[float] = field(default_factory=list)


class MockLLM:
    """The server. ``with MockLLM() as mock:`` serves on a free port until the block ends."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, log: bool = False) -> None:
        self.host = host
        self.port = port
        self.log = log
        self._changed = threading.Condition(threading.RLock())
        self._requests: list[RecordedRequest] = []
        self._status_hits: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MockLLM:
        if self._server is not None:
            raise RuntimeError("MockLLM is already running")
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"mock-llm:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and end every open connection, stalled streams included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._changed:
            self._changed.notify_all()

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("start() the MockLLM before asking for its URL")
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------------ observability

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat completions requests so far, oldest first. The records update live."""
        with self._changed:
            return list(self._requests)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Block until ``predicate()`` is truthy (re-checked on every record change) or timeout.

        Returns the predicate's last value, like ``threading.Condition.wait_for``.
        """
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def reset(self) -> None:
        """Forget recorded requests and ``status_times`` counts (for a server shared by tests)."""
        with self._changed:
            self._requests.clear()
            self._status_hits.clear()
            self._changed.notify_all()

    def _record(self, record: RecordedRequest) -> RecordedRequest:
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()
        return record

    def _update(self, record: RecordedRequest, **changes: Any) -> None:
        with self._changed:
            for name, value in changes.items():
                setattr(record, name, value)
            self._changed.notify_all()

    def _token_sent(self, record: RecordedRequest, *, reasoning: bool = False) -> None:
        now = time.monotonic()
        with self._changed:
            if reasoning:
                record.reasoning_sent += 1
                self._changed.notify_all()
                return
            record.tokens_sent += 1
            record.token_times.append(now)
            if record.first_token_at is None:
                record.first_token_at = now
            self._changed.notify_all()

    def _should_fail(self, directive: Directive, prompt: str) -> bool:
        """Whether this ``status=`` request fails, counting ``status_times`` per distinct prompt."""
        if directive.status_times is None:
            return True
        key = hashlib.sha256(f"{directive.line}\n{prompt}".encode()).hexdigest()
        with self._changed:
            self._status_hits[key] += 1
            return self._status_hits[key] <= directive.status_times


class _Server(Server):
    def __init__(self, address: tuple[str, int], mock: MockLLM) -> None:
        self.mock = mock
        super().__init__(address, _Handler)


class _Handler(StreamingHandler):
    server_version = "mock-llm/1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.mock.log:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        if self._route() != "/v1/models":
            return self._refuse(None, Refusal(404, f"Unknown request URL: GET {self.path}."))
        if not self._authorized():
            return self._refuse(None, UNAUTHORIZED)
        models = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock-llm"}
            for m in MODELS
        ]
        self._send_json(200, {"object": "list", "data": models})

    def do_POST(self) -> None:
        started_at = time.monotonic()
        raw = self._read_body()
        if self._route() != "/v1/chat/completions":
            return self._refuse(None, Refusal(404, f"Unknown request URL: POST {self.path}."))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        mock = self.server.mock
        record = mock._record(
            RecordedRequest(
                body=body if isinstance(body, dict) else {},
                headers={k.lower(): v for k, v in self.headers.items()},
                started_at=started_at,
            )
        )
        try:
            self._chat_completions(record, body)
        finally:
            mock._update(record, finished_at=time.monotonic())

    def _chat_completions(self, record: RecordedRequest, body: Any) -> None:
        if not self._authorized():
            return self._refuse(record, UNAUTHORIZED)
        answer = answer_for(body, self.server.mock._should_fail)
        if isinstance(answer, Refusal):
            return self._refuse(record, answer)
        try:
            if body.get("stream"):
                options = body.get("stream_options") or {}
                self._stream(record, answer, include_usage=bool(options.get("include_usage")))
            else:
                self._complete(record, answer)
        except ClientGone:
            self.server.mock._update(record, client_closed=True)
            self.close_connection = True
        except ServerStopping:
            self.close_connection = True

    # ------------------------------------------------------------------ answers

    def _stream(self, record: RecordedRequest, answer: Answer, include_usage: bool) -> None:
        mock, directive, start = self.server.mock, answer.directive, record.started_at
        usage_field = {"usage": None} if include_usage else {}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", answer.id)
        self._write(lambda: self.end_headers())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return answer.envelope("chat.completion.chunk", choices=[choice], **usage_field)

        role = chunk({"role": "assistant", "content": "", "refusal": None})
        deltas = answer.deltas()
        for i, (delta, reasoning) in enumerate(deltas):
            self._pause_until(directive.due(start, i))
            if i == 0:
                self._event(role)
            self._event(chunk(delta))
            mock._token_sent(record, reasoning=reasoning)
        if answer.fails:
            self._pause_until(directive.due(start, len(deltas)))
            self._event(answer.failure(), last=True)
            return
        if answer.stalls:
            self._pause_until(math.inf)  # ends only by raising: client gone or server stopping
        if not deltas:
            self._pause_until(directive.due(start, 0))
            self._event(role)
        self._event(chunk({}, answer.finish_reason))
        if include_usage:
            self._event(answer.envelope("chat.completion.chunk", choices=[], usage=answer.usage))
        self._event("[DONE]", last=True)
        mock._update(record, completed=True)

    def _complete(self, record: RecordedRequest, answer: Answer) -> None:
        mock, directive = self.server.mock, answer.directive
        deltas = answer.deltas()
        for i, (_, reasoning) in enumerate(deltas):
            self._pause_until(directive.due(record.started_at, i))
            mock._token_sent(record, reasoning=reasoning)
        if answer.fails:
            self._pause_until(directive.due(record.started_at, len(deltas)))
            return self._refuse(record, Refusal(500, answer.failure()["error"]["message"]))
        if answer.stalls:
            self._pause_until(math.inf)
        text = "".join(directive.token(i) for i in range(answer.count))
        message = {"role": "assistant", "content": text, "refusal": None}
        if directive.reasoning:
            message[directive.reasoning_field] = answer.reasoning_text
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        completion = answer.envelope("chat.completion", choices=[choice], usage=answer.usage)
        self._send_json(200, completion)
        mock._update(record, completed=True)

    # ------------------------------------------------------------------ refusals

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _refuse(self, record: RecordedRequest | None, refusal: Refusal) -> None:
        if record is not None:
            self.server.mock._update(record, status=refusal.status)
        body = error_body(refusal.status, refusal.message, refusal.code, refusal.param)
        self._send_json(refusal.status, body, refusal.headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    with MockLLM(args.host, args.port, log=not args.quiet) as mock:
        print(mock.base_url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
