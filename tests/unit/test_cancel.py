"""Cancel: the message, the request record, and a stream that stops within one frame once the
stream function sees it (a scripted model, the real frame sender, moto DynamoDB, the mock LLM)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import jsonschema
import pytest
from llmstream.core import protocol, schema
from llmstream.core.envelope import PromptEnvelope
from llmstream.core.protocol import Cancel, ErrorCode, Limits, ProtocolError, parse_client_message
from llmstream.requests.record import Status
from llmstream.stream.providers.base import Chunk
from llmstream.stream.sender import FrameSender
from llmstream.stream.signals import Signal
from llmstream.stream.streaming import StreamLimits, stream_answer
from moto import mock_aws

from tests.conftest import load_event, load_handler
from tests.unit.test_sessions_core import FRAMES, World, create_session_tables, prompt, settings

CLIENT_MESSAGE = {"$ref": "#/$defs/clientMessage", "$defs": schema.SCHEMA["$defs"]}
ENVELOPE = PromptEnvelope(
    "r", "c", "h.example.com", "prod", ({"role": "user", "content": "count"},), "m", "openai", 100
)


@pytest.fixture
def world(mock_llm) -> Iterator[World]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_session_tables(dynamodb)
        mock_llm.reset()
        yield World(dynamodb, mock_llm, settings())


def test_a_cancel_names_the_request_it_stops_and_matches_the_client_schema():
    body = {"action": "cancel", "requestId": "r-1"}
    assert parse_client_message(json.dumps(body), fallback_request_id="gw", limits=Limits()) == (
        Cancel("r-1")
    )
    jsonschema.validate(body, CLIENT_MESSAGE)


def test_a_cancel_without_a_request_id_is_a_bad_request_not_a_cancel_of_the_gateways_id():
    with pytest.raises(ProtocolError) as refused:
        parse_client_message('{"action":"cancel"}', fallback_request_id="gw", limits=Limits())
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert "'requestId' is required" in refused.value.message


# --------------------------------------------------------------------------- the stream


class ScriptedModel:
    """A model that streams ``t0 t1 ...`` and records whether its stream was closed."""

    def __init__(self, count: int, on_chunk: Any = lambda i: None) -> None:
        self.count = count
        self.on_chunk = on_chunk
        self.calls = 0
        self.closed = False

    def stream(self, messages: Any, **options: Any) -> Any:
        self.calls += 1
        model = self

        class Chunks:
            def __iter__(self):
                for i in range(model.count):
                    model.on_chunk(i)
                    yield Chunk(text=f"t{i} ")
                yield Chunk(finish_reason="stop", input_tokens=3, output_tokens=model.count)

            def close(self) -> None:
                model.closed = True

        return Chunks()


def test_once_the_cancel_is_seen_at_most_one_more_delta_frame_is_posted_then_end_cancelled():
    posted: list[dict[str, Any]] = []
    lock = threading.Lock()
    flag = threading.Event()
    seen_at: list[int] = []  # how many frames had been posted when the cancel was seen

    def slow_post(data: bytes) -> None:
        time.sleep(0.003)  # slower than the model, so text piles up behind each post
        with lock:
            posted.append(json.loads(data))

    def cancelled() -> bool:
        if flag.is_set() and not seen_at:
            with lock:
                seen_at.append(len(posted))
        return flag.is_set()

    model = ScriptedModel(2000, on_chunk=lambda i: flag.set() if i == 300 else time.sleep(0.0002))
    sender = FrameSender(slow_post, "r", min_interval=0)
    result = stream_answer(ENVELOPE, model, sender, cancelled=cancelled)

    assert result.outcome == Status.CANCELLED and model.closed
    assert posted[-1] == protocol.end_frame("r", "cancelled")
    after = [f for f in posted[seen_at[0] :] if f["type"] == "delta"]
    assert len(after) <= 2, "more than the frame in flight and the one being assembled"
    text = "".join(f["text"] for f in posted if f["type"] == "delta")
    assert text == "".join(f"t{i} " for i in range(300))  # nothing after the cancel, no gap


def test_a_cancel_before_the_model_was_called_ends_the_answer_without_calling_it():
    posted: list[dict[str, Any]] = []
    model = ScriptedModel(10)
    sender = FrameSender(lambda data: posted.append(json.loads(data)), "r", min_interval=0)
    result = stream_answer(ENVELOPE, model, sender, cancelled=lambda: True)
    assert result.outcome == Status.CANCELLED and model.calls == 0
    assert [f["type"] for f in posted] == ["start", "end"]
    assert posted[-1]["finishReason"] == "cancelled"


def test_a_cancelled_answer_is_kept_in_the_conversation_as_far_as_it_went():
    turns: list[tuple[str, str]] = []
    model = ScriptedModel(50)
    sender = FrameSender(lambda data: None, "r", min_interval=0)
    stream_answer(
        ENVELOPE,
        model,
        sender,
        cancelled=lambda: sender.stats.deltas >= 5,
        before_end=lambda outcome, text: turns.append((outcome, text)),
    )
    assert turns == [(Status.CANCELLED, "t0 t1 t2 t3 t4 ")]


@pytest.fixture(params=["openai", "bedrock"])
def stalling_model(request, mock_llm) -> Iterator[tuple[Any, Any]]:
    """A real provider over HTTP whose model sends two tokens, then nothing at all."""
    if request.param == "openai":
        from llmstream.stream.providers.openai import OpenAIProvider, openai_client

        mock_llm.reset()
        yield OpenAIProvider(openai_client("sk-test", mock_llm.base_url)), mock_llm
        return
    from llmstream.stream.providers.bedrock import BedrockProvider

    from devstack.mock_bedrock import MockBedrock

    with MockBedrock() as mock:
        yield BedrockProvider(mock.client), None


def test_a_cancel_while_the_model_stalls_ends_the_answer_at_once_not_at_the_stall_timeout(
    stalling_model,
):
    provider, mock = stalling_model
    envelope = ENVELOPE._replace(
        messages=({"role": "user", "content": "#mock tokens=50 rate=100 stall_after=2"},),
    )
    posted: list[dict[str, Any]] = []
    sender = FrameSender(lambda data: posted.append(json.loads(data)), "r", min_interval=0)
    cancellation = Signal()

    def cancel_once_stalled() -> None:
        while sender.stats.deltas < 2:
            time.sleep(0.01)
        time.sleep(0.2)  # the model now sends nothing; the stream waits in a read
        cancellation.set()

    threading.Thread(target=cancel_once_stalled, daemon=True).start()
    # Without the abort this would wait out the 20 s read timeout and end in a timeout error.
    result = stream_answer(
        envelope, provider, sender, cancelled=cancellation, limits=StreamLimits(read_timeout=20)
    )

    assert result.outcome == Status.CANCELLED and cancellation.acted
    assert [f["type"] for f in posted] == ["start", *["delta"] * (len(posted) - 2), "end"]
    assert "".join(f["text"] for f in posted if f["type"] == "delta") == "t0 t1 "
    assert posted[-1]["finishReason"] == "cancelled"
    if mock is not None:  # the model's HTTP stream was closed, well before it timed out
        assert mock.wait_for(lambda: mock.requests[0].client_closed, timeout=5)


def test_a_client_that_leaves_while_the_model_stalls_ends_the_stream_at_once(stalling_model):
    from llmstream.apigw.connection import ConnectionGone

    provider, mock = stalling_model
    envelope = ENVELOPE._replace(
        messages=({"role": "user", "content": "#mock tokens=50 rate=100 stall_after=2"},),
    )
    posted: list[dict[str, Any]] = []
    left = threading.Event()

    def probe() -> None:  # what GetConnection says
        if left.is_set():
            raise ConnectionGone("410")

    sender = FrameSender(
        lambda data: posted.append(json.loads(data)),
        "r",
        min_interval=0,
        probe=probe,
        probe_after=0.05,
    )

    def leave_once_stalled() -> None:
        while sender.stats.deltas < 2:
            time.sleep(0.01)
        time.sleep(0.2)
        left.set()

    threading.Thread(target=leave_once_stalled, daemon=True).start()
    # Without the probe and the abort this would wait out the 20 s read timeout.
    result = stream_answer(envelope, provider, sender, limits=StreamLimits(read_timeout=20))

    assert result.outcome == Status.GONE
    assert [f["type"] for f in posted] == ["start", *["delta"] * (len(posted) - 1)]
    assert "".join(f["text"] for f in posted if f["type"] == "delta") == "t0 t1 "
    if mock is not None:
        assert mock.wait_for(lambda: mock.requests[0].client_closed, timeout=5)


def test_a_signal_raised_before_its_action_is_held_still_runs_it_once():
    # A cancel seen between the model's call and the first read of its stream: the read
    # must not wait on a silent model for want of an abort.
    signal, runs = Signal(), []
    signal.set()
    with signal.on_set(lambda: runs.append("abort")):
        signal.set()
    assert runs == ["abort"] and signal.acted
    later = Signal()
    with later.on_set(lambda: runs.append("later")):
        pass
    later.set()  # the block is over: nothing is held any more
    assert runs == ["abort"] and not later.acted


def test_a_cancel_that_comes_after_the_answer_changes_nothing():
    posted: list[dict[str, Any]] = []
    cancellation = Signal()
    sender = FrameSender(lambda data: posted.append(json.loads(data)), "r", min_interval=0)
    result = stream_answer(ENVELOPE, ScriptedModel(3), sender, cancelled=cancellation)
    cancellation.set()
    assert result.outcome == Status.COMPLETED and not cancellation.acted
    assert posted[-1]["type"] == "end" and posted[-1]["finishReason"] == "stop"


# --------------------------------------------------------------------------- end to end


def test_a_cancel_stops_the_model_within_one_poll_and_settles_the_request(world: World):
    world.send("conn-a", **prompt("stop-me", "#mock tokens=400 rate=100"))
    a = world.connection("conn-a")
    streaming = threading.Thread(target=world.stream)
    streaming.start()
    assert world.mock_llm.wait_for(lambda: len(a.deltas()) >= 5, timeout=10)
    reply = world.send("conn-a", action="cancel", requestId="stop-me")
    streaming.join(10)
    assert reply == {"type": "accepted", "requestId": "stop-me"}
    assert a.frames[-1]["type"] == "end" and a.frames[-1]["finishReason"] == "cancelled"
    assert a.seqs() == list(range(len(a.seqs())))
    record = world.mock_llm.requests[-1]
    assert world.mock_llm.wait_for(lambda: record.client_closed, timeout=5)
    assert record.tokens_sent < 400
    assert world.requests.read("anon#stop-me").status == Status.CANCELLED
    again = world.send("conn-a", action="cancel", requestId="stop-me")  # it is over now
    assert again["code"] == "not_found"


def test_a_cancel_that_arrives_while_the_request_is_queued_skips_the_model(world: World):
    world.send("conn-a", **prompt("early", "#mock tokens=5"))
    assert world.send("conn-a", action="cancel", requestId="early")["type"] == "accepted"
    world.stream(next(m for m in world.published if m.request_id == "early"))
    assert [f["type"] for f in world.connections["conn-a"].frames] == ["start", "end"]
    assert world.mock_llm.requests == []


def test_a_cancel_recorded_after_the_claim_but_before_the_model_call_skips_the_call(
    world: World,
):
    """The watcher looks only every CONTROL_POLL_MS; the record is read once more just before
    the model is called, so a cancel that came in between still skips the call."""
    world.settings = settings(control_poll_interval=60.0)  # the watcher would not see it in time
    world.send("conn-a", **prompt("late", "#mock tokens=5"))

    def cancel_then_build(envelope):  # runs after the claim, before the model is called
        assert world.send("conn-a", action="cancel", requestId="late")["type"] == "accepted"
        return world.model()

    world.stream(provider=cancel_then_build)
    assert [f["type"] for f in world.connections["conn-a"].frames] == ["start", "end"]
    assert world.connections["conn-a"].frames[-1]["finishReason"] == "cancelled"
    assert world.mock_llm.requests == []


def test_a_cancel_that_overtakes_its_send_still_cancels_it(world: World):
    """API Gateway runs one connection's messages in no fixed order: the cancel may be handled
    before the sendMessage it follows. It is held, and the request starts cancelled."""
    early = world.send("conn-a", action="cancel", requestId="raced")
    assert early["code"] == "not_found"  # nothing to cancel yet; the cancel waits for it
    assert world.send("conn-a", **prompt("raced", "#mock tokens=5"))["type"] == "accepted"
    world.stream()
    frames = world.connections["conn-a"].frames
    assert [f["type"] for f in frames] == ["start", "end"]
    assert frames[-1]["finishReason"] == "cancelled"
    assert frames[-1]["usage"] == {"inputTokens": None, "outputTokens": None}
    assert world.mock_llm.requests == []
    # Held for its own connection only: another's send of the same id is not cancelled by it.
    world.send("conn-b", action="cancel", requestId="other")
    assert world.send("conn-c", **prompt("other", "#mock tokens=1"))["code"] == "bad_request"


def test_a_cancel_from_the_new_connection_before_its_resume_lands_still_stops_the_answer(
    world: World,
):
    """The chat page sends resume and cancel back to back; handled in either order, the cancel
    stops the answer: with auth off, the id of a resumable answer is what may cancel it."""
    world.send("conn-a", **prompt("moving", "#mock tokens=400 rate=100", resumable=True))
    a = world.connection("conn-a")
    streaming = threading.Thread(target=world.stream)
    streaming.start()
    assert world.mock_llm.wait_for(lambda: len(a.deltas()) >= 3, timeout=10)
    cancel = world.send("conn-b", action="cancel", requestId="moving")  # before the resume
    resume = world.send("conn-b", action="resume", requestId="moving", afterSeq=a.seqs()[-1])
    streaming.join(20)
    assert cancel == {"type": "accepted", "requestId": "moving"}
    assert resume["type"] == "accepted"
    assert world.requests.read("anon#moving").status == Status.CANCELLED
    assert world.mock_llm.requests[-1].tokens_sent < 400


def test_only_the_connection_or_the_principal_that_owns_an_answer_may_cancel_it(world: World):
    world.send("conn-a", **prompt("anon-r", "#mock tokens=5"))
    world.send("conn-c", "carol", **prompt("carol-r", "#mock tokens=5"))
    assert world.send("conn-b", action="cancel", requestId="anon-r")["code"] == "not_found"
    assert world.send("conn-d", "dave", action="cancel", requestId="carol-r")["code"] == "not_found"
    # Carol may cancel from any of her connections.
    assert world.send("conn-e", "carol", action="cancel", requestId="carol-r")["type"] == (
        "accepted"
    )
    assert world.send("conn-a", action="cancel", requestId="anon-r")["type"] == "accepted"


# --------------------------------------------------------------------------- the handler


@pytest.fixture
def session_aws(aws, monkeypatch):
    create_session_tables(aws.dynamodb)
    monkeypatch.setenv("FRAMES_TABLE", FRAMES)
    return aws


def answer(response: dict) -> dict:
    assert response["statusCode"] == 200
    return json.loads(response["body"])


def test_the_cancel_event_flags_the_queued_request_of_its_connection(session_aws, lambda_context):
    handler = load_handler("message")
    handler.lambda_handler(load_event("send-message.json"), lambda_context)
    frame = answer(handler.lambda_handler(load_event("cancel.json"), lambda_context))
    assert frame == {"type": "accepted", "requestId": "req-123"}
    item = session_aws.dynamodb.get_item(
        TableName=FRAMES, Key={"requestId": {"S": "anon#req-123"}, "seq": {"N": "-1"}}
    )["Item"]
    assert item["cancelRequested"] == {"BOOL": True} and item["status"] == {"S": "queued"}


def test_the_cancel_event_for_nothing_in_progress_is_not_found(session_aws, lambda_context):
    frame = answer(
        load_handler("message").lambda_handler(load_event("cancel.json"), lambda_context)
    )
    assert (frame["type"], frame["code"], frame["requestId"]) == ("error", "not_found", "req-123")
    assert session_aws.published() == []


@pytest.mark.parametrize("function", ["message", "stream", "deadletter"])
def test_a_function_without_its_frames_table_fails_at_cold_start_naming_it(
    aws, monkeypatch, function
):
    from llmstream.core.settings import ConfigurationError

    monkeypatch.delenv("FRAMES_TABLE")
    monkeypatch.setenv("FAILED_QUEUE_URL", "https://sqs.us-east-1.amazonaws.com/1/failed")
    with pytest.raises(ConfigurationError, match="FRAMES_TABLE"):
        load_handler(function)
