"""The response cache through the local stack (ResponseCacheTtlSeconds on, HMAC auth, so that
each socket has a principal), counted with the mock LLM's own record of its requests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import LocalStack
from tests.integration.conftest import running_stack
from tests.integration.test_local_stack import Conversation, converse, run, tokens

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cache_stack() -> Iterator[LocalStack]:
    yield from running_stack(
        auth_mode="hmac",
        parameters={"ResponseCacheTtlSeconds": "300", "AllowedModels": "gpt-4o"},
    )


def url(stack: LocalStack, principal: str = "alice") -> str:
    return f"{stack.ws_url}/?token={stack.mint_token(principal)}"


def prompt(directive: str = "tokens=12 rate=0 first_token_delay=0") -> str:
    """A prompt no other test sends (its nonce), scripted for the mock LLM."""
    return f"cache {uuid.uuid4().hex}\n#mock {directive}"


def message(text: str | None = None, **fields: Any) -> str:
    body = {"action": "sendMessage", "requestId": uuid.uuid4().hex, **fields}
    if text is not None:
        body["prompt"] = text
    return json.dumps(body)


def model_calls(stack: LocalStack, text: str) -> int:
    """Chat completions requests whose messages hold ``text`` (its nonce line)."""
    marker = text.splitlines()[0]
    return sum(
        any(marker in str(m.get("content", "")) for m in r.body.get("messages", []))
        for r in stack.mock_llm.requests
    )


def assert_whole(conversation: Conversation, text: str) -> dict[str, Any]:
    """A complete, gapless answer ending in ``stop``; its end frame."""
    assert conversation.text == text
    seqs = [f["seq"] for f in conversation.frames if "seq" in f]
    assert seqs == list(range(len(seqs)))
    end = conversation.frames[-1]
    assert end["type"] == "end" and end["finishReason"] == "stop"
    return end


def test_an_identical_second_request_makes_no_model_call(cache_stack: LocalStack):
    text = prompt()
    first = run(converse(url(cache_stack), message(text)))
    second = run(converse(url(cache_stack), message(text)))
    assert model_calls(cache_stack, text) == 1
    assert "cached" not in assert_whole(first, tokens(12))
    end = assert_whole(second, tokens(12))
    assert end["cached"] is True and end["usage"] == first.frames[-1]["usage"]


def test_ten_identical_concurrent_requests_make_one_model_call(cache_stack: LocalStack):
    text = prompt("tokens=80 rate=10 first_token_delay=0")  # eight seconds of answer

    async def ten() -> list[Conversation]:
        first = asyncio.ensure_future(converse(url(cache_stack), message(text)))
        # The other nine come once the first streams, all at once.
        started = await asyncio.to_thread(
            cache_stack.mock_llm.wait_for, lambda: model_calls(cache_stack, text), 30
        )
        assert started
        others = [converse(url(cache_stack), message(text)) for _ in range(9)]
        return await asyncio.gather(first, *others)

    conversations = run(ten(), timeout=120)
    assert model_calls(cache_stack, text) == 1
    ends = [assert_whole(c, tokens(80)) for c in conversations]
    assert "coalesced" not in ends[0] and "cached" not in ends[0]  # the one that called it
    assert all(e.get("coalesced") is True for e in ends[1:])
    assert all(e["usage"] == ends[0]["usage"] for e in ends)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "another question"},
        {"model": "gpt-4o"},
        {"messages": "with history"},
    ],
    ids=["prompt", "model", "history"],
)
def test_a_request_that_differs_in_what_shapes_the_answer_calls_the_model(
    cache_stack: LocalStack, change: dict[str, str]
):
    text = prompt("tokens=5 rate=0 first_token_delay=0")
    run(converse(url(cache_stack), message(text)))
    if "prompt" in change:
        other = message(text.replace("cache ", "cache again "))
    elif "model" in change:
        other = message(text, model="gpt-4o")
    else:
        other = message(
            messages=[
                {"role": "user", "content": "earlier"},
                {"role": "assistant", "content": "yes"},
                {"role": "user", "content": text},
            ]
        )
    differing = run(converse(url(cache_stack), other))
    assert "cached" not in differing.frames[-1] and differing.text == tokens(5)
    calls = sum(
        any(
            text.splitlines()[0].split()[-1] in str(m.get("content", ""))
            for m in r.body["messages"]
        )
        for r in cache_stack.mock_llm.requests
    )
    assert calls == 2


def test_another_principal_gets_no_cached_answer_and_an_opt_out_calls_the_model(
    cache_stack: LocalStack,
):
    text = prompt("tokens=5 rate=0 first_token_delay=0")
    run(converse(url(cache_stack, "alice"), message(text)))
    bob = run(converse(url(cache_stack, "bob"), message(text)))
    assert "cached" not in bob.frames[-1] and model_calls(cache_stack, text) == 2
    opted_out = run(converse(url(cache_stack, "alice"), message(text, cache=False)))
    assert "cached" not in opted_out.frames[-1] and model_calls(cache_stack, text) == 3
    assert run(converse(url(cache_stack, "bob"), message(text))).frames[-1]["cached"] is True


def test_the_ai_sdk_client_gets_cached_answers_and_can_opt_out(cache_stack: LocalStack):
    """The `ai` package's own transport (examples/ai-sdk-chat/test/cache.test.mjs), in Node."""
    from tests.integration.test_ai_sdk import npm_installed

    node = shutil.which("node")
    assert node, "Node.js is missing: the AI SDK tests run the real `ai` client in Node"
    env = {**os.environ, "LLM_STREAM_WS_URL": url(cache_stack), "LLM_STREAM_CACHE": "1"}
    done = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/cache.test.mjs"],
        cwd=npm_installed(),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ℹ skipped 0" in done.stdout and "ℹ pass 2" in done.stdout, done.stdout
