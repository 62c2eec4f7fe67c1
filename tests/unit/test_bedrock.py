"""The Bedrock provider against a local ConverseStream endpoint that speaks AWS event-stream
framing, so a real bedrock-runtime client signs, sends and parses every frame; botocore's
Stubber covers a request error without any HTTP at all."""

from __future__ import annotations

import json
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from llmstream import bedrock
from llmstream.bedrock import BedrockProvider, bedrock_client
from llmstream.envelope import PromptEnvelope
from llmstream.llm import Chunk, LLMError, LLMTimeout, retry_before_first_token
from llmstream.sender import FrameSender
from llmstream.streaming import Outcome, stream_answer

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SECRET = "SECRET PROMPT"

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


def delta(text: str) -> bytes:
    return event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}})


def answer(*texts: str, stop: str = "end_turn", usage: tuple[int, int] = (12, 3)) -> list[bytes]:
    """The events of a whole ConverseStream answer, as Bedrock sends them (a text block has
    no contentBlockStart: only tool use blocks do)."""
    return [
        event("messageStart", {"role": "assistant"}),
        *(delta(t) for t in texts),
        event("contentBlockStop", {"contentBlockIndex": 0}),
        event("messageStop", {"stopReason": stop}),
        event(
            "metadata",
            {
                "usage": {
                    "inputTokens": usage[0],
                    "outputTokens": usage[1],
                    "totalTokens": sum(usage),
                },
                "metrics": {"latencyMs": 42},
            },
        ),
    ]


# ----------------------------------------------------------------------------- the endpoint


@dataclass
class Reply:
    """What the endpoint answers to one request."""

    events: list[bytes] = field(default_factory=list)
    status: int = 200
    error: str = ""
    then: str = "end"
    """After the events: "end" the stream, "stall" (send nothing more), or "trickle" deltas
    until the client hangs up."""
    header_delay: float = 0.0


@dataclass
class Request:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    client_closed: threading.Event = field(default_factory=threading.Event)


class FakeBedrock:
    """A ConverseStream endpoint on 127.0.0.1 that plays scripted replies in order."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = Request(self.path, json.loads(raw or b"{}"), dict(self.headers))
                fake.requests.append(request)
                reply = fake.replies.pop(0) if fake.replies else Reply(answer("ok"))
                if reply.header_delay:
                    fake.stopping.wait(reply.header_delay)
                if reply.status != 200:
                    self._error(reply)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.amazon.eventstream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for data in reply.events:
                        self._chunk(data)
                    if reply.then == "stall":
                        fake.stopping.wait(30)
                    elif reply.then == "trickle":
                        while not fake.stopping.wait(0.01):
                            self._chunk(delta("more "))
                    self._chunk(b"")
                except OSError:  # the client closed the connection
                    request.client_closed.set()
                    self.close_connection = True

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _error(self, reply: Reply) -> None:
                # Bedrock's messages can echo the request; the provider must never pass them on.
                body = json.dumps({"message": f"{reply.error}: {SECRET} was refused"}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-amzn-ErrorType", f"{reply.error}:http://internal.amazon.com/")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FakeBedrock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def client(self, read_timeout: float) -> Any:
        """A bedrock-runtime client for this endpoint, configured as the provider's own."""
        return boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=self.url,
            config=Config(
                read_timeout=read_timeout,
                connect_timeout=5,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )


@pytest.fixture
def fake_bedrock() -> Iterator[FakeBedrock]:
    with FakeBedrock() as fake:
        yield fake


@pytest.fixture
def provider(fake_bedrock: FakeBedrock) -> BedrockProvider:
    return BedrockProvider(fake_bedrock.client)


def ask(provider: BedrockProvider, *, read_timeout: float = 5.0, **kwargs: Any):
    messages = kwargs.pop("messages", [{"role": "user", "content": "Hello"}])
    return provider.stream(
        messages, model=MODEL, max_tokens=kwargs.pop("max_tokens", 64), read_timeout=read_timeout
    )


# ----------------------------------------------------------------------------- tests


def test_text_deltas_arrive_in_order_then_the_stop_reason_and_the_usage(fake_bedrock, provider):
    fake_bedrock.reply(Reply(answer("Stream", "ing ", "works.", stop="max_tokens", usage=(9, 3))))
    chunks = list(ask(provider))
    assert [c.text for c in chunks if c.text] == ["Stream", "ing ", "works."]
    assert Chunk(finish_reason="length") in chunks
    assert chunks[-1] == Chunk(input_tokens=9, output_tokens=3)


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("content_filtered", "content_filter"),
        ("guardrail_intervened", "content_filter"),
        ("a_reason_bedrock_adds_later", "stop"),
    ],
)
def test_bedrock_stop_reasons_become_protocol_finish_reasons(
    fake_bedrock, provider, stop_reason, finish_reason
):
    fake_bedrock.reply(Reply(answer("x", stop=stop_reason)))
    reasons = [c.finish_reason for c in ask(provider) if c.finish_reason]
    assert reasons == [finish_reason]


def test_the_request_carries_the_system_prompt_apart_and_turns_of_one_role_merged(
    fake_bedrock, provider
):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First."},
        {"role": "user", "content": "Second."},
        {"role": "assistant", "content": "Yes?"},
        {"role": "user", "content": "Third."},
    ]
    list(ask(provider, messages=messages, max_tokens=77))
    request = fake_bedrock.requests[-1]
    assert request.path == f"/model/{MODEL.replace(':', '%3A')}/converse-stream"
    assert request.body == {
        "system": [{"text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [{"text": "First."}, {"text": "Second."}]},
            {"role": "assistant", "content": [{"text": "Yes?"}]},
            {"role": "user", "content": [{"text": "Third."}]},
        ],
        "inferenceConfig": {"maxTokens": 77},
    }
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256")  # IAM, no API key


def test_without_a_system_prompt_no_system_block_is_sent(fake_bedrock, provider):
    list(ask(provider))
    assert "system" not in fake_bedrock.requests[-1].body


def test_a_model_stream_error_after_two_deltas_becomes_a_final_llm_error(fake_bedrock, provider):
    fake_bedrock.reply(
        Reply([*answer("one ", "two ")[:3], exception("modelStreamErrorException", SECRET)])
    )
    stream = ask(provider)
    texts = []
    with pytest.raises(LLMError) as raised:
        for chunk in stream:
            texts.append(chunk.text)
    assert texts == ["one ", "two "]
    error = raised.value
    assert not isinstance(error, LLMTimeout)
    assert not error.retryable and error.status == 424
    assert "modelStreamErrorException" in error.message and SECRET not in error.message


def test_a_throttling_event_before_any_text_is_retried_and_the_second_attempt_streams(
    fake_bedrock, provider
):
    fake_bedrock.reply(
        Reply(
            [event("messageStart", {"role": "assistant"}), exception("throttlingException", "")],
            then="trickle",
        ),
        Reply(answer("after ", "retry")),
    )
    sleeps: list[float] = []
    stream = retry_before_first_token(lambda: ask(provider), budget=10, sleep=sleeps.append)
    assert "".join(c.text for c in stream) == "after retry"
    assert len(fake_bedrock.requests) == 2 and len(sleeps) == 1
    assert fake_bedrock.requests[0].client_closed.wait(5)  # the failed stream was closed


def test_an_initial_429_is_a_retryable_llm_error_and_the_retry_streams(fake_bedrock, provider):
    fake_bedrock.reply(Reply(status=429, error="ThrottlingException"))
    with pytest.raises(LLMError) as raised:
        ask(provider)
    assert raised.value.retryable and raised.value.status == 429
    assert SECRET not in raised.value.message

    fake_bedrock.reply(Reply(status=429, error="ThrottlingException"), Reply(answer("hi")))
    sleeps: list[float] = []
    stream = retry_before_first_token(lambda: ask(provider), budget=10, sleep=sleeps.append)
    assert [c.text for c in stream if c.text] == ["hi"]
    assert len(fake_bedrock.requests) == 3 and len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (503, "ServiceUnavailableException", True),
        (500, "InternalServerException", True),
        (429, "ModelNotReadyException", True),
        (400, "ValidationException", False),
        (403, "AccessDeniedException", False),
        (404, "ResourceNotFoundException", False),
        (424, "ModelErrorException", False),
    ],
)
def test_request_errors_become_llm_errors_that_say_whether_to_retry(
    fake_bedrock, provider, status, error, retryable
):
    fake_bedrock.reply(Reply(status=status, error=error))
    with pytest.raises(LLMError) as raised:
        ask(provider)
    assert not isinstance(raised.value, LLMTimeout)
    assert (raised.value.retryable, raised.value.status) == (retryable, status)
    assert raised.value.message == f"the model failed ({error}, HTTP {status})"


def test_a_model_timeout_is_a_retryable_timeout(fake_bedrock, provider):
    fake_bedrock.reply(Reply(status=408, error="ModelTimeoutException"))
    with pytest.raises(LLMTimeout) as raised:
        ask(provider)
    assert raised.value.retryable and raised.value.status == 408


def test_a_model_that_sends_no_headers_within_the_read_timeout_is_a_retryable_timeout(
    fake_bedrock, provider
):
    fake_bedrock.reply(Reply(answer("late"), header_delay=5))
    with pytest.raises(LLMTimeout) as raised:
        ask(provider, read_timeout=0.3)
    assert raised.value.retryable


def test_a_stream_that_stalls_after_text_ends_in_a_final_timeout(fake_bedrock, provider):
    fake_bedrock.reply(Reply(answer("a", "b")[:3], then="stall"))
    stream = ask(provider, read_timeout=0.3)
    texts = []
    with pytest.raises(LLMTimeout) as raised:
        for chunk in stream:
            texts.append(chunk.text)
    assert texts == ["a", "b"] and not raised.value.retryable


def test_closing_the_stream_mid_answer_hangs_up_on_bedrock_at_once(fake_bedrock, provider):
    fake_bedrock.reply(Reply(answer("one ", "two ")[:3], then="trickle"))
    stream = ask(provider)
    chunks = iter(stream)
    assert [next(chunks).text, next(chunks).text] == ["one ", "two "]
    stream.close()
    assert fake_bedrock.requests[-1].client_closed.wait(5)


def test_the_provider_streams_start_deltas_and_end_with_usage_through_stream_answer(
    fake_bedrock, provider
):
    fake_bedrock.reply(Reply(answer("Hello", ", ", "world.", stop="end_turn", usage=(20, 4))))
    posted: list[bytes] = []
    envelope = PromptEnvelope(
        request_id="req-1",
        connection_id="conn-1",
        domain_name="example.com",
        stage="prod",
        messages=({"role": "user", "content": "Hi"},),
        model=MODEL,
        provider="bedrock",
        max_tokens=100,
    )
    sender = FrameSender(posted.append, "req-1", min_interval=0)
    result = stream_answer(envelope, provider, sender, system_prompt="Be brief.")
    frames = [json.loads(p) for p in posted]
    assert frames[0] == {"type": "start", "requestId": "req-1", "model": MODEL}
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "Hello, world."
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "stop"
    assert frames[-1]["usage"] == {"inputTokens": 20, "outputTokens": 4}
    assert result.outcome == Outcome.COMPLETED
    assert fake_bedrock.requests[-1].body["system"] == [{"text": "Be brief."}]


def test_a_model_error_mid_answer_reaches_the_client_as_an_llm_error_frame(fake_bedrock, provider):
    fake_bedrock.reply(
        Reply([*answer("one ", "two ")[:3], exception("modelStreamErrorException", SECRET)])
    )
    posted: list[bytes] = []
    envelope = PromptEnvelope(
        request_id="req-2",
        connection_id="conn-1",
        domain_name="example.com",
        stage="prod",
        messages=({"role": "user", "content": SECRET},),
        model=MODEL,
        provider="bedrock",
        max_tokens=100,
    )
    result = stream_answer(envelope, provider, FrameSender(posted.append, "req-2", min_interval=0))
    frames = [json.loads(p) for p in posted]
    assert [f["type"] for f in frames][0] == "start" and frames[-1]["type"] == "error"
    assert frames[-1]["code"] == "llm_error" and SECRET not in json.dumps(frames[-1])
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "one two "
    assert result.outcome == Outcome.LLM_ERROR


def test_an_unreachable_endpoint_is_a_retryable_llm_error():
    closed_port = FakeBedrock()
    closed_port.server.server_close()  # the port is bound no more: connections are refused
    with pytest.raises(LLMError) as raised:
        ask(BedrockProvider(closed_port.client))
    assert raised.value.retryable and "could not be reached" in raised.value.message


def test_a_stubbed_client_error_becomes_an_llm_error_without_any_http():
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_client_error(
            "converse_stream",
            "AccessDeniedException",
            f"not allowed to invoke with {SECRET}",
            http_status_code=403,
        )
        with pytest.raises(LLMError) as raised:
            ask(BedrockProvider(lambda _timeout: client))
    assert (raised.value.retryable, raised.value.status) == (False, 403)
    assert SECRET not in raised.value.message


def test_the_default_client_never_retries_on_its_own_and_reads_its_endpoint_from_the_env(
    fake_bedrock, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake_bedrock.url)
    bedrock._client.cache_clear()
    try:
        fake_bedrock.reply(Reply(status=503, error="ServiceUnavailableException"))
        with pytest.raises(LLMError):
            ask(BedrockProvider())
        assert len(fake_bedrock.requests) == 1  # retry_before_first_token owns the retries
    finally:
        bedrock._client.cache_clear()


def test_one_client_serves_each_whole_second_of_read_timeout():
    bedrock._client.cache_clear()
    try:
        assert bedrock_client(30.0) is bedrock_client(30.9)
        assert bedrock_client(0.2) is bedrock_client(1.5)  # never below one second
        assert bedrock_client(29.9) is not bedrock_client(30.0)
        config = bedrock_client(12.7).meta.config
        assert (config.read_timeout, config.connect_timeout) == (12, 5)
        assert config.retries["total_max_attempts"] == 1
    finally:
        bedrock._client.cache_clear()
