"""The built-in mock LLM speaks OpenAI's chat completions protocol, driven by the real client."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from devstack.mock_llm import Directive, DirectiveError, MockLLM


@pytest.fixture
def mock() -> Iterator[MockLLM]:
    with MockLLM() as server:
        yield server


@pytest.fixture
def client(mock: MockLLM) -> OpenAI:
    return OpenAI(base_url=mock.base_url, api_key="test", max_retries=0)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def contents(chunks) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


# --------------------------------------------------------------------------- directives


def test_directive_keys_parse_in_any_order_and_subset():
    directive = Directive.parse("Please count.\n#mock rate=inf tokens=7 stall_after=3\nThanks")

    assert directive.scripted
    assert (directive.tokens, directive.rate, directive.stall_after) == (7, float("inf"), 3)
    assert directive.first_token_delay == 0.2 and directive.fail_after is None
    assert [directive.token(i) for i in range(3)] == ["t0 ", "t1 ", "t2 "]


def test_text_without_a_directive_gets_the_default_english_reply():
    directive = Directive.parse("What is the capital of France?")

    assert not directive.scripted
    assert directive.rate == 40.0 and directive.first_token_delay == 0.3


@pytest.mark.parametrize("line", ["#mock tokens=-1", "#mock rate=fast", "#mock status=200"])
def test_nonsense_directive_values_are_refused(line):
    with pytest.raises(DirectiveError):
        Directive.parse(line)


# --------------------------------------------------------------------------- streaming


def test_streamed_deltas_arrive_in_order_with_finish_reason_and_usage(mock, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("Count to twenty.\n#mock tokens=20 rate=0 first_token_delay=0"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert contents(chunks) == [f"t{i} " for i in range(20)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.model for c in chunks} == {"gpt-4o-mini"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens == 20 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The client can see [DONE] a moment before the server thread marks the record complete.
    assert mock.wait_for(lambda: mock.requests[0].completed, timeout=5)
    (record,) = mock.requests
    assert not record.client_closed
    assert record.tokens_sent == 20 and len(record.token_times) == 20
    assert record.headers["authorization"] == "Bearer test"


def test_max_tokens_below_the_requested_tokens_ends_with_length(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=10 rate=0 first_token_delay=0"),
        max_tokens=4,
        stream=True,
    )
    chunks = list(stream)

    assert contents(chunks) == ["t0 ", "t1 ", "t2 ", "t3 "]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_non_streamed_request_gets_one_whole_chat_completion(client):
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=ask("#mock tokens=5 rate=0 first_token_delay=0"),
    )

    assert completion.object == "chat.completion" and completion.model == "gpt-4o"
    assert completion.choices[0].message.content == "t0 t1 t2 t3 t4 "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == 5


def test_the_default_reply_without_a_directive_is_plain_english_words(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=ask("Tell me something."), stream=True
    )
    deltas = contents(stream)

    assert len(deltas) >= 20
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z'.,!?-]* ", d) for d in deltas), deltas
    assert "".join(deltas).strip().endswith(".")


# --------------------------------------------------------------------------- failures


def test_status_429_raises_rate_limit_error_with_retry_after_zero(client):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("#mock status=429"))

    assert caught.value.response.headers["retry-after"] == "0"
    assert caught.value.code == "rate_limit_exceeded"


def test_status_500_with_status_times_1_fails_once_then_succeeds(mock, client):
    messages = ask("#mock status=500 status_times=1 tokens=2 rate=0 first_token_delay=0")

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.choices[0].message.content == "t0 t1 "
    assert [r.status for r in mock.requests] == [500, 200]


def test_fail_after_3_yields_three_deltas_then_raises_api_error(mock, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=10 fail_after=3 rate=0 first_token_delay=0"),
        stream=True,
    )
    deltas: list[str] = []

    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)

    assert deltas == ["t0 ", "t1 ", "t2 "]
    assert caught.value.body["type"] == "server_error"
    assert not mock.requests[0].completed


def test_stall_after_2_times_out_on_read_after_two_deltas(mock):
    client = OpenAI(
        base_url=mock.base_url,
        api_key="test",
        max_retries=0,
        timeout=openai.Timeout(5, read=0.5),
    )
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=10 stall_after=2 rate=0 first_token_delay=0"),
        stream=True,
    )
    deltas: list[str] = []

    with pytest.raises(openai.APITimeoutError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                deltas.append(chunk.choices[0].delta.content)

    assert deltas == ["t0 ", "t1 "]
    assert mock.wait_for(lambda: mock.requests[0].client_closed, timeout=5)
    assert mock.requests[0].tokens_sent == 2


def test_closing_the_stream_early_is_recorded_as_client_closed(mock, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=50 rate=5 first_token_delay=0"),
        stream=True,
    )
    next(stream), next(stream)  # the role chunk and t0
    stream.close()

    assert mock.wait_for(lambda: mock.requests[0].client_closed, timeout=5)
    record = mock.requests[0]
    assert not record.completed and record.tokens_sent < 50


def test_stopping_the_server_ends_a_stalled_stream(mock, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=10 stall_after=1 rate=0 first_token_delay=0"),
        stream=True,
    )
    next(stream), next(stream)

    mock.stop()

    with pytest.raises(openai.APIConnectionError):
        list(stream)


def test_unknown_directive_key_gets_400_naming_the_key(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=ask("#mock tokenz=3"))

    assert "tokenz" in caught.value.message


def test_request_without_a_bearer_token_gets_401_in_openai_error_shape(mock):
    request = urllib.request.Request(
        f"{mock.base_url}/chat/completions",
        data=json.dumps({"model": "gpt-4o-mini", "messages": ask("hi")}).encode(),
        headers={"Content-Type": "application/json"},
    )

    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)

    assert caught.value.code == 401
    error = json.loads(caught.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_models_are_listed(client):
    assert "gpt-4o-mini" in {model.id for model in client.models.list()}


# --------------------------------------------------------------------------- pacing


def test_twenty_tokens_at_rate_100_take_at_least_190_ms(mock, client):
    began = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock tokens=20 rate=100 first_token_delay=0"),
        stream=True,
    )
    assert len(contents(stream)) == 20
    elapsed = time.monotonic() - began

    assert elapsed >= 0.19
    record = mock.requests[0]
    assert all(t >= record.started_at + i / 100 for i, t in enumerate(record.token_times))


# --------------------------------------------------------------------------- reasoning


def reasonings(chunks, field: str = "reasoning_content") -> list[str]:
    return [
        getattr(c.choices[0].delta, field)
        for c in chunks
        if c.choices and getattr(c.choices[0].delta, field, None)
    ]


def test_reasoning_keys_parse_and_a_field_the_mock_cannot_fill_is_refused():
    directive = Directive.parse("#mock reasoning=4 reasoning_field=reasoning tokens=2")

    assert (directive.reasoning, directive.reasoning_field) == (4, "reasoning")
    assert Directive.parse("#mock reasoning=1").reasoning_field == "reasoning_content"
    assert [directive.reasoning_token(i) for i in range(3)] == ["r0 ", "r1 ", "r2 "]
    with pytest.raises(DirectiveError, match="expected reasoning_content or reasoning"):
        Directive.parse("#mock reasoning=1 reasoning_field=thoughts")


@pytest.mark.parametrize(
    ("option", "field", "other"),
    [("", "reasoning_content", "reasoning"), (" reasoning_field=reasoning", "reasoning", None)],
)
def test_reasoning_n_streams_exactly_n_reasoning_tokens_in_the_chosen_field_before_the_answer(
    mock, client, option, field, other
):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask(f"#mock reasoning=5 tokens=3 rate=0 first_token_delay=0{option}"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    kinds = [
        "r" if getattr(d, field, None) else "t" if d.content else None
        for d in deltas
        if getattr(d, field, None) or d.content
    ]

    assert reasonings(chunks, field) == [f"r{i} " for i in range(5)]
    assert contents(chunks) == ["t0 ", "t1 ", "t2 "]
    assert kinds == ["r"] * 5 + ["t"] * 3  # all the reasoning first, then the answer
    if other:  # only the chosen field carries it
        assert reasonings(chunks, other) == []
    assert chunks[0].choices[0].delta.role == "assistant"
    usage = chunks[-1].usage
    assert usage.completion_tokens == 8 and usage.completion_tokens_details.reasoning_tokens == 5
    assert mock.wait_for(lambda: mock.requests[0].completed, timeout=5)
    assert (mock.requests[0].reasoning_sent, mock.requests[0].tokens_sent) == (5, 3)


def test_reasoning_tokens_come_at_the_answers_pace_and_delay_its_first_token(mock, client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock reasoning=10 tokens=5 rate=100 first_token_delay=0"),
        stream=True,
    )
    chunks = list(stream)

    assert len(reasonings(chunks)) == 10 and len(contents(chunks)) == 5
    record = mock.requests[0]
    # Answer token i is token 10 + i of the stream.
    assert all(t >= record.started_at + (10 + i) / 100 for i, t in enumerate(record.token_times))


def test_fail_after_counts_answer_tokens_so_all_the_reasoning_comes_before_the_failure(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=ask("#mock reasoning=2 tokens=5 fail_after=1 rate=0 first_token_delay=0"),
        stream=True,
    )
    seen: list[str] = []

    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices:
                delta = chunk.choices[0].delta
                seen.append(getattr(delta, "reasoning_content", None) or delta.content or "")

    assert [s for s in seen if s] == ["r0 ", "r1 ", "t0 "]


def test_a_non_streamed_answer_carries_its_reasoning_in_the_message(client):
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=ask("#mock reasoning=3 tokens=2 rate=0 first_token_delay=0"),
    )
    message = completion.choices[0].message

    assert message.content == "t0 t1 "
    assert message.reasoning_content == "r0 r1 r2 "
    assert completion.usage.completion_tokens == 5
