"""Chat sessions in one process: conversation history, resume after a drop (live and from
storage), keepOpen, and the control items and keys behind them. moto DynamoDB, the mock LLM over
real SSE, and in-memory connections that can go away on cue."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import jsonschema
import pytest
from llmstream.apigw.connection import ConnectionGone, Throttled
from llmstream.core import protocol, schema
from llmstream.core.envelope import (
    Address,
    InvalidEnvelope,
    PromptEnvelope,
    ResumeEnvelope,
    parse_envelope,
    parse_message,
)
from llmstream.core.protocol import ErrorCode, Limits, ProtocolError, Resume, parse_client_message
from llmstream.core.settings import Settings
from llmstream.intake.accept import Caller, accept_message
from llmstream.intake.limits import ConnectionLimits
from llmstream.requests.frames import CHUNK_BYTES, StoredFrames
from llmstream.requests.history import Conversations, estimate_tokens
from llmstream.requests.lifecycle import (
    Attached,
    NewRequest,
    Refused,
    Replay,
    Requests,
    Taken,
)
from llmstream.requests.record import Status, owner_key
from llmstream.stream.providers.openai import OpenAIProvider, openai_client
from llmstream.stream.relay import Relay
from llmstream.stream.worker import run_prompt
from moto import mock_aws

from tests.conftest import load_event, load_handler
from tests.unit.conftest import create_tables

API_DOMAIN = "abc123def4.execute-api.us-east-1.amazonaws.com"
FRAMES, CONVERSATIONS = "frames", "conversations"
CLIENT_MESSAGE = {"$ref": "#/$defs/clientMessage", "$defs": schema.SCHEMA["$defs"]}


def tokens(n: int, start: int = 0) -> str:
    return "".join(f"t{i} " for i in range(start, n))


# --------------------------------------------------------------------------- world


def create_session_tables(dynamodb: Any) -> None:
    """The frames and conversations tables (and the connections table), as template.yaml has
    them."""
    create_tables(dynamodb)


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_session_tables(client)
        yield client


class FakeConnection:
    """A client's connection: records frames; ``gone_after`` deltas, it disappears."""

    def __init__(self, connection_id: str, gone_after: int | None = None) -> None:
        self.connection_id = connection_id
        self.gone_after = gone_after
        self.frames: list[dict[str, Any]] = []
        self.closed = False
        self.left = threading.Event()
        self.throttle_next = 0
        self._lock = threading.Lock()

    def alive(self) -> bool:
        return not self.left.is_set()

    def post(self, data: bytes) -> None:
        with self._lock:
            frame = json.loads(data)
            if self.left.is_set():
                raise ConnectionGone("410")
            if self.throttle_next:
                self.throttle_next -= 1
                raise Throttled("429")
            if (
                self.gone_after is not None
                and frame["type"] == "delta"
                and len(self.deltas()) >= self.gone_after
            ):
                self.left.set()
                raise ConnectionGone("410")
            self.frames.append(frame)

    def close(self) -> bool:
        self.closed = True
        return True

    def deltas(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "delta"]

    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.deltas()]

    def text(self) -> str:
        return "".join(f["text"] for f in self.deltas())


@dataclass
class World:
    """The message handler's and the stream function's view of one deployment."""

    dynamodb: Any
    mock_llm: Any
    settings: Settings
    connections: dict[str, FakeConnection] = field(default_factory=dict)
    published: list[Any] = field(default_factory=list)

    @property
    def requests(self) -> Requests:
        return Requests.of(self.dynamodb, self.settings)

    def connection(self, connection_id: str, **options: Any) -> FakeConnection:
        return self.connections.setdefault(connection_id, FakeConnection(connection_id, **options))

    def caller(self, connection_id: str, principal: str | None = None) -> Caller:
        return Caller(Address(connection_id, API_DOMAIN, "prod"), f"gw-{connection_id}", principal)

    def send(self, connection_id: str, principal: str | None = None, **body: Any) -> dict:
        """What the message function answers to ``body`` from ``connection_id``."""
        return accept_message(
            json.dumps(body),
            self.caller(connection_id, principal),
            self.settings,
            self.published.append,
            now_ms=int(time.time() * 1000),
            limits=ConnectionLimits(self.dynamodb, "connections", 0, 0, 0, 7200),  # limits off
            requests=self.requests,
        )

    def model(self) -> OpenAIProvider:
        return OpenAIProvider(openai_client("sk-test", self.mock_llm.base_url))

    def stream(self, message: Any = None, provider: Any = None) -> Any:
        """Run the stream function on the last published message (or ``message``); ``provider``
        builds the model's client (by default, one for the mock LLM)."""
        model = self.model()
        return run_prompt(
            (message or self.published[-1]).to_json(),
            settings=self.settings,
            provider=provider or (lambda _envelope: model),
            connection=lambda address: self.connection(address.connection_id),
            remaining_time=lambda: 900.0,
            dynamodb=self.dynamodb,
        )


def settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "connections_table": "connections",
        "frames_table": FRAMES,
        "conversations_table": CONVERSATIONS,
        "llm_base_url": "unused",
        "system_prompt": "sys",
        "min_frame_interval": 0.0,
        "control_poll_interval": 0.02,
    }
    return Settings(**{**base, **changes})


@pytest.fixture
def world(dynamodb, mock_llm) -> World:
    mock_llm.reset()
    return World(dynamodb, mock_llm, settings())


def prompt(request_id: str, text: str, **options: Any) -> dict[str, Any]:
    return {"action": "sendMessage", "requestId": request_id, "prompt": text, **options}


# --------------------------------------------------------------------------- protocol


def parse(body: dict[str, Any]) -> Any:
    return parse_client_message(json.dumps(body), fallback_request_id="gw", limits=Limits())


def test_a_resume_names_its_request_and_the_last_seq_received_and_matches_the_schema():
    body = {"action": "resume", "requestId": "r-1", "afterSeq": 4}
    assert parse(body) == Resume("r-1", 4)
    jsonschema.validate(body, CLIENT_MESSAGE)
    assert parse({"action": "resume", "requestId": "r-1"}).after_seq == -1  # nothing received


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"action": "resume", "afterSeq": 3}, "'requestId' is required"),
        ({"action": "resume", "requestId": "r", "afterSeq": -2}, "'afterSeq'"),
        ({"action": "resume", "requestId": "r", "afterSeq": 1.5}, "'afterSeq'"),
        ({"action": "resume", "requestId": "r", "afterSeq": True}, "'afterSeq'"),
        ({"action": "resume", "requestId": "r", "afterSeq": "3"}, "'afterSeq'"),
        ({"action": "sendMessage", "prompt": "hi", "resumable": "yes"}, "'resumable'"),
    ],
)
def test_a_malformed_resume_or_resumable_flag_is_a_bad_request(body, names):
    with pytest.raises(ProtocolError) as refused:
        parse(body)
    assert refused.value.code is ErrorCode.BAD_REQUEST and names in refused.value.message


def test_a_resume_message_travels_as_its_own_kind_that_older_parsers_ignore():
    resume = ResumeEnvelope("r-1", "conn-b", API_DOMAIN, "prod", 4, 2, "openai", "alice", 7)
    assert parse_message(resume.to_json()) == resume
    with pytest.raises(InvalidEnvelope):
        parse_envelope(resume.to_json())  # a prompt parser never mistakes it for a prompt
    assert resume.message_attributes()["provider"] == {
        "DataType": "String",
        "StringValue": "openai",
    }
    user = ({"role": "user", "content": "x"},)
    plain = PromptEnvelope("r", "c", API_DOMAIN, "prod", user, "m", "openai", 5, resumable=True)
    assert parse_message(plain.to_json()).resumable is True


def test_keys_are_scoped_to_their_owner_so_clients_cannot_reach_each_others_requests():
    assert owner_key("alice", "r-1") != owner_key("bob", "r-1") != owner_key(None, "r-1")
    assert owner_key(None, "r-1") == "anon#r-1"
    # A principal cannot pose as the anonymous space, nor as another principal with a '#':
    # request and conversation ids never hold one, so the last '#' ends the owner.
    assert owner_key("anon", "r-1") != owner_key(None, "r-1")
    assert not protocol.REQUEST_ID_PATTERN.fullmatch("b#c")
    assert owner_key("a#b", "c").rpartition("#") == ("p:a#b", "#", "c")


# --------------------------------------------------------------------------- history


def test_history_keeps_the_latest_turns_within_the_turn_and_token_limits(dynamodb):
    store = Conversations(dynamodb, CONVERSATIONS, max_turns=3, max_tokens=30, ttl_seconds=60)
    for turn in range(5):
        store.append(
            "k",
            turn,
            request_id=f"r{turn}",
            messages=[{"role": "user", "content": f"question {turn}"}],
            answer=f"answer {turn}",
        )
    history = store.load("k")
    assert history.next_turn == 5
    assert [m["content"] for m in history.messages] == [
        "question 2",
        "answer 2",
        "question 3",
        "answer 3",
        "question 4",
        "answer 4",
    ]
    assert estimate_tokens("question 4") + estimate_tokens("answer 4") == 5
    tight = Conversations(dynamodb, CONVERSATIONS, max_turns=3, max_tokens=9, ttl_seconds=60)
    assert [m["content"] for m in tight.load("k").messages] == ["question 4", "answer 4"]


def test_a_turn_is_written_once_however_often_its_request_is_retried(dynamodb):
    store = Conversations(dynamodb, CONVERSATIONS, max_turns=10, max_tokens=1000, ttl_seconds=60)
    user = [{"role": "user", "content": "hi"}]
    assert store.append("k", 0, request_id="r1", messages=user, answer="a") == 0
    assert store.append("k", 0, request_id="r1", messages=user, answer="a") == 0  # a retry
    # Another request that read the same history takes the next number instead.
    assert store.append("k", 0, request_id="r2", messages=user, answer="b") == 1
    assert len(dynamodb_items(dynamodb, CONVERSATIONS, "conversationId", "k")) == 2


def test_expired_turns_are_left_out_even_before_dynamodb_deletes_them(dynamodb):
    clock = [1_000.0]
    store = Conversations(
        dynamodb,
        CONVERSATIONS,
        max_turns=10,
        max_tokens=1000,
        ttl_seconds=60,
        clock=lambda: clock[0],
    )
    store.append("k", 0, request_id="r1", messages=[{"role": "user", "content": "old"}], answer="a")
    clock[0] += 61
    store.append("k", 1, request_id="r2", messages=[{"role": "user", "content": "new"}], answer="b")
    assert [m["content"] for m in store.load("k").messages] == ["new", "b"]


def test_the_stream_function_sends_the_stored_turns_and_stores_the_new_one_before_end(world):
    first = prompt("h1", "My name is Ada.\n#mock tokens=3 rate=0", conversationId="c1")
    assert world.send("conn-a", **first)["type"] == "accepted"
    world.stream()
    second = prompt("h2", "Who am I?\n#mock tokens=2 rate=0", conversationId="c1")
    world.send("conn-a", **second)
    world.stream()
    assert world.mock_llm.requests[-1].body["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": first["prompt"]},
        {"role": "assistant", "content": tokens(3)},
        {"role": "user", "content": second["prompt"]},
    ]
    items = dynamodb_items(world.dynamodb, CONVERSATIONS, "conversationId", "anon#c1")
    assert [int(i["turn"]["N"]) for i in items] == [0, 1]
    assert all(int(i["expiresAt"]["N"]) > 86_000 for i in items)  # HISTORY_TTL_SECONDS


def test_another_principals_conversation_with_the_same_id_stays_apart(world):
    world.send(
        "conn-a", "alice", **prompt("a1", "secret\n#mock tokens=1 rate=0", conversationId="c")
    )
    world.stream()
    world.send("conn-b", "bob", **prompt("b1", "hello\n#mock tokens=1 rate=0", conversationId="c"))
    world.stream()
    assert [m["role"] for m in world.mock_llm.requests[-1].body["messages"]] == ["system", "user"]


def dynamodb_items(dynamodb: Any, table: str, key_name: str, key: str) -> list[dict]:
    return dynamodb.query(
        TableName=table,
        KeyConditionExpression=f"{key_name} = :k",
        ExpressionAttributeValues={":k": {"S": key}},
        ConsistentRead=True,
    )["Items"]


# --------------------------------------------------------------------------- keepOpen


def test_keep_open_leaves_the_connection_open_after_end_and_closes_it_otherwise(world):
    world.send("conn-open", **prompt("k1", "#mock tokens=2 rate=0", keepOpen=True))
    world.stream()
    world.send("conn-shut", **prompt("k2", "#mock tokens=2 rate=0"))
    world.stream()
    assert world.connections["conn-open"].frames[-1]["type"] == "end"
    assert not world.connections["conn-open"].closed
    assert world.connections["conn-shut"].closed


@pytest.mark.parametrize(
    ("directive", "changes", "code"),
    [
        pytest.param("#mock tokens=50 rate=0 fail_after=3", {}, "llm_error", id="llm-error"),
        pytest.param(
            "#mock tokens=50 rate=0 stall_after=3",
            {"llm_stall_timeout": 0.5},
            "timeout",
            id="stall",
        ),
        pytest.param("#mock status=400", {}, "llm_error", id="model-400"),
    ],
)
def test_an_error_during_a_keep_open_answer_closes_the_connection(world, directive, changes, code):
    """The docs promise it: after an error during the stream, the connection closes anyway."""
    world.settings = settings(**changes)
    world.send("conn-k", **prompt("k-err", directive, keepOpen=True))
    world.stream()
    conn = world.connections["conn-k"]
    assert conn.frames[-1]["type"] == "error" and conn.frames[-1]["code"] == code
    assert conn.closed


# --------------------------------------------------------------------------- request records


def test_a_request_id_in_use_or_used_lately_is_refused_and_nothing_is_published(world):
    assert world.send("conn-a", **prompt("same", "#mock tokens=1"))["type"] == "accepted"
    again = world.send("conn-b", **prompt("same", "#mock tokens=1"))
    assert again["code"] == "bad_request" and "requestId" in again["message"]
    assert len(world.published) == 1
    # Another principal's space is separate: the same id is free there.
    assert world.send("conn-c", "carol", **prompt("same", "#mock tokens=1"))["type"] == "accepted"


def test_an_expired_request_record_counts_as_absent(dynamodb):
    clock = [1_000.0]
    requests = Requests(dynamodb, FRAMES, ttl_seconds=100, clock=lambda: clock[0])
    new = NewRequest("r", Address("c", API_DOMAIN, "prod"), resumable=True)
    assert requests.register("anon#r", new)
    assert not requests.register("anon#r", new)
    clock[0] = 1_101
    assert requests.read("anon#r") is None
    assert requests.register("anon#r", new)


def test_a_resume_is_refused_for_someone_else_a_plain_request_or_a_dead_stream(dynamodb):
    clock = [1_000.0]
    requests = Requests(dynamodb, FRAMES, lease=30, ttl_seconds=4_000, clock=lambda: clock[0])
    target = Address("b", API_DOMAIN, "prod")
    for key, owner, resumable in [("p:alice#r", "alice", True), ("anon#plain", None, False)]:
        new = NewRequest("r", Address("a", API_DOMAIN, "prod"), owner, resumable=resumable)
        requests.register(key, new)
    # The key is scoped to the principal, so bob finds nothing, not even that it exists.
    assert requests.attach(
        owner_key("bob", "r"), principal_id="bob", address=target, after_seq=-1
    ) == Refused("not_found")
    # Defence in depth: an item whose owner differs from the caller is not found either.
    assert requests.attach(
        "p:alice#r", principal_id="mallory", address=target, after_seq=-1
    ) == Refused("not_found")
    assert requests.attach(
        "anon#plain", principal_id=None, address=target, after_seq=-1
    ) == Refused("not_resumable")
    claim = requests.claim("p:alice#r", NewRequest("r", Address("a", API_DOMAIN, "prod")))
    assert claim.taken is Taken.CLAIMED and claim.request.status == "streaming"
    clock[0] += 31  # the streaming invocation stopped renewing its lease: it died
    assert requests.attach(
        "p:alice#r", principal_id="alice", address=target, after_seq=-1
    ) == Refused("interrupted")


def test_a_live_request_is_attached_and_a_finished_one_is_replayed_once(dynamodb):
    requests = Requests(dynamodb, FRAMES)
    target = Address("b", API_DOMAIN, "prod")
    new = NewRequest("r", Address("a", API_DOMAIN, "prod"), resumable=True)
    requests.register("anon#r", new)
    requests.claim("anon#r", new)
    assert requests.attach("anon#r", principal_id=None, address=target, after_seq=3) == (Attached())
    state = requests.read("anon#r")
    assert (state.address, state.after_seq, state.attach) == (target, 3, 1)
    # The stream function settles only if it has seen every resume (attach 1 here).
    assert not requests.settle("anon#r", status=Status.COMPLETED, attach=0, last_seq=9, final=None)
    assert requests.settle(
        "anon#r", status=Status.COMPLETED, attach=1, last_seq=9, final={"type": "end"}
    )
    assert requests.attach("anon#r", principal_id=None, address=target, after_seq=5) == (Replay(2))
    assert requests.claim_replay("anon#r", 2)
    assert not requests.claim_replay("anon#r", 2)  # a duplicate delivery of the same resume
    assert not requests.claim_replay("anon#r", 1)  # a stale one


def test_frames_are_stored_a_few_to_an_item_and_read_back_in_order(dynamodb):
    frames = StoredFrames(dynamodb, FRAMES)
    texts = [f"t{i} " for i in range(300)] + ["x" * 30_000] * 5 + ["é", "end"]
    items = frames.store("anon#r", texts, expires_at=2**40)
    assert 1 < items < len(texts) // 10
    assert sum(len(t.encode()) for t in texts) > CHUNK_BYTES
    assert frames.load("anon#r", -1) == list(enumerate(texts))
    assert frames.load("anon#r", 299) == list(enumerate(texts))[300:]
    assert frames.load("anon#r", len(texts) - 1) == []


# --------------------------------------------------------------------------- relay


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def delta(seq: int, text: str, rid: str = "r") -> bytes:
    return protocol.encode(protocol.delta_frame(rid, seq, text))


def test_a_switch_replays_the_missed_frames_then_goes_on_live_without_repeats():
    a, b = FakeConnection("a", gone_after=2), FakeConnection("b")
    relay = Relay(a, "r", resumable=True, grace=30, sleep=lambda _: None)
    for seq in range(4):
        relay.post(delta(seq, f"t{seq} "))  # 2 and 3 are kept while a is gone
    assert a.seqs() == [0, 1] and relay.detached
    relay.switch(b, after_seq=1)
    relay.post(delta(3, "t3 "))  # the sender retrying a frame the switch replayed
    relay.post(delta(4, "t4 "))
    relay.post(protocol.encode(protocol.end_frame("r", "stop")))
    assert b.seqs() == [2, 3, 4] and b.frames[-1]["type"] == "end"


def test_a_frame_throttled_during_a_switch_is_still_delivered_once():
    b = FakeConnection("b")
    b.throttle_next = 2
    relay = Relay(FakeConnection("a", gone_after=0), "r", resumable=True, sleep=lambda _: None)
    relay.post(delta(0, "t0 "))
    relay.switch(b, after_seq=-1)
    assert b.seqs() == [0]


def test_nobody_resuming_within_the_grace_period_stops_the_answer():
    clock = Clock()
    relay = Relay(FakeConnection("a", gone_after=1), "r", resumable=True, grace=30, clock=clock)
    relay.post(delta(0, "t0 "))
    relay.post(delta(1, "t1 "))  # gone: kept
    clock.now = 29.9
    relay.post(delta(2, "t2 "))
    clock.now = 30.0
    with pytest.raises(ConnectionGone):
        relay.post(delta(3, "t3 "))
    assert relay.abandoned and relay.texts[:3] == ["t0 ", "t1 ", "t2 "]


def test_an_answer_that_is_not_resumable_stops_when_its_client_goes():
    relay = Relay(FakeConnection("a", gone_after=1), "r", resumable=False)
    relay.post(delta(0, "t0 "))
    with pytest.raises(ConnectionGone):
        relay.post(delta(1, "t1 "))
    assert relay.texts == []  # nothing kept: nothing can resume it


def test_the_idle_probe_of_an_answer_that_is_not_resumable_finds_a_client_gone():
    a = FakeConnection("a")
    relay = Relay(a, "r", resumable=False)
    relay.probe()  # there: nothing happens
    a.left.set()
    with pytest.raises(ConnectionGone):
        relay.probe()


def test_the_idle_probe_of_a_resumable_answer_waits_out_the_grace_period_first():
    clock, a, b = Clock(), FakeConnection("a"), FakeConnection("b")
    relay = Relay(a, "r", resumable=True, grace=30, clock=clock)
    a.left.set()
    relay.probe()  # gone: the grace period starts, for a resume to pick the answer up
    assert relay.detached
    clock.now = 29.9
    relay.probe()
    relay.switch(b, after_seq=-1)  # resumed: the probe looks at the new connection
    clock.now = 100
    relay.probe()
    b.left.set()
    relay.probe()  # gone again: a new grace period
    clock.now = 130
    with pytest.raises(ConnectionGone):
        relay.probe()
    assert relay.abandoned


# --------------------------------------------------------------------------- resume, end to end


def test_a_resume_while_streaming_moves_the_rest_of_the_answer_to_the_new_connection(world):
    a = world.connection("conn-a", gone_after=5)
    world.send("conn-a", **prompt("live", "#mock tokens=80 rate=200", resumable=True))
    streaming = threading.Thread(target=world.stream)
    streaming.start()
    assert a.left.wait(10)
    reply = world.send("conn-b", action="resume", requestId="live", afterSeq=a.seqs()[-1])
    streaming.join(20)
    b = world.connections["conn-b"]
    assert reply == {"type": "accepted", "requestId": "live"}
    assert a.seqs() + b.seqs() == list(range(len(a.seqs() + b.seqs())))
    assert a.text() + b.text() == tokens(80)
    assert b.frames[-1]["type"] == "end" and b.closed
    assert world.mock_llm.requests[-1].completed


def test_a_finished_answer_is_replayed_from_storage_once_to_the_client_that_resumes(world):
    a = world.connection("conn-a", gone_after=3)
    world.send("conn-a", **prompt("done", "#mock tokens=20 rate=100", resumable=True))
    world.stream()  # the model finished without a client
    state = world.requests.read("anon#done")
    assert (state.status, state.final["finishReason"]) == (Status.COMPLETED, "stop")
    assert a.seqs() == [0, 1, 2] and state.last_seq > 2

    reply = world.send("conn-b", action="resume", requestId="done", afterSeq=2)
    assert reply["type"] == "accepted"
    replay = world.published[-1]
    assert isinstance(replay, ResumeEnvelope) and (replay.after_seq, replay.attach) == (2, 1)
    world.stream(replay)
    world.stream(replay)  # SNS delivered it twice
    b = world.connections["conn-b"]
    assert a.seqs() + b.seqs() == list(range(state.last_seq + 1))
    assert a.text() + b.text() == tokens(20)
    assert [f["type"] for f in b.frames].count("end") == 1 and b.closed


def test_an_abandoned_answer_stops_the_model_and_is_kept_with_the_reason(world):
    world.settings = settings(resume_grace_seconds=0.3)
    world.connection("conn-a", gone_after=2)
    world.send("conn-a", **prompt("left", "#mock tokens=400 rate=50", resumable=True))
    world.stream()
    record = world.mock_llm.requests[-1]
    assert world.mock_llm.wait_for(lambda: record.client_closed, timeout=5)
    assert record.tokens_sent < 400
    state = world.requests.read("anon#left")
    assert state.status == Status.GONE
    assert state.final["code"] == "timeout" and "nobody resumed" in state.final["message"]


def test_a_client_gone_from_a_plain_answer_stops_the_model_at_once(world):
    world.connection("conn-a", gone_after=2)
    world.send("conn-a", **prompt("plain", "#mock tokens=400 rate=100"))
    world.stream()
    record = world.mock_llm.requests[-1]
    assert world.mock_llm.wait_for(lambda: record.client_closed, timeout=5)
    assert world.requests.read("anon#plain").status == Status.GONE
    (control_item,) = dynamodb_items(world.dynamodb, FRAMES, "requestId", "anon#plain")
    assert control_item["seq"]["N"] == "-1"  # no frames are kept for a plain answer


def test_a_request_resumed_before_it_started_streams_to_the_new_connection(world):
    world.send("conn-a", **prompt("early", "#mock tokens=4 rate=0", resumable=True))
    queued = world.published[-1]
    assert world.send("conn-b", action="resume", requestId="early", afterSeq=-1)["type"] == (
        "accepted"
    )
    world.stream(queued)
    assert world.connections["conn-a"].frames == []
    assert world.connections["conn-b"].text() == tokens(4)


# --------------------------------------------------------------------------- the handlers


@pytest.fixture
def session_aws(aws, monkeypatch):
    create_session_tables(aws.dynamodb)
    monkeypatch.setenv("FRAMES_TABLE", FRAMES)
    monkeypatch.setenv("CONVERSATIONS_TABLE", CONVERSATIONS)
    return aws


def test_the_resume_event_finds_a_plain_request_not_resumable(session_aws, lambda_context):
    handler = load_handler("message")
    handler.lambda_handler(load_event("send-message.json"), lambda_context)
    reply = json.loads(handler.lambda_handler(load_event("resume.json"), lambda_context)["body"])
    assert (reply["code"], reply["requestId"]) == ("not_found", "req-123")
    assert "resumable" in reply["message"]


def test_the_resume_event_of_a_finished_answer_publishes_a_replay(session_aws, lambda_context):
    handler = load_handler("message")
    send = load_event("send-message.json")
    send["body"] = json.dumps({**json.loads(send["body"]), "resumable": True})
    handler.lambda_handler(send, lambda_context)
    requests = Requests(session_aws.dynamodb, FRAMES)
    requests.claim("anon#req-123", NewRequest("req-123", Address("c", API_DOMAIN, "prod")))
    requests.settle("anon#req-123", status=Status.COMPLETED, attach=0, last_seq=9, final={})
    reply = json.loads(handler.lambda_handler(load_event("resume.json"), lambda_context)["body"])
    assert reply == {"type": "accepted", "requestId": "req-123"}
    prompt_message, replay = session_aws.published()
    document = json.loads(replay["Message"])
    assert (document["kind"], document["afterSeq"], document["attach"]) == ("resume", 4, 1)
    assert replay["MessageAttributes"]["provider"] == {"Type": "String", "Value": "openai"}
    assert isinstance(parse_message(replay["Message"]), ResumeEnvelope)


def test_a_resumable_answer_whose_invocation_died_tells_the_client_that_resumes_it(world):
    from llmstream.stream.worker import RequestFailed

    world.send("conn-a", **prompt("crashed", "#mock tokens=5", resumable=True))
    # An invocation took it, then died mid-stream: its lease ran out long ago.
    world.requests.claim(
        "anon#crashed", NewRequest("crashed", Address("conn-a", API_DOMAIN, "prod"))
    )
    world.dynamodb.update_item(
        TableName=FRAMES,
        Key={"requestId": {"S": "anon#crashed"}, "seq": {"N": "-1"}},
        UpdateExpression="SET leaseUntil = :past",
        ExpressionAttributeValues={":past": {"N": "0"}},
    )
    with pytest.raises(RequestFailed):
        world.stream()  # Lambda's retry
    assert world.connections["conn-a"].frames[-1]["code"] == "internal"
    assert world.requests.read("anon#crashed").status == "failed"

    assert world.send("conn-b", action="resume", requestId="crashed", afterSeq=-1)["type"] == (
        "accepted"
    )
    world.stream(world.published[-1])
    (told,) = world.connections["conn-b"].frames
    assert told["code"] == "internal" and "interrupted" in told["message"]
    assert world.mock_llm.requests == []
