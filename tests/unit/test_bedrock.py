"""The Bedrock provider against devstack's MockBedrock, a ConverseStream endpoint that speaks AWS
event-stream framing, so a real bedrock-runtime client signs, sends and parses every frame;
botocore's Stubber covers a request error without any HTTP at all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from llmstream.core.envelope import PromptEnvelope
from llmstream.requests.record import Status
from llmstream.stream.providers import bedrock
from llmstream.stream.providers.base import Chunk, LLMError, LLMTimeout, retry_before_first_token
from llmstream.stream.providers.bedrock import BedrockProvider, bedrock_client
from llmstream.stream.sender import FrameSender
from llmstream.stream.streaming import stream_answer

from devstack.mock_bedrock import MockBedrock, Reply, answer, event, exception, reasoning_delta

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
SECRET = "SECRET PROMPT"


@pytest.fixture
def mock_bedrock() -> Iterator[MockBedrock]:
    with MockBedrock() as mock:
        yield mock


@pytest.fixture
def provider(mock_bedrock: MockBedrock) -> BedrockProvider:
    return BedrockProvider(mock_bedrock.client)


def ask(provider: BedrockProvider, *, read_timeout: float = 5.0, **kwargs: Any):
    # The mock's error messages echo the prompt, as Bedrock's may: none may reach an LLMError.
    messages = kwargs.pop("messages", [{"role": "user", "content": f"Hello. {SECRET}"}])
    return provider.stream(
        messages, model=MODEL, max_tokens=kwargs.pop("max_tokens", 64), read_timeout=read_timeout
    )


# ----------------------------------------------------------------------------- tests


def test_text_deltas_arrive_in_order_then_the_stop_reason_and_the_usage(mock_bedrock, provider):
    mock_bedrock.reply(Reply(answer("Stream", "ing ", "works.", stop="max_tokens", usage=(9, 3))))
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
    mock_bedrock, provider, stop_reason, finish_reason
):
    mock_bedrock.reply(Reply(answer("x", stop=stop_reason)))
    reasons = [c.finish_reason for c in ask(provider) if c.finish_reason]
    assert reasons == [finish_reason]


def test_the_request_carries_the_system_prompt_apart_and_turns_of_one_role_merged(
    mock_bedrock, provider
):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First."},
        {"role": "user", "content": "Second."},
        {"role": "assistant", "content": "Yes?"},
        {"role": "user", "content": "Third."},
    ]
    mock_bedrock.reply(Reply(answer("ok")))
    list(ask(provider, messages=messages, max_tokens=77))
    request = mock_bedrock.requests[-1]
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


def test_without_a_system_prompt_no_system_block_is_sent(mock_bedrock, provider):
    mock_bedrock.reply(Reply(answer("ok")))
    list(ask(provider))
    assert "system" not in mock_bedrock.requests[-1].body


def test_a_mock_line_in_the_prompt_scripts_the_answer_as_for_the_mock_llm(provider):
    chunks = list(ask(provider, messages=[{"role": "user", "content": "#mock tokens=3 rate=0"}]))
    assert [c.text for c in chunks if c.text] == ["t0 ", "t1 ", "t2 "]
    assert chunks[-2:] == [Chunk(finish_reason="stop"), Chunk(input_tokens=3, output_tokens=3)]

    capped = list(
        ask(provider, messages=[{"role": "user", "content": "#mock tokens=9"}], max_tokens=2)
    )
    assert [c.finish_reason for c in capped if c.finish_reason] == ["length"]

    texts = []
    with pytest.raises(LLMError) as raised:
        for chunk in ask(provider, messages=[{"role": "user", "content": "#mock fail_after=2"}]):
            texts.append(chunk.text)
    assert texts == ["t0 ", "t1 "] and raised.value.status == 424

    with pytest.raises(LLMError) as raised:
        ask(provider, messages=[{"role": "user", "content": "#mock status=429"}])
    assert raised.value.retryable and raised.value.status == 429


def test_a_model_stream_error_after_two_deltas_becomes_a_final_llm_error(mock_bedrock, provider):
    mock_bedrock.reply(
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
    mock_bedrock, provider
):
    mock_bedrock.reply(
        Reply(
            [event("messageStart", {"role": "assistant"}), exception("throttlingException", "")],
            then="trickle",
        ),
        Reply(answer("after ", "retry")),
    )
    sleeps: list[float] = []
    stream = retry_before_first_token(lambda: ask(provider), budget=10, sleep=sleeps.append)
    assert "".join(c.text for c in stream) == "after retry"
    assert len(mock_bedrock.requests) == 2 and len(sleeps) == 1
    assert mock_bedrock.requests[0].client_closed.wait(5)  # the failed stream was closed


def test_an_initial_429_is_a_retryable_llm_error_and_the_retry_streams(mock_bedrock, provider):
    mock_bedrock.reply(Reply(status=429, error="ThrottlingException"))
    with pytest.raises(LLMError) as raised:
        ask(provider)
    assert raised.value.retryable and raised.value.status == 429
    assert SECRET not in raised.value.message

    mock_bedrock.reply(Reply(status=429, error="ThrottlingException"), Reply(answer("hi")))
    sleeps: list[float] = []
    stream = retry_before_first_token(lambda: ask(provider), budget=10, sleep=sleeps.append)
    assert [c.text for c in stream if c.text] == ["hi"]
    assert len(mock_bedrock.requests) == 3 and len(sleeps) == 1


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
    mock_bedrock, provider, status, error, retryable
):
    mock_bedrock.reply(Reply(status=status, error=error))
    with pytest.raises(LLMError) as raised:
        ask(provider)
    assert not isinstance(raised.value, LLMTimeout)
    assert (raised.value.retryable, raised.value.status) == (retryable, status)
    assert raised.value.message == f"the model failed ({error}, HTTP {status})"


def test_a_model_timeout_is_a_retryable_timeout(mock_bedrock, provider):
    mock_bedrock.reply(Reply(status=408, error="ModelTimeoutException"))
    with pytest.raises(LLMTimeout) as raised:
        ask(provider)
    assert raised.value.retryable and raised.value.status == 408


def test_a_model_that_sends_no_headers_within_the_read_timeout_is_a_retryable_timeout(
    mock_bedrock, provider
):
    mock_bedrock.reply(Reply(answer("late"), header_delay=5))
    with pytest.raises(LLMTimeout) as raised:
        ask(provider, read_timeout=0.3)
    assert raised.value.retryable


def test_a_stream_that_stalls_after_text_ends_in_a_final_timeout(mock_bedrock, provider):
    mock_bedrock.reply(Reply(answer("a", "b")[:3], then="stall"))
    stream = ask(provider, read_timeout=0.3)
    texts = []
    with pytest.raises(LLMTimeout) as raised:
        for chunk in stream:
            texts.append(chunk.text)
    assert texts == ["a", "b"] and not raised.value.retryable


def test_closing_the_stream_mid_answer_hangs_up_on_bedrock_at_once(mock_bedrock, provider):
    mock_bedrock.reply(Reply(answer("one ", "two ")[:3], then="trickle"))
    stream = ask(provider)
    chunks = iter(stream)
    assert [next(chunks).text, next(chunks).text] == ["one ", "two "]
    stream.close()
    assert mock_bedrock.requests[-1].client_closed.wait(5)


def test_the_provider_streams_start_deltas_and_end_with_usage_through_stream_answer(
    mock_bedrock, provider
):
    mock_bedrock.reply(Reply(answer("Hello", ", ", "world.", stop="end_turn", usage=(20, 4))))
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
    assert result.outcome == Status.COMPLETED
    assert mock_bedrock.requests[-1].body["system"] == [{"text": "Be brief."}]


def test_a_model_error_mid_answer_reaches_the_client_as_an_llm_error_frame(mock_bedrock, provider):
    mock_bedrock.reply(
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
    assert result.outcome == Status.LLM_ERROR


def test_an_unreachable_endpoint_is_a_retryable_llm_error():
    closed_port = MockBedrock().start()
    closed_port.stop()  # the port is bound no more: connections are refused
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
    mock_bedrock, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", mock_bedrock.endpoint_url)
    bedrock._client.cache_clear()
    try:
        mock_bedrock.reply(Reply(status=503, error="ServiceUnavailableException"))
        with pytest.raises(LLMError):
            ask(BedrockProvider())
        assert len(mock_bedrock.requests) == 1  # retry_before_first_token owns the retries
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


# ----------------------------------------------------------------------------- reasoning


def test_reasoning_deltas_become_reasoning_chunks_and_their_signature_is_dropped(
    mock_bedrock, provider
):
    mock_bedrock.reply(Reply(answer("It is ", "4.", reasoning=("2 plus ", "2..."), usage=(5, 9))))
    chunks = list(ask(provider))
    assert chunks == [
        Chunk(reasoning="2 plus "),
        Chunk(reasoning="2..."),
        Chunk(text="It is "),
        Chunk(text="4."),
        Chunk(finish_reason="stop"),
        Chunk(input_tokens=5, output_tokens=9),
    ]


def test_the_mock_streams_exactly_n_reasoning_deltas_in_a_block_of_their_own_before_the_text(
    mock_bedrock,
):
    response = mock_bedrock.client(5).converse_stream(
        modelId=MODEL,
        messages=[{"role": "user", "content": [{"text": "#mock reasoning=4 tokens=2 rate=0"}]}],
    )
    deltas = [
        (e["contentBlockDelta"]["contentBlockIndex"], e["contentBlockDelta"]["delta"])
        for e in response["stream"]
        if "contentBlockDelta" in e
    ]
    thinking = [(i, d["reasoningContent"]) for i, d in deltas if "reasoningContent" in d]
    assert [r.get("text") for _, r in thinking] == ["r0 ", "r1 ", "r2 ", "r3 ", None]
    assert "signature" in thinking[-1][1]  # the block ends signed, as Claude's thinking does
    assert deltas[len(thinking) :] == [(1, {"text": "t0 "}), (1, {"text": "t1 "})]
    assert {i for i, _ in thinking} == {0}


def test_a_mock_line_with_reasoning_streams_reasoning_then_the_answer_through_the_provider(
    provider,
):
    prompt = "#mock reasoning=3 tokens=2 rate=0 first_token_delay=0"
    chunks = list(ask(provider, messages=[{"role": "user", "content": prompt}]))
    assert [c.reasoning for c in chunks if c.reasoning] == ["r0 ", "r1 ", "r2 "]
    assert [c.text for c in chunks if c.text] == ["t0 ", "t1 "]
    assert [bool(c.reasoning) for c in chunks if c.reasoning or c.text] == [True] * 3 + [False] * 2
    assert chunks[-1] == Chunk(input_tokens=5, output_tokens=5)  # reasoning counts as output


def test_a_throttling_event_after_reasoning_is_final_because_the_client_saw_the_reasoning(
    mock_bedrock, provider
):
    mock_bedrock.reply(
        Reply(
            [
                event("messageStart", {"role": "assistant"}),
                reasoning_delta("Let me think. "),
                exception("throttlingException", ""),
            ]
        ),
        Reply(answer("a retry would repeat the reasoning")),
    )
    stream = retry_before_first_token(lambda: ask(provider), budget=10, sleep=lambda _s: None)
    seen = []
    with pytest.raises(LLMError) as raised:
        for chunk in stream:
            seen.append(chunk.reasoning)
    assert seen == ["Let me think. "]
    assert not raised.value.retryable and len(mock_bedrock.requests) == 1
