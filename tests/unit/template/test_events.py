"""The events/ fixtures: each has the shape of its source, is on the route its body selects,
and is documented; the stream event carries the envelope the send-message event publishes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from llmstream.core.envelope import parse_envelope

from .cfn import EVENTS, load_event, route_targets

# file -> (event source, route key)
EVENT_FILES = {
    "connect.json": ("CONNECT", "$connect"),
    "connect-authorized.json": ("CONNECT", "$connect"),
    "disconnect.json": ("DISCONNECT", "$disconnect"),
    "send-message.json": ("MESSAGE", "sendMessage"),
    "send-message-history.json": ("MESSAGE", "sendMessage"),
    "bad-message-empty-prompt.json": ("MESSAGE", "sendMessage"),
    "bad-message-not-json.json": ("MESSAGE", "$default"),
    "unknown-action.json": ("MESSAGE", "$default"),
    "cancel.json": ("MESSAGE", "cancel"),
    "resume.json": ("MESSAGE", "resume"),
    "stream-sns.json": ("SNS", None),
    "deadletter-sqs.json": ("SQS", None),
    "authorizer-request.json": ("AUTHORIZER", "$connect"),
}
REQUEST_CONTEXT_KEYS = {
    "routeKey",
    "eventType",
    "extendedRequestId",
    "requestTime",
    "messageDirection",
    "stage",
    "connectedAt",
    "requestTimeEpoch",
    "identity",
    "requestId",
    "domainName",
    "connectionId",
    "apiId",
}


def test_every_event_file_is_known_and_documented() -> None:
    files = {p.name for p in EVENTS.glob("*.json")}
    assert files == set(EVENT_FILES)
    readme = (EVENTS / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme, f"{name} is missing from events/README.md"


@pytest.mark.parametrize("name", sorted(EVENT_FILES))
def test_event_file_has_the_shape_of_its_source(name: str, template: dict[str, Any]) -> None:
    event = load_event(name)
    kind, route = EVENT_FILES[name]
    if kind == "SNS":
        (record,) = event["Records"]
        assert record["EventSource"] == "aws:sns"
        assert isinstance(record["Sns"]["Message"], str)
        return
    if kind == "SQS":
        (record,) = event["Records"]
        assert record["eventSource"] == "aws:sqs"
        assert hashlib.md5(record["body"].encode()).hexdigest() == record["md5OfBody"]
        return
    ctx = event["requestContext"]
    assert set(ctx) >= REQUEST_CONTEXT_KEYS, REQUEST_CONTEXT_KEYS - set(ctx)
    assert ctx["routeKey"] == route
    assert route in route_targets(template)
    assert ctx["messageDirection"] == "IN"
    assert ctx["domainName"] == f"{ctx['apiId']}.execute-api.us-east-1.amazonaws.com"
    if kind == "AUTHORIZER":
        assert event["type"] == "REQUEST"
        assert event["methodArn"].endswith(f":{ctx['apiId']}/{ctx['stage']}/$connect")
        assert event["queryStringParameters"]["token"]
        assert ctx["eventType"] == "CONNECT"
        return
    assert ctx["eventType"] == kind
    assert event["isBase64Encoded"] is False
    if kind == "CONNECT":
        assert {"headers", "multiValueHeaders", "queryStringParameters"} <= set(event)
    if kind == "MESSAGE":
        assert isinstance(event["body"], str) and "messageId" in ctx


@pytest.mark.parametrize(
    "name", sorted(n for n, (kind, _) in EVENT_FILES.items() if kind == "MESSAGE")
)
def test_message_event_is_on_the_route_its_body_selects(
    name: str, template: dict[str, Any]
) -> None:
    # API Gateway evaluates $request.body.action; no JSON or no matching route means $default.
    event = load_event(name)
    try:
        action = json.loads(event["body"]).get("action")
    except ValueError:
        action = None
    routes = set(route_targets(template))
    expected = action if action in routes else "$default"
    assert event["requestContext"]["routeKey"] == expected


def test_stream_event_carries_the_envelope_of_send_message() -> None:
    send = load_event("send-message.json")
    (record,) = load_event("stream-sns.json")["Records"]
    envelope = parse_envelope(record["Sns"]["Message"])
    ctx = send["requestContext"]
    body = json.loads(send["body"])
    assert envelope.connection_id == ctx["connectionId"]
    assert envelope.domain_name == ctx["domainName"]
    assert envelope.stage == ctx["stage"]
    assert envelope.request_id == body["requestId"]
    assert envelope.messages == ({"role": "user", "content": body["prompt"]},)
    attributes = record["Sns"]["MessageAttributes"]
    assert attributes == {
        key: {"Type": value["DataType"], "Value": value["StringValue"]}
        for key, value in envelope.message_attributes().items()
    }
