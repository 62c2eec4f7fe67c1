"""Abuse limits in the message handler: requests per minute per connection and per principal,
streams in flight per connection. Refused requests get rate_limited and are never published."""

from __future__ import annotations

import itertools
import json

from llmstream.intake import limits as ratelimit
from llmstream.requests import slots

from tests.conftest import load_event, load_handler
from tests.unit.streams import (
    frames_posted,
)

REQUEST_IDS = (f"req-{i}" for i in itertools.count())


def message_event(prompt: str = "hi", *, connection_id: str | None = None, principal=None):
    event = load_event("send-message.json")
    body = json.loads(event["body"])
    body["prompt"] = prompt
    body["requestId"] = next(REQUEST_IDS)
    event["body"] = json.dumps(body)
    if connection_id:
        event["requestContext"]["connectionId"] = connection_id
    if principal:
        event["requestContext"]["authorizer"] = {"principalId": principal}
    return event


def send(event, context) -> dict:
    response = load_handler("message").lambda_handler(event, context)
    assert response["statusCode"] == 200
    return json.loads(response["body"])


def test_a_connection_over_its_requests_per_minute_is_rate_limited_and_nothing_is_published(
    aws, lambda_context, monkeypatch
):
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "3")
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "0")
    frames = [send(message_event(), lambda_context) for _ in range(4)]
    assert [f["type"] for f in frames] == ["accepted"] * 3 + ["error"]
    assert frames[-1]["code"] == "rate_limited" and "3 per minute" in frames[-1]["message"]
    assert len(aws.published()) == 3


def test_the_per_minute_window_starts_afresh_the_next_minute(aws):
    limits = ratelimit.ConnectionLimits(aws.dynamodb, aws.table, 2, 0, 0, connection_ttl_s=7200)
    count = lambda now: limits.count("c1", None, now)  # noqa: E731
    minute = 1_750_000_020
    assert [count(minute), count(minute + 1)] == [None, None]
    assert count(minute + 2).limit == "connection_rate"
    assert count(minute + 60) is None
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"connectionId": {"S": "c1"}})["Item"]
    # The counters live on the connection's item, which expires through the table's TTL.
    assert int(item["expiresAt"]["N"]) > minute + 60
    assert item[f"rate{minute // 60 + 1}"]["N"] == "1"


def test_a_refused_message_costs_nothing_and_an_id_in_use_is_a_bad_request(
    aws, lambda_context, monkeypatch
):
    """A request id in use is the client's mistake, whatever the limits say, and a refusal
    leaves the counters as they were."""
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "3")
    first = message_event("#mock tokens=1")
    assert send(first, lambda_context)["type"] == "accepted"  # takes the one stream slot
    again = send(first, lambda_context)  # the same requestId, on the same connection
    assert again["code"] == "bad_request" and "requestId" in again["message"]
    refused = send(message_event(), lambda_context)  # the slot is taken
    assert refused["code"] == "rate_limited"
    item = aws.dynamodb.get_item(
        TableName=aws.table, Key={"connectionId": {"S": "Kx3vYdqgoAMCJyQ="}}
    )["Item"]
    counts = [v["N"] for k, v in item.items() if k.startswith("rate")]
    assert counts == ["1"] and item["activeStreams"]["N"] == "1"
    assert len(aws.published()) == 1


def test_one_principal_over_its_limit_is_refused_on_every_connection(
    aws, lambda_context, monkeypatch
):
    monkeypatch.setenv("PRINCIPAL_RATE_LIMIT_PER_MINUTE", "3")
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "0")
    frames = [
        send(message_event(connection_id=f"conn{i}=", principal="user-42"), lambda_context)
        for i in range(4)
    ]
    assert [f["type"] for f in frames] == ["accepted"] * 3 + ["error"]
    assert frames[-1]["code"] == "rate_limited" and "each user" in frames[-1]["message"]
    other = send(message_event(connection_id="conn9=", principal="user-7"), lambda_context)
    assert other["type"] == "accepted"
    assert len(aws.published()) == 4


def test_a_second_prompt_while_one_streams_is_refused_until_the_stream_ends(
    stream_env, closed, lambda_context
):
    """Default: one stream per connection. The stream function gives the slot back."""
    connect = load_event("connect.json")
    load_handler("connect").lambda_handler(connect, lambda_context)
    first = send(message_event("#mock tokens=2 rate=0"), lambda_context)
    second = send(message_event("again"), lambda_context)
    assert first["type"] == "accepted"
    assert second["code"] == "rate_limited" and "1 answer at once" in second["message"]
    [notification] = stream_env.published()
    sns = load_event("stream-sns.json")
    sns["Records"][0]["Sns"]["Message"] = notification["Message"]
    load_handler("stream").lambda_handler(sns, lambda_context)
    third = send(message_event("and again"), lambda_context)
    assert third["type"] == "accepted"


def test_a_duplicate_delivery_gives_the_stream_slot_back_only_once(
    stream_env, closed, lambda_context, monkeypatch
):
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "2")
    load_handler("connect").lambda_handler(load_event("connect.json"), lambda_context)
    send(message_event("#mock tokens=1 rate=0"), lambda_context)
    send(message_event("#mock tokens=1 rate=0"), lambda_context)
    first, _ = stream_env.published()
    sns = load_event("stream-sns.json")
    sns["Records"][0]["Sns"]["Message"] = first["Message"]
    load_handler("stream").lambda_handler(sns, lambda_context)
    load_handler("stream").lambda_handler(sns, lambda_context)
    item = stream_env.dynamodb.get_item(
        TableName=stream_env.table, Key={"connectionId": {"S": "Kx3vYdqgoAMCJyQ="}}
    )["Item"]
    assert item["activeStreams"]["N"] == "1"  # the other request still holds its slot


def test_giving_a_slot_back_never_goes_below_zero_nor_revives_a_closed_connection(aws):
    assert slots.release_stream(aws.dynamodb, aws.table, "gone=") is False
    assert "Item" not in aws.dynamodb.get_item(
        TableName=aws.table, Key={"connectionId": {"S": "gone="}}
    )
    aws.dynamodb.put_item(
        TableName=aws.table, Item={"connectionId": {"S": "c="}, "activeStreams": {"N": "0"}}
    )
    assert slots.release_stream(aws.dynamodb, aws.table, "c=") is False


def test_a_prompt_that_could_not_be_published_gives_its_slot_back(aws, lambda_context, monkeypatch):
    monkeypatch.setenv("PROMPT_TOPIC_ARN", aws.topic_arn.replace("prompts", "missing"))
    assert send(message_event(), lambda_context)["code"] == "internal"
    monkeypatch.setenv("PROMPT_TOPIC_ARN", aws.topic_arn)
    assert send(message_event(), lambda_context)["type"] == "accepted"


def test_when_the_limits_cannot_be_checked_the_request_is_refused_not_published(
    aws, lambda_context, monkeypatch
):
    monkeypatch.setenv("CONNECTIONS_TABLE", "missing")
    frame = send(message_event(), lambda_context)
    assert frame["code"] == "internal" and "try again" in frame["message"]
    assert aws.published() == []


def test_an_invalid_message_costs_no_rate_limit_write(aws, lambda_context, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "1")
    for _ in range(3):
        assert (
            send(load_event("bad-message-not-json.json"), lambda_context)["code"] == "bad_request"
        )
    assert send(message_event(), lambda_context)["type"] == "accepted"


def test_a_limit_of_zero_turns_the_limit_off(aws, lambda_context, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_PER_MINUTE", "0")
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "0")
    frames = [send(message_event(), lambda_context) for _ in range(25)]
    assert {f["type"] for f in frames} == {"accepted"}


def test_a_slot_whose_stream_never_ran_is_presumed_lost_after_half_an_hour(aws):
    limits = ratelimit.ConnectionLimits(aws.dynamodb, aws.table, 0, 0, 1, connection_ttl_s=7200)

    def acquire(now):
        return limits.admit("c=", None, now)

    start = 1_750_000_000
    assert acquire(start) is None  # its SNS delivery will end in the dead-letter queue
    assert acquire(start + 60).limit == "concurrent_streams"
    assert acquire(start + slots.STALE_SLOT_SECONDS - 1).limit == "concurrent_streams"
    assert acquire(start + slots.STALE_SLOT_SECONDS + 1) is None
    item = aws.dynamodb.get_item(TableName=aws.table, Key={"connectionId": {"S": "c="}})["Item"]
    assert item["activeStreams"]["N"] == "1"


def test_the_slot_is_free_before_the_end_frame_leaves(
    stream_env, closed, lambda_context, monkeypatch
):
    """A client that sends its next prompt the moment it sees `end` is never refused."""
    connection_id = "Kx3vYdqgoAMCJyQ="
    seen_at_release: list[list[str]] = []
    real_release = slots.release_once

    def release(dynamodb, **where):
        seen_at_release.append([f["type"] for f in frames_posted(where["connection_id"])])
        return real_release(dynamodb, **where)

    monkeypatch.setattr(slots, "release_once", release)
    load_handler("connect").lambda_handler(load_event("connect.json"), lambda_context)
    send(message_event("#mock tokens=3 rate=0"), lambda_context)
    [notification] = stream_env.published()
    sns = load_event("stream-sns.json")
    sns["Records"][0]["Sns"]["Message"] = notification["Message"]
    load_handler("stream").lambda_handler(sns, lambda_context)
    [before] = seen_at_release
    assert "end" not in before
    assert [f["type"] for f in frames_posted(connection_id)][-1] == "end"
