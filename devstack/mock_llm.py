"""An OpenAI-compatible chat completions server that streams scripted answers at a chosen pace.

Stdlib only, so tests and the local stack start it in milliseconds; a ``#mock ...`` line in the
last user message scripts its behaviour (token count, pace, failures, stalls).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "mock-llm")

REPLY = (
    "Here is a short answer from the mock language model. It arrives one word at a time, "
    "at a steady pace, so you can watch the reply grow and check that nothing was lost or "
    "reordered on the way."
)
REPLY_TOKENS = tuple(f"{word} " for word in REPLY.split())
"""The reply without a directive: real English words, each token a word plus a trailing space."""

POLL_SECONDS = 0.05
"""How often a paused stream checks for a closed client or a stopping server."""

T = TypeVar("T")


class DirectiveError(ValueError):
    """A ``#mock`` line the server cannot follow; answered with HTTP 400."""


def _whole(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DirectiveError(f"#mock {key}={value!r}: expected a whole number") from None
    if number < 0:
        raise DirectiveError(f"#mock {key}={value!r}: must not be negative")
    return number


def _seconds(key: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DirectiveError(f"#mock {key}={value!r}: expected a number") from None
    if math.isnan(number) or number < 0:
        raise DirectiveError(f"#mock {key}={value!r}: must be a number >= 0")
    return number


@dataclass(frozen=True)
class Directive:
    """How to answer one request: scripted by a ``#mock`` line, or the default English reply."""

    tokens: int = 10
    rate: float = 50.0  # tokens per second; 0 or inf means as fast as possible
    first_token_delay: float = 0.2
    fail_after: int | None = None
    stall_after: int | None = None
    status: int | None = None
    status_times: int | None = None
    line: str = ""  # the #mock line as written; empty for the default reply

    KEYS: ClassVar[dict[str, Callable[[str, str], int | float]]] = {
        "tokens": _whole,
        "rate": _seconds,
        "first_token_delay": _seconds,
        "fail_after": _whole,
        "stall_after": _whole,
        "status": _whole,
        "status_times": _whole,
    }

    @classmethod
    def parse(cls, text: str) -> Directive:
        """The first ``#mock key=value ...`` line in ``text``, or the default reply without one."""
        for raw in text.splitlines():
            words = raw.split()
            if not words or words[0] != "#mock":
                continue
            values: dict[str, Any] = {}
            for word in words[1:]:
                key, sep, value = word.partition("=")
                if key not in cls.KEYS:
                    known = ", ".join(cls.KEYS)
                    raise DirectiveError(f"unknown #mock key {key!r} (known keys: {known})")
                if not sep or not value:
                    raise DirectiveError(f"#mock {key}: expected {key}=VALUE")
                values[key] = cls.KEYS[key](key, value)
            status = values.get("status")
            if status is not None and not 400 <= status <= 599:
                raise DirectiveError(f"#mock status={status}: expected an error status 400-599")
            return cls(line=raw.strip(), **values)
        return cls(tokens=len(REPLY_TOKENS), rate=40.0, first_token_delay=0.3)

    @property
    def scripted(self) -> bool:
        return bool(self.line)

    def token(self, i: int) -> str:
        return f"t{i} " if self.scripted else REPLY_TOKENS[i % len(REPLY_TOKENS)]

    def due(self, start: float, i: int) -> float:
        """When token ``i`` is due: timed from the start, so sleep overshoot never accumulates."""
        if self.rate <= 0 or math.isinf(self.rate):
            return start + self.first_token_delay
        return start + self.first_token_delay + i / self.rate


@dataclass
class RecordedRequest:
    """One chat completions request as the server saw it. Times are ``time.monotonic()`` values.

    For streamed requests ``tokens_sent`` and ``token_times`` count content deltas written to the
    socket; for non-streamed ones, tokens generated before the single response was written.
    Each field changes just after the bytes leave, so a client may see them first: use
    ``MockLLM.wait_for`` rather than reading a record the moment a response ends.
    """

    body: dict[str, Any]
    headers: dict[str, str]
    started_at: float
    status: int = 200
    tokens_sent: int = 0
    completed: bool = False  # the whole answer went out: finish_reason (and [DONE] when streamed)
    client_closed: bool = False  # the client went away before the answer was complete
    first_token_at: float | None = None
    finished_at: float | None = None
    token_times: list[float] = field(default_factory=list)


class _ClientGone(Exception):
    pass


class _ServerStopping(Exception):
    pass


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

    def _token_sent(self, record: RecordedRequest) -> None:
        now = time.monotonic()
        with self._changed:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], mock: MockLLM) -> None:
        self.mock = mock
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Handler threads are daemons blocked on their sockets; shutting the sockets wakes them.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.stopping.is_set() or isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def _prompt_tokens(messages: list[Any]) -> int:
    return sum(len(_text(m.get("content")).split()) for m in messages if isinstance(m, dict))


def _token_limit(body: dict[str, Any]) -> int | None:
    limits = []
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"Invalid '{key}': expected a non-negative integer, got {value!r}.")
        limits.append(value)
    return min(limits) if limits else None


def _error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error in the shape OpenAI uses, both as a response body and as an in-stream event."""
    if status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streaming, like the real API
    server_version = "mock-llm/1"
    disable_nagle_algorithm = True  # each SSE event leaves at once, so latency numbers are real
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.mock.log:
            super().log_message(format, *args)

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        if self._route() != "/v1/models":
            return self._send_error(None, 404, f"Unknown request URL: GET {self.path}.")
        if not self._authorized():
            return self._send_unauthorized(None)
        models = [
            {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock-llm"}
            for m in MODELS
        ]
        self._send_json(200, {"object": "list", "data": models})

    def do_POST(self) -> None:
        started_at = time.monotonic()
        raw = self._read_body()
        if self._route() != "/v1/chat/completions":
            return self._send_error(None, 404, f"Unknown request URL: POST {self.path}.")
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
            return self._send_unauthorized(record)
        if not isinstance(body, dict):
            return self._send_error(record, 400, "We could not parse the JSON body of the request.")
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            return self._send_error(
                record, 400, "You must provide a model parameter.", param="model"
            )
        if not isinstance(messages, list) or not messages:
            return self._send_error(
                record, 400, "'messages' must be a non-empty array.", param="messages"
            )
        prompt = _last_user_text(messages)
        try:
            directive = Directive.parse(prompt)
            limit = _token_limit(body)
        except ValueError as err:
            return self._send_error(record, 400, str(err), code="invalid_mock_directive")
        if directive.status is not None and self.server.mock._should_fail(directive, prompt):
            return self._send_error(
                record,
                directive.status,
                f"Mock failure requested by '#mock status={directive.status}'.",
                headers={"retry-after": "0"} if directive.status == 429 else None,
            )
        count = directive.tokens if limit is None else min(directive.tokens, limit)
        answer = _Answer(
            model=model,
            directive=directive,
            count=count,
            finish_reason="length" if count < directive.tokens else "stop",
            prompt_tokens=_prompt_tokens(messages),
        )
        try:
            if body.get("stream"):
                options = body.get("stream_options") or {}
                self._stream(record, answer, include_usage=bool(options.get("include_usage")))
            else:
                self._complete(record, answer)
        except _ClientGone:
            self.server.mock._update(record, client_closed=True)
            self.close_connection = True
        except _ServerStopping:
            self.close_connection = True

    # ------------------------------------------------------------------ answers

    def _stream(self, record: RecordedRequest, answer: _Answer, include_usage: bool) -> None:
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
        for i in range(answer.stop_at):
            self._pause_until(directive.due(start, i))
            if i == 0:
                self._event(role)
            self._event(chunk({"content": directive.token(i)}))
            mock._token_sent(record)
        if answer.fails:
            self._pause_until(directive.due(start, answer.stop_at))
            self._event(answer.failure(), last=True)
            return
        if answer.stalls:
            self._pause_until(math.inf)  # ends only by raising: client gone or server stopping
        if answer.count == 0:
            self._pause_until(directive.due(start, 0))
            self._event(role)
        self._event(chunk({}, answer.finish_reason))
        if include_usage:
            self._event(answer.envelope("chat.completion.chunk", choices=[], usage=answer.usage))
        self._event("[DONE]", last=True)
        mock._update(record, completed=True)

    def _complete(self, record: RecordedRequest, answer: _Answer) -> None:
        mock, directive = self.server.mock, answer.directive
        for i in range(answer.stop_at):
            self._pause_until(directive.due(record.started_at, i))
            mock._token_sent(record)
        if answer.fails:
            self._pause_until(directive.due(record.started_at, answer.stop_at))
            return self._send_error(record, 500, answer.failure()["error"]["message"])
        if answer.stalls:
            self._pause_until(math.inf)
        text = "".join(directive.token(i) for i in range(answer.count))
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": answer.finish_reason,
        }
        completion = answer.envelope("chat.completion", choices=[choice], usage=answer.usage)
        self._send_json(200, completion)
        mock._update(record, completed=True)

    # ------------------------------------------------------------------ plumbing

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True  # a body we did not read must not poison the next request
            return b""
        return self.rfile.read(int(length))

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token.strip())

    def _send_unauthorized(self, record: RecordedRequest | None) -> None:
        self._send_error(
            record,
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            code="invalid_api_key",
        )

    def _send_error(
        self,
        record: RecordedRequest | None,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if record is not None:
            self.server.mock._update(record, status=status)
        self._send_json(status, _error_body(status, message, code, param), headers)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._write(lambda: self.wfile.write(data))

    def _event(self, payload: Any, *, last: bool = False) -> None:
        """Write one Server-Sent Event as one HTTP chunk; the last one carries the end marker."""
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        event = f"data: {data}\n\n".encode()
        chunk = b"%X\r\n%s\r\n%s" % (len(event), event, b"0\r\n\r\n" if last else b"")
        self._write(lambda: self.wfile.write(chunk))

    def _write(self, action: Callable[[], Any]) -> None:
        try:
            action()
            self.wfile.flush()
        except (ConnectionError, OSError):
            raise self._why_cut_short() from None

    def _why_cut_short(self) -> Exception:
        return _ServerStopping() if self.server.stopping.is_set() else _ClientGone()

    def _pause_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` (monotonic), raising early if the client or server goes away."""
        while True:
            if self.server.stopping.is_set():
                raise _ServerStopping()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self._peer_closed(min(remaining, POLL_SECONDS)):
                raise self._why_cut_short()

    def _peer_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the client to close its end; True if it did."""
        if getattr(self, "_peer_sent_more", False):
            time.sleep(timeout)  # readable data would wake select at once; fall back to sleeping
            return False
        try:
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if not readable:
                return False
            if self.connection.recv(1, socket.MSG_PEEK):
                self._peer_sent_more = True
                return False
            return True
        except (OSError, ValueError):
            return True


@dataclass
class _Answer:
    """What one request gets: the tokens to send and how the answer ends."""

    model: str
    directive: Directive
    count: int
    finish_reason: str
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-mock{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def stop_at(self) -> int:
        """Tokens sent before the answer ends: normally, by failing, or by stalling."""
        ends = (self.count, self.directive.fail_after, self.directive.stall_after)
        return min(k for k in ends if k is not None)

    @property
    def fails(self) -> bool:
        return self.directive.fail_after == self.stop_at

    @property
    def stalls(self) -> bool:
        return not self.fails and self.directive.stall_after == self.stop_at

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.count,
            "total_tokens": self.prompt_tokens + self.count,
        }

    def envelope(self, obj: str, **rest: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            **rest,
        }

    def failure(self) -> dict[str, Any]:
        message = (
            "The server had an error while processing your request "
            f"(#mock fail_after={self.directive.fail_after})."
        )
        return _error_body(500, message, code="server_error")


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
