"""``llmstream.publish``, the public API a handler of one's own calls: the envelope it publishes,
the record it registers, and its refusals, which are the message function's own (against moto).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import llmstream
import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from llmstream import Address, ErrorCode, ProtocolError
from llmstream.core.settings import ConfigurationError, Settings
from llmstream.requests.lifecycle import Requests, Taken
from llmstream.requests.record import owner_key
from llmstream.stream.worker import new_request

from tests.conftest import ROOT, load_event, load_handler

ADDRESS = Address("Lq4wZerhoAMCKzQ=", "x7k2m9q4pd.execute-api.us-east-1.amazonaws.com", "prod")


@pytest.fixture(autouse=True)
def one_connection_many_prompts(monkeypatch):
    """Every test's prompts share the event's connection: its stream limit is off, but where a
    test turns it on."""
    monkeypatch.setenv("MAX_CONCURRENT_STREAMS", "0")


def settings(**changes: Any) -> Settings:
    return Settings.from_env()._replace(**changes)


def publish(aws, prompt: Any = "Where is my order?", **kwargs: Any) -> llmstream.Published:
    kwargs.setdefault("connection", load_event("send-message.json"))
    kwargs.setdefault("settings", settings())
    return llmstream.publish(prompt, sns=aws.sns, dynamodb=aws.dynamodb, **kwargs)


def record(aws, key: str) -> dict[str, Any] | None:
    item = aws.dynamodb.get_item(
        TableName="frames", Key={"requestId": {"S": key}, "seq": {"N": "-1"}}, ConsistentRead=True
    ).get("Item")
    return None if item is None else {k: next(iter(v.values())) for k, v in item.items()}


def message_function_frame(body: dict[str, Any], lambda_context) -> dict[str, Any]:
    event = load_event("send-message.json")
    event["body"] = json.dumps({"action": "sendMessage", **body})
    return json.loads(load_handler("message").lambda_handler(event, lambda_context)["body"])


def test_from_an_event_it_publishes_the_envelope_the_message_function_would(aws, lambda_context):
    event = load_event("send-message.json")
    assert message_function_frame({"prompt": "hi", "requestId": "by-msg"}, lambda_context) == {
        "type": "accepted",
        "requestId": "by-msg",
    }
    published = publish(aws, "hi", connection=event, request_id="by-publish")

    assert published.frame == {"type": "accepted", "requestId": "by-publish"}
    by_message, by_publish = aws.published()
    assert by_publish["MessageId"] == published.message_id
    assert by_publish["MessageAttributes"] == by_message["MessageAttributes"]
    documents = [json.loads(n["Message"]) for n in (by_message, by_publish)]
    for document in documents:
        assert document.pop("receivedAt") > 0
    assert documents[1] == {**documents[0], "requestId": "by-publish"}
    ctx = event["requestContext"]
    assert documents[1]["connectionId"] == ctx["connectionId"]
    assert documents[1]["domainName"] == ctx["domainName"] and documents[1]["stage"] == "prod"
    assert documents[1]["messages"] == [{"role": "user", "content": "hi"}]
    assert published.envelope.to_json() == by_publish["Message"]


def test_its_options_and_messages_reach_the_envelope_in_the_protocols_words(aws):
    history = [
        {"role": "user", "content": "I ordered a grinder."},
        {"role": "assistant", "content": "Which order?"},
        {"role": "user", "content": "A-1001"},
    ]
    options = {"model": "gpt-4o", "keepOpen": True, "resumable": True, "conversationId": "c-1"}
    publish(aws, history, request_id="r-options", options=options)

    [notification] = aws.published()
    document = json.loads(notification["Message"])
    assert document["messages"] == history
    assert document["model"] == "gpt-4o"
    assert document["options"] == {
        "maxTokens": 1024,
        "keepOpen": True,
        "conversationId": "c-1",
        "resumable": True,
        "dialect": None,
    }
    assert notification["MessageAttributes"]["model"] == {"Type": "String", "Value": "gpt-4o"}


def test_without_a_request_id_it_takes_the_events_or_makes_one_for_an_address(aws):
    event = load_event("send-message.json")
    assert publish(aws, connection=event).request_id == event["requestContext"]["requestId"]
    made = publish(aws, connection=ADDRESS).request_id
    assert len(made) == 32 and made != publish(aws, connection=ADDRESS).request_id


def test_it_registers_the_requests_record_as_the_message_function_does(aws):
    publish(aws, request_id="r-record", options={"resumable": True, "keepOpen": True})

    item = record(aws, "anon#r-record")
    assert item is not None
    assert item["status"] == "queued" and item["rid"] == "r-record"
    assert item["connectionId"] == load_event("send-message.json")["requestContext"]["connectionId"]
    assert item["resumable"] is True and item["keepOpen"] is True
    # The stream function's claim finds it queued: the request is now cancellable and resumable.
    claim = Requests.of(aws.dynamodb, settings()).claim(
        "anon#r-record", new_request(publish_envelope(aws), settings())
    )
    assert claim.taken is Taken.CLAIMED and claim.request.resumable


def publish_envelope(aws) -> Any:
    (notification,) = aws.published()
    from llmstream.core.envelope import parse_envelope

    return parse_envelope(notification["Message"])


def test_the_event_authorizers_principal_owns_the_request(aws):
    event = APIGatewayWebSocketEvent(load_event("send-message.json"))  # Powertools' event too
    event.raw_event["requestContext"]["authorizer"] = {"principalId": "alice"}
    published = publish(aws, connection=event, request_id="r-alice")

    assert published.envelope.principal_id == "alice"
    assert record(aws, owner_key("alice", "r-alice")) is not None
    assert record(aws, "anon#r-alice") is None
    with pytest.raises(TypeError, match="authorizer"):
        publish(aws, connection=event, principal_id="mallory")


def test_from_explicit_connection_fields_it_publishes_to_that_address(aws):
    published = publish(aws, connection=ADDRESS, request_id="r-address", principal_id="bob")

    document = json.loads(aws.published()[0]["Message"])
    assert (document["connectionId"], document["domainName"], document["stage"]) == (
        ADDRESS.connection_id,
        ADDRESS.domain_name,
        ADDRESS.stage,
    )
    assert document["principalId"] == "bob" == published.envelope.principal_id
    assert record(aws, "p:bob#r-address")["connectionId"] == ADDRESS.connection_id


@pytest.mark.parametrize(
    ("prompt", "options", "request_id", "code"),
    [
        ("   ", {}, "r-empty", "bad_request"),
        ("x" * 20_000, {}, "r-big", "payload_too_large"),
        ([{"role": "assistant", "content": "hi"}], {}, "r-role", "bad_request"),
        ([], {}, "r-none", "bad_request"),
        ("hi", {"model": "gpt-9"}, "r-model", "model_not_allowed"),
        ("hi", {"keepOpen": "yes"}, "r-keep", "bad_request"),
        ("hi", {"conversationId": "has space"}, "r-conv", "bad_request"),
        ("hi", {}, "has space", "bad_request"),
    ],
)
def test_what_the_message_function_refuses_raises_its_code_and_message(
    aws, lambda_context, prompt, options, request_id, code
):
    content = {"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt}
    expected = message_function_frame(
        {**content, **options, "requestId": request_id}, lambda_context
    )
    with pytest.raises(ProtocolError) as refused:
        publish(aws, prompt, request_id=request_id, options=options)

    assert refused.value.code.value == code
    assert refused.value.frame("unused") == expected
    assert aws.published() == []
    assert record(aws, f"anon#{request_id}") is None


def test_an_option_a_send_message_does_not_have_is_a_bad_request(aws):
    with pytest.raises(ProtocolError) as refused:
        publish(aws, request_id="r-opt", options={"action": "cancel"})
    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert refused.value.message.startswith("unknown option 'action'")
    assert refused.value.request_id == "r-opt"


def test_a_request_id_in_use_is_refused_and_published_once(aws):
    publish(aws, request_id="r-twice")
    with pytest.raises(ProtocolError) as refused:
        publish(aws, request_id="r-twice")

    assert refused.value.code is ErrorCode.BAD_REQUEST
    assert "'r-twice' is in use" in refused.value.message
    assert len(aws.published()) == 1


def test_the_connections_stream_limit_applies_as_to_a_send_message(aws):
    one_stream = settings(max_concurrent_streams=1)
    publish(aws, request_id="r-first", settings=one_stream)  # holds the one stream slot
    with pytest.raises(ProtocolError) as refused:
        publish(aws, request_id="r-second", settings=one_stream)

    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert "too many answers in progress" in refused.value.message
    assert record(aws, "anon#r-second") is None  # refused: the id is free again
    assert len(aws.published()) == 1


def test_an_unreachable_topic_raises_internal_and_frees_the_request_id(aws):
    missing = aws.topic_arn.replace("prompts", "missing")
    with pytest.raises(ProtocolError) as refused:
        publish(aws, request_id="r-sns", topic_arn=missing)

    assert refused.value.frame() == {
        "type": "error",
        "requestId": "r-sns",
        "code": "internal",
        "message": "the request could not be queued; try again",
    }
    assert record(aws, "anon#r-sns") is None
    assert publish(aws, request_id="r-sns").request_id == "r-sns"  # and it may be sent again


def test_without_a_frames_table_nothing_is_registered_and_the_stream_functions_claim_creates_it(
    aws,
):
    published = publish(aws, request_id="r-unregistered", settings=settings(frames_table=""))

    assert len(aws.published()) == 1
    assert record(aws, "anon#r-unregistered") is None
    claim = Requests.of(aws.dynamodb, settings()).claim(
        "anon#r-unregistered", new_request(published.envelope, settings())
    )
    assert claim.taken is Taken.CLAIMED


def test_without_a_topic_it_is_a_configuration_error_not_a_refusal(aws):
    with pytest.raises(ConfigurationError, match="PROMPT_TOPIC_ARN"):
        publish(aws, settings=settings(prompt_topic_arn=""))


def test_a_connection_that_is_neither_an_event_nor_an_address_is_a_type_error(aws):
    with pytest.raises(TypeError, match="requestContext"):
        publish(aws, connection={"connectionId": "abc"})
    with pytest.raises(ProtocolError, match="domainName"):
        publish(aws, connection=Address("abc", "evil.example/path", "prod"))


def test_importing_llmstream_loads_neither_boto3_nor_powertools():
    code = (
        "import sys; sys.path.insert(0, 'layers/stream'); import llmstream;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('boto3', 'botocore', 'aws_lambda_powertools') or m.startswith('llmstream.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_a_cache_opt_out_is_an_option_and_reaches_the_envelope(aws):
    publish(aws, "hello", request_id="r-no-cache", options={"cache": False})
    [notification] = aws.published()
    assert json.loads(notification["Message"])["options"]["cache"] is False
