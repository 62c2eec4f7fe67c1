"""The real handlers on the local stack, driven through a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from devstack.stack import LocalStack

pytestmark = pytest.mark.integration


@dataclass
class Conversation:
    frames: list[dict[str, Any]]
    close_code: int | None

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    @property
    def text(self) -> str:
        return "".join(f["text"] for f in self.of("delta"))


def tokens(n: int) -> str:
    """What the mock LLM streams for ``#mock tokens=n``."""
    return "".join(f"t{i} " for i in range(n))


def send_message(prompt: str, request_id: str | None = None) -> str:
    return json.dumps(
        {"action": "sendMessage", "requestId": request_id or uuid.uuid4().hex, "prompt": prompt}
    )


async def converse(url: str, message: str) -> Conversation:
    """Send one message and read every frame until the server closes the socket."""
    frames = []
    async with websockets.connect(url, open_timeout=60) as ws:  # a busy machine is slow
        await ws.send(message)
        try:
            async for raw in ws:
                frames.append(json.loads(raw))
        except ConnectionClosed:
            pass
        return Conversation(frames, ws.close_code)


def llm_request(stack: LocalStack, marker: str, timeout: float = 20) -> Any:
    """The mock LLM's record of the request whose last message holds ``marker``."""
    mock = stack.mock_llm

    def find() -> Any:
        return next(
            (r for r in mock.requests if marker in json.dumps(r.body.get("messages", [])[-1:])),
            None,
        )

    assert mock.wait_for(lambda: find() is not None, timeout=timeout)
    return find()


def stream_invocation(stack: LocalStack, request_id: str) -> Any:
    """The stream function's invocation for ``request_id``, once it has reported."""

    def found(invocations: list[Any]) -> Any:
        return next(
            (
                i
                for i in invocations
                if i.function == "stream" and request_id in i.event["Records"][0]["Sns"]["Message"]
            ),
            None,
        )

    return stack.wait_for_invocations(found, timeout=10)


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_a_streamed_answer_arrives_complete_and_in_order_then_the_server_closes(
    stack: LocalStack,
) -> None:
    talk = run(converse(stack.ws_url, send_message("#mock tokens=30 rate=200", "in-order")))

    assert all(frame["requestId"] == "in-order" for frame in talk.frames)
    streamed = [f["type"] for f in talk.frames if f["type"] != "accepted"]
    assert streamed[0] == "start" and streamed[-1] == "end"
    assert set(streamed[1:-1]) == {"delta"}
    assert [d["seq"] for d in talk.of("delta")] == list(range(len(talk.of("delta"))))
    assert talk.text == tokens(30)
    assert talk.of("end")[0]["finishReason"] == "stop"
    assert len(talk.of("accepted")) == 1
    assert talk.close_code == 1000
    stream = stream_invocation(stack, "in-order")
    assert stream.ok and stream.max_memory_mb  # it ran in its own container


@pytest.mark.slow
def test_a_forty_second_answer_outlives_api_gateways_29_second_limit(stack: LocalStack) -> None:
    talk = run(
        converse(stack.ws_url, send_message("#mock tokens=400 rate=10", "long")), timeout=120
    )

    assert talk.text == tokens(400)
    assert talk.of("end")[0]["finishReason"] == "stop"
    assert talk.close_code == 1000
    assert stream_invocation(stack, "long").duration_ms > 29_000


def test_bad_input_gets_error_frames_and_nothing_is_published(stack: LocalStack) -> None:
    published = len(stack.published())

    async def scenario() -> list[dict[str, Any]]:
        async with websockets.connect(stack.ws_url) as ws:
            replies = []
            for body in (
                "not json",
                json.dumps({"action": "sendMessage"}),
                json.dumps({"action": "dance", "requestId": "r1"}),
            ):
                await ws.send(body)
                replies.append(json.loads(await ws.recv()))
            return replies

    not_json, no_prompt, unknown = run(scenario())
    assert (not_json["type"], not_json["code"]) == ("error", "bad_request")
    assert (no_prompt["type"], no_prompt["code"]) == ("error", "bad_request")
    assert (unknown["type"], unknown["code"], unknown["requestId"]) == (
        "error",
        "unknown_action",
        "r1",
    )
    assert len(stack.published()) == published


def test_a_client_that_leaves_mid_stream_stops_the_llm_call(stack: LocalStack) -> None:
    marker = uuid.uuid4().hex
    prompt = f"#mock tokens=400 rate=20\nleaving {marker}"

    async def leave_after_a_few_deltas() -> None:
        async with websockets.connect(stack.ws_url) as ws:
            await ws.send(send_message(prompt))
            async for raw in ws:
                if json.loads(raw)["type"] == "delta":
                    break

    run(leave_after_a_few_deltas())
    record = llm_request(stack, marker)
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=20)
    assert not record.completed
    assert record.tokens_sent < 400


def test_a_client_that_leaves_while_the_model_sends_nothing_stops_the_llm_call_too(
    stack: LocalStack,
) -> None:
    """With nothing to post, the stream function asks the Management API whether the client is
    still there (every 5 s of silence), rather than wait out the 30 s stall timeout."""
    marker = uuid.uuid4().hex
    prompt = f"#mock tokens=50 rate=50 stall_after=2\nleaving a stalled model {marker}"

    async def leave_once_it_stalls() -> None:
        async with websockets.connect(stack.ws_url) as ws:
            await ws.send(send_message(prompt))
            deltas = 0
            async for raw in ws:
                deltas += json.loads(raw)["type"] == "delta"
                if deltas == 2:
                    break

    run(leave_once_it_stalls())
    record = llm_request(stack, marker)
    assert stack.mock_llm.wait_for(lambda: record.client_closed, timeout=20)
    assert not record.completed and record.tokens_sent == 2
    invocation = stream_invocation(stack, marker)
    assert invocation.ok  # the client leaving is no failure


def test_an_llm_failing_mid_stream_gives_five_deltas_then_an_llm_error_and_a_close(
    stack: LocalStack,
) -> None:
    talk = run(converse(stack.ws_url, send_message("#mock tokens=20 rate=200 fail_after=5")))

    assert talk.text == tokens(5)
    assert talk.frames[-1]["type"] == "error"
    assert talk.frames[-1]["code"] == "llm_error"
    assert not talk.of("end")
    assert talk.close_code == 1000


def test_fifty_concurrent_clients_each_get_exactly_their_own_stream(stack: LocalStack) -> None:
    async def everyone() -> list[Conversation]:
        return await asyncio.gather(
            *(
                converse(stack.ws_url, send_message(f"#mock tokens={5 + i} rate=50", f"client-{i}"))
                for i in range(50)
            )
        )

    talks = run(everyone(), timeout=180)

    for i, talk in enumerate(talks):
        assert {f["requestId"] for f in talk.frames} == {f"client-{i}"}
        assert talk.text == tokens(5 + i)
        assert [d["seq"] for d in talk.of("delta")] == list(range(len(talk.of("delta"))))
        assert talk.close_code == 1000


def test_the_chat_page_learns_the_websocket_url_from_config_json(stack: LocalStack) -> None:
    with urllib.request.urlopen(stack.http_url + "config.json", timeout=5) as response:
        config = json.load(response)
    assert config["wsUrl"] == stack.ws_url
    with urllib.request.urlopen(stack.http_url, timeout=5) as response:
        assert response.status == 200
