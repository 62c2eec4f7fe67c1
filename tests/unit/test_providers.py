"""Choosing a provider: MODEL_PROVIDERS routes models, the factory builds each provider once, and
the stream function streams from Bedrock end to end (SNS event → local ConverseStream endpoint →
moto's Management API) without ever reading the OpenAI key."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from llmstream.core.settings import Settings
from llmstream.intake.routing import provider_for_model
from llmstream.stream.providers import bedrock, build_provider
from llmstream.stream.providers.base import Chunk
from llmstream.stream.providers.bedrock import BedrockProvider
from llmstream.stream.providers.openai import OpenAIProvider, openai_client

from devstack.mock_bedrock import MockBedrock, Reply, answer, exception
from tests.conftest import load_handler
from tests.unit.streams import (
    deltas_text,
    envelope,
    frames_posted,
    sns_event,
)
from tests.unit.test_bedrock import MODEL

ROUTES = "anthropic.claude-3-haiku-20240307-v1:0=bedrock,gpt-4o-mini=openai,anthropic.*=bedrock"

# ----------------------------------------------------------------------------- routing


def routed(env: dict[str, str]) -> Settings:
    return Settings.from_env({"LLM_PROVIDER": "openai", **env})


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "bedrock"),
        ("gpt-4o-mini", "openai"),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock"),  # by the prefix rule
        ("gpt-4o", "openai"),  # not listed: the deployment's own provider
    ],
)
def test_model_providers_route_each_model_and_the_rest_go_to_llm_provider(model, provider):
    assert provider_for_model(model, routed({"MODEL_PROVIDERS": ROUTES})) == provider


def test_without_model_providers_every_model_goes_to_llm_provider():
    settings = Settings.from_env({"LLM_PROVIDER": "bedrock"})
    assert settings.model_providers == ()
    assert provider_for_model("anything", settings) == "bedrock"


def test_an_exact_entry_beats_a_prefix_and_a_longer_prefix_beats_a_shorter_whatever_the_order():
    settings = routed({"MODEL_PROVIDERS": "a*=bedrock,abc=openai,ab*=openai"})
    assert provider_for_model("abc", settings) == "openai"
    assert provider_for_model("abd", settings) == "openai"
    assert provider_for_model("axe", settings) == "bedrock"


def test_model_providers_are_read_once_from_the_environment_as_pairs():
    settings = routed({"MODEL_PROVIDERS": " gpt-4o = openai , us.meta.llama3*=bedrock "})
    assert settings.model_providers == (("gpt-4o", "openai"), ("us.meta.llama3*", "bedrock"))


@pytest.mark.parametrize("value", ["gpt-4o", "gpt-4o=anthropic", "=bedrock", "gpt-4o="])
def test_a_malformed_model_providers_entry_fails_the_cold_start_loudly(value):
    # A prompt routed to a provider no subscription serves would wait for ever in silence.
    with pytest.raises(ValueError, match="MODEL_PROVIDERS"):
        routed({"MODEL_PROVIDERS": value})


# ----------------------------------------------------------------------------- the factory


def test_the_bedrock_provider_needs_no_key(aws):
    provider = build_provider("bedrock", Settings(llm_api_key_secret="no-such-secret"))
    assert isinstance(provider, BedrockProvider) and provider.name == "bedrock"


def test_the_openai_provider_reads_its_key_from_secrets_manager(aws):
    provider = build_provider("openai", Settings.from_env())
    assert isinstance(provider, OpenAIProvider) and provider.name == "openai"
    assert provider._client.api_key == "sk-test" and provider._client.max_retries == 0


def test_an_unknown_provider_name_is_a_bug_not_a_silent_default():
    with pytest.raises(ValueError, match="unknown LLM provider"):
        build_provider("gemini", Settings())


# ----------------------------------------------------------------------------- the stream function


@pytest.fixture
def fake_bedrock(monkeypatch) -> Iterator[MockBedrock]:
    """A local ConverseStream endpoint that the default bedrock-runtime client is pointed at."""
    with MockBedrock() as fake:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", fake.endpoint_url)
        bedrock._client.cache_clear()
        yield fake
    bedrock._client.cache_clear()


def bedrock_event(prompt: str = "Write a haiku.") -> dict:
    return sns_event(prompt, provider="bedrock", model=MODEL)


def test_a_bedrock_stream_function_streams_start_deltas_and_end_without_reading_any_secret(
    stream_env, fake_bedrock, closed, lambda_context, logs, monkeypatch
):
    monkeypatch.setenv("LLM_PROVIDER", "bedrock")
    monkeypatch.setenv("LLM_MODEL", MODEL)
    monkeypatch.setenv("LLM_API_KEY_SECRET", "no-such-secret")  # read it and the test fails
    fake_bedrock.reply(Reply(answer("Tokens ", "flow ", "on.", stop="end_turn", usage=(30, 3))))
    event = bedrock_event()
    doc = envelope(event)
    load_handler("stream").lambda_handler(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert frames[0] == {"type": "start", "requestId": doc["requestId"], "model": MODEL}
    assert deltas_text(frames) == "Tokens flow on."
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "stop"
    assert frames[-1]["usage"] == {"inputTokens": 30, "outputTokens": 3}
    assert closed == [doc["connectionId"]]
    body = fake_bedrock.requests[-1].body
    assert body["system"] == [{"text": "You are a concise assistant."}]
    assert body["messages"] == [{"role": "user", "content": [{"text": "Write a haiku."}]}]
    assert "misrouted" not in logs.getvalue() and "another provider" not in logs.getvalue()


def test_a_bedrock_error_mid_answer_ends_in_an_llm_error_frame_and_the_invocation_succeeds(
    stream_env, fake_bedrock, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv("LLM_PROVIDER", "bedrock")
    fake_bedrock.reply(Reply([*answer("one ")[:2], exception("modelStreamErrorException", "x")]))
    event = bedrock_event()
    doc = envelope(event)
    load_handler("stream").lambda_handler(event, lambda_context)  # no raise: no retry, no DLQ
    frames = frames_posted(doc["connectionId"])
    assert deltas_text(frames) == "one "
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "llm_error"
    assert closed == [doc["connectionId"]]


def test_a_prompt_for_another_provider_that_slips_past_the_filter_is_served_by_that_provider(
    stream_env, fake_bedrock, closed, lambda_context, logs, monkeypatch, mock_llm, capsys
):
    # This is the OpenAI function (LLM_PROVIDER=openai); the envelope says bedrock.
    fake_bedrock.reply(Reply(answer("served ", "anyway")))
    event = bedrock_event()
    doc = envelope(event)
    load_handler("stream").lambda_handler(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert deltas_text(frames) == "served anyway" and frames[-1]["type"] == "end"
    assert mock_llm.requests == []  # the OpenAI-compatible API was not called
    assert "a prompt for another provider reached this function" in logs.getvalue()
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    assert [m["MisroutedPrompts"] for m in emitted if "MisroutedPrompts" in m] == [[1.0]]


def test_a_prompt_for_an_unknown_provider_gets_an_internal_error_and_goes_to_the_dead_letter_queue(
    stream_env, closed, lambda_context, mock_llm
):
    event = sns_event("hello", provider="gemini")
    doc = envelope(event)
    with pytest.raises(ValueError, match="unknown LLM provider"):
        load_handler("stream").lambda_handler(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [(f["type"], f["code"]) for f in frames] == [("error", "internal")]
    assert closed == [doc["connectionId"]] and mock_llm.requests == []


def test_the_stream_function_builds_each_provider_once_per_container(
    stream_env, fake_bedrock, lambda_context, monkeypatch
):
    monkeypatch.setenv("LLM_PROVIDER", "bedrock")
    app = load_handler("stream")
    assert app._provider() is app._provider("bedrock") is app._provider()


# ----------------------------------------------------------------------------- reasoning


def streamed(provider, prompt: str, model: str = "gpt-4o-mini") -> list[Chunk]:
    messages = [{"role": "user", "content": prompt}]
    return list(provider.stream(messages, model=model, max_tokens=64, read_timeout=5))


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_the_openai_provider_carries_either_reasoning_field_apart_from_the_answer_text(
    mock_llm, field
):
    provider = OpenAIProvider(openai_client("sk-test", mock_llm.base_url))
    chunks = streamed(provider, f"#mock reasoning=4 tokens=3 rate=0 reasoning_field={field}")
    pieces = [(c.reasoning, c.text) for c in chunks if c.reasoning or c.text]
    assert pieces == [(f"r{i} ", "") for i in range(4)] + [("", f"t{i} ") for i in range(3)]
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].output_tokens == 7  # the usage counts the reasoning tokens


def test_a_server_that_fills_both_reasoning_fields_has_its_reasoning_shown_once():
    from llmstream.stream.providers.openai import _OpenAIChunks
    from openai.types.chat import ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": None, "reasoning_content": "hm ", "reasoning": "hm "},
                    "finish_reason": None,
                }
            ],
        }
    )
    assert list(_OpenAIChunks(iter([chunk]))) == [Chunk(reasoning="hm ")]


def test_the_bedrock_provider_carries_reasoning_apart_from_the_answer_text(fake_bedrock):
    chunks = streamed(BedrockProvider(), "#mock reasoning=4 tokens=3 rate=0", model=MODEL)
    pieces = [(c.reasoning, c.text) for c in chunks if c.reasoning or c.text]
    assert pieces == [(f"r{i} ", "") for i in range(4)] + [("", f"t{i} ") for i in range(3)]
    assert chunks[-1].output_tokens == 7
