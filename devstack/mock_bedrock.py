"""A Bedrock ConverseStream endpoint that speaks AWS event-stream framing, so a real
bedrock-runtime client signs, sends and parses every frame (AWS_ENDPOINT_URL_BEDROCK_RUNTIME).

A ``#mock tokens=N rate=R fail_after=K`` line in the last user message scripts an answer as for
devstack/mock_llm.py (delta i is ``t{i} ``; ``reasoning=N`` first streams a reasoning block of
``r{i} `` deltas, as Claude's extended thinking does); ``reply()`` queues exact event lists for
unit tests.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .mock_directive import Directive, DirectiveError
from .mock_http import POLL_SECONDS

ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
"""The Bedrock error a ``#mock status=N`` line gets (others: InternalServerException)."""

# ----------------------------------------------------------------------------- event-stream frames


def _header(name: str, value: str) -> bytes:
    key, data = name.encode(), value.encode()
    return struct.pack(">B", len(key)) + key + b"\x07" + struct.pack(">H", len(data)) + data


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One application/vnd.amazon.eventstream message: prelude, headers, payload, CRCs."""
    encoded = b"".join(_header(k, v) for k, v in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(body).encode())


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}).encode())


def delta(text: str, block: int = 0) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": block, "delta": {"text": text}})


def reasoning_delta(text: str, block: int = 0) -> bytes:
    body = {"contentBlockIndex": block, "delta": {"reasoningContent": {"text": text}}}
    return event("contentBlockDelta", body)


def reasoning_end(block: int = 0) -> list[bytes]:
    """How a reasoning block ends: a delta with only its signature (for sending the reasoning
    back in a later turn, never shown), then the block's stop."""
    signed = {"reasoningContent": {"signature": "bW9jayBzaWduYXR1cmU="}}
    return [
        event("contentBlockDelta", {"contentBlockIndex": block, "delta": signed}),
        event("contentBlockStop", {"contentBlockIndex": block}),
    ]


def ending(stop: str = "end_turn", usage: tuple[int, int] = (12, 3), block: int = 0) -> list[bytes]:
    """The events after the last delta: block stop, message stop, metadata with the usage."""
    tokens = {"inputTokens": usage[0], "outputTokens": usage[1], "totalTokens": sum(usage)}
    return [
        event("contentBlockStop", {"contentBlockIndex": block}),
        event("messageStop", {"stopReason": stop}),
        event("metadata", {"usage": tokens, "metrics": {"latencyMs": 42}}),
    ]


def answer(
    *texts: str,
    reasoning: tuple[str, ...] = (),
    stop: str = "end_turn",
    usage: tuple[int, int] = (12, 3),
) -> list[bytes]:
    """The events of a whole ConverseStream answer, as Bedrock sends them (a text block has
    no contentBlockStart: only tool use blocks do). ``reasoning`` deltas make block 0 a reasoning
    block, and the text block 1."""
    thinking = [*(reasoning_delta(r) for r in reasoning), *reasoning_end()] if reasoning else []
    block = 1 if reasoning else 0
    return [
        event("messageStart", {"role": "assistant"}),
        *thinking,
        *(delta(t, block) for t in texts),
        *ending(stop, usage, block),
    ]


# ----------------------------------------------------------------------------- the endpoint


@dataclass
class Reply:
    """What the endpoint answers to one request, when queued with ``MockBedrock.reply``."""

    events: list[bytes] = field(default_factory=list)
    status: int = 200
    error: str = ""
    then: str = "end"
    """After the events: "end" the stream, "stall" (send nothing more until the client or the
    server goes), or "trickle" deltas until the client hangs up."""
    header_delay: float = 0.0


@dataclass
class Request:
    """One ConverseStream request as the endpoint saw it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    client_closed: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt(self) -> str:
        """The text of the last user turn (where a ``#mock`` line goes)."""
        for turn in reversed(self.body.get("messages") or []):
            if turn.get("role") == "user":
                return "\n".join(block.get("text", "") for block in turn.get("content", []))
        return ""


class _CutShort(Exception):
    """The client hung up, or the server is stopping."""


class MockBedrock:
    """The endpoint; ``MockBedrock().start()`` serves on a free port until ``stop()``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.replies: list[Reply] = []
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._status_hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MockBedrock:
        self._server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": POLL_SECONDS},
            name=f"mock-bedrock:{self.port}",
            daemon=True,
        ).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        self.stopping.set()
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> MockBedrock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order, whatever their prompts say."""
        self.replies.extend(replies)

    def client(self, read_timeout: float) -> Any:
        """A bedrock-runtime client for this endpoint, configured as the provider's own."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            config=Config(
                read_timeout=read_timeout,
                connect_timeout=5,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )

    def _scripted(self, request: Request) -> Reply | list[tuple[float, bytes]]:
        """A queued reply, or else the prompt's ``#mock`` answer as (due time, event) pairs."""
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
        prompt = request.prompt
        try:
            directive = Directive.parse(prompt)
        except DirectiveError as err:
            return Reply(status=400, error=f"ValidationException: {err}")
        if directive.status is not None:
            with self._lock:
                self._status_hits[prompt] += 1
                hits = self._status_hits[prompt]
            if directive.status_times is None or hits <= directive.status_times:
                code = ERRORS.get(directive.status, "InternalServerException")
                return Reply(status=directive.status, error=code)
        limit = (request.body.get("inferenceConfig") or {}).get("maxTokens")
        count = directive.tokens if limit is None else min(directive.tokens, limit)
        ends = [k for k in (count, directive.fail_after, directive.stall_after) if k is not None]
        stop_at, start, thought = min(ends), time.monotonic(), directive.reasoning
        timed = [(start, event("messageStart", {"role": "assistant"}))]
        timed += [
            (directive.due(start, i), reasoning_delta(directive.reasoning_token(i)))
            for i in range(thought)
        ]
        if thought:  # the signature and the block's end go right after its last delta
            timed += [(directive.due(start, thought - 1), data) for data in reasoning_end()]
        block = 1 if thought else 0
        timed += [
            (directive.due(start, thought + i), delta(directive.token(i), block))
            for i in range(stop_at)
        ]
        last = directive.due(start, thought + stop_at)
        if directive.fail_after == stop_at:
            failure = f"mock failure requested by '#mock fail_after={stop_at}'"
            return [*timed, (last, exception("modelStreamErrorException", failure))]
        if directive.stall_after == stop_at:
            return [*timed, (float("inf"), b"")]
        stop = "max_tokens" if count < directive.tokens else "end_turn"
        usage = (len(prompt.split()), thought + count)  # output tokens include the reasoning
        return [*timed, *((last, data) for data in ending(stop, usage, block))]


def _handler(mock: MockBedrock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = Request(self.path, json.loads(raw or b"{}"), dict(self.headers))
            mock.requests.append(request)
            script = mock._scripted(request)
            if isinstance(script, Reply) and script.header_delay:
                mock.stopping.wait(script.header_delay)
            if isinstance(script, Reply) and script.status != 200:
                self._error(script, request)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.amazon.eventstream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                if isinstance(script, Reply):
                    self._play(script)
                else:
                    for due, data in script:
                        self._pause_until(due)
                        self._chunk(data)
                self._chunk(b"")
            except (OSError, _CutShort):
                if not mock.stopping.is_set():
                    request.client_closed.set()
                self.close_connection = True

        def _play(self, reply: Reply) -> None:
            for data in reply.events:
                self._chunk(data)
            if reply.then == "stall":
                self._pause_until(float("inf"))
            elif reply.then == "trickle":
                while not mock.stopping.wait(0.01):
                    self._chunk(delta("more "))

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _pause_until(self, due: float) -> None:
            """Wait until ``due`` (monotonic), but no longer than the client or the server stays."""
            while (remaining := due - time.monotonic()) > 0:
                if mock.stopping.is_set():
                    raise _CutShort()
                readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.05))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    raise _CutShort()

        def _error(self, reply: Reply, request: Request) -> None:
            # Bedrock's messages can echo the request; the provider must never pass them on.
            body = json.dumps({"message": f"{reply.error}: {request.prompt} was refused"}).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            code = reply.error.split(":")[0]
            self.send_header("x-amzn-ErrorType", f"{code}:http://internal.amazon.com/")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
