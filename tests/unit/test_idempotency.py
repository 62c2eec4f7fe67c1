"""At most one stream per request: duplicate SNS deliveries, Lambda retries after a crash or a
failure, and the claim and lease of the request's record (moto DynamoDB, injected clock)."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from llmstream.core.envelope import Address
from llmstream.requests.lifecycle import NewRequest, Requests, Taken
from llmstream.requests.record import Status
from moto import mock_aws

from tests.conftest import load_handler
from tests.unit.conftest import API_DOMAIN, create_tables
from tests.unit.streams import (
    FRAMES_TABLE,
    envelope,
    frames_posted,
    sns_event,
)

KEY = "anon#req-123"


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table():
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        create_tables(dynamodb)
        yield dynamodb


def records(dynamodb, clock: Clock, lease: float = 30) -> Requests:
    return Requests(dynamodb, FRAMES_TABLE, lease=lease, ttl_seconds=7200, clock=clock)


NEW = NewRequest("req-123", Address("Kx3vYdqgoAMCJyQ=", API_DOMAIN, "prod"))


NAMES = {Taken.CLAIMED: "new", Taken.HELD: "in_progress", Taken.TAKEN_OVER: "interrupted"}


def told(outcome) -> str:
    """What a delivery is told: new (stream it), in_progress, completed, failed or interrupted."""
    if outcome.taken is Taken.ENDED:
        return "failed" if outcome.request.status is Status.FAILED else "completed"
    return NAMES[outcome.taken]


def claim(requests: Requests, key: str = KEY) -> str:
    return told(requests.claim(key, NEW))


def close_out(requests: Requests, key: str = KEY) -> str:
    return told(requests.close_out(key, NEW))


def settle(requests: Requests, key: str, status: Status) -> None:
    assert requests.settle(key, status=status, attach=0, last_seq=-1, final=None)


def item(dynamodb, key: str = KEY) -> dict:
    return dynamodb.get_item(
        TableName=FRAMES_TABLE, Key={"requestId": {"S": key}, "seq": {"N": "-1"}}
    )["Item"]


# --------------------------------------------------------------------------- the record


def test_the_first_delivery_claims_the_request_and_records_a_ttl(table):
    clock = Clock()
    assert claim(records(table, clock)) == "new"
    record = item(table)
    assert record["status"]["S"] == "streaming"
    assert int(record["expiresAt"]["N"]) == int(clock.now) + 7200
    assert int(record["leaseUntil"]["N"]) == int((clock.now + 30) * 1000)


def test_a_duplicate_while_the_first_streams_is_told_it_is_in_progress(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    clock.now += 29
    assert claim(d) == "in_progress"


def test_a_duplicate_after_the_end_is_told_how_it_ended(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    settle(d, KEY, Status.COMPLETED)
    clock.now += 3600
    assert claim(d) == "completed"
    claim(d, "other#req")
    settle(d, "other#req", Status.FAILED)
    assert claim(d, "other#req") == "failed"


def test_a_heartbeat_keeps_a_long_stream_claimed(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    for _ in range(10):  # five minutes of streaming, renewed every 10 s
        clock.now += 10
        d.renew(KEY)
    clock.now += 29
    assert claim(d) == "in_progress"


def test_a_dead_lease_is_taken_over_by_exactly_one_later_delivery(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    clock.now += 31  # the invocation died: nobody renewed the lease
    assert [claim(d), claim(d)] == ["interrupted", "failed"]


def test_a_record_past_its_ttl_counts_as_absent_even_before_dynamodb_deletes_it(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    settle(d, KEY, Status.COMPLETED)
    clock.now += 7201
    assert claim(d) == "new"


def test_the_watcher_renews_the_lease_in_the_background_until_the_block_ends(table):
    clock = Clock()
    d = records(table, clock)
    claim(d)
    renewed = threading.Event()
    real_renew = d.renew

    def renew(key):
        renewed.set()
        return real_renew(key)

    d.renew = renew  # type: ignore[method-assign]
    clock.now += 25
    with watcher(d, renew_every=0.01):
        assert renewed.wait(5)
    clock.now += 29  # 54 s after the claim, 29 s after the renewal
    assert claim(d) == "in_progress"


def test_close_out_settles_what_no_invocation_is_left_to_answer(table):
    clock = Clock()
    d = records(table, clock)
    assert close_out(d, "never#claimed") == "new"  # nobody ran it: the caller tells
    assert claim(d, "never#claimed") == "failed"  # and a late delivery never streams it
    claim(d)
    clock.now += 29
    assert close_out(d) == "in_progress"  # a live lease: not ours yet
    clock.now += 2
    assert close_out(d) == "interrupted"  # the lease lapsed: ours to tell, once
    assert close_out(d) == "failed"
    claim(d, "done#req")
    settle(d, "done#req", Status.COMPLETED)
    assert close_out(d, "done#req") == "completed"


def watcher(requests: Requests, renew_every: float | None = None):
    from llmstream.stream.relay import Relay
    from llmstream.stream.signals import Signal
    from llmstream.stream.watcher import Watcher

    relay = Relay(None, "req-123")  # type: ignore[arg-type]
    return Watcher(
        requests,
        KEY,
        relay,
        lambda a: None,
        attach=0,
        interval=0.01,
        cancelled=Signal(),
        renew_every=renew_every,
    )


def test_the_deployment_lease_comes_from_stream_lease_seconds(table):
    from llmstream.core.settings import Settings

    settings = Settings.from_env({"STREAM_LEASE_SECONDS": "0.3", "FRAMES_TABLE": FRAMES_TABLE})
    d = Requests.of(table, settings)
    assert claim(d) == "new"
    with watcher(d):  # renews every 0.1 s: a third of the lease
        leases = set()
        deadline = time.monotonic() + 5
        while len(leases) < 3 and time.monotonic() < deadline:
            leases.add(item(table)["leaseUntil"]["N"])
            time.sleep(0.02)
        assert len(leases) >= 3, "the watcher renewed a 0.3 s lease at least twice"
        assert claim(d) == "in_progress"
    deadline = time.monotonic() + 5
    while claim(d) == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)  # nobody renews now: the lease lapses 0.3 s after its last renewal
    assert claim(d) == "failed"  # the claim before this one took it over


# --------------------------------------------------------------------------- the stream function


def run(event, context):
    return load_handler("stream").lambda_handler(event, context)


def starts(frames):
    return [f for f in frames if f["type"] == "start"]


def record(aws, key: str) -> dict:
    return item(aws.dynamodb, key)


def test_the_same_sns_message_delivered_twice_streams_once(
    stream_env, closed, mock_llm, lambda_context
):
    event = sns_event("Tell me.\n#mock tokens=5 rate=0 first_token_delay=0")
    doc = envelope(event)
    run(event, lambda_context)
    run(event, lambda_context)  # returns normally: Lambda must not retry a duplicate
    frames = frames_posted(doc["connectionId"])
    assert len(starts(frames)) == 1
    assert [f["type"] for f in frames].count("end") == 1
    assert len(mock_llm.requests) == 1
    assert closed == [doc["connectionId"]]
    key = f"anon#{doc['requestId']}"
    assert record(stream_env, key)["status"]["S"] == "completed"


def test_a_duplicate_that_arrives_while_the_first_is_streaming_does_not_stream(
    stream_env, closed, mock_llm, lambda_context
):
    event = sns_event("Tell me.\n#mock tokens=20 rate=40 first_token_delay=0")
    doc = envelope(event)
    first = threading.Thread(target=run, args=(event, lambda_context))
    first.start()
    assert mock_llm.wait_for(lambda: mock_llm.requests and mock_llm.requests[0].tokens_sent > 0)
    assert run(event, lambda_context) is None
    first.join(10)
    frames = frames_posted(doc["connectionId"])
    assert len(starts(frames)) == 1 and frames[-1]["type"] == "end"
    assert len(mock_llm.requests) == 1


def test_a_retry_after_a_crash_mid_stream_tells_the_client_and_never_streams_again(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    from llmstream.core.protocol import start_frame
    from llmstream.stream import answer
    from llmstream.stream.worker import RequestFailed

    class Killed(BaseException):
        """What the runtime does to an invocation that runs out of memory."""

    def killed_mid_stream(envelope, provider, sender, **kwargs):
        sender.send(start_frame(envelope.request_id, envelope.model))
        sender.delta("half an ans")
        sender.close()
        raise Killed

    event = sns_event("#mock tokens=5 rate=0")
    doc = envelope(event)
    key = f"anon#{doc['requestId']}"
    with monkeypatch.context() as m:
        m.setattr(answer, "stream_answer", killed_mid_stream)
        with pytest.raises(Killed):
            run(event, lambda_context)
    # A minute later Lambda retries; the dead invocation's lease ran out long ago.
    stream_env.dynamodb.update_item(
        TableName=FRAMES_TABLE,
        Key={"requestId": {"S": key}, "seq": {"N": "-1"}},
        UpdateExpression="SET leaseUntil = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [f["type"] for f in frames] == ["start", "delta", "error"]
    assert frames[-1]["code"] == "internal" and "interrupted" in frames[-1]["message"]
    assert closed == [doc["connectionId"]]
    # The next retry fails at once, so the event ends in the dead-letter queue.
    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    assert len(frames_posted(doc["connectionId"])) == 3
    assert mock_llm.requests == []
    assert record(stream_env, key)["status"]["S"] == "failed"


def test_a_failure_of_ours_tells_the_client_then_every_retry_fails_without_streaming(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    from llmstream.stream import streaming

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(streaming, "build_messages", broken)
    event = sns_event("#mock tokens=5 rate=0")
    doc = envelope(event)
    from llmstream.stream.worker import RequestFailed

    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [f["type"] for f in frames] == ["start", "error"]
    assert frames[-1]["code"] == "internal"
    assert closed == [doc["connectionId"]]
    assert mock_llm.requests == []


def test_an_unreachable_frames_table_tells_the_client_and_fails(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    from llmstream.stream.worker import RequestFailed

    monkeypatch.setenv("FRAMES_TABLE", "missing")
    event = sns_event("#mock tokens=5 rate=0")
    doc = envelope(event)
    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [(f["type"], f["code"]) for f in frames] == [("error", "internal")]
    assert mock_llm.requests == []


def test_the_record_key_is_the_owner_and_the_request(stream_env, closed, lambda_context):
    event = sns_event("#mock tokens=1 rate=0")
    run(event, lambda_context)
    other = sns_event("#mock tokens=1 rate=0", requestId="req-456")
    run(other, lambda_context)  # a new request on the same connection streams
    doc = envelope(event)
    frames = frames_posted(doc["connectionId"])
    assert [f["requestId"] for f in starts(frames)] == ["req-123", "req-456"]
    ids = {i["requestId"]["S"] for i in stream_env.dynamodb.scan(TableName=FRAMES_TABLE)["Items"]}
    assert ids == {"anon#req-123", "anon#req-456"}
