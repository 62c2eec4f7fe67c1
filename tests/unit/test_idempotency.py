"""At most one stream per request and connection: duplicate SNS deliveries, Lambda retries after
a crash or a failure, and the idempotency record itself (moto DynamoDB, injected clock)."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from llmstream.requests.claim import Claim, Deduplicator, Status
from moto import mock_aws

from tests.conftest import load_handler
from tests.unit.streams import (
    IDEMPOTENCY_TABLE,
    envelope,
    frames_posted,
    sns_event,
)

KEY = "Kx3vYdqgoAMCJyQ=#req-123"


class Clock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def table():
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(
            TableName="idempotency",
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield dynamodb


def dedupe(dynamodb, clock: Clock) -> Deduplicator:
    return Deduplicator(dynamodb, "idempotency", expires_after=7200, lease=30, clock=clock)


# --------------------------------------------------------------------------- the record


def test_the_first_delivery_claims_the_request_and_records_a_ttl(table):
    clock = Clock()
    assert dedupe(table, clock).claim(KEY) is Claim.NEW
    item = table.get_item(TableName="idempotency", Key={"id": {"S": KEY}})["Item"]
    assert item["status"]["S"] == "INPROGRESS"
    assert int(item["expiration"]["N"]) == int(clock.now) + 7200
    assert int(item["in_progress_expiration"]["N"]) == int((clock.now + 30) * 1000)


def test_a_duplicate_while_the_first_streams_is_told_it_is_in_progress(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    clock.now += 29
    assert d.claim(KEY) is Claim.IN_PROGRESS


def test_a_duplicate_after_the_end_is_told_how_it_ended(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    d.settle(KEY, Status.COMPLETED)
    clock.now += 3600
    assert d.claim(KEY) is Claim.COMPLETED
    d.claim("other#req")
    d.settle("other#req", Status.FAILED)
    assert d.claim("other#req") is Claim.FAILED


def test_a_heartbeat_keeps_a_long_stream_claimed(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    for _ in range(10):  # five minutes of streaming, renewed every 10 s
        clock.now += 10
        d.renew(KEY)
    clock.now += 29
    assert d.claim(KEY) is Claim.IN_PROGRESS


def test_a_dead_lease_is_taken_over_by_exactly_one_later_delivery(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    clock.now += 31  # the invocation died: nobody renewed the lease
    assert [d.claim(KEY), d.claim(KEY)] == [Claim.INTERRUPTED, Claim.FAILED]


def test_a_record_past_its_ttl_counts_as_absent_even_before_dynamodb_deletes_it(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    d.settle(KEY, Status.COMPLETED)
    clock.now += 7201
    assert d.claim(KEY) is Claim.NEW


def test_the_heartbeat_renews_in_the_background_until_the_block_ends(table):
    clock = Clock()
    d = dedupe(table, clock)
    d.claim(KEY)
    renewed = threading.Event()
    real_renew = d.renew

    def renew(key):
        real_renew(key)
        renewed.set()

    d.renew = renew  # type: ignore[method-assign]
    clock.now += 25
    with d.heartbeat(KEY, every=0.01):
        assert renewed.wait(5)
    clock.now += 29  # 54 s after the claim, 29 s after the renewal
    assert d.claim(KEY) is Claim.IN_PROGRESS


def test_close_out_settles_what_no_invocation_is_left_to_answer(table):
    clock = Clock()
    d = dedupe(table, clock)
    assert d.close_out("never#claimed") is Claim.NEW  # nobody ran it: the caller tells
    assert d.claim("never#claimed") is Claim.FAILED  # and a late delivery never streams it
    d.claim(KEY)
    clock.now += 29
    assert d.close_out(KEY) is Claim.IN_PROGRESS  # a live lease: not ours yet
    clock.now += 2
    assert d.close_out(KEY) is Claim.INTERRUPTED  # the lease lapsed: ours to tell, once
    assert d.close_out(KEY) is Claim.FAILED
    d.claim("done#req")
    d.settle("done#req", Status.COMPLETED)
    assert d.close_out("done#req") is Claim.COMPLETED


def test_the_deployment_lease_comes_from_stream_lease_seconds(table):
    from llmstream.core.settings import Settings
    from llmstream.requests.claim import deduplicator

    settings = Settings.from_env(
        {"STREAM_LEASE_SECONDS": "0.3", "IDEMPOTENCY_TABLE": "idempotency"}
    )
    d = deduplicator(table, settings)
    assert d.claim(KEY) is Claim.NEW
    with d.heartbeat(KEY):  # renews every 0.1 s: a third of the lease
        leases = set()
        deadline = time.monotonic() + 5
        while len(leases) < 3 and time.monotonic() < deadline:
            item = table.get_item(TableName="idempotency", Key={"id": {"S": KEY}})["Item"]
            leases.add(item["in_progress_expiration"]["N"])
            time.sleep(0.02)
        assert len(leases) >= 3, "the heartbeat renewed a 0.3 s lease at least twice"
        assert d.claim(KEY) is Claim.IN_PROGRESS
    deadline = time.monotonic() + 5
    while d.claim(KEY) is Claim.IN_PROGRESS and time.monotonic() < deadline:
        time.sleep(0.05)  # nobody renews now: the lease lapses 0.3 s after its last renewal
    assert d.claim(KEY) is Claim.FAILED  # the claim before this one took it over


# --------------------------------------------------------------------------- the stream function


def run(event, context):
    return load_handler("stream").lambda_handler(event, context)


def starts(frames):
    return [f for f in frames if f["type"] == "start"]


def record(aws, key: str) -> dict:
    return aws.dynamodb.get_item(TableName=IDEMPOTENCY_TABLE, Key={"id": {"S": key}})["Item"]


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
    key = f"{doc['connectionId']}#{doc['requestId']}"
    assert record(stream_env, key)["status"]["S"] == "COMPLETED"


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
    from llmstream.stream import worker
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
    key = f"{doc['connectionId']}#{doc['requestId']}"
    with monkeypatch.context() as m:
        m.setattr(worker, "stream_answer", killed_mid_stream)
        with pytest.raises(Killed):
            run(event, lambda_context)
    # A minute later Lambda retries; the dead invocation's lease ran out long ago.
    stream_env.dynamodb.update_item(
        TableName=IDEMPOTENCY_TABLE,
        Key={"id": {"S": key}},
        UpdateExpression="SET in_progress_expiration = :past",
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
    assert record(stream_env, key)["status"]["S"] == "FAILED"


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


def test_an_unreachable_idempotency_table_tells_the_client_and_fails(
    stream_env, closed, mock_llm, lambda_context, monkeypatch
):
    from llmstream.stream.worker import RequestFailed

    monkeypatch.setenv("IDEMPOTENCY_TABLE", "missing")
    event = sns_event("#mock tokens=5 rate=0")
    doc = envelope(event)
    with pytest.raises(RequestFailed):
        run(event, lambda_context)
    frames = frames_posted(doc["connectionId"])
    assert [(f["type"], f["code"]) for f in frames] == [("error", "internal")]
    assert mock_llm.requests == []


def test_without_an_idempotency_table_the_stream_runs_and_says_so(
    stream_env, closed, lambda_context, logs, monkeypatch
):
    monkeypatch.delenv("IDEMPOTENCY_TABLE")
    event = sns_event("#mock tokens=2 rate=0")
    run(event, lambda_context)
    assert frames_posted(envelope(event)["connectionId"])[-1]["type"] == "end"
    assert "IDEMPOTENCY_TABLE is not set" in logs.getvalue()


def test_the_idempotency_key_is_the_connection_and_the_request(stream_env, closed, lambda_context):
    event = sns_event("#mock tokens=1 rate=0")
    run(event, lambda_context)
    other = sns_event("#mock tokens=1 rate=0", requestId="req-456")
    run(other, lambda_context)  # a new request on the same connection streams
    doc = envelope(event)
    frames = frames_posted(doc["connectionId"])
    assert [f["requestId"] for f in starts(frames)] == ["req-123", "req-456"]
    ids = {
        item["id"]["S"] for item in stream_env.dynamodb.scan(TableName=IDEMPOTENCY_TABLE)["Items"]
    }
    assert ids == {f"{doc['connectionId']}#req-123", f"{doc['connectionId']}#req-456"}
