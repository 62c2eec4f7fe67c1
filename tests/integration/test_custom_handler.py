"""A message handler of one's own on the local stack: examples/custom-handler's function answers
its own route (askAboutOrder) with llmstream.publish, and the stack's stream function streams
the answer, through a real WebSocket client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from devstack.stack import LocalStack
from tests.conftest import ROOT
from tests.integration.conftest import running_stack
from tests.integration.test_local_stack import converse, llm_request, run, stream_invocation, tokens

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "custom-handler"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    yield from running_stack(extra_templates=[EXAMPLE])


def ask(question: str, request_id: str, order_id: str = "A-1001", **more: Any) -> str:
    return json.dumps(
        {
            "action": "askAboutOrder",
            "orderId": order_id,
            "question": question,
            "requestId": request_id,
            **more,
        }
    )


def record(stack: LocalStack, request_id: str) -> dict[str, Any]:
    item = stack.client("dynamodb").get_item(
        TableName=stack.tables["FRAMES_TABLE"],
        Key={"requestId": {"S": f"anon#{request_id}"}, "seq": {"N": "-1"}},
        ConsistentRead=True,
    )["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_the_custom_route_is_accepted_then_the_stream_function_streams_the_answer(
    stack: LocalStack,
) -> None:
    rid = f"order-{uuid.uuid4().hex}"
    question = f"When will it arrive? (asked as {rid})\n#mock tokens=12 rate=200"
    talk = run(converse(stack.ws_url, ask(question, rid)))

    assert all(frame["requestId"] == rid for frame in talk.frames)
    assert talk.frames[0] == {"type": "accepted", "requestId": rid}  # its route response
    streamed = [f["type"] for f in talk.frames if f["type"] != "accepted"]
    assert streamed[0] == "start" and streamed[-1] == "end"
    assert set(streamed[1:-1]) == {"delta"}
    assert [d["seq"] for d in talk.of("delta")] == list(range(len(talk.of("delta"))))
    assert talk.text == tokens(12)
    assert talk.of("end")[0]["finishReason"] == "stop"
    assert talk.close_code == 1000
    # The prompt the model got is the one the handler made of the order.
    [prompt] = llm_request(stack, rid).body["messages"][-1:]
    assert "Order A-1001 of Ada" in prompt["content"] and "DHL" in prompt["content"]
    assert f"The customer asks: When will it arrive? (asked as {rid})" in prompt["content"]
    # Its own function answered the route; the stream function settled the record it registered.
    [handled] = [i for i in stack.invocations("ask-about-order") if rid in i.event["body"]]
    assert handled.ok
    assert stream_invocation(stack, rid).ok
    assert record(stack, rid)["status"] == "completed"


def test_a_cancel_stops_an_answer_the_custom_handler_queued(stack: LocalStack) -> None:
    rid = f"order-{uuid.uuid4().hex}"

    async def cancel_after_the_first_delta() -> list[dict[str, Any]]:
        frames = []
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            await ws.send(ask("Tell me everything.\n#mock tokens=400 rate=20", rid))
            async for raw in ws:
                frame = json.loads(raw)
                frames.append(frame)
                if frame["type"] == "delta" and frame["seq"] == 0:
                    await ws.send(json.dumps({"action": "cancel", "requestId": rid}))
                if frame["type"] == "end":
                    return frames
        return frames

    frames = run(cancel_after_the_first_delta())
    assert [f["type"] for f in frames].count("accepted") == 2  # the ask, then the cancel
    assert frames[-1]["type"] == "end" and frames[-1]["finishReason"] == "cancelled"
    assert len([f for f in frames if f["type"] == "delta"]) < 400


def test_an_unknown_order_gets_the_handlers_error_frame_and_nothing_is_published(
    stack: LocalStack,
) -> None:
    published = len(stack.published())

    async def scenario() -> dict[str, Any]:
        async with websockets.connect(stack.ws_url, open_timeout=60) as ws:
            await ws.send(ask("Where is it?", "order-unknown", order_id="Z-9"))
            return json.loads(await ws.recv())

    frame = run(scenario())
    assert (frame["type"], frame["code"], frame["message"]) == (
        "error",
        "not_found",
        "no order 'Z-9'",
    )
    assert len(stack.published()) == published


def test_the_stacks_own_routes_still_answer_beside_the_custom_one(stack: LocalStack) -> None:
    body = json.dumps({"action": "sendMessage", "prompt": "#mock tokens=3", "requestId": "own"})
    talk = run(converse(stack.ws_url, body))
    assert talk.text == tokens(3) and talk.of("end")[0]["finishReason"] == "stop"
