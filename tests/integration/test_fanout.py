"""The Bedrock fan-out (EnableBedrockFanout=true) on the local stack: the message function routes
each prompt by its model, and SNS filter policies hand it to the stream function of its provider.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from devstack.stack import BEDROCK_MODEL_ID, LocalStack
from tests.integration.conftest import running_stack

pytestmark = pytest.mark.integration

OPENAI_MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from running_stack(llm_model=OPENAI_MODEL, bedrock_fanout=True)


def tokens(n: int) -> str:
    """What both mocks stream for ``#mock tokens=n``."""
    return "".join(f"t{i} " for i in range(n))


async def ask(stack: LocalStack, model: str, prompt: str, request_id: str) -> list[dict[str, Any]]:
    """Send one prompt for ``model`` and read every frame until the server closes the socket."""
    message = {"action": "sendMessage", "requestId": request_id, "prompt": prompt, "model": model}
    frames = []
    async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
        await ws.send(json.dumps(message))
        try:
            async for raw in ws:
                frames.append(json.loads(raw))
        except ConnectionClosed:
            pass
    return frames


def of(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == kind]


def text(frames: list[dict[str, Any]]) -> str:
    return "".join(f["text"] for f in of(frames, "delta"))


def ran_in(stack: LocalStack, request_id: str) -> list[str]:
    """The functions whose invocations carried ``request_id``, once one has reported."""

    def functions(invocations: list[Any]) -> list[str]:
        return [
            i.function
            for i in invocations
            if "Records" in i.event and request_id in i.event["Records"][0]["Sns"]["Message"]
        ]

    stack.wait_for_invocations(functions, timeout=10)
    return functions(stack.invocations())


def saw(requests: list[Any], marker: str) -> bool:
    return any(marker in json.dumps(r.body) for r in requests)


def test_each_client_is_streamed_by_the_stream_function_of_its_models_provider(
    stack: LocalStack,
) -> None:
    bedrock_marker, openai_marker = uuid.uuid4().hex, uuid.uuid4().hex

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return await asyncio.gather(
            ask(stack, BEDROCK_MODEL_ID, f"#mock tokens=12 rate=200\n{bedrock_marker}", "on-br"),
            ask(stack, OPENAI_MODEL, f"#mock tokens=8 rate=200\n{openai_marker}", "on-oa"),
        )

    bedrock, openai = asyncio.run(asyncio.wait_for(both(), 60))

    assert of(bedrock, "start") == [
        {"type": "start", "requestId": "on-br", "model": BEDROCK_MODEL_ID}
    ]
    assert text(bedrock) == tokens(12)
    assert [d["seq"] for d in of(bedrock, "delta")] == list(range(len(of(bedrock, "delta"))))
    (end,) = of(bedrock, "end")
    assert end["finishReason"] == "stop" and end["usage"]["outputTokens"] == 12
    assert ran_in(stack, "on-br") == ["bedrock-stream"]

    assert of(openai, "start")[0]["model"] == OPENAI_MODEL
    assert text(openai) == tokens(8)
    assert of(openai, "end")[0]["usage"]["outputTokens"] == 8
    assert ran_in(stack, "on-oa") == ["stream"]

    assert saw(stack.mock_bedrock.requests, bedrock_marker)
    assert not saw(stack.mock_bedrock.requests, openai_marker)
    assert saw(stack.mock_llm.requests, openai_marker)
    assert not saw(stack.mock_llm.requests, bedrock_marker)


def test_bedrock_failing_mid_stream_gives_five_deltas_then_an_llm_error_frame(
    stack: LocalStack,
) -> None:
    frames = asyncio.run(
        asyncio.wait_for(
            ask(stack, BEDROCK_MODEL_ID, "#mock tokens=20 rate=200 fail_after=5", "br-fails"), 60
        )
    )

    assert text(frames) == tokens(5)
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "llm_error"
    assert not of(frames, "end")
    assert ran_in(stack, "br-fails") == ["bedrock-stream"]


def test_the_chat_page_offers_the_bedrock_model_besides_the_default(stack: LocalStack) -> None:
    with urllib.request.urlopen(stack.http_url + "config.json", timeout=5) as response:
        assert json.load(response)["models"] == [OPENAI_MODEL, BEDROCK_MODEL_ID]
