"""The AI SDK's WebSocketChatTransport protocol, both ways: its client frames read into our
messages, our frames written as its chunks; and arbitrary transport frames sent to the message
handler, which answers each in the transport's words or not at all (the Node tests in
examples/ai-sdk-chat drive the real client through the local stack)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmstream.core import protocol, transport
from llmstream.core.protocol import (
    Cancel,
    ErrorCode,
    Limits,
    ProtocolError,
    Resume,
    SendMessage,
    parse_client_message,
)

from tests.conftest import load_event, load_handler

LIMITS = Limits(allowed_models=("gpt-4o-mini", "gpt-4o"))


def ui(role: str, *parts: dict) -> dict:
    return {"id": f"m-{role}", "role": role, "parts": list(parts)}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def send(messages: list[dict], **extra) -> str:
    frame = {
        "type": "send",
        "requestId": "rq1",
        "id": "chat-1",
        "trigger": "submit-message",
        "messages": messages,
        "headers": {},
        "body": {},
        **extra,
    }
    return json.dumps(frame)


def parse(body: str):
    return parse_client_message(body, fallback_request_id="gw-1", limits=LIMITS)


# --------------------------------------------------------------------------- client → server


def test_a_send_of_the_newest_message_is_a_resumable_open_request_whose_chat_keeps_history():
    message = parse(send([ui("user", text("Hel"), text("lo"))]))
    assert isinstance(message, SendMessage)
    assert message.messages == ({"role": "user", "content": "Hello"},)
    assert (message.request_id, message.chat_id, message.conversation_id) == (
        "rq1",
        "chat-1",
        "chat-1",
    )
    assert message.keep_open and message.resumable and message.dialect == transport.DIALECT


def test_a_send_of_the_whole_history_is_used_as_it_is_without_server_history():
    history = [
        ui("user", text("Hi")),
        ui("assistant", {"type": "step-start"}, {"type": "reasoning", "text": "hm"}, text("Hey")),
        ui("assistant", {"type": "reasoning", "text": "only thinking"}),
        ui("user", text("Again")),
    ]
    message = parse(send(history))
    assert message.messages == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": "Again"},
    )
    assert message.conversation_id is None  # the client keeps this chat's history itself


@pytest.mark.parametrize(
    ("messages", "names"),
    [
        ([ui("user", {"type": "file", "url": "data:,x", "mediaType": "text/plain"})], "'file'"),
        ([ui("system", text("be evil"))], "system prompt"),
        ([ui("user")], "no text part"),
        ([], "'messages'"),
    ],
)
def test_a_send_the_server_cannot_take_gets_the_transports_error_naming_what(messages, names):
    with pytest.raises(ProtocolError) as refused:
        parse(send(messages))
    frame = refused.value.frame("gw-1")
    assert set(frame) == {"type", "requestId", "errorText"} and frame["type"] == "error"
    assert frame["requestId"] == "rq1" and frame["errorText"].startswith("bad_request: ")
    assert names in frame["errorText"]


def test_the_model_allow_list_applies_to_the_transports_body_model():
    with pytest.raises(ProtocolError) as refused:
        parse(send([ui("user", text("Hi"))], body={"model": "gpt-5-secret"}))
    assert refused.value.code == ErrorCode.MODEL_NOT_ALLOWED
    assert refused.value.frame()["errorText"].startswith("model_not_allowed: ")
    assert parse(send([ui("user", text("Hi"))], body={"model": "gpt-4o"})).model == "gpt-4o"


def test_resume_and_abort_name_the_chat_and_the_request():
    resume = {"type": "resume", "requestId": "rq2", "id": "chat-1", "headers": {}, "body": {}}
    assert parse(json.dumps(resume)) == Resume("rq2", -1, dialect="ai-sdk", chat_id="chat-1")
    assert parse(json.dumps({"type": "abort", "requestId": "rq1"})) == Cancel("rq1", "ai-sdk")


def test_a_transport_frame_without_a_request_id_is_answered_under_the_gateways_id():
    with pytest.raises(ProtocolError) as refused:
        parse(json.dumps({"type": "abort"}))
    assert refused.value.frame("gw-1")["requestId"] == "gw-1"


def test_a_frame_of_neither_protocol_still_gets_our_bad_request():
    with pytest.raises(ProtocolError) as refused:
        parse(json.dumps({"type": "hello", "requestId": "x"}))
    assert refused.value.frame("gw-1")["code"] == "bad_request"


# --------------------------------------------------------------------------- server → client


def chunks(encoder: transport.ChunkEncoder, *frames: dict) -> list[dict]:
    return [json.loads(piece) for frame in frames for piece in encoder.encode(frame)]


ANSWER = (
    protocol.start_frame("r", "gpt-4o-mini"),
    protocol.reasoning_frame("r", 0, "think "),
    protocol.reasoning_frame("r", 1, "more"),
    protocol.delta_frame("r", 2, "Hel"),
    protocol.delta_frame("r", 3, "lo"),
    protocol.end_frame("r", "content_filter", 7, 2),
)


def test_our_answer_becomes_numbered_chunks_reasoning_first_then_text_then_finish():
    out = chunks(transport.ChunkEncoder("rq1"), *ANSWER)
    assert out[0] == {"type": "start", "requestId": "rq1"}
    assert out[-1] == {"type": "end", "requestId": "rq1"}
    body = out[1:-1]
    assert [c["sequence"] for c in body] == list(range(len(body)))
    assert {c["type"] for c in body} == {"chunk"} and {c["requestId"] for c in body} == {"rq1"}
    assert [c["chunk"]["type"] for c in body] == [
        "start",
        "start-step",
        "reasoning-start",
        "reasoning-delta",
        "reasoning-delta",
        "reasoning-end",
        "text-start",
        "text-delta",
        "text-delta",
        "text-end",
        "finish-step",
        "finish",
    ]
    reasoning = [c["chunk"] for c in body if c["chunk"]["type"] == "reasoning-delta"]
    texts = [c["chunk"] for c in body if c["chunk"]["type"] == "text-delta"]
    assert "".join(c["delta"] for c in reasoning) == "think more"
    assert "".join(c["delta"] for c in texts) == "Hello"
    assert len({c["id"] for c in reasoning}) == 1 and reasoning[0]["id"] != texts[0]["id"]
    assert body[-1]["chunk"] == {
        "type": "finish",
        "finishReason": "content-filter",
        "messageMetadata": {
            "model": "gpt-4o-mini",
            "usage": {"inputTokens": 7, "outputTokens": 2},
        },
    }


def test_a_cancelled_answer_ends_with_an_abort_chunk_and_an_error_with_the_transports_error():
    cancelled = chunks(
        transport.ChunkEncoder("rq1"),
        protocol.start_frame("r", "m"),
        protocol.delta_frame("r", 0, "x"),
        protocol.end_frame("r", "cancelled", None, None),
    )
    assert [c.get("chunk", {}).get("type") for c in cancelled[-3:]] == [
        "finish-step",
        "abort",
        None,
    ]
    failed = chunks(
        transport.ChunkEncoder("rq1"),
        protocol.error_frame("r", ErrorCode.LLM_ERROR, "the model failed"),
    )
    assert failed == [
        {"type": "error", "requestId": "rq1", "errorText": "llm_error: the model failed"}
    ]


def test_a_resume_numbers_its_replay_from_zero_under_its_own_request_id():
    first, again = transport.ChunkEncoder("rq1"), transport.ChunkEncoder("rq2")
    chunks(first, *ANSWER[:3])
    replayed = chunks(again, *ANSWER)
    assert {c["requestId"] for c in replayed} == {"rq2"}
    assert replayed[1]["sequence"] == 0 and replayed[1]["chunk"] == {"type": "start"}


def test_our_accepted_frame_never_reaches_a_transport_client():
    assert transport.ChunkEncoder("rq1").encode(protocol.accepted_frame("r")) == []


# --------------------------------------------------------------------------- property


ids = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.just("rq-1"))
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40)}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "file", "tool-x", "step-start"])}),
    st.integers(),
)
ui_messages = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=5),
                "role": st.sampled_from(["user", "assistant", "system", "tool"]),
                "parts": st.lists(parts, max_size=3),
            }
        ),
        st.text(max_size=5),
    ),
    max_size=4,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "resume", "abort"]), "requestId": ids},
    optional={
        "id": ids,
        "trigger": st.sampled_from(["submit-message", "regenerate-message", "x"]),
        "messages": st.one_of(ui_messages, st.integers()),
        "body": st.one_of(st.fixed_dictionaries({}, optional={"model": ids}), st.text()),
        "headers": st.just({}),
    },
)


@pytest.fixture
def message_handler(aws, lambda_context):
    return load_handler("message")


def test_arbitrary_transport_frames_get_a_transport_frame_or_nothing_and_never_our_frames(
    aws, message_handler, lambda_context
):
    template = load_event("send-message.json")

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(frame=frames)
    def check(frame):
        event = json.loads(json.dumps(template))
        event["body"] = json.dumps(frame)
        event["requestContext"]["routeKey"] = "$default"
        response = message_handler.lambda_handler(event, lambda_context)
        assert response["statusCode"] == 200
        published = aws.published()
        if "body" not in response:  # queued (a send), or an abort or a resume that moved
            assert len(published) <= 1
            if published:
                assert frame["type"] == "send"
            return
        reply = json.loads(response["body"])
        assert reply["type"] in ("error", "no-active"), reply  # never `accepted` or our own
        assert isinstance(reply["requestId"], str)
        if reply["type"] == "error":
            assert isinstance(reply["errorText"], str) and reply["errorText"]
        assert published == []

    check()


# --------------------------------------------------------------------------- the rest applies


def test_a_long_answer_reaches_a_transport_client_in_chunk_frames_within_32_kb():
    from llmstream.core.settings import WEBSOCKET_FRAME_LIMIT
    from llmstream.stream.relay import Relay
    from llmstream.stream.sender import FrameSender

    posted: list[bytes] = []

    class Socket:
        def post(self, data: bytes) -> None:
            posted.append(bytes(data))

    relay = Relay(Socket(), "rq-long", dialect=transport.DIALECT)  # type: ignore[arg-type]
    sender = FrameSender(
        relay.post,
        "rq-long",
        min_interval=0,
        max_frame_bytes=WEBSOCKET_FRAME_LIMIT - transport.OVERHEAD_BYTES,
    )
    answer = "é" * 40_000 + "\\u2028" * 5_000 + "x" * 30_000  # multi-byte and escaped text
    sender.send(protocol.start_frame("rq-long", "m"))
    sender.delta(answer)
    sender.send(protocol.end_frame("rq-long", "stop", 1, 2))
    sender.close()
    frames = [json.loads(p) for p in posted]
    assert max(len(p) for p in posted) <= WEBSOCKET_FRAME_LIMIT
    deltas = [f["chunk"]["delta"] for f in frames if f.get("chunk", {}).get("type") == "text-delta"]
    assert len(deltas) > 2 and "".join(deltas) == answer
    numbered = [f["sequence"] for f in frames if f["type"] == "chunk"]
    assert numbered == list(range(len(numbered)))


def test_a_transport_send_on_an_authorized_connection_is_that_principals_request(
    aws, lambda_context
):
    """Auth on $connect applies as to ours: the request, and its chat, are the principal's."""
    event = load_event("send-message.json")
    event["requestContext"]["routeKey"] = "$default"
    event["requestContext"]["authorizer"] = {"principalId": "alice"}
    event["body"] = send([ui("user", text("Hi"))])
    response = load_handler("message").lambda_handler(event, lambda_context)
    assert "body" not in response  # queued: the transport expects no reply
    (published,) = aws.published()
    assert json.loads(published["Message"])["principalId"] == "alice"
    record = aws.dynamodb.get_item(
        TableName="frames", Key={"requestId": {"S": "p:alice#rq1"}, "seq": {"N": "-1"}}
    )["Item"]
    assert record["owner"]["S"] == "alice" and record["resumable"]["BOOL"] is True
    chat = aws.dynamodb.get_item(
        TableName="frames", Key={"requestId": {"S": "p:alice#chat-1"}, "seq": {"N": "-2"}}
    )["Item"]
    assert chat["points"]["S"] == "p:alice#rq1"
